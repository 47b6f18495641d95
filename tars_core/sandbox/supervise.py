"""The recorded services on the shared supervisor (:mod:`tars_core.processes`): check, start, stop, sweep.

Sandbox services must outlive the ``tars-run`` that started them, so they are started with
:func:`~tars_core.processes.spawn` (own session, no finaliser) and found again later through the
:class:`~tars_core.processes.ProcessId` recorded in ``state.json``. Every process also carries
``TARS_SANDBOX_DIR`` in its environment, so what escaped its session or lost its record is still found
(:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from tars_core.errors import SandboxError, ServiceError
from tars_core.processes import (
    ProcessId,
    Readiness,
    http_ready,
    kill_all,
    marked_processes,
    port_free,
    redis_ready,
    spawn,
    tcp_ready,
    terminate,
    wait_ready,
)
from tars_core.sandbox.recipes import pg_ready
from tars_core.sandbox.state import Paths, ServiceRecord, now, show

log = logging.getLogger("tars.sandbox")

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
BUSY_TIMEOUT = 10.0  # a running service that does not answer yet may still be starting
MARK_ENV = "TARS_SANDBOX_DIR"
SERVER_EXES = frozenset({"postgres", "redis-server", "redis-check-rdb", "prometheus"})


def ident(rec: ServiceRecord) -> ProcessId | None:
    if rec.pid is None or rec.create_time is None:
        return None
    return ProcessId(rec.pid, rec.create_time)


def alive(rec: ServiceRecord) -> bool:
    """Is the recorded process still running *and* still the one we started (not a recycled pid)?"""
    pid = ident(rec)
    return pid is not None and pid.alive()


def readiness(rec: ServiceRecord, bindir: str) -> Readiness | None:
    """The check behind a recorded readiness rule (``ServiceSpec.ready`` documents the plugins' ones)."""
    kind, port = rec.ready, rec.port
    if kind is None:
        return None
    if port is None:
        return lambda: f"readiness {kind!r} needs a port"
    if kind == "tcp":
        return tcp_ready(port)
    if kind == "redis":
        return redis_ready(port)
    if kind == "pg":
        return pg_ready(bindir, port)
    if kind.startswith("http:"):
        return http_ready(f"http://127.0.0.1:{port}{kind[5:] or '/'}")
    return lambda: f"unknown readiness rule {kind!r}"


def check(rec: ServiceRecord, bindir: str) -> str | None:
    """None when ``rec`` runs and answers as its readiness rule says, else a short reason."""
    if not alive(rec):
        return "not running" if rec.pid is None else f"process {rec.pid} is gone"
    ready = readiness(rec, bindir)
    return ready() if ready is not None else None


def check_all(recs: Sequence[ServiceRecord], bindir: str) -> list[str | None]:
    """:func:`check` for every service at once: a healthy sandbox answers in the time of its slowest check."""
    if len(recs) <= 1:
        return [check(r, bindir) for r in recs]
    with ThreadPoolExecutor(max_workers=len(recs)) as pool:
        return list(pool.map(lambda r: check(r, bindir), recs))


def stop(rec: ServiceRecord) -> bool:
    """Stop exactly the recorded process and its session (leftovers of a dead one too); was it running?"""
    pid = ident(rec)
    was_running = pid is not None and terminate(pid, sig=rec.stop_signal, timeout=STOP_TIMEOUT)
    rec.pid = rec.create_time = None
    rec.started_at = None
    return was_running


def _start(rec: ServiceRecord, paths: Paths) -> None:
    if rec.port is not None and not port_free(rec.port):
        raise SandboxError(
            f"port {rec.port} of sandbox service {rec.name} is taken by another process; "
            "stop it or run `tars-run sandbox reset` to pick new ports"
        )
    env = {**rec.env, MARK_ENV: str(paths.dir)}
    try:
        pid = spawn(rec.argv, log=Path(rec.log), env=env, cwd=rec.cwd, user=rec.user, banner=f"sandbox {rec.name}")
    except ServiceError as exc:
        raise SandboxError(f"sandbox service {rec.name}: {exc}") from None
    rec.pid, rec.create_time, rec.started_at = pid.pid, pid.create_time, now()


def _await(rec: ServiceRecord, bindir: str, timeout: float) -> None:
    pid = ident(rec)
    assert pid is not None
    try:
        wait_ready(f"sandbox service {rec.name}", pid, readiness(rec, bindir), log=Path(rec.log), timeout=timeout)
    except ServiceError as exc:
        raise SandboxError(str(exc).replace(rec.log, show(rec.log))) from None


def orphans(rec: ServiceRecord, paths: Paths, keep: Collection[int]) -> list[psutil.Process]:
    """Processes a dead service left outside its session: same server binary, running from its folder.

    PostgreSQL backends call setsid(), so the postmaster's session does not hold them; one busy in a
    query (a parallel worker, a CPU-bound scan) does not notice its postmaster was SIGKILLed and keeps
    the cluster's shared memory, and the new postmaster refused to start ("pre-existing shared memory
    block is still in use") until it ended. ``keep``: pids of the recorded services still running.
    """
    if rec.cwd is None:
        return []
    exe = os.path.basename(rec.argv[0])
    found = marked_processes((MARK_ENV, str(paths.dir)), exes={exe}, cwd_under=[rec.cwd])
    out = []
    for proc in found:
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid not in keep and os.path.basename(proc.exe()) == exe:
                out.append(proc)
    return out


def revive(recs: Sequence[ServiceRecord], paths: Paths, bindir: str) -> list[str]:
    """Start every service that is not running (or not answering); returns the names started.

    All are started before any is waited for, so plugin services come up side by side.
    """
    todo: list[ServiceRecord] = []
    live = {r.pid for r in recs if r.pid is not None and alive(r)}
    for rec, reason in zip(recs, check_all(recs, bindir), strict=True):
        if reason is None:
            continue
        if alive(rec):
            try:  # another tars-run may have just started it
                _await(rec, bindir, BUSY_TIMEOUT)
                continue
            except SandboxError:
                log.warning("%s (pid %s) is not answering; restarting it", rec.name, rec.pid)
        stop(rec)  # a dead leader's session may still hold backends, ports and shared memory
        leftovers = orphans(rec, paths, live)
        if leftovers:
            log.warning("%s: stopping %d process(es) its dead server left behind", rec.name, len(leftovers))
            kill_all(leftovers, timeout=STOP_TIMEOUT)
        _start(rec, paths)
        todo.append(rec)
    deadline = time.monotonic() + START_TIMEOUT
    for rec in todo:
        _await(rec, bindir, max(deadline - time.monotonic(), 1.0))
    return [r.name for r in todo]


def sweep(paths: Paths) -> list[psutil.Process]:
    """Stop what is left of this sandbox outside the recorded services (escaped daemons, lost state).

    PostgreSQL and Redis hide the mark (they overwrite their environment with the process title), so
    the server binaries running from a folder of this sandbox count too.
    """
    folders = [paths.dir]
    if paths.pg_link.is_symlink():
        folders.append(paths.pg_link.resolve())
    found = marked_processes((MARK_ENV, str(paths.dir)), exes=SERVER_EXES, cwd_under=folders)
    kill_all(found, sig=signal.SIGTERM, timeout=5)
    return found


def clear_leftovers(paths: Paths) -> None:
    """Before building anew: stop whatever still runs from an old sandbox here, then remove the folder.

    The postmaster is also looked up through ``postmaster.pid`` for a cluster started without the mark.
    """
    sweep(paths)
    with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
        lines = (paths.pg_link / "data" / "postmaster.pid").read_text().splitlines()
        pid, datadir = ProcessId.of(int(lines[0])), lines[1]
        proc = pid.process() if pid else None
        if pid is not None and proc is not None and datadir in proc.cmdline():
            terminate(pid, sig=signal.SIGINT, timeout=STOP_TIMEOUT)
    paths.remove()
