"""Release gates through the real ``tars-run``: throwaway monitor plugins (``kind="monitor"``) judge the
release before it starts (``tars_preflight``) and each fix during its bake time (``tars_observe``).

Each monitor logs its calls to calls.log (next to the fixes' own lines) and every gate call, with its
start and end on the wall clock, to gates.jsonl; the tests read those, the ledger and the reports.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from conftest import Project
from test_release import one_clear_line
from test_runner_hooks import ledger_rows

from tars_core.ledger import SCHEMA_VERSION
from tars_core.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

MONITOR = '''
"""Test monitor {name}: judges as its config says; every gate call goes to gates.jsonl with its times."""
import json
import time
from pathlib import Path

import anyio
import attrs

from tars_core import ApplyResult, Evidence, Judgement, PluginInfo, VerifyResult, hookimpl

NAME = {name!r}


@attrs.define
class Config:
    dir: str = "."
    preflight: str = "pass"  # a verdict, "raise" or "none" (abstain)
    observe: dict[str, str] = attrs.Factory(dict)  # fix -> a verdict, "raise" or "none"; default pass


def _log(ctx, what):
    with open(Path(ctx.config.dir) / "calls.log", "a") as f:
        f.write(f"{{what}} {{NAME}}\\n")


def _gate(ctx, record):
    with open(Path(ctx.config.dir) / "gates.jsonl", "a") as f:
        f.write(json.dumps({{"monitor": NAME, **record}}) + "\\n")


def _judge(verdict, what):
    if verdict == "raise":
        raise RuntimeError(f"{{NAME}} cannot reach prometheus")
    if verdict == "none":
        return None
    evidence = (Evidence("sum(rate(tars_errors_total[5m]))", 0.25, "2026-01-01T00:00:00Z", "burn 20x"),)
    return Judgement(verdict, reasons=(f"{{NAME}} says {{verdict}} for {{what}}",), evidence=evidence, score=0.5)


@hookimpl
def tars_plugin_info():
    return PluginInfo(name=NAME, title="test monitor " + NAME, kind="monitor", config=Config)


@hookimpl
def tars_apply(ctx):
    _log(ctx, "apply")
    (Path(ctx.config.dir) / f"{{NAME}}.applied").write_text("ok")
    return ApplyResult()


@hookimpl
def tars_verify(ctx):
    _log(ctx, "verify")
    return VerifyResult(ok=(Path(ctx.config.dir) / f"{{NAME}}.applied").exists())


@hookimpl
def tars_rollback(ctx):
    _log(ctx, "rollback")
    (Path(ctx.config.dir) / f"{{NAME}}.applied").unlink(missing_ok=True)
    return ApplyResult()


@hookimpl
async def tars_preflight(ctx, plan):
    _log(ctx, "preflight")
    _gate(ctx, {{"kind": "preflight", "plugins": [p.name for p in plan.plugins], "reliability": plan.reliability}})
    return _judge(ctx.config.preflight, plan.release)


@hookimpl
async def tars_observe(ctx, change):
    start = time.time()
    _log(ctx, f"observe[{{change.plugin}}]")
    await anyio.sleep(change.bake_seconds)
    _gate(ctx, {{"kind": "observe", "plugin": change.plugin, "start": start, "end": time.time(),
                "change": attrs.asdict(change)}})
    return _judge(ctx.config.observe.get(change.plugin, "pass"), change.plugin)
'''


def monitors(project: Project, *names: str) -> None:
    for name in names:
        project.module(name, MONITOR.format(name=name))


def gates(project: Project) -> list[dict[str, Any]]:
    path = project.work / "gates.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def gated(three: Project) -> Project:
    """fix-a <- fix-b <- fix-c watched by the monitor mon-a."""
    monitors(three, "mon-a")
    return three


def test_preflight_fail_stops_before_any_hotfix_applies(gated: Project) -> None:
    gated.config({"mon-a": {"preflight": "fail"}}, release={"reliability": True, "bake_time": 0.1})
    res = gated.run("--format", "json", "apply")
    assert res.returncode == 1, res.stderr
    assert gated.calls() == ["apply mon-a", "verify mon-a", "preflight mon-a"]  # no hotfix apply, no rollback
    line = one_clear_line(res.stderr)
    assert "preflight: monitor mon-a judged it fail: mon-a says fail for v1.0.1" in line
    assert "no hotfix applied, nothing rolled back" in line
    doc = json.loads(res.stdout)
    assert doc["rolled_back"] == []
    [judged] = doc["judgements"]
    assert (judged["monitor"], judged["kind"], judged["plugin"], judged["verdict"]) == (
        "mon-a",
        "preflight",
        None,
        "fail",
    )
    # the plan the monitor saw: every selected plugin in apply order, and the reliability mark
    [seen] = gates(gated)
    assert seen["plugins"] == ["mon-a", "fix-a", "fix-b", "fix-c"] and seen["reliability"] is True
    assert ledger_rows(gated, "SELECT plugin, state FROM tars_state") == [("mon-a", "applied")]


@pytest.mark.parametrize("on_inconclusive", ["fail", "pass"])
@pytest.mark.parametrize("verdict", ["inconclusive", "raise"])
def test_inconclusive_or_raising_monitor_follows_on_inconclusive(
    gated: Project, verdict: str, on_inconclusive: str
) -> None:
    gated.config(
        {"mon-a": {"observe": {"fix-b": verdict}}}, release={"bake_time": 0.1, "on_inconclusive": on_inconclusive}
    )
    res = gated.run("--format", "json", "apply")
    reason = (
        "RuntimeError: mon-a cannot reach prometheus" if verdict == "raise" else "mon-a says inconclusive for fix-b"
    )
    [judged] = [j for j in json.loads(res.stdout)["judgements"] if j["plugin"] == "fix-b"]
    assert judged["verdict"] == "inconclusive" and judged["reasons"] == [reason]
    if on_inconclusive == "fail":
        assert res.returncode == 1, res.stderr
        assert f"fix-b failed (monitor mon-a was inconclusive: {reason})" in one_clear_line(res.stderr)
        assert json.loads(res.stdout)["rolled_back"] == ["fix-b", "fix-a", "mon-a"]
    else:
        assert res.returncode == 0, res.stderr
        assert f"monitor mon-a was inconclusive: {reason}; going on (release.on_inconclusive: pass)" in res.stderr
        assert gated.applied() == {"mon-a", "fix-a", "fix-b", "fix-c"}


def test_observe_fail_rolls_back_the_observed_fix_and_the_earlier_ones(gated: Project) -> None:
    gated.config({"mon-a": {"observe": {"fix-b": "fail"}}}, release={"bake_time": 0.2})
    res = gated.run("--format", "json", "apply")
    assert res.returncode == 1, res.stderr
    assert gated.calls() == [
        "apply mon-a",
        "verify mon-a",
        "preflight mon-a",
        "apply fix-a",
        "verify fix-a",
        "observe[fix-a] mon-a",
        "apply fix-b",
        "verify fix-b",
        "observe[fix-b] mon-a",
        "rollback fix-b",
        "rollback fix-a",
        "rollback mon-a",
    ]
    assert "fix-b failed (monitor mon-a judged it fail: mon-a says fail for fix-b)" in one_clear_line(res.stderr)
    doc = json.loads(res.stdout)
    assert doc["rolled_back"] == ["fix-b", "fix-a", "mon-a"]
    assert [(j["kind"], j["plugin"], j["verdict"]) for j in doc["judgements"]] == [
        ("preflight", None, "pass"),
        ("observe", "fix-a", "pass"),
        ("observe", "fix-b", "fail"),
    ]
    # what tars_observe was told about the fix it watched
    change = next(g["change"] for g in gates(gated) if g.get("plugin") == "fix-a")
    assert (change["plugin"], change["fix_id"], change["bake_seconds"]) == ("fix-a", "ACME-1", 0.2)
    assert change["flags"] == {} and change["canary"] is None and change["applied_at"]
    assert dict(ledger_rows(gated, "SELECT plugin, state FROM tars_state")) == {
        "mon-a": "rolled_back",
        "fix-a": "rolled_back",
        "fix-b": "rolled_back",
    }


def test_two_monitors_observe_each_fix_concurrently(gated: Project) -> None:
    monitors(gated, "mon-b")
    gated.config(release={"bake_time": 0.5})
    code, doc = gated.json("apply")
    assert code == 0, doc
    observed = [g for g in gates(gated) if g["kind"] == "observe"]
    for fix in ("fix-a", "fix-b", "fix-c"):
        calls = [g for g in observed if g["plugin"] == fix]
        assert sorted(g["monitor"] for g in calls) == ["mon-a", "mon-b"]
        assert max(g["start"] for g in calls) < min(g["end"] for g in calls), calls  # the two watches overlap
        rows = ledger_rows(gated, f"SELECT started_at, ended_at FROM tars_judgements WHERE plugin='{fix}'")
        assert len(rows) == 2 and max(r[0] for r in rows) < min(r[1] for r in rows)  # type: ignore[type-var]


def test_bake_time_zero_observes_nothing_and_bake_times_override_it(gated: Project) -> None:
    gated.config({"mon-a": {"observe": {"fix-a": "fail", "fix-c": "fail"}}}, release={"bake_times": {"fix-b": 0.1}})
    code, doc = gated.json("apply")
    assert code == 0, doc
    assert [c for c in gated.calls() if c.startswith("observe")] == ["observe[fix-b] mon-a"]
    assert [(j["kind"], j["plugin"]) for j in doc["judgements"]] == [("preflight", None), ("observe", "fix-b")]


def test_without_a_monitor_nothing_is_judged(three: Project) -> None:
    three.config(release={"bake_time": 5})
    code, doc = three.json("apply")
    assert code == 0, doc
    assert doc["judgements"] == [] and not gates(three)


def test_bad_gate_settings_are_one_line_exit_2(gated: Project) -> None:
    for release, expected in (
        ({"on_inconclusive": "maybe"}, "release.on_inconclusive: expected one of fail, pass"),
        ({"bake_time": -1}, "bake_time must be >= 0, got -1"),
        ({"bake_times": 30}, "release.bake_times: expected a mapping such as {tars-1004-db: 300}, got a number"),
    ):
        gated.config(release=release)
        res = gated.run("apply")
        assert res.returncode == 2 and expected in one_clear_line(res.stderr), res.stderr
    assert gated.calls() == []


def _observe_fail_then_report(project: Project, *state: str) -> None:
    project.config({"mon-a": {"observe": {"fix-b": "fail"}}}, release={"bake_time": 0.1})
    assert project.run(*state, "apply").returncode == 1
    res = project.run(*state, "report")
    assert res.returncode == 0, res.stderr


def _judgement_rows(rows: list[tuple[Any, ...]]) -> None:
    assert [r[:4] for r in rows] == [
        ("mon-a", None, "preflight", "pass"),
        ("mon-a", "fix-a", "observe", "pass"),
        ("mon-a", "fix-b", "observe", "fail"),
    ]
    *_, reasons, evidence, score, started, ended = rows[-1]
    assert json.loads(reasons) == ["mon-a says fail for fix-b"] and score == 0.5 and started <= ended
    assert json.loads(evidence) == [
        {"query": "sum(rate(tars_errors_total[5m]))", "value": 0.25, "at": "2026-01-01T00:00:00Z", "detail": "burn 20x"}
    ]


JUDGEMENT_SQL = (
    "SELECT monitor, plugin, kind, verdict, reasons, evidence, score, started_at, ended_at "
    "FROM tars_judgements ORDER BY id"
)


def test_judgements_reach_the_sqlite_ledger_and_every_report(gated: Project) -> None:
    _observe_fail_then_report(gated)
    _judgement_rows(ledger_rows(gated, JUDGEMENT_SQL))
    out = gated.work / ".tars" / "reports" / "v1.0.1"
    doc = json.loads((out / "report.json").read_text())
    assert [(j["kind"], j["plugin"], j["verdict"]) for j in doc["judgements"]][-1] == ("observe", "fix-b", "fail")
    assert doc["judgements"][-1]["evidence"][0]["value"] == 0.25
    md = (out / "report.md").read_text()
    assert "## Release gates" in md and "### Evidence" in md
    assert "| mon-a | observe of fix-b | **fail** | 0.5 | mon-a says fail for fix-b |" in md
    assert (
        "| mon-a | observe of fix-b | sum(rate(tars_errors_total[5m])) | 0.25 | 2026-01-01T00:00:00Z | burn 20x |" in md
    )
    suite = ET.parse(out / "junit.xml").getroot()
    case = suite.find("testcase[@classname='mon-a'][@name='observe of fix-b']")
    assert case is not None
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "mon-a says fail for fix-b"
    assert "sum(rate(tars_errors_total[5m])) = 0.25" in (failure.text or "")
    passed = suite.find("testcase[@classname='mon-a'][@name='preflight']")
    assert passed is not None and passed.find("failure") is None


def test_judgements_reach_the_postgres_ledger(gated: Project, tars_postgres_db: Callable[..., str]) -> None:
    import asyncpg

    url = tars_postgres_db()
    _observe_fail_then_report(gated, "--state", url)

    async def rows() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(JUDGEMENT_SQL)]
        finally:
            await conn.close()

    _judgement_rows(anyio.run(rows))
    assert "mon-a says fail for fix-b" in (gated.work / ".tars" / "reports" / "v1.0.1" / "report.md").read_text()


# The schema-1 ledger as tars-core wrote it before the release gates (kept verbatim: it is history).
SCHEMA_1 = [
    "CREATE TABLE tars_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE tars_runs (run_id TEXT PRIMARY KEY, release TEXT NOT NULL, command TEXT NOT NULL,
        host TEXT NOT NULL, pid INTEGER NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, outcome TEXT)""",
    """CREATE TABLE tars_phases (id {serial}, run_id TEXT NOT NULL, release TEXT NOT NULL, plugin TEXT NOT NULL,
        phase TEXT NOT NULL, outcome TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, error TEXT,
        detail TEXT, version TEXT NOT NULL, config_digest TEXT NOT NULL)""",
    """CREATE TABLE tars_state (release TEXT NOT NULL, plugin TEXT NOT NULL, state TEXT NOT NULL,
        version TEXT NOT NULL, config_digest TEXT NOT NULL, updated_at TEXT NOT NULL, run_id TEXT NOT NULL,
        PRIMARY KEY (release, plugin))""",
    """CREATE TABLE tars_benchmarks (release TEXT NOT NULL, plugin TEXT NOT NULL, run_id TEXT NOT NULL,
        at TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (release, plugin))""",
    """CREATE TABLE tars_lock (id INTEGER PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
        started_at TEXT NOT NULL, command TEXT NOT NULL)""",
    "INSERT INTO tars_meta (key, value) VALUES ('schema_version', '1')",
    """INSERT INTO tars_state VALUES ('v1.0.1', 'fix-a', 'applied', '0.1.0', 'old', '2026-01-01T00:00:00Z', 'r1')""",
]


