"""Driving real releases on a private sandbox and injecting faults into them, as an operator would.

``Site`` is the sandbox (its servers, its generated config) plus one ledger per plugin; ``Run`` is a
``tars-run`` in flight whose stderr is read line by line so a fault can land in a chosen phase; ``Tally``
keeps every injected fault with the answer it got, for the figures the suite prints at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import psutil
import yaml

TARS_RUN = str(Path(sys.executable).with_name("tars-run"))
SEED = int(os.environ.get("TARS_FAULTS_SEED", "18"))


@attrs.define
class Outcome:
    """One injected fault and what came of it (a row of the suite's report)."""

    case: str
    plugin: str
    kind: str  # kill, interrupt, pause-server, kill-server, race, bad-value
    where: str  # the phase, server or key it hit
    exit_code: int | None
    contract: bool  # the answer the contract gives that fault (exit code, one line, target consistent)
    recovered: bool  # the next ordinary run(s) left the target consistent with no hand edit
    detail: str = ""
    seconds: float = 0.0


class Tally:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def add(self, outcome: Outcome) -> Outcome:
        self.outcomes.append(outcome)
        return outcome

    def figures(self) -> dict[str, Any]:
        def count(kinds: set[str] | None = None) -> dict[str, int]:
            rows = [o for o in self.outcomes if kinds is None or o.kind in kinds]
            return {
                "injected": len(rows),
                "handled_as_contracted": sum(o.contract for o in rows),
                "recovered_without_manual_action": sum(o.recovered for o in rows),
            }

        by_plugin = {p: count() for p in sorted({o.plugin for o in self.outcomes})}
        for plugin in by_plugin:
            rows = [o for o in self.outcomes if o.plugin == plugin]
            by_plugin[plugin] = {
                "injected": len(rows),
                "handled_as_contracted": sum(o.contract for o in rows),
                "recovered_without_manual_action": sum(o.recovered for o in rows),
            }
        return {
            "seed": SEED,
            "all": count(),
            "runtime_faults": count({"kill", "interrupt", "pause-server", "kill-server", "race"}),
            "bad_values": count({"bad-value"}),
            "by_plugin": by_plugin,
            "failures": [attrs.asdict(o) for o in self.outcomes if not (o.contract and o.recovered)],
        }


class Run:
    """A ``tars-run`` in the background; stderr lines are kept with the time they arrived."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self.out = ""
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._out: list[str] = []
        self._out_reader = threading.Thread(target=lambda: self._out.extend(self.proc.stdout or []), daemon=True)
        self._out_reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout: float) -> float | None:
        """When a line matching ``pattern`` arrived (waiting for it); ``None`` if the run ended first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, line in self.lines:
                    if rx.search(line):
                        return at
                if self.proc.poll() is not None and not self._reader.is_alive():
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))

    def signal(self, sig: int) -> bool:
        """Send ``sig``; whether the run was still alive to receive it."""
        if self.proc.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
            return True
        return False

    def finish(self, timeout: float = 900) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        self._out_reader.join(10)
        self.out = "".join(self._out)
        return int(self.proc.returncode)

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)


def verdict_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tars-run:")]


def one_clear_line(stderr: str) -> str | None:
    """Why the output is not one clear final line without a traceback (``None``: it is)."""
    if "Traceback" in stderr:
        return "a traceback was printed"
    lines = verdict_lines(stderr)
    if len(lines) != 1:
        return f"{len(lines)} 'tars-run:' lines instead of one"
    return None


@attrs.define
class Site:
    """The private sandbox the suite releases on."""

    root: Path
    base: dict[str, Any]
    rng: random.Random = attrs.field(factory=lambda: random.Random(SEED))

    @property
    def targets(self) -> dict[str, Any]:
        return dict(self.base["targets"])

    def ledger(self, plugin: str) -> Path:
        return self.root / f"ledger-{plugin}.db"

    def config(self, plugin: str, section: dict[str, Any], *, name: str | None = None) -> Path:
        doc = json.loads(json.dumps(self.base))
        doc["release"].update({"bake_time": 0, "timeout_grace": 30, "rollback_retry_delay": 1.0})
        doc["plugins"].setdefault(plugin, {})
        doc["plugins"][plugin] = {**(doc["plugins"][plugin] or {}), **section}
        doc["state"] = {"url": f"sqlite:///{self.ledger(plugin)}"}
        path = self.root / f"{name or plugin}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def argv(self, plugin: str, config: Path, command: str) -> list[str]:
        return [TARS_RUN, "--config", str(config), "--plugins", plugin, command]

    def run(self, plugin: str, config: Path, command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(plugin, config, command), cwd=self.root, capture_output=True, text=True, timeout=timeout
        )

    def start(self, plugin: str, config: Path, command: str) -> Run:
        return Run(self.argv(plugin, config, command), self.root)

    def sandbox(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TARS_RUN, "sandbox", action], cwd=self.root, capture_output=True, text=True, timeout=600)

    def service_pid(self, name: str) -> int:
        state = json.loads((self.root / ".tars" / "sandbox" / "state.json").read_text())
        pid = next(s["pid"] for s in state["services"] if s["name"] == name)
        assert pid, f"sandbox service {name} is not running"
        return int(pid)

    def running_rows(self, plugin: str) -> int:
        path = self.ledger(plugin)
        if not path.exists():
            return 0
        with contextlib.closing(sqlite3.connect(path)) as db:
            return int(db.execute("SELECT count(*) FROM tars_phases WHERE outcome = 'running'").fetchone()[0])

    def orphans(self) -> list[str]:
        """Processes a run left behind: a tars-run still alive in the site, or a soak of TARS-1005."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error, OSError):
                cmd = " ".join(proc.info["cmdline"] or [])
                if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if "tars-run" in cmd and proc.cwd() == str(self.root) and "sandbox" not in cmd:
                    found.append(f"tars-run pid {proc.pid}: {cmd[:80]}")
                elif "tars_1005_ppo.soak" in cmd and str(self.root) in cmd:  # this site's, not another run's
                    found.append(f"soak pid {proc.pid}")
        return found


def pause(pid: int, seconds: float) -> threading.Timer:
    """SIGSTOP ``pid`` now and SIGCONT it ``seconds`` later (a server that hangs, then comes back)."""
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(seconds, lambda: _cont(pid))
    timer.start()
    return timer


def _cont(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
