"""The embedded sandbox: a throwaway local stand-in of a T.A.R.S. v1.0.0 deployment under ``.tars/sandbox/``.

It runs its own PostgreSQL cluster, ``redis-server`` and Prometheus on free loopback ports, plus whatever
services the installed plugins contribute through ``tars_sandbox``; ``tars_sandbox_seed`` loads each
plugin's baseline before those services start. Everything the sandbox knows lives in ``state.json``
(pid, process start time, port, argv of every service) so that later ``tars-run`` invocations reuse the
running processes, restart only the ones that died, and ``down`` stops exactly what was started.

Why not mirakuru (the supervisor the issue suggests): its executors kill their process on ``__del__``
and, through an ``atexit`` hook, every process carrying their environment marker. Sandbox services must
outlive the ``tars-run`` process that started them, so they are started here with ``Popen`` in their
own session and identified afterwards by ``/proc/<pid>/stat`` start time, which also guards ``down``
against killing a recycled pid.

PostgreSQL refuses to run as root, so when the caller is root the cluster runs as ``postgres`` (or
``nobody``) through ``Popen(user=...)``, which keeps the recorded pid the postmaster's own (``runuser``
would put a forking parent in between).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import grp
import hashlib
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import attrs
import cattrs
import yaml

from tars_core.config import ReleaseConfig, TarsConfig
from tars_core.errors import SandboxError, UsageError
from tars_core.model import SandboxContribution, SandboxSite, Targets
from tars_core.plugins import PluginHost

log = logging.getLogger("tars.sandbox")

STATE_VERSION = 1
DB_NAME = "tars"
PG_SUPERUSER = "postgres"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
CORE = ("postgres", "redis", "prometheus")
# every sandbox process (and whatever it spawns) carries this, so leftovers are found even without state.json
MARK_ENV = "TARS_SANDBOX_DIR"
TARGET_KEYS = frozenset(f.name for f in attrs.fields(Targets))


# -- recorded state ------------------------------------------------------------------------------


@attrs.define
class Service:
    """One supervised process. ``pid``/``start_ticks`` identify the running instance (None: not running)."""

    name: str
    argv: list[str]
    port: int | None
    ready: str | None
    log: str
    owner: str = "core"
    cwd: str | None = None
    env: dict[str, str] = attrs.field(factory=dict)
    user: str | None = None
    stop_signal: int = int(signal.SIGTERM)
    pid: int | None = None
    start_ticks: int | None = None
    started_at: str | None = None


@attrs.define
class Contributed:
    """What a plugin contributed when it joined the sandbox (its hook is not called again)."""

    version: str
    scrape_targets: list[str] = attrs.field(factory=list)
    services: list[str] = attrs.field(factory=list)
    targets: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class State:
    created_at: str
    pg_dir: str
    bindir: str
    run_as: str | None
    targets: dict[str, Any]
    services: list[Service]
    plugins: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    contributed: dict[str, Contributed] = attrs.field(factory=dict)
    database_ready: bool = False
    stopped: bool = False
    version: int = STATE_VERSION

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def port(self, name: str) -> int:
        port = self.service(name).port
        assert port is not None
        return port


_converter = cattrs.Converter()


@attrs.frozen
class Paths:
    root: Path

    @property
    def dir(self) -> Path:
        return self.root / ".tars" / "sandbox"

    @property
    def state(self) -> Path:
        return self.dir / "state.json"

    @property
    def config(self) -> Path:
        return self.dir / "tars.yaml"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def lock(self) -> Path:
        return self.root / ".tars" / "sandbox.lock"

    @property
    def prometheus(self) -> Path:
        return self.dir / "prometheus"

    @property
    def rules(self) -> Path:
        return self.prometheus / "rules"

    @property
    def dashboards(self) -> Path:
        return self.dir / "grafana" / "dashboards"

    def plugin_dir(self, name: str) -> Path:
        return self.dir / "plugins" / name


def _load_state(paths: Paths) -> State | None:
    try:
        raw = json.loads(paths.state.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SandboxError(f"sandbox state {paths.state} is unreadable ({exc}); run `tars-run sandbox reset`") from None
    if raw.get("version") != STATE_VERSION:
        raise SandboxError(f"sandbox state {paths.state} is from another tars version; run `tars-run sandbox reset`")
    return _converter.structure(raw, State)


def _save_state(paths: Paths, state: State) -> None:
    tmp = paths.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(_converter.unstructure(state), indent=2, default=str) + "\n")
    tmp.replace(paths.state)


@contextlib.contextmanager
def _locked(paths: Paths) -> Iterator[None]:
    """One sandbox manager at a time per root, so two concurrent ``up`` calls cannot create two clusters."""
    paths.lock.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- binaries ------------------------------------------------------------------------------------


@attrs.frozen
class Binaries:
    pg_bindir: Path
    redis: str
    prometheus: str

    def pg(self, tool: str) -> str:
        return str(self.pg_bindir / tool)


def _pg_bindir() -> Path | None:
    """Where initdb/postgres live: PATH, then ``pg_config --bindir``, then Debian's versioned folders."""
    found = shutil.which("initdb")
    if found:
        bindir = Path(os.path.realpath(found)).parent
        if (bindir / "postgres").exists():
            return bindir
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            bindir = Path(out.stdout.strip())
            if (bindir / "initdb").exists() and (bindir / "postgres").exists():
                return bindir
        except (OSError, subprocess.SubprocessError):
            pass
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(p: str) -> tuple[int, ...]:
        part = Path(p).parent.parent.name
        return tuple(int(x) for x in part.split(".") if x.isdigit())

    for initdb in sorted(candidates, key=version, reverse=True):
        bindir = Path(initdb).parent
        if (bindir / "postgres").exists():
            return bindir
    return None


