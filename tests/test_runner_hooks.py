"""The hook layer as ``tars-run`` drives it: hooks that outlive their timeout, observers around every call.

The slow plugin really blocks in a thread (its own sync hook, or the thread an async hook hands its work
to) and writes its target file when it wakes up; the tests read that file and the ledger afterwards.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest
from conftest import Project
from test_release import one_clear_line

pytestmark = pytest.mark.timeout(300)

SLOW = '''
"""Test plugin slow-db: apply blocks for ``sleep`` seconds in a thread, then writes target.txt."""
import asyncio
import time
from pathlib import Path

import anyio
import anyio.to_thread
import attrs

from tars_core import ApplyResult, PluginInfo, VerifyResult, hookimpl

KIND = {kind!r}


@attrs.define
class Config:
    dir: str = "."
    sleep: float = 0.0


def _event(ctx, what):
    with open(Path(ctx.config.dir) / "events.log", "a") as f:
        f.write(what + "\\n")


def _blocking_apply(ctx):
    _event(ctx, "apply started")
    time.sleep(ctx.config.sleep)
    (Path(ctx.config.dir) / "target.txt").write_text("written by apply")
    _event(ctx, "apply wrote the target")


@hookimpl
def tars_plugin_info():
    return PluginInfo(name="slow-db", title="slow", requires=("fix-a",), config=Config)


if KIND == "sync":

    @hookimpl
    def tars_apply(ctx):
        _blocking_apply(ctx)
        return ApplyResult()

elif KIND == "anyio":

    @hookimpl
    async def tars_apply(ctx):
        await anyio.to_thread.run_sync(_blocking_apply, ctx)
        return ApplyResult()

else:

    @hookimpl
    async def tars_apply(ctx):
        await asyncio.to_thread(_blocking_apply, ctx)
        return ApplyResult()


@hookimpl
def tars_verify(ctx):
    return VerifyResult(ok=(Path(ctx.config.dir) / "target.txt").exists())


@hookimpl
def tars_rollback(ctx):
    _event(ctx, "rollback")
    (Path(ctx.config.dir) / "target.txt").unlink(missing_ok=True)
    return ApplyResult()
'''

OBSERVER = '''
"""An observer: records every phase it hears of, with its own clock, in $TARS_OBSERVED."""
import json
import os
import time

from tars_core import hookimpl


def _write(record):
    with open(os.environ["TARS_OBSERVED"], "a") as f:
        f.write(json.dumps(record) + "\\n")


@hookimpl
async def tars_phase_started(plugin, phase, ctx):
    _write({"event": "started", "plugin": plugin, "phase": phase, "ctx_phase": ctx.phase, "at": time.monotonic()})


@hookimpl
def tars_phase_finished(plugin, phase, outcome, seconds, error):
    _write({"event": "finished", "plugin": plugin, "phase": phase, "outcome": outcome, "seconds": seconds,
            "error": error, "at": time.monotonic()})
'''

BOOM = """
from tars_core import hookimpl


@hookimpl
def tars_phase_started(plugin, phase, ctx):
    raise RuntimeError("observer on fire")
