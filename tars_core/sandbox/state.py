"""What the sandbox records on disk: ``state.json``, the folder layout and the lock around changes.

``state.json`` is the sandbox's memory between ``tars-run`` invocations: every service's argv, port,
readiness rule and the identity of its running process (pid + create time, see
:class:`tars_core.processes.ProcessId`), so a later invocation reuses what runs, restarts what died and
``down`` stops exactly what was started.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import cattrs
import psutil

from tars_core.errors import SandboxError
from tars_core.state import atomic_write_text

#: 2: a process is identified by psutil's create time (1 recorded /proc start ticks).
STATE_VERSION = 2
CORE = ("postgres", "redis", "prometheus")


@attrs.define
class ServiceRecord:
    """One supervised process. ``pid``/``create_time`` identify the running instance (None: not running).

    ``ready`` is the readiness rule by name (``tcp``, ``redis``, ``pg``, ``http:/path`` or None) because
    the record must survive in JSON; :mod:`tars_core.sandbox.supervise` turns it into a check.
    """

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
    create_time: float | None = None
    started_at: str | None = None


@attrs.define
class Contributed:
    """What a plugin contributed when it joined the sandbox (its hook is not called again)."""

    version: str
    scrape_targets: list[str] = attrs.field(factory=list)
    services: list[str] = attrs.field(factory=list)
    targets: dict[str, Any] = attrs.field(factory=dict)
    remote_write: list[str] = attrs.field(factory=list)
    remote_write_keep: str | None = None


@attrs.define
class State:
    created_at: str
    pg_dir: str
    bindir: str
    run_as: str | None
    targets: dict[str, Any]
    services: list[ServiceRecord]
    plugins: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    contributed: dict[str, Contributed] = attrs.field(factory=dict)
    database_ready: bool = False
    stopped: bool = False
    version: int = STATE_VERSION

    def service(self, name: str) -> ServiceRecord:
        return next(s for s in self.services if s.name == name)

    def port(self, name: str) -> int:
        port = self.service(name).port
        assert port is not None
        return port

    def core(self) -> list[ServiceRecord]:
        return [self.service(n) for n in CORE]

    def contributed_services(self) -> list[ServiceRecord]:
        return [s for s in self.services if s.name not in CORE]


_converter = cattrs.Converter()


class Paths:
    """Where each part of the sandbox below ``root`` lives; ``pg_link`` is the cluster's folder, or a
    link to it outside the project (see ``recipes.pg_home``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / ".tars" / "sandbox"
        self.lock = root / ".tars" / "sandbox.lock"
        self.state = self.dir / "state.json"
        self.config = self.dir / "tars.yaml"
        self.logs = self.dir / "logs"
        self.prometheus = self.dir / "prometheus"
        self.rules = self.prometheus / "rules"
        self.dashboards = self.dir / "grafana" / "dashboards"
        self.pg_link = self.dir / "pg"

    def plugin_dir(self, name: str) -> Path:
        return self.dir / "plugins" / name

    def remove(self) -> None:
        """Delete the sandbox folder and the cluster folder it links to outside."""
        if self.pg_link.is_symlink():
            outside = self.pg_link.resolve().parent
            self.pg_link.unlink()
            shutil.rmtree(outside, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _from_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """A format-1 state (``start_ticks``: clock ticks since boot) with psutil's create time instead.

    psutil computes a create time as boot time + start ticks / CLK_TCK, so the running services of a
    sandbox built by an older ``tars-run`` keep their identity (and their data) across the upgrade.
    """
    boot, hz = psutil.boot_time(), os.sysconf("SC_CLK_TCK")
    for svc in raw.get("services", []):
        ticks = svc.pop("start_ticks", None)
        svc["create_time"] = boot + ticks / hz if ticks is not None else None
    return {**raw, "version": STATE_VERSION}


def load_state(paths: Paths) -> State | None:
    try:
        raw = json.loads(paths.state.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SandboxError(f"sandbox state {paths.state} is unreadable ({exc}); run `tars-run sandbox reset`") from None
    if isinstance(raw, dict) and raw.get("version") == 1:
        raw = _from_v1(raw)
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
        raise SandboxError(f"sandbox state {paths.state} is from another tars version; run `tars-run sandbox reset`")
    try:
        return _converter.structure(raw, State)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError):
        raise SandboxError(f"sandbox state {paths.state} is malformed; run `tars-run sandbox reset`") from None


def save_state(paths: Paths, state: State) -> None:
    atomic_write_text(paths.state, json.dumps(_converter.unstructure(state), indent=2, default=str) + "\n")


@contextlib.contextmanager
def locked(paths: Paths) -> Iterator[None]:
    """One sandbox manager at a time per root, so two concurrent ``up`` calls cannot create two clusters."""
    paths.lock.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def show(path: Path | str) -> str:
    """``path`` relative to the working directory when it is inside it: what messages print."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)
