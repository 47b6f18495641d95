"""Faults injected into real releases of every hotfix plugin on the sandbox, each judged on the target.

Per plugin: SIGKILL and SIGINT of ``tars-run`` at a random moment of apply, verify and rollback; its
servers paused (SIGSTOP) or killed mid-apply (and brought back by ``tars-run sandbox up``, as an operator
would); two applies on one ledger; and the bad-value matrix generated from its config class. The
contract's answer for each (README, "Exit codes"):

* SIGKILL: no exit code of its own; the next ordinary run resolves it (exit 0, target consistent, no
  ``running`` row, nothing left running);
* SIGINT: exit 130, one line, no traceback, what the run applied rolled back (a rollback completes);
* a server that pauses or restarts: 0 when the fix's retries ride it out (the target then applied), 2
  with one line naming the target when it stays away; never 1 or 4;
* two runs: one 0, the other 3 naming the holder's pid;
* a bad value: 2 before anything runs (one line naming the key, no ledger, target untouched).

After each runtime fault the next ordinary ``apply`` must succeed with the target applied, and
``rollback`` must bring it back to what it was: "recovered without manual action".
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from faults.harness import Outcome, Site, one_clear_line, pause
from faults.judges import Judge, judges
from tars_core.plugins import PluginHost
from tars_core.testing import bad_config_values

QUICK = __import__("os").environ.get("TARS_FAULTS") == "quick"
JUDGES = judges()
PHASES = ("apply", "verify", "rollback")
MOMENTS = 1 if QUICK else 2
PAUSE_S = 8.0 if QUICK else 20.0
QUICK_PLUGINS = ("tars-1001-ws", "tars-1004-db")

pytestmark = pytest.mark.timeout(1800)


def _cases() -> list[Any]:
    cases = []
    for plugin, judge in JUDGES.items():
        if QUICK and plugin not in QUICK_PLUGINS:
            continue
        for kind in ("kill", "interrupt"):
            for phase in ("apply",) if QUICK else PHASES:
                for n in range(MOMENTS):
                    cases.append(pytest.param(plugin, kind, phase, id=f"{plugin}-{kind}-{phase}-{n}"))
        if not QUICK:
            for server in judge.servers:
                cases.append(pytest.param(plugin, "pause-server", server, id=f"{plugin}-pause-{server}"))
                cases.append(pytest.param(plugin, "kill-server", server, id=f"{plugin}-kill-{server}"))
        cases.append(pytest.param(plugin, "race", "apply", id=f"{plugin}-race"))
    return cases


# -- helpers ----------------------------------------------------------------------------------------------

_DURATIONS: dict[str, dict[str, float]] = {}


def _phase_seconds(site: Site, judge: Judge) -> dict[str, float]:
    """How long apply, verify and rollback take here (one clean release, timed by the ledger): the
    window a random moment is drawn from. The same release checks the plugin works at all on the site."""
    if judge.plugin in _DURATIONS:
        return _DURATIONS[judge.plugin]
    import sqlite3
    from datetime import datetime

    cfg = site.config(judge.plugin, judge.config)
    _to_baseline(site, judge)
    for command in ("apply", "rollback"):
        res = site.run(judge.plugin, cfg, command)
        assert res.returncode == 0, f"{judge.plugin} {command} fails on the sandbox without any fault:\n{res.stderr}"
    with sqlite3.connect(site.ledger(judge.plugin)) as db:
        rows = db.execute(
            "SELECT phase, started_at, ended_at FROM tars_phases WHERE outcome = 'ok' ORDER BY id DESC"
        ).fetchall()
    seconds: dict[str, float] = {}
    for phase, start, end in rows:
        if phase not in seconds:
            seconds[phase] = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    _DURATIONS[judge.plugin] = seconds
    return seconds


def _to_baseline(site: Site, judge: Judge) -> None:
    """Every case starts from the target as it was before the release."""
    if not judge.baseline_files and hasattr(judge, "_files"):
        judge.capture(site)
    if judge.problems(site, "baseline"):
        res = site.run(judge.plugin, site.config(judge.plugin, judge.config), "rollback")
        assert res.returncode == 0, res.stderr
        assert judge.problems(site, "baseline") == []


def _recover(site: Site, judge: Judge, *, apply_first: bool = True) -> list[str]:
    """The next ordinary runs: apply (target applied), then rollback (target as before); what went wrong."""
    cfg = site.config(judge.plugin, judge.config)
    problems: list[str] = []
    if apply_first:
        res = site.run(judge.plugin, cfg, "apply")
        if res.returncode != 0:
            return [f"the next apply exited {res.returncode}: {res.stderr.strip().splitlines()[-1:]}"]
        problems += [f"after the next apply: {p}" for p in judge.problems(site, "applied")]
    res = site.run(judge.plugin, cfg, "rollback")
    if res.returncode != 0:
        return [*problems, f"the next rollback exited {res.returncode}: {res.stderr.strip().splitlines()[-1:]}"]
    problems += [f"after the next rollback: {p}" for p in judge.problems(site, "baseline")]
    if rows := site.running_rows(judge.plugin):
        problems.append(f"{rows} phase row(s) still 'running'")
    problems += site.orphans()
    return problems


def _record(tally: Any, outcome: Outcome) -> None:
    tally.add(outcome)
    assert outcome.contract, f"{outcome.case}: not the contract's answer (exit {outcome.exit_code}): {outcome.detail}"
    assert outcome.recovered, f"{outcome.case}: not recovered by the next ordinary run: {outcome.detail}"


# -- runtime faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("plugin", "kind", "where"), _cases())
def test_fault(site: Site, tally: Any, plugin: str, kind: str, where: str, request: pytest.FixtureRequest) -> None:
    judge = JUDGES[plugin]
    seconds = _phase_seconds(site, judge)
    _to_baseline(site, judge)
    cfg = site.config(plugin, judge.config)
    case = request.node.callspec.id
    started = time.monotonic()
    if kind == "race":
        outcome = _race(site, judge, cfg, case)
    elif kind in ("kill", "interrupt"):
        outcome = _signal(site, judge, cfg, case, kind, where, seconds)
    else:
        outcome = _server(site, judge, cfg, case, kind, where, seconds)
    outcome.seconds = time.monotonic() - started
    _record(tally, outcome)


def _signal(site: Site, judge: Judge, cfg: Any, case: str, kind: str, phase: str, seconds: dict[str, float]) -> Outcome:
    """SIGKILL or SIGINT of tars-run at a random moment of ``phase``."""
    command = "rollback" if phase == "rollback" else "apply"
    sig = signal.SIGKILL if kind == "kill" else signal.SIGINT
    window = max(seconds.get(phase, 1.0), 0.2)
    fraction = site.rng.uniform(0.05, 0.95)
    for _ in range(4):  # a run that ends before its moment came is not a fault: draw an earlier moment
        if command == "rollback":
            setup = site.run(judge.plugin, cfg, "apply")
            assert setup.returncode == 0, setup.stderr
        run = site.start(judge.plugin, cfg, command)
        at = run.wait_line(rf"{judge.plugin}: {phase} \.\.\.$", timeout=600)
        if at is not None:
            time.sleep(max(0.0, at + fraction * window - time.monotonic()))
        sent = at is not None and run.signal(sig)
        code = run.finish()
        if sent and (kind == "interrupt" or code == -signal.SIGKILL):
            break
        fraction /= 3
        _to_baseline(site, judge)
    else:
        pytest.fail(f"{case}: the run always ended before the fault could land")
    where = f"{phase} at {fraction:.0%} of {window:.1f}s"
    if kind == "kill":
        problems = _recover(site, judge)
        return Outcome(case, judge.plugin, kind, where, code, not problems, not problems, "; ".join(problems))
    contract: list[str] = []
    late = code == 0  # the run had finished its last phase when the interrupt was handled
    if code not in (130, 0):
        contract.append(f"exit {code}, want 130")
    if why := one_clear_line(run.stderr):
        contract.append(why)
    want = "applied" if late and command == "apply" else "baseline"
    contract += [f"right after: {p}" for p in judge.problems(site, want)]
    if rows := site.running_rows(judge.plugin):
        contract.append(f"{rows} 'running' row(s) left")
    contract += site.orphans()
    recovered = _recover(site, judge)
    detail = "; ".join(contract + recovered) + (" (late: the run had finished)" if late else "")
    return Outcome(case, judge.plugin, kind, where, code, not contract, not recovered, detail)


def _server(
    site: Site, judge: Judge, cfg: Any, case: str, kind: str, server: str, seconds: dict[str, float]
) -> Outcome:
    """The plugin's server paused, or killed and brought back by ``sandbox up``, at a moment of apply."""
    import os

    window = max(seconds.get("apply", 1.0), 0.2)
    fraction = site.rng.uniform(0.05, 0.8)
    run = site.start(judge.plugin, cfg, "apply")
    at = run.wait_line(rf"{judge.plugin}: apply \.\.\.$", timeout=600)
    assert at is not None, run.stderr
    time.sleep(max(0.0, at + fraction * window - time.monotonic()))
    pid = site.service_pid(server)
    restarted: list[Any] = []
    if kind == "pause-server":
        timer = pause(pid, PAUSE_S)
    else:
        os.kill(pid, signal.SIGKILL)
        timer = threading.Timer(3.0, lambda: restarted.append(site.sandbox("up")))
        timer.start()
    code = run.finish()
    timer.join()
    if kind == "kill-server" and (not restarted or restarted[0].returncode != 0):
        up = site.sandbox("up")
        assert up.returncode == 0, up.stderr
    where = f"{server} at {fraction:.0%} of apply"
    contract: list[str] = []
    if code not in (0, 2):
        contract.append(f"exit {code}: want 0 (ridden out by retries) or 2 (target unreachable)")
    if why := one_clear_line(run.stderr):
        contract.append(why)
    if code == 0 and kind == "pause-server":
        contract += [f"exit 0 but: {p}" for p in judge.problems(site, "applied")]
    contract += site.orphans()
    recovered = _recover(site, judge)
    return Outcome(case, judge.plugin, kind, where, code, not contract, not recovered, "; ".join(contract + recovered))