"""


def slow_project(project: Project, kind: str, *, sleep: float, grace: float, timeout: float | None = 0.5) -> None:
    project.dist("acme", {"fix-a": []})
    project.module("slow-db", SLOW.format(kind=kind))
    release: dict[str, object] = {"timeout_grace": grace}
    if timeout is not None:
        release["plugin_timeouts"] = {"slow-db": timeout}  # every phase
    project.config({"slow-db": {"sleep": sleep}}, release=release)


def ledger_rows(project: Project, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(project.work / ".tars" / "state.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def events(project: Project) -> list[str]:
    path = project.work / "events.log"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("kind", ["sync", "anyio", "asyncio"])
def test_rollback_waits_for_a_timed_out_apply_to_finish(project: Project, kind: str) -> None:
    slow_project(project, kind, sleep=2.0, grace=60)
    res = project.run("--format", "json", "apply")
    assert res.returncode == 1, res.stderr
    # the rollback came after the late write, so it undid it: target and ledger agree
    assert events(project) == ["apply started", "apply wrote the target", "rollback"]
    assert not (project.work / "target.txt").exists()
    doc = json.loads(res.stdout)
    step = next(s for s in doc["steps"] if s["plugin"] == "slow-db" and s["phase"] == "apply")
    assert step["outcome"] == "failed" and "timed out after 0.5s" in step["error"]
    assert doc["rolled_back"] == ["slow-db", "fix-a"]


@pytest.mark.parametrize("kind", ["sync", "anyio", "asyncio"])
def test_apply_that_will_not_stop_is_unknown_and_nothing_is_rolled_back(project: Project, kind: str) -> None:
    slow_project(project, kind, sleep=600, grace=0.5)
    res = project.run("--format", "json", "apply")
    assert res.returncode == 4, res.stderr
    line = one_clear_line(res.stderr)
    assert (
        "slow-db: apply did not stop within 0.5s after its 0.5s timeout; state unknown, not rolled back: "
        "check the target, then run tars-run rollback"
    ) in line
    assert "fix-a" in line  # named as left as it is
    assert events(project) == ["apply started"]
    assert project.calls() == ["apply fix-a", "verify fix-a"]  # fix-a was not rolled back either
    assert ledger_rows(project, "SELECT plugin, phase, outcome FROM tars_phases WHERE plugin='slow-db'") == [
        ("slow-db", "apply", "unknown")
    ]
    states = dict(ledger_rows(project, "SELECT plugin, state FROM tars_state"))
    assert states == {"fix-a": "applied", "slow-db": "unknown"}
    assert json.loads(res.stdout)["rolled_back"] == []
    # what the line tells the user to do works: the lock is free and rollback undoes both in order
    project.config({"slow-db": {"sleep": 0}})
    res = project.run("--format", "json", "rollback")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["rolled_back"] == ["slow-db", "fix-a"]


def test_ctrl_c_waits_for_a_sync_apply_before_rolling_back(project: Project) -> None:
    slow_project(project, "sync", sleep=3.0, grace=60, timeout=None)
    with project.start("--format", "json", "apply") as run:
        run.wait_for(project.work / "events.log")
        assert run.stop(signal.SIGINT) == 130, run.err
    out = run.out
    assert events(project) == ["apply started", "apply wrote the target", "rollback"]
    assert not (project.work / "target.txt").exists()
    assert json.loads(out)["rolled_back"] == ["slow-db", "fix-a"]


def test_observers_see_every_awaited_phase_and_cannot_fail_the_release(three: Project, tmp_path: Path) -> None:
    three.module("phase-recorder", OBSERVER, release=False)
    three.module("phase-boom", BOOM, release=False)
    three.config({"fix-a": {"sleep_apply": 0.3}, "fix-c": {"fail_verify": True}})
    observed = tmp_path / "observed.jsonl"
    res = three.run("apply", env=three.env(TARS_OBSERVED=str(observed)))
    assert res.returncode == 1, res.stderr
    boom = [line for line in res.stderr.splitlines() if "observer on fire" in line]
    assert len(boom) == 9 and "phase-boom" in boom[0]  # one line per phase, the release went on
    records = [json.loads(line) for line in observed.read_text().splitlines()]
    called = [tuple(c.split()) for c in three.calls()]  # (phase, plugin), logged by each hook as it starts
    assert len(called) == 9  # apply+verify a, b, c; rollback c, b, a
    assert [r["event"] for r in records] == ["started", "finished"] * len(called)
    assert [(r["phase"], r["plugin"]) for r in records[::2]] == called
    assert [(r["phase"], r["plugin"]) for r in records[1::2]] == called
    started, finished = records[0], records[1]
    assert (started["plugin"], started["phase"], started["ctx_phase"]) == ("fix-a", "apply", "apply")
    # the async apply was awaited between the two: both clocks saw its sleep
    assert finished["outcome"] == "ok" and finished["error"] is None
    assert finished["seconds"] >= 0.3 and finished["at"] - started["at"] >= finished["seconds"]
    verify_c = next(r for r in records if r["event"] == "finished" and (r["plugin"], r["phase"]) == ("fix-c", "verify"))
    assert verify_c["outcome"] == "failed" and "verify forced to fail" in verify_c["error"]


def test_ctrl_c_on_an_apply_that_will_not_stop_is_unknown(project: Project) -> None:
    slow_project(project, "sync", sleep=600, grace=0.5, timeout=None)
    with project.start("apply") as run:
        run.wait_for(project.work / "events.log")
        assert run.stop(signal.SIGINT) == 4, run.err
    err = run.err
    assert "slow-db: apply did not stop within 0.5s after it was interrupted; state unknown" in one_clear_line(err)
    assert events(project) == ["apply started"]
    assert dict(ledger_rows(project, "SELECT plugin, state FROM tars_state")) == {
        "fix-a": "applied",
        "slow-db": "unknown",
    }