def _migrated(project: Project, state: str) -> None:
    """A schema-1 ledger opened by this tars-run: upgraded in place, its rows kept, gates recorded."""
    code, status = project.json("--state", state, "status")
    assert code == 0, status
    assert {r["plugin"]: r["state"] for r in status["plugins"]}["fix-a"] == "applied"  # type: ignore[index]
    project.config({"mon-a": {"observe": {"fix-b": "fail"}}}, release={"bake_time": 0.1})
    code, doc = project.json("--state", state, "apply")
    assert code == 1 and len(doc["judgements"]) == 3  # type: ignore[arg-type]


def test_a_schema_1_sqlite_ledger_is_migrated_in_place(gated: Project) -> None:
    gated.config()
    path = gated.work / "old.db"
    db = sqlite3.connect(path)
    for sql in SCHEMA_1:
        db.execute(sql.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
    db.commit()
    db.close()
    _migrated(gated, f"sqlite:///{path}")
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT value FROM tars_meta").fetchall() == [(str(SCHEMA_VERSION),)]
        assert db.execute("SELECT count(*) FROM tars_judgements").fetchone() == (3,)
    finally:
        db.close()


def test_a_schema_1_postgres_ledger_is_migrated_in_place(gated: Project, tars_postgres_db: Callable[..., str]) -> None:
    import asyncpg

    url = tars_postgres_db()
    gated.config()

    async def run(statements: list[str], query: str) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            for sql in statements:
                await conn.execute(sql.format(serial="BIGSERIAL PRIMARY KEY"))
            return [tuple(r) for r in await conn.fetch(query)] if query else []
        finally:
            await conn.close()

    anyio.run(run, SCHEMA_1, "")
    _migrated(gated, url)
    assert anyio.run(run, [], "SELECT value FROM tars_meta") == [(str(SCHEMA_VERSION),)]
    assert anyio.run(run, [], "SELECT count(*) FROM tars_judgements") == [(3,)]


CANARY = '''
"""Test fix canary-fix: apply turns the flag ws_fix on for a tenth of the ids, and another flag fully on."""
import attrs

from tars_core import ApplyResult, PluginInfo, VerifyResult, hookimpl


@attrs.define
class Config:
    dir: str = "."


@hookimpl
def tars_plugin_info():
    return PluginInfo(name="canary-fix", title="canary", fix_id="ACME-9", config=Config)


@hookimpl
async def tars_apply(ctx):
    await ctx.flags.set("ws_fix", "0.1", remember=True)
    await ctx.flags.set("trace_fix", "on", remember=True)
    return ApplyResult()


@hookimpl
async def tars_verify(ctx):
    return VerifyResult(ok=await ctx.flags.is_on("ws_fix"))


@hookimpl
async def tars_rollback(ctx):
    await ctx.flags.restore("ws_fix")
    await ctx.flags.restore("trace_fix")
    return ApplyResult()
'''


def test_observe_is_told_the_flags_the_fix_changed_and_its_canary(
    project: Project, tars_redis_url: str, tars_redis_prefix: str
) -> None:
    import redis

    key = f"{tars_redis_prefix}:gates"
    client = redis.Redis.from_url(tars_redis_url, decode_responses=True)
    client.hset(key, mapping={"untouched": "on", "trace_fix": "off"})
    client.close()
    monitors(project, "mon-a")
    project.module("canary-fix", CANARY)
    project.config(release={"bake_time": 0.1}, targets={"redis": tars_redis_url, "flags_key": key})
    code, doc = project.json("apply")
    assert code == 0, doc
    [seen] = [g["change"] for g in gates(project) if g["kind"] == "observe"]
    assert (seen["plugin"], seen["fix_id"]) == ("canary-fix", "ACME-9")
    assert seen["flags"] == {"ws_fix": "0.1", "trace_fix": "on"} and seen["canary"] == "ws_fix=0.1"


def test_ctrl_c_during_a_bake_stops_the_watch_and_rolls_back_by_policy(gated: Project) -> None:
    """An operator who interrupts a long bake gets the Ctrl-C contract: the observation is cancelled, the
    fix being watched and the ones before it are rolled back, exit 130, and nothing later starts."""
    gated.config(release={"bake_time": 600})
    with gated.start("--format", "json", "apply") as run:
        wait_until(lambda: "observe[fix-a] mon-a" in gated.calls(), timeout=120, what="the bake of fix-a")
        assert run.stop(signal.SIGINT) == 130, run.err
    doc = json.loads(run.out)
    assert doc["rolled_back"] == ["fix-a", "mon-a"]
    assert gated.applied() == set()
    assert "apply fix-b" not in gated.calls()
    assert ledger_rows(gated, "SELECT plugin, state FROM tars_state ORDER BY plugin") == [
        ("fix-a", "rolled_back"),
        ("mon-a", "rolled_back"),
    ]
