"""One release across regions on one shared ledger (issue 15, deliverable 4).

Each region is its own working folder (its own pod in production) with the same plugin installed, and
every run names its region with ``--region``. The fix used here waits at a gate (a file the test writes)
in the middle of its apply, so the test knows for certain that two regions hold their locks at the same
time, without timing anything. The main test runs against a real PostgreSQL database made for it, and
against one SQLite file (the same semantics on one machine).
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import InFlight, Project
from test_release import one_clear_line

from tars_core.ledger import SCHEMA_VERSION, advisory_key

pytestmark = pytest.mark.timeout(300)

# A fix whose apply writes "partial" to its marker, says it is waiting, and finishes only once the file
# ``go`` exists in its folder; verify wants the marker to say "ok <round>" (a new round is a new config,
# so the next apply re-applies).
GATED = """
from pathlib import Path

import anyio
import attrs

from tars_core import ApplyResult, PluginInfo, ReportSection, VerifyResult, hookimpl


@attrs.define
class Config:
    dir: str = "."
    round: int = 1


@hookimpl
def tars_plugin_info():
    return PluginInfo(name="gated-fix", title="a fix that waits at a gate", fix_id="ACME-7", config=Config)


@hookimpl
async def tars_apply(ctx):
    folder = Path(ctx.config.dir)
    marker = folder / "gated-fix.applied"
    marker.write_text("partial")
    (folder / "gated-fix.waiting").write_text("1")
    while not (folder / "go").exists():
        await anyio.sleep(0.05)
    (folder / "gated-fix.waiting").unlink()
    marker.write_text(f"ok {ctx.config.round}")
    return ApplyResult()


@hookimpl
def tars_verify(ctx):
    marker = Path(ctx.config.dir) / "gated-fix.applied"
    ok = marker.exists() and marker.read_text() == f"ok {ctx.config.round}"
    return VerifyResult(ok=ok, detail="marker ok" if ok else "marker partial or missing")


@hookimpl
def tars_rollback(ctx):
    (Path(ctx.config.dir) / "gated-fix.applied").unlink(missing_ok=True)
    return ApplyResult()


@hookimpl
def tars_report(release):
    # an attachment in the report folder, linked relative to it (as the regression monitor's chart)
    release.report_dir.mkdir(parents=True, exist_ok=True)
    (release.report_dir / "gated-note.txt").write_text(release.states["gated-fix"])
    return ReportSection(title="gated notes", markdown="[the note](gated-note.txt), [docs](https://example.org/x)")
"""

US, EU = "us-east-1", "eu-west-1"


class Region:
    """One region's working folder, running ``tars-run --region NAME --state LEDGER``."""

    def __init__(self, root: Path, name: str, ledger: str) -> None:
        self.name = name
        self.ledger = ledger
        self.project = Project(root / name)
        self.project.module("gated-fix", GATED)
        self.work = self.project.work
        self.configure(1)

    def configure(self, round_: int, gate_open: bool = False) -> None:
        self.project.config({"gated-fix": {"round": round_}})
        self.gate(gate_open)

    def gate(self, open_: bool) -> None:
        go = self.work / "go"
        if open_:
            go.write_text("go")
        else:
            go.unlink(missing_ok=True)

    def args(self, *args: str) -> tuple[str, ...]:
        return ("--region", self.name, "--state", self.ledger, *args)

    def start(self) -> Any:
        return self.project.start(*self.args("--format", "json", "apply"))

    def json(self, *args: str) -> tuple[int, dict[str, Any]]:
        return self.project.json(*self.args(*args))

    def wait_at_gate(self, run: InFlight) -> None:
        run.wait_for(self.work / "gated-fix.waiting")


def finish(run: InFlight) -> tuple[int, dict[str, Any]]:
    out, err = run.proc.communicate(timeout=120)
    run.err = err
    return run.proc.returncode, json.loads(out) if out.strip() else {}


def by_region(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["region"]: b for b in status["regions"]}


