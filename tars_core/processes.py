"""Starting, checking and stopping server processes: one supervisor for the sandbox, benchmarks and tests.

Every server the project starts (PostgreSQL, redis-server, Prometheus, a plugin's hub or trainer) needs
the same care, so it lives here once, on psutil:

* identity: a pid alone is not a process (pids are reused), so a process is recorded as
  :class:`ProcessId` (pid + psutil's create time) and every later check or signal verifies both;
* its own session (``start_new_session``), so Ctrl-C on ``tars-run`` does not hit the servers and a
  stop can reach everything the server forked (PostgreSQL backends, a Python service's children);
* stdout and stderr appended to a log file whose tail goes into every error message;
* readiness: a check that must hold before the service counts as started, failing fast (with the log
  tail) when the process exits instead of waiting out the deadline;
* stop: a polite signal, a bounded wait, then SIGKILL for the whole tree and session; nothing is left.

Services started here may outlive the Python process that started them (the sandbox's do):
:class:`Service` keeps no finaliser that kills them; only :meth:`Service.stop` (or leaving a ``with``
block) does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import psutil

from tars_core.errors import ServiceError
from tars_core.waiting import WaitTimeout, wait_until

#: A readiness check: ``None`` when the service answers, else a short reason ("connection refused").
Readiness = Callable[[], "str | None"]

BANNER = "--- tars: starting "  # the line spawn() writes before each start; tail() skips it
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # our own children, reaped so they leave no zombie
_EXITED: dict[int, int] = {}  # exit codes of reaped children, for exit_code()
_SPAWNED: dict[int, ProcessId] = {}  # the identity spawn() gave each of them


@attrs.frozen
class ProcessId:
    """A process as it was when recorded: pid plus start time, so a recycled pid is never mistaken."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            return None

    def process(self) -> psutil.Process | None:
        """The live process, or ``None`` when it is gone, a zombie, or a different process with our pid."""
        _reap(self.pid)
        try:
            proc = psutil.Process(self.pid)
            if _ours(self):  # our unreaped child: the pid cannot be another's, whatever psutil's clock says
                return proc
            if not _same_start(proc.create_time(), self.create_time) or proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return proc

    def alive(self) -> bool:
        """Still running? For a child :func:`spawn` started in this process the answer is the kernel's
        (it has not been reaped), never psutil's look at it: a look that failed, or a create time read
        apart, ended the wait for a soak that was still training, so its exit status was never read and
        it ran on unstopped."""
        _reap(self.pid)
        if _ours(self):
            return True
        return self.process() is not None


def _ours(ident: ProcessId) -> bool:
    """Is ``ident`` a child :func:`spawn` started in this process, not reaped yet?"""
    return ident.pid in _CHILDREN and _SPAWNED.get(ident.pid) == ident


def _same_start(a: float, b: float) -> bool:
    """Same process start? psutil derives create time from the boot time, which another process may
    compute up to a second apart (clock adjustments, rounding of /proc/stat's btime), while the kernel
    hands out the same pid again only after cycling through the whole pid space: a 1.5 s tolerance
    cannot confuse two processes and does not lose a sandbox service after an NTP step."""
    return abs(a - b) < 1.5


def _reap(pid: int) -> None:
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        _EXITED[pid] = proc.returncode
        del _CHILDREN[pid]


def exit_code(ident: ProcessId) -> int | None:
    """How a process :func:`spawn` started in *this* process ended (negative: killed by that signal);
    ``None`` while it runs, or for a process started elsewhere (its exit status is not ours to read)."""
    _reap(ident.pid)
    return _EXITED.get(ident.pid)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (the kernel's choice; the caller binds it soon)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports: all are held open together while chosen, so none repeats."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Can a server bind ``port``? SO_REUSEADDR as servers use it, so TIME_WAIT leftovers are no conflict."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def tcp_ready(port: int, host: str = "127.0.0.1") -> Readiness:
    """Ready when ``host:port`` accepts a connection."""

    def check() -> str | None:
        try:
            with socket.create_connection((host, port), timeout=1):
                return None
        except OSError as exc:
            return f"not answering on {host}:{port} ({type(exc).__name__})"

    return check


def http_ready(url: str) -> Readiness:
    """Ready when ``url`` answers 2xx (Prometheus ``/-/ready``, a hub's ``/healthz``)."""

    def check() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status} on {url}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code} on {url}"
        except OSError as exc:
            return f"not answering on {url} ({type(exc).__name__})"

    return check


def redis_ready(port: int, host: str = "127.0.0.1") -> Readiness:
    """Ready when a Redis on ``host:port`` answers PING (it accepts connections before it loads data)."""

    def check() -> str | None:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
        except OSError as exc:
            return f"not answering on {host}:{port} ({type(exc).__name__})"
        return None if reply.startswith(b"+PONG") else f"redis answered {reply[:30]!r}"

    return check