def _race(site: Site, judge: Judge, cfg: Any, case: str) -> Outcome:
    """Two applies started together on one ledger: one runs, the other exits 3 naming it."""
    first = site.start(judge.plugin, cfg, "apply")
    second = site.start(judge.plugin, cfg, "apply")
    codes = {first.proc.pid: first.finish(), second.proc.pid: second.finish()}
    contract: list[str] = []
    if sorted(codes.values()) == [0, 3]:
        loser = first if codes[first.proc.pid] == 3 else second
        winner = second if loser is first else first
        if f"pid {winner.proc.pid} " not in loser.stderr:
            contract.append(f"the refused run does not name the holder (pid {winner.proc.pid}): {loser.stderr[-300:]}")
    elif sorted(codes.values()) != [0, 0]:  # [0, 0]: the second started after the first had finished
        contract.append(f"exit codes {sorted(codes.values())}, want 0 and 3")
    contract += [f"after the race: {p}" for p in judge.problems(site, "applied")]
    recovered = _recover(site, judge, apply_first=False)
    code = max(codes.values())
    return Outcome(
        case, judge.plugin, "race", "apply", code, not contract, not recovered, "; ".join(contract + recovered)
    )


# -- bad values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", list(JUDGES))
def test_bad_values(site: Site, tally: Any, plugin: str) -> None:
    """Every value of the matrix generated from the plugin's config class, through the real tars-run."""
    import subprocess

    judge = JUDGES[plugin]
    _to_baseline(site, judge)
    host = PluginHost(trace=False)
    host.load_entry_points()
    info = host.plugins[plugin].info
    assert info.config is not None
    cases = bad_config_values(info.config)
    if QUICK:
        cases = site.rng.sample(cases, min(5, len(cases)))
    failures = []
    for case in cases:
        cfg = site.config(plugin, dict(case.section), name="bad-value")
        ledger = site.root / "bad-value.db"
        text = cfg.read_text().replace(str(site.ledger(plugin)), str(ledger))
        cfg.write_text(text)
        res = subprocess.run(
            site.argv(plugin, cfg, "apply"), cwd=site.root, capture_output=True, text=True, timeout=120
        )
        problems = []
        if res.returncode != 2:
            problems.append(f"exit {res.returncode}, want 2")
        if why := one_clear_line(res.stderr):
            problems.append(why)
        elif not all(word in res.stderr for word in case.mention):
            problems.append(f"the line does not name {case.mention}: {res.stderr.strip()}")
        if ledger.exists():
            problems.append("a ledger was created: something ran")
            ledger.unlink()
        outcome = Outcome(f"{plugin}-bad-{case}", plugin, "bad-value", case.path, res.returncode, not problems, True)
        outcome.detail = "; ".join(problems)
        tally.add(outcome)
        if problems:
            failures.append(f"{case}: {'; '.join(problems)}")
    untouched = judge.problems(site, "baseline")
    assert not untouched, f"the target changed under bad values: {untouched}"
    assert not failures, "\n".join(failures)