@pytest.fixture(params=["postgresql", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    make: Callable[..., str] = request.getfixturevalue("tars_postgres_db")
    return make()


def test_two_regions_run_at_once_and_a_killed_region_is_recovered_alone(tmp_path: Path, ledger: str) -> None:
    us, eu = Region(tmp_path, US, ledger), Region(tmp_path, EU, ledger)

    # both regions apply at the same time: each holds its own lock while the other's apply is in flight
    with us.start() as us_run, eu.start() as eu_run:
        us.wait_at_gate(us_run)
        eu.wait_at_gate(eu_run)
        # a third run of a region that is running is refused, naming the holder and the region
        third = us.project.run(*us.args("apply"))
        assert third.returncode == 3, third.stderr
        line = one_clear_line(third.stderr)
        assert f"region {US}" in line and f"pid {us_run.pid}" in line, line
        # status (no --region) shows both regions, each with its run in flight
        code, status = us.project.json("--state", ledger, "status")
        assert code == 0, status
        regions = by_region(status)
        assert set(regions) == {US, EU}
        for name, run in ((US, us_run), (EU, eu_run)):
            assert regions[name]["lock"]["pid"] == run.pid
            assert regions[name]["plugins"][0]["unfinished"]["run"] == "in progress"
        us.gate(True)
        eu.gate(True)
        (us_code, us_doc), (eu_code, eu_doc) = finish(us_run), finish(eu_run)
    assert (us_code, eu_code) == (0, 0), (us_run.err, eu_run.err)
    assert us_doc["region"] == US and eu_doc["region"] == EU
    code, status = eu.json("status")
    assert [b["region"] for b in status["regions"]] == [EU]  # --region narrows status to one region
    assert status["plugins"][0]["state"] == "applied" and status["lock"] is None

    # round 2: both re-apply; us-east-1 is SIGKILLed mid-apply while eu-west-1 is in flight
    us.configure(2)
    eu.configure(2)
    with us.start() as us_run, eu.start() as eu_run:
        us.wait_at_gate(us_run)
        eu.wait_at_gate(eu_run)
        us_run.stop(signal.SIGKILL)
        _, status = eu.project.json("--state", ledger, "status")
        regions = by_region(status)
        assert regions[US]["plugins"][0]["unfinished"]["run"] == "died" and regions[US]["lock"] is None
        assert regions[EU]["plugins"][0]["unfinished"]["run"] == "in progress"
        # the next run of the killed region recovers it while the other region is still running
        us.gate(True)
        code, doc = us.json("apply")
        assert code == 0, doc
        assert len(doc["recovered"]) == 1 and "gated-fix: apply was interrupted by a crash" in doc["recovered"][0]
        assert (us.work / "gated-fix.applied").read_text() == "ok 2"
        # ... without touching it: its run holds its lock and its phase is still in progress
        _, status = eu.json("status")
        assert status["lock"]["pid"] == eu_run.pid
        assert status["plugins"][0]["unfinished"]["run"] == "in progress"
        assert status["last_run"]["outcome"] is None
        eu.gate(True)
        eu_code, eu_doc = finish(eu_run)
    assert eu_code == 0 and eu_doc["recovered"] == [], eu_run.err
    code, status = us.project.json("--state", ledger, "status")
    regions = by_region(status)
    assert {r: b["plugins"][0]["state"] for r, b in regions.items()} == {US: "applied", EU: "applied"}
    assert regions[US]["last_run"]["outcome"] == "ok" and regions[EU]["last_run"]["outcome"] == "ok"


def test_reports_of_one_region_and_of_all_regions(tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'shared.db'}"
    us, eu = Region(tmp_path, US, ledger), Region(tmp_path, EU, ledger)
    us.configure(1, gate_open=True)
    eu.configure(1, gate_open=True)
    assert us.json("apply")[0] == 0
    eu.project.config({"gated-fix": {"round": 1, "dir": "/nonexistent/folder"}})  # its apply fails
    assert eu.json("apply")[0] == 1

    code, doc = us.json("report")
    assert code == 0, doc
    one = us.work / ".tars" / "reports" / "v1.0.1" / US
    assert doc["files"]["md"] == str(one / "report.md") and doc["regions"] == {US: {"gated-fix": "applied"}}
    assert json.loads((one / "report.json").read_text())["region"] == US
    assert (one / "report.md").read_text().startswith(f"# Release v1.0.1, region {US}\n")
    assert "[the note](gated-note.txt)" in (one / "report.md").read_text()

    res = us.project.run("--state", ledger, "--format", "json", "report")  # no --region: every region
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["regions"] == {EU: {"gated-fix": "rolled_back"}, US: {"gated-fix": "applied"}}
    everywhere = us.work / ".tars" / "reports" / "v1.0.1"
    data = json.loads((everywhere / "report.json").read_text())
    assert [d["region"] for d in data["regions"]] == [EU, US]
    md = (everywhere / "report.md").read_text()
    assert md.startswith("# Release v1.0.1 in 2 regions\n")
    assert f"## Region {EU}" in md and f"## Region {US}" in md and "### gated-fix: a fix" in md
    assert f"| {EU} | gated-fix | rolled_back |" in md
    # a region's attachments are in its folder, and the report across regions links them there
    for region, state in ((EU, "rolled_back"), (US, "applied")):
        assert f"[the note]({region}/gated-note.txt)" in md
        assert (everywhere / region / "gated-note.txt").read_text() == state
    assert "[docs](https://example.org/x)" in md
    junit = (everywhere / "junit.xml").read_text()
    assert f'<testsuite name="tars-v1.0.1-{EU}"' in junit and f'classname="{EU}.gated-fix"' in junit

    res = us.project.run("--state", ledger, "status")  # the text: one block per region
    assert res.returncode == 0
    assert f"== region {EU} ==\ngated-fix" in res.stdout and f"== region {US} ==\ngated-fix" in res.stdout


@pytest.mark.parametrize(
    ("where", "value"),
    [("--region", ""), ("--region", "eu west"), ("--region", "eu-"), ("release.region", "x" * 64)],
)
def test_a_bad_region_is_one_line_and_exit_2(project: Project, where: str, value: str) -> None:
    project.module("gated-fix", GATED)
    if where == "--region":
        project.config()
        res = project.run("--region", value, "apply")
    else:
        project.config(release={"region": value})
        res = project.run("apply")
    assert res.returncode == 2
    line = one_clear_line(res.stderr)
    assert "expected a region name such as us-east-1" in line and repr(value) in line, line
    assert where.split(".")[-1] in line
    assert not (project.work / ".tars").exists() and not (project.work / "go").exists()  # nothing ran


def test_release_region_in_the_config_and_the_command_line_over_it(tmp_path: Path) -> None:
    project = Project(tmp_path)
    project.module("gated-fix", GATED)
    project.config(release={"region": US})
    (project.work / "go").write_text("go")
    code, doc = project.json("apply")
    assert code == 0 and doc["region"] == US
    code, doc = project.json("--region", EU, "plan")
    assert doc["region"] == EU and doc["plugins"][0]["state"] == "not_applied"  # eu-west-1 has nothing yet
    code, status = project.json("status")
    assert [b["region"] for b in status["regions"]] == [US] and status["region"] == US


# The schema-2 ledger as tars-core wrote it before regions (kept verbatim: it is history), with the rows
# of one applied fix, its benchmark, a judgement and a run that died holding nothing.
SCHEMA_2 = [
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
    """CREATE TABLE tars_judgements (id {serial}, run_id TEXT NOT NULL, release TEXT NOT NULL,
        monitor TEXT NOT NULL, plugin TEXT, kind TEXT NOT NULL, verdict TEXT NOT NULL, reasons TEXT NOT NULL,
        evidence TEXT NOT NULL, score DOUBLE PRECISION, started_at TEXT NOT NULL, ended_at TEXT NOT NULL)""",
    "INSERT INTO tars_meta (key, value) VALUES ('schema_version', '2')",
    """INSERT INTO tars_runs VALUES ('r1', 'v1.0.1', 'apply', 'old-box', 1, '2026-01-01T00:00:00Z',
        '2026-01-01T00:01:00Z', 'ok')""",
    """INSERT INTO tars_phases (run_id, release, plugin, phase, outcome, started_at, ended_at, version,
        config_digest) VALUES ('r1', 'v1.0.1', 'gated-fix', 'apply', 'ok', '2026-01-01T00:00:00Z',
        '2026-01-01T00:00:30Z', '0.1.0', 'old')""",
    "INSERT INTO tars_state VALUES ('v1.0.1', 'gated-fix', 'applied', '0.1.0', 'old', '2026-01-01T00:01:00Z', 'r1')",
    """INSERT INTO tars_benchmarks VALUES ('v1.0.1', 'gated-fix', 'r1', '2026-01-01T00:01:00Z',
        '{{"metrics": [], "detail": "old figures"}}')""",
    """INSERT INTO tars_judgements (run_id, release, monitor, plugin, kind, verdict, reasons, evidence, score,
        started_at, ended_at) VALUES ('r1', 'v1.0.1', 'mon', 'gated-fix', 'observe', 'pass', '[]', '[]', NULL,
        '2026-01-01T00:00:30Z', '2026-01-01T00:00:40Z')""",
]
TABLES = ("tars_runs", "tars_phases", "tars_state", "tars_benchmarks", "tars_judgements")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_schema_2_ledger_is_upgraded_and_its_rows_are_the_ledger_without_a_region(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        path = tmp_path / "old.db"
        url = f"sqlite:///{path}"

        def query(statements: list[str], sql: str = "") -> list[tuple[Any, ...]]:
            db = sqlite3.connect(path)
            try:
                for stmt in statements:
                    db.execute(stmt.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
                db.commit()
                return db.execute(sql).fetchall() if sql else []
            finally:
                db.close()
    else:
        import asyncpg

        url = request.getfixturevalue("tars_postgres_db")()

        async def run(statements: list[str], sql: str) -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(url)
            try:
                for stmt in statements:
                    await conn.execute(stmt.format(serial="BIGSERIAL PRIMARY KEY"))
                return [tuple(r) for r in await conn.fetch(sql)] if sql else []
            finally:
                await conn.close()

        def query(statements: list[str], sql: str = "") -> list[tuple[Any, ...]]:
            return anyio.run(run, statements, sql)

    query(SCHEMA_2)
    project = Project(tmp_path / "work")
    project.module("gated-fix", GATED)
    project.config()
    # the old rows read as before, as the ledger without a region (text and JSON as before regions)
    res = project.run("--state", url, "status")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("gated-fix                applied") and "== " not in res.stdout
    code, status = project.json("--state", url, "status")
    assert status["plugins"][0]["state"] == "applied" and [b["region"] for b in status["regions"]] == [None]
    assert query([], "SELECT value FROM tars_meta WHERE key='schema_version'") == [(str(SCHEMA_VERSION),)]
    for table in TABLES:
        assert query([], f"SELECT DISTINCT region FROM {table}") == [("",)], table
    # a region's run beside them leaves them alone
    (project.work / "go").write_text("go")
    code, doc = project.json("--state", url, "--region", US, "apply")
    assert code == 0, doc
    assert query([], "SELECT region, state FROM tars_state ORDER BY region") == [("", "applied"), (US, "applied")]
    code, status = project.json("--state", url, "status")
    assert [b["region"] for b in status["regions"]] == [None, US]
    code, doc = project.json("--state", url, "report")
    assert doc["regions"] == {"": {"gated-fix": "applied"}, US: {"gated-fix": "applied"}}
    md = (project.work / ".tars" / "reports" / "v1.0.1" / "report.md").read_text()
    assert "## Region (no region)" in md and "old figures" in md


def test_region_lock_keys_are_apart() -> None:
    """Region "" keeps the advisory key every tars-run before regions took; named regions get their own."""
    keys = {advisory_key(r) for r in ("", US, EU, "default")}
    assert len(keys) == 4 and advisory_key("") == 0x7A125
    assert all(-(2**63) <= k < 2**63 for k in keys)


def test_two_runs_opening_a_schema_2_sqlite_ledger_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Two regions starting together on an old SQLite ledger: the schema-3 migration (ALTER TABLE, not
    idempotent) runs once; the other run waits for it and finds schema 3 (without the flock around it the
    second failed with 'duplicate column name: region')."""
    from tars_core.ledger import SQLiteLedger

    async def both(path: Path) -> None:
        ledgers = [SQLiteLedger(path, region) for region in (US, EU)]
        try:
            async with anyio.create_task_group() as tg:
                for ledger in ledgers:
                    tg.start_soon(ledger.open)
        finally:
            for ledger in ledgers:
                await ledger.close()

    for attempt in range(5):
        path = tmp_path / f"old-{attempt}.db"
        db = sqlite3.connect(path)
        for stmt in SCHEMA_2:
            db.execute(stmt.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
        db.commit()
        db.close()
        anyio.run(both, path)
        db = sqlite3.connect(path)
        assert db.execute("SELECT value FROM tars_meta").fetchall() == [(str(SCHEMA_VERSION),)]
        assert db.execute("SELECT region, plugin FROM tars_state").fetchall() == [("", "gated-fix")]
        db.close()