def find_binaries() -> Binaries:
    """The server binaries the sandbox needs, or a one-line ``UsageError`` saying how to get each."""
    missing: list[str] = []
    bindir = _pg_bindir()
    if bindir is None:
        missing.append(
            "PostgreSQL server (initdb/postgres not on PATH, via pg_config --bindir or in "
            "/usr/lib/postgresql/*/bin): apt-get install -y postgresql, or point targets.postgres at a server"
        )
    redis = shutil.which("redis-server")
    if redis is None:
        missing.append("redis-server: apt-get install -y redis-server, or point targets.redis at a server")
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        missing.append("prometheus: apt-get install -y prometheus, or point targets.prometheus_url at a server")
    if missing:
        raise UsageError(
            "the sandbox cannot start, missing " + "; ".join(missing) + " (in a tars.yaml passed with --config)"
        )
    assert bindir is not None and redis is not None and prometheus is not None
    return Binaries(bindir, redis, prometheus)


# -- processes -----------------------------------------------------------------------------------

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, process group, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[19])


def _alive(svc: Service) -> bool:
    """Is the recorded process still running *and* still the one we started (not a recycled pid)?"""
    if svc.pid is None or svc.start_ticks is None:
        return False
    stat = _proc_stat(svc.pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[2] == svc.start_ticks


def _group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def _reap(pid: int) -> None:
    """Collect the exit status when the service is our own child (tests; ``up`` then ``down`` in one run)."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pid: int, ticks: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        _reap(pid)
        stat = _proc_stat(pid)
        if stat is None or stat[2] != ticks or stat[0] in ("Z", "X"):
            _reap(pid)
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return False


def _kill_group_leftovers(svc: Service) -> None:
    """SIGKILL what is left of a dead service's session (e.g. PostgreSQL backends after the postmaster died).

    The group id is the dead leader's pid; Linux does not hand a pid out again while a group still uses
    it as its id, so every member found here belongs to the process we started.
    """
    if svc.pid is None or _alive(svc):
        return
    _kill_all(_leftovers(svc))
    _reap(svc.pid)


def _kill_all(pids: Sequence[int]) -> None:
    """SIGKILL ``pids`` and wait until they are gone (their sockets and shared memory released)."""
    ticks = {}
    for pid in pids:
        stat = _proc_stat(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            if stat is not None:
                ticks[pid] = stat[2]
    for pid, t in ticks.items():
        _wait_gone(pid, t, STOP_TIMEOUT)


def _leftovers(svc: Service) -> list[int]:
    """Live members of the session of a service whose leader has exited.

    If the leader's pid now belongs to another process (start time differs), the kernel only reused it
    because our group was empty, so nothing of ours is left and that group is not ours to touch.
    """
    assert svc.pid is not None
    stat = _proc_stat(svc.pid)
    if stat is not None and stat[2] != svc.start_ticks:
        return []
    return _group_members(svc.pid)


def _stop(svc: Service) -> bool:
    """Stop exactly the recorded process (and its session); False when it was not running."""
    was_running = _alive(svc)
    if was_running:
        assert svc.pid is not None and svc.start_ticks is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(svc.pid, svc.stop_signal)
        if not _wait_gone(svc.pid, svc.start_ticks, STOP_TIMEOUT):
            log.warning("%s (pid %s) ignored signal %s; killing it", svc.name, svc.pid, svc.stop_signal)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(svc.pid, signal.SIGKILL)
            _wait_gone(svc.pid, svc.start_ticks, STOP_TIMEOUT)
    if svc.pid is not None:
        # the leader is gone; whatever is left in its session is ours (see _leftovers)
        _kill_all(_leftovers(svc))
        _reap(svc.pid)
    svc.pid = svc.start_ticks = None
    svc.started_at = None
    return was_running


SERVER_EXES = frozenset({"postgres", "redis-server", "redis-check-rdb", "prometheus"})


def _marked(paths: Paths) -> list[int]:
    """Live processes started by this sandbox or by its services, found without ``state.json``.

    A process is ours when ``MARK_ENV`` is in its environment, or when it is one of the sandbox's server
    binaries running from a folder of this sandbox: PostgreSQL and Redis rewrite their process title over
    the memory ``/proc/<pid>/environ`` shows, so the mark is invisible for them. A user's shell sitting in
    ``.tars/sandbox`` is neither, and is left alone.
    """
    needle = f"{MARK_ENV}={paths.dir}".encode()
    folders = [str(paths.dir)]
    pg = paths.dir / "pg"
    if pg.is_symlink():
        folders.append(str(pg.resolve()))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
                continue
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe")).removesuffix(" (deleted)")
            cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        if exe in SERVER_EXES and any(cwd == f or cwd.startswith(f + "/") for f in folders):
            found.append(pid)
    return found


def _sweep(paths: Paths) -> list[int]:
    """Stop what is left of this sandbox outside the recorded services (escaped daemons, lost state)."""
    pids = _marked(paths)
    ticks = {}
    for pid in pids:
        stat = _proc_stat(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            if stat is not None:
                ticks[pid] = stat[2]
    stubborn = [pid for pid, t in ticks.items() if not _wait_gone(pid, t, 5)]
    _kill_all(stubborn)
    return pids


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # SO_REUSEADDR as the servers themselves use it: TIME_WAIT leftovers of health checks are no conflict
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _run_as(user: str | None) -> dict[str, Any]:
    if user is None or os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _spawn(svc: Service, paths: Paths) -> None:
    """Start ``svc`` in its own session with its output in its log; record pid and start time."""
    Path(svc.log).parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **svc.env, MARK_ENV: str(paths.dir)}
    with open(svc.log, "ab") as out:
        out.write(f"--- tars sandbox: starting {svc.name} at {_now()}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            svc.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=svc.cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
            **_run_as(svc.user),
        )
    _CHILDREN[proc.pid] = proc
    stat = _proc_stat(proc.pid)
    svc.pid = proc.pid
    svc.start_ticks = stat[2] if stat else None
    svc.started_at = _now()


def _check(svc: Service, bins: Binaries | None = None) -> str | None:
    """None when ``svc`` answers as its readiness rule says, else a short reason."""
    if not _alive(svc):
        return "not running" if svc.pid is None else f"process {svc.pid} is gone"
    kind, port = svc.ready, svc.port
    if kind is None:
        return None
    if port is None:
        return f"readiness {kind!r} needs a port"
    try:
        if kind == "tcp":
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return None
        if kind == "redis":
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
            return None if reply.startswith(b"+PONG") else f"redis answered {reply[:30]!r}"
        if kind == "pg":
            isready = bins.pg("pg_isready") if bins else shutil.which("pg_isready")
            if isready and Path(isready).exists():
                rc = subprocess.run(
                    [
                        isready,
                        "-q",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-U",
                        PG_SUPERUSER,
                        "-d",
                        "postgres",
                        "-t",
                        "1",
                    ],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=5,
                ).returncode
                return None if rc == 0 else f"pg_isready exit {rc}"
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return None
        if kind.startswith("http:"):
            path = kind[5:] or "/"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status} on {path}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} on {kind[5:] or '/'}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"not answering on :{port} ({type(exc).__name__})"
    return f"unknown readiness rule {kind!r}"


def _tail(path: str, lines: int = 3) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def _wait_ready(svcs: Sequence[Service], bins: Binaries, timeout: float = START_TIMEOUT) -> None:
    """Poll each service's readiness rule until it holds; fail fast when the process exits."""
    deadline = time.monotonic() + timeout
    for svc in svcs:
        delay = 0.02
        while True:
            reason = _check(svc, bins)
            if reason is None:
                break
            if not _alive(svc):
                raise SandboxError(
                    f"sandbox service {svc.name} exited while starting ({_tail(svc.log) or 'no output'}); "
                    f"see {_show(Path(svc.log))}"
                )
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"sandbox service {svc.name} not ready after {timeout:.0f}s: {reason}; see {_show(Path(svc.log))}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)


def _revive(svcs: Sequence[Service], bins: Binaries, paths: Paths) -> list[str]:
    """Start every service that is not running (or not answering); returns the names started."""
    todo: list[Service] = []
    for svc in svcs:
        if _check(svc, bins) is None:
            continue
        if _alive(svc):
            # running but not answering: it may still be starting (another tars-run started it)
            try:
                _wait_ready([svc], bins, timeout=10)
                continue
            except SandboxError:
                log.warning("%s (pid %s) is not answering; restarting it", svc.name, svc.pid)
                _stop(svc)
        _kill_group_leftovers(svc)
        if svc.port is not None and not _port_free(svc.port):
            raise SandboxError(
                f"port {svc.port} of sandbox service {svc.name} is taken by another process; "
                "stop it or run `tars-run sandbox reset` to pick new ports"
            )
        _spawn(svc, paths)
        todo.append(svc)
    _wait_ready(todo, bins)
    return [s.name for s in todo]


# -- building the sandbox ------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _show(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _unprivileged_user() -> str | None:
    """The account PostgreSQL runs as: the caller, unless the caller is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise UsageError("running as root and neither a postgres nor a nobody account exists for PostgreSQL")


def _reachable(path: Path, user: str | None) -> bool:
    """Can ``user`` traverse every folder down to ``path``? (/root is 0700, pytest's tmp is 0700.)"""
    if user is None:
        return True
    pw = pwd.getpwnam(user)
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    for folder in [path, *path.parents]:
        st = folder.stat()
        if st.st_uid == pw.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in gids:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


def _pg_home(paths: Paths, user: str | None) -> Path:
    """The cluster's folder: inside the sandbox, unless the postgres account cannot reach it there.

    Then it goes to ``/var/tmp/tars-sandbox-<hash>/`` and ``.tars/sandbox/pg`` links to it, so a checkout
    under ``/root`` still works; ``reset`` removes both.
    """
    inside = paths.dir / "pg"
    if _reachable(paths.dir, user):
        return inside
    digest = hashlib.sha256(str(paths.root.resolve()).encode()).hexdigest()[:12]
    outside = Path("/var/tmp") / f"tars-sandbox-{digest}"
    outside.mkdir(mode=0o755, exist_ok=True)
    os.chmod(outside, 0o755)
    with contextlib.suppress(FileNotFoundError):
        inside.unlink()
    inside.symlink_to(outside / "pg")
    return outside / "pg"


def _create_core(paths: Paths, bins: Binaries) -> State:
    """initdb a new cluster and record (not yet start) PostgreSQL, Redis and Prometheus."""
    user = _unprivileged_user()
    for d in (
        paths.dir,
        paths.logs,
        paths.rules,
        paths.dashboards,
        paths.prometheus / "data",
        paths.dir / "redis",
    ):
        d.mkdir(parents=True, exist_ok=True)
    pg_dir = _pg_home(paths, user)
    data = pg_dir / "data"
    sock = pg_dir / "sock"
    pg_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock.mkdir(mode=0o700, exist_ok=True)
    if user is not None:
        pw = pwd.getpwnam(user)
        for d in (pg_dir, sock):
            os.chown(d, pw.pw_uid, pw.pw_gid)
    initdb_log = paths.logs / "initdb.log"
    with open(initdb_log, "wb") as out:
        rc = subprocess.run(
            [
                bins.pg("initdb"),
                "-D",
                str(data),
                "-U",
                PG_SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=pg_dir,
            timeout=300,
            **_run_as(user),
        ).returncode
    if rc != 0:
        raise SandboxError(f"initdb failed (exit {rc}: {_tail(str(initdb_log))}); see {_show(initdb_log)}")

    pg_port, redis_port, prom_port = _free_ports(3)
    # a unix socket path longer than sun_path (108 bytes) would stop the postmaster; TCP is what we use
    sock_dir = str(sock) if len(str(sock)) < 90 else ""
    logs = paths.logs
    services = [
        Service(
            "postgres",
            [
                bins.pg("postgres"),
                "-D",
                str(data),
                "-p",
                str(pg_port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={sock_dir}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            pg_port,
            "pg",
            str(logs / "postgres.log"),
            cwd=str(pg_dir),
            user=user,
            stop_signal=int(signal.SIGINT),  # "fast" shutdown; SIGTERM would wait for clients to leave
        ),
        Service(
            "redis",
            [
                bins.redis,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(paths.dir / "redis"),
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                *_redis_keep_on_stop(bins.redis),
            ],
            redis_port,
            "redis",
            str(logs / "redis.log"),
            cwd=str(paths.dir / "redis"),
        ),
        Service(
            "prometheus",
            [
                bins.prometheus,
                f"--config.file={paths.prometheus / 'prometheus.yml'}",
                f"--storage.tsdb.path={paths.prometheus / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=2d",
                "--log.level=warn",
            ],
            prom_port,
            "http:/-/ready",
            str(logs / "prometheus.log"),
            cwd=str(paths.prometheus),
        ),
    ]
    targets = Targets(
        postgres=f"postgresql://{PG_SUPERUSER}@127.0.0.1:{pg_port}/{DB_NAME}",
        redis=f"redis://127.0.0.1:{redis_port}/0",
        prometheus_url=f"http://127.0.0.1:{prom_port}",
        prometheus_rules_dir=str(paths.rules),
        grafana_dashboards_dir=str(paths.dashboards),
    )
    return State(
        created_at=_now(),
        pg_dir=str(pg_dir),
        bindir=str(bins.pg_bindir),
        run_as=user,
        targets=attrs.asdict(targets),
        services=services,
    )


def _redis_keep_on_stop(redis: str) -> list[str]:
    """Save once on a clean stop (Redis 7+), so ``down``/``up`` keeps seeded keys and feature flags.

    No snapshots or AOF while running (``--save ""``); a SIGKILLed Redis loses its data as a real one would.
    """
    try:
        out = subprocess.run([redis, "--version"], capture_output=True, text=True, timeout=10).stdout
        major = int(out.split("v=", 1)[1].split(".", 1)[0])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return []
    return ["--shutdown-on-sigterm", "save force"] if major >= 7 else []  # force: exit even if the save fails


def _create_database(state: State) -> None:
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=state.port("postgres"), user=PG_SUPERUSER, database="postgres", timeout=10
        )
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB_NAME):
                await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            await conn.close()

    anyio.run(create)


def _clear_leftovers(paths: Paths) -> None:
    """Before building anew: stop whatever still runs from an old sandbox here, then remove the folder.

    The postmaster is also looked up through ``postmaster.pid`` for a cluster started without the mark.
    """
    _sweep(paths)
    for pidfile in glob.glob(str(paths.dir / "pg" / "data" / "postmaster.pid")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = Path(pidfile).read_text().splitlines()
            pid, datadir = int(lines[0]), lines[1]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if datadir.encode() in cmdline:
                os.kill(pid, signal.SIGINT)
                stat = _proc_stat(pid)
                if stat:
                    _wait_gone(pid, stat[2], STOP_TIMEOUT)
    _remove_tree(paths)


def _remove_tree(paths: Paths) -> None:
    pg = paths.dir / "pg"
    if pg.is_symlink():
        outside = pg.resolve().parent
        pg.unlink()
        shutil.rmtree(outside, ignore_errors=True)
    shutil.rmtree(paths.dir, ignore_errors=True)


def _prometheus_config(state: State) -> str:
    scrape = [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{state.port('prometheus')}"]}]}]
    for name, contrib in state.contributed.items():
        if contrib.scrape_targets:
            scrape.append({"job_name": name, "static_configs": [{"targets": list(contrib.scrape_targets)}]})
    doc = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": ["rules/*.yml", "rules/*.yaml"],
        "scrape_configs": scrape,
    }
    return "# Generated by tars-run sandbox; rewritten when a plugin joins the sandbox.\n" + yaml.safe_dump(
        doc, sort_keys=False
    )


def _targets(state: State) -> Targets:
    return Targets(**state.targets)


def _write_config(paths: Paths, state: State) -> None:
    doc = {
        "release": {"name": ReleaseConfig().name},
        "targets": {k: v for k, v in state.targets.items() if v is not None},
        "plugins": state.plugins,
    }
    header = (
        f"# Generated by `tars-run sandbox` ({_now()}) for the local sandbox under {paths.dir}.\n"
        "# tars-run uses it whenever there is no tars.yaml and no --config. For a real deployment copy it\n"
        "# to tars.yaml, point targets at your servers and keep the plugins sections you need.\n"
    )
    tmp = paths.config.with_suffix(".tmp")
    tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    tmp.replace(paths.config)


def _hook_error(paths: Paths, plugin: str, hook: str, exc: BaseException, timeout: float) -> SandboxError:
    """One line naming the plugin and hook; the traceback goes to ``logs/sandbox.log``."""
    logfile = paths.logs / "sandbox.log"
    with open(logfile, "a") as fh:
        fh.write(f"--- {_now()} {plugin}.{hook} failed\n")
        fh.write("".join(traceback.format_exception(exc)))
    if isinstance(exc, TimeoutError):
        what = f"timed out after {timeout:.0f}s"
    else:
        what = (f"{type(exc).__name__}: {exc}".strip().splitlines() or [type(exc).__name__])[0]
    return SandboxError(
        f"plugin {plugin}: {hook} failed ({what}); traceback in {_show(logfile)}; "
        f"skip the plugin with -p no:{plugin} or fix it and rerun"
    )


def _join_plugins(host: PluginHost, paths: Paths, state: State, names: Sequence[str]) -> None:
    """Ask each new plugin for its contribution, then seed them all in dependency order.

    A plugin is recorded as contributed only after its seed ran, so a failure here leaves it to be
    joined again by the next ``up``.
    """
    from tars_core.runner import build_context

    cfg = TarsConfig()
    timeout = cfg.release.timeouts.sandbox
    pending: dict[str, Contributed] = {}
    pending_services: dict[str, list[Service]] = {}

    async def contribute() -> None:
        for name in names:
            plugin = host.plugins[name]
            site_dir = paths.plugin_dir(name)
            site_dir.mkdir(parents=True, exist_ok=True)
            contrib: SandboxContribution | None = None
            if host.has_hook(name, "tars_sandbox"):
                site = SandboxSite(dir=site_dir, targets=_targets(state), python=sys.executable)
                try:
                    contrib = await host.call(name, "tars_sandbox", timeout=timeout, site=site)
                except Exception as exc:
                    raise _hook_error(paths, name, "tars_sandbox", exc, timeout) from None
            contrib = contrib or SandboxContribution()
            if not isinstance(contrib, SandboxContribution):
                raise SandboxError(
                    f"plugin {name}: tars_sandbox returned {type(contrib).__name__}, not SandboxContribution"
                )
            section = dict(contrib.config)
            hints = section.pop("targets", None) or {}
            if not isinstance(hints, dict) or not set(hints) <= TARGET_KEYS:
                bad = sorted(set(hints) - TARGET_KEYS) if isinstance(hints, dict) else hints
                raise SandboxError(f"plugin {name}: tars_sandbox config.targets has unknown keys {bad}")
            state.targets.update(hints)
            state.plugins[name] = json.loads(json.dumps(section, default=str))
            svcs = [
                Service(
                    f"{name}.{spec.name}",
                    [str(a) for a in spec.argv],
                    spec.port,
                    spec.ready,
                    str(paths.logs / f"{name}.{spec.name}.log"),
                    owner=name,
                    cwd=str(site_dir),
                    env={str(k): str(v) for k, v in spec.env.items()},
                )
                for spec in contrib.services
            ]
            pending_services[name] = svcs
            pending[name] = Contributed(
                version=plugin.version,
                scrape_targets=[str(t) for t in contrib.scrape_targets],
                services=[s.name for s in svcs],
                targets=dict(hints),
            )
        seed_cfg = TarsConfig(targets=_targets(state), plugins=state.plugins, source=str(paths.config))
        for name in names:
            if not host.has_hook(name, "tars_sandbox_seed"):
                continue
            ctx = build_context(host.plugins[name], seed_cfg, root=paths.root, phase="sandbox_seed")
            try:
                await host.call(name, "tars_sandbox_seed", timeout=timeout, ctx=ctx)
            except Exception as exc:
                raise _hook_error(paths, name, "tars_sandbox_seed", exc, timeout) from None

    anyio.run(contribute)
    for name in names:
        state.services.extend(pending_services[name])
        state.contributed[name] = pending[name]


def _reload_prometheus(state: State) -> None:
    """Make a running Prometheus read its config and rule files again (``--web.enable-lifecycle``)."""
    port = state.port("prometheus")
    req = urllib.request.Request(f"http://127.0.0.1:{port}/-/reload", method="POST")
    try:
        urllib.request.urlopen(req, timeout=10).close()
    except OSError as exc:
        # a bad rule file written by a seed: Prometheus keeps its old config and says why in its log
        log.warning("sandbox Prometheus refused to reload (%s); see %s", exc, state.service("prometheus").log)


@attrs.frozen
class UpResult:
    config: Path
    created: bool
    started: list[str]
    joined: list[str]
    seconds: float


def _up(host: PluginHost, root: Path) -> UpResult:
    t0 = time.monotonic()
    paths = Paths(root)
    with _locked(paths):
        bins = find_binaries()
        state = _load_state(paths)
        created = state is None
        if state is None:
            _clear_leftovers(paths)
            state = _create_core(paths, bins)
            _save_state(paths, state)
        try:
            started = _revive([state.service("postgres"), state.service("redis")], bins, paths)
            if not state.database_ready:
                _create_database(state)
                state.database_ready = True
            # plugins installed since the sandbox was built join it now; uninstalled ones leave it
            for name in [n for n in state.contributed if n not in host.plugins and n not in host.blocked]:
                gone = state.contributed.pop(name)
                for svc in [s for s in state.services if s.name in gone.services]:
                    _stop(svc)
                    state.services.remove(svc)
                state.plugins.pop(name, None)
            joined = [n for n in host.order(list(host.plugins)) if n not in state.contributed]
            if joined:
                _join_plugins(host, paths, state, joined)
            prom_cfg = paths.prometheus / "prometheus.yml"
            text = _prometheus_config(state)
            changed = not prom_cfg.exists() or prom_cfg.read_text() != text
            if changed:
                prom_cfg.write_text(text)
            prom = state.service("prometheus")
            if (changed or joined) and _alive(prom):  # a joining plugin's seed may have written rules
                _reload_prometheus(state)
            started += _revive([prom], bins, paths)
            started += _revive([s for s in state.services if s.name not in CORE], bins, paths)
            state.stopped = False
        finally:
            _save_state(paths, state)
        _write_config(paths, state)
    return UpResult(paths.config, created, started, joined, time.monotonic() - t0)


def _healthy_fast(host: PluginHost, paths: Paths) -> bool:
    """True when nothing needs doing: every service answers and no installed plugin is missing."""
    try:
        state = _load_state(paths)
    except SandboxError:
        return False
    if state is None or state.stopped or not paths.config.exists():
        return False
    if any(n not in state.contributed for n in host.plugins):
        return False
    return all(_check(s) is None for s in state.services)


# -- the interface the CLI calls -----------------------------------------------------------------


def ensure_running(host: PluginHost, root: Path, *, announce: Callable[[str], None]) -> Path:
    """The generated config of a healthy sandbox, starting or repairing it first when needed.

    Silent when the sandbox was already healthy; otherwise ``announce`` gets one line saying what was done.
    """
    paths = Paths(root)
    if _healthy_fast(host, paths):
        return paths.config
    result = _up(host, root)
    if not (result.created or result.started or result.joined):
        return paths.config  # another tars-run repaired it while we waited for the lock
    state = _load_state(paths)
    assert state is not None
    ports = (
        f"PostgreSQL :{state.port('postgres')}, Redis :{state.port('redis')}, Prometheus :{state.port('prometheus')}"
    )
    extra = len(state.services) - len(CORE)
    if extra:
        ports += f", {extra} plugin service{'s' if extra != 1 else ''}"
    if result.created:
        what = "started"
    else:
        parts = []
        if result.started:
            parts.append("restarted " + ", ".join(result.started))
        if result.joined:
            parts.append("added " + ", ".join(result.joined))
        what = "; ".join(parts)
    where = _show(paths.dir)
    announce(f"tars: no tars.yaml; using the sandbox at {where} ({ports}) — {what} in {result.seconds:.1f}s")
    return paths.config


def _service_rows(state: State | None) -> list[dict[str, Any]]:
    if state is None:
        return []
    rows = []
    for svc in state.services:
        if state.stopped and not _alive(svc):
            health, detail = "stopped", ""
        else:
            reason = _check(svc)
            health, detail = ("healthy", "") if reason is None else ("unhealthy", reason)
        rows.append(
            {
                "name": svc.name,
                "owner": svc.owner,
                "pid": svc.pid if _alive(svc) else None,
                "port": svc.port,
                "health": health,
                "detail": detail,
                "started_at": svc.started_at,
                "log": svc.log,
            }
        )
    return rows


def status(root: Path) -> dict[str, Any]:
    """The sandbox as ``status`` reports it: overall state plus one row per service."""
    paths = Paths(root)
    state = _load_state(paths)
    rows = _service_rows(state)
    if state is None:
        overall = "absent"
    elif all(r["health"] == "stopped" for r in rows):
        overall = "stopped"
    elif all(r["health"] == "healthy" for r in rows):
        overall = "running"
    else:
        overall = "degraded"
    return {
        "sandbox": str(paths.dir),
        "config": str(paths.config) if paths.config.exists() else None,
        "state": overall,
        "created_at": state.created_at if state else None,
        "targets": state.targets if state else {},
        "services": rows,
    }


def down(root: Path) -> dict[str, list[str]]:
    """Stop every recorded service (plugin services first, PostgreSQL last); the data stays for ``up``."""
    paths = Paths(root)
    with _locked(paths):
        state = _load_state(paths)
        if state is None:
            return {"stopped": [], "not_running": []}
        stopped: list[str] = []
        idle: list[str] = []
        order = [s for s in reversed(state.services) if s.name not in CORE] + [state.service(n) for n in reversed(CORE)]
        for svc in order:
            (stopped if _stop(svc) else idle).append(svc.name)
        escaped = _sweep(paths)
        if escaped:
            log.warning("stopped %d sandbox processes that had left their service's session", len(escaped))
        state.stopped = True
        _save_state(paths, state)
    return {"stopped": stopped, "not_running": idle}


def destroy(root: Path) -> None:
    """Stop the sandbox and delete it, data included (``reset`` without the rebuild)."""
    paths = Paths(root)
    try:
        down(root)
    except SandboxError:
        pass  # unreadable state: nothing recorded to stop; a postmaster on the data folder is found below
    with _locked(paths):
        _clear_leftovers(paths)


def reset(host: PluginHost, root: Path) -> UpResult:
    """Throw the sandbox away (data included) and build a fresh one."""
    destroy(root)
    return _up(host, root)


def _print_status(doc: dict[str, Any], out: Any) -> None:
    print(f"sandbox {_show(Path(doc['sandbox']))}: {doc['state']}", file=out)
    if doc["config"]:
        print(f"config  {_show(Path(doc['config']))}", file=out)
    if doc["services"]:
        width = max(len(r["name"]) for r in doc["services"]) + 2
        print(f"{'SERVICE':<{width}}{'PID':>8}  {'PORT':>6}  HEALTH", file=out)
        for r in doc["services"]:
            detail = f" ({r['detail']}; log {_show(Path(r['log']))})" if r["detail"] else ""
            print(
                f"{r['name']:<{width}}{r['pid'] or '-':>8}  {r['port'] or '-':>6}  {r['health']}{detail}",
                file=out,
            )


def run_command(host: PluginHost, root: Path, action: str, fmt: str) -> int:
    """``tars-run sandbox up|down|status|reset``: JSON on stdout with ``--format json``, text on stderr.

    Exit 0 on success; ``status`` exits 1 when the sandbox is absent, stopped or has an unhealthy service.
    """
    out = sys.stderr
    doc: dict[str, Any]
    code = 0
    if action in ("up", "reset"):
        result = reset(host, root) if action == "reset" else _up(host, root)
        doc = status(root)
        doc.update(
            action=action,
            created=result.created,
            started=result.started,
            joined=result.joined,
            seconds=round(result.seconds, 2),
        )
        if fmt != "json":
            done = (
                "created"
                if result.created
                else ("restarted " + ", ".join(result.started) if result.started else "already running")
            )
            print(f"tars: sandbox {done} in {result.seconds:.1f}s", file=out)
            _print_status(doc, out)
        code = 0 if doc["state"] == "running" else 1
    elif action == "down":
        res = down(root)
        doc = {"action": "down", "sandbox": str(Paths(root).dir), **res}
        if fmt != "json":
            if res["stopped"]:
                print(
                    f"tars: sandbox stopped ({', '.join(res['stopped'])}); data kept, `up` restarts it",
                    file=out,
                )
            else:
                print("tars: sandbox was not running", file=out)
    elif action == "status":
        doc = {"action": "status", **status(root)}
        if fmt != "json":
            _print_status(doc, out)
            if doc["state"] == "absent":
                print("no sandbox yet: `tars-run sandbox up` creates one", file=out)
        if doc["state"] == "degraded":
            print("`tars-run sandbox up` restarts what is down", file=out)
        code = 0 if doc["state"] == "running" else 1
    else:
        raise UsageError(f"unknown sandbox action {action!r}: use up, down, status or reset")
    if fmt == "json":
        print(json.dumps(doc, indent=2, default=str))
    return code


__all__ = [
    "SandboxError",
    "destroy",
    "down",
    "ensure_running",
    "find_binaries",
    "reset",
    "run_command",
    "status",
]