def tail(path: Path | str, lines: int = 3) -> str:
    """The last ``lines`` lines of a log, joined on one line: what an error message quotes."""
    try:
        text = [x for x in Path(path).read_text(errors="replace").strip().splitlines() if not x.startswith(BANNER)]
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments to run as ``user`` (PostgreSQL refuses root); empty unless we are root."""
    if user is None or os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ServiceError(f"no account named {user!r} to run the server as; create it or pick another") from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    user: str | None = None,
    banner: str = "",
    die_with_parent: bool = False,
) -> ProcessId:
    """Start ``argv`` in its own session, output appended to ``log``; returns its identity.

    ``die_with_parent``: the kernel SIGKILLs the child when this process dies, however it dies (Linux
    ``PR_SET_PDEATHSIG``), for helpers that must not outlive the run that needs them (a soak of a
    trainer: a SIGKILLed ``tars-run`` left a 600 MB TensorFlow child training on). The death that counts
    is that of the *thread* that calls ``spawn``: call it from the event loop or a thread that outlives
    the child, never from a short-lived worker thread. Services that must outlive ``tars-run`` (the
    sandbox's) leave it off.

    The child inherits ``os.environ`` updated with ``env`` (plus ``PYTHONUNBUFFERED`` so a Python
    service's log is current when an error quotes it).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "ab") as out:
        if banner:
            out.write(f"{BANNER}{banner} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            out.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=full_env,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_dies_with(os.getpid()) if die_with_parent else None,
                **_as_user(user),
            )
        except OSError as exc:
            raise ServiceError(f"cannot start {argv[0]}: {exc.strerror or exc}; is it installed?") from None
    _CHILDREN[proc.pid] = proc
    _EXITED.pop(proc.pid, None)  # a reused pid starts without an old child's exit code
    ident = ProcessId.of(proc.pid) or ProcessId(proc.pid, 0.0)  # psutil could not look: ours all the same
    _SPAWNED[proc.pid] = ident
    return ident


def _dies_with(parent: int) -> Callable[[], None]:
    """``preexec_fn`` of a child that the kernel kills when ``parent`` dies (Linux only).

    ``prctl`` is looked up here, in the parent: the child runs this between fork and exec, where an
    import could wait forever on a lock another thread of the parent held at the fork.
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigkill = 1, int(signal.SIGKILL)

    def setup() -> None:
        prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request: it will never be delivered
            os._exit(1)

    return setup


def run_once(
    argv: Sequence[str],
    *,
    log: Path,
    cwd: Path | str | None = None,
    user: str | None = None,
    timeout: float = 300.0,
) -> int:
    """Run a one-shot command as its server will run (``initdb`` as ``user``, output appended to ``log``);
    returns its exit code. A :class:`ServiceError` when it cannot start or outlives ``timeout`` (then
    it and whatever it started are killed)."""
    ident = spawn(argv, log=log, cwd=cwd, user=user)
    proc = _CHILDREN.pop(ident.pid)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        terminate(ident, sig=signal.SIGKILL, timeout=5)
        raise ServiceError(f"{argv[0]} did not finish in {timeout:g}s; see {log}") from None


def _session_members(ident: ProcessId) -> list[psutil.Process]:
    """Live processes of the session ``ident`` leads, found even after the leader itself exited.

    A session id is its leader's pid, and Linux does not reuse a pid while a session or group still
    carries it as its id, so every member found belongs to the process we started, unless the pid now
    names a *new* leader (create time differs): then our session is empty and nothing is ours.
    """
    with contextlib.suppress(psutil.Error):
        if not _ours(ident) and not _same_start(psutil.Process(ident.pid).create_time(), ident.create_time):
            return []
    members = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != os.getpid() and os.getsid(proc.pid) == ident.pid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def terminate(
    ident: ProcessId,
    *,
    sig: int = signal.SIGTERM,
    timeout: float = 15.0,
) -> bool:
    """Stop the process ``ident`` and everything in its session; returns whether it was running.

    ``sig`` first (PostgreSQL wants SIGINT for a fast shutdown), then SIGKILL for what is left after
    ``timeout`` seconds, then wait until every member is gone, so the ports and shared memory are free
    when this returns.
    """
    child = _CHILDREN.get(ident.pid) if _ours(ident) else None
    proc = ident.process()
    was_running = proc is not None or (child is not None and child.poll() is None)
    if proc is not None:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)
        if _wait_gone([proc], timeout):
            with contextlib.suppress(psutil.Error):
                proc.kill()
            _wait_gone([proc], timeout)
    elif child is not None and child.poll() is None:  # ours, though psutil cannot see it: the Popen can
        with contextlib.suppress(OSError):
            child.send_signal(sig)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout)
    kill_all(_session_members(ident), timeout=timeout)
    _reap(ident.pid)
    return was_running


def _exited(proc: psutil.Process) -> bool:
    """Gone, or a zombie: a zombie holds no port or memory, and only its parent can reap it (a sandbox
    service started by a still-running test or tool, stopped from another ``tars-run``)."""
    _reap(proc.pid)
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _wait_gone(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process of ``procs`` has exited; returns those still running at the deadline.

    Not ``psutil.wait_procs``: for a process that is not our child it waits until the pid disappears,
    which a zombie whose parent is alive never does.
    """
    with contextlib.suppress(WaitTimeout):
        wait_until(lambda: all(_exited(p) for p in procs), timeout=timeout, interval=0.02, what="processes gone")
    return [p for p in procs if not _exited(p)]


def kill_all(procs: Sequence[psutil.Process], *, sig: int = signal.SIGKILL, timeout: float = 15.0) -> None:
    """Send ``sig`` to ``procs`` (and their children), then wait until they are gone."""
    everyone: dict[int, psutil.Process] = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            for p in [proc, *proc.children(recursive=True)]:
                everyone[p.pid] = p
    for p in everyone.values():
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)
    alive = _wait_gone(list(everyone.values()), timeout)
    for p in alive:  # a softer signal was ignored
        with contextlib.suppress(psutil.Error):
            p.kill()
    _wait_gone(alive, timeout)


def marked_processes(
    marker: tuple[str, str],
    *,
    exes: Collection[str] = (),
    cwd_under: Sequence[Path | str] = (),
) -> list[psutil.Process]:
    """Live processes that are ours without a record: leftovers after a lost pid or an escaped daemon.

    A process is ours when its environment carries ``marker`` (``(NAME, value)``; give it to
    :func:`spawn` and every child inherits it), or when it runs one of ``exes`` (executable file name)
    from a folder under ``cwd_under``. The second rule is for servers that overwrite the memory the
    kernel shows as their environment with their process title (PostgreSQL, Redis); a user's shell that
    merely sits in such a folder matches neither rule and is left alone.
    """
    name, value = marker
    folders = [os.path.realpath(f) for f in cwd_under]
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(name) == value:
                found.append(proc)
            elif exes and os.path.basename(proc.exe()) in exes:
                cwd = proc.cwd()
                if any(cwd == f or cwd.startswith(f + os.sep) for f in folders):
                    found.append(proc)
    return found


def wait_ready(
    name: str,
    ident: ProcessId,
    ready: Readiness | None,
    *,
    log: Path,
    timeout: float,
) -> None:
    """Wait until ``ready`` holds; a :class:`ServiceError` with the log's tail when the process exits
    first or the deadline passes (``ready=None``: only that the process stays up briefly)."""
    reason: list[str | None] = [None]

    def check() -> bool:
        if not ident.alive():
            raise ServiceError(f"{name} exited while starting ({tail(log) or 'no output'}); see {log}")
        reason[0] = ready() if ready is not None else None
        return reason[0] is None

    if ready is None:
        time.sleep(0.2)
        check()
        return
    try:
        wait_until(check, timeout=timeout, interval=0.05, what=f"{name} ready")
    except WaitTimeout:
        raise ServiceError(f"{name} not ready after {timeout:g}s: {reason[0]}; see {log}") from None


@attrs.define
class Service:
    """A server process with a readiness check, a log and a stop: the one way to run a server.

    Use as a context manager in tests and benchmarks (stopped on exit, even on error); the sandbox
    keeps services running across invocations and stops them later by their recorded :class:`ProcessId`.
    """

    name: str
    argv: Sequence[str]
    log: Path
    ready: Readiness | None = None
    env: Mapping[str, str] = attrs.field(factory=dict)
    cwd: Path | str | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    start_timeout: float = 60.0
    stop_timeout: float = 15.0
    ident: ProcessId | None = None

    def start(self) -> Service:
        """Start the process and wait for readiness; stop it again (nothing left) if it never gets ready."""
        self.ident = spawn(self.argv, log=self.log, env=self.env, cwd=self.cwd, user=self.user, banner=self.name)
        try:
            wait_ready(self.name, self.ident, self.ready, log=self.log, timeout=self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int | None:
        return self.ident.pid if self.ident else None

    def alive(self) -> bool:
        return self.ident is not None and self.ident.alive()

    def check(self) -> str | None:
        """``None`` when the service runs and answers, else why not."""
        if not self.alive():
            return "not running"
        return self.ready() if self.ready is not None else None

    def stop(self) -> bool:
        """Stop it and its whole session; idempotent. Returns whether it was running."""
        if self.ident is None:
            return False
        was = terminate(self.ident, sig=self.stop_signal, timeout=self.stop_timeout)
        self.ident = None
        return was

    def tail(self, lines: int = 3) -> str:
        return tail(self.log, lines)

    def __enter__(self) -> Service:
        return self.start() if self.ident is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(*services: Service) -> Iterator[tuple[Service, ...]]:
    """Start ``services`` in order and stop them in reverse order, whatever happens in between."""
    with contextlib.ExitStack() as stack:
        for svc in services:
            stack.enter_context(svc)
        yield services
