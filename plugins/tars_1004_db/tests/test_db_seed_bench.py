"""The v1.0.0 seed, the sandbox contribution, the benchmark hook, the report section and packaging."""

from __future__ import annotations

import collections
import datetime as dt
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import pytest
from tars_1004_db import plugin
from tars_1004_db.db import REGIONS, generate_evaluations

from tars_core import BenchmarkResult, Metric, PhaseRecord, SandboxSite, Targets
from tars_core.testing import assert_cheap_import, release_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


def test_seed_has_production_skew() -> None:
    now = dt.datetime(2026, 11, 27, tzinfo=dt.timezone.utc)
    rows = list(generate_evaluations(50_000, now=now))
    assert rows == list(generate_evaluations(50_000, now=now))  # deterministic
    agents = collections.Counter(r[0] for r in rows)
    top3 = sum(n for _, n in agents.most_common(3))
    assert top3 > 0.25 * len(rows)  # a few hot agents
    assert agents.most_common(1)[0][1] > 100 * min(agents.values())
    regions = collections.Counter(r[1] for r in rows)
    assert [r for r, _ in regions.most_common()] == [r for r, _ in REGIONS]  # uneven, in the declared order
    created = [r[6] for r in rows]
    assert created == sorted(created)  # ids grow with time, as when the API inserts them
    last_week = sum(c > now - dt.timedelta(days=7) for c in created)
    assert last_week > 5 * len(rows) * 7 / 180  # recent data denser than uniform
    for _, _, status, reward, duration, _, started, completed in rows:
        assert (reward is not None) == (status == "completed")
        assert (completed is None) == (status in ("pending", "running"))
        if completed is not None:
            assert completed - started == dt.timedelta(milliseconds=duration)


async def test_sandbox_contribution_and_idempotent_seed(empty_database: str, make_ctx: Any, tmp_path: Path) -> None:
    contribution = plugin.tars_sandbox(SandboxSite(dir=tmp_path, targets=Targets(), python=sys.executable))
    assert contribution.services == ()
    assert contribution.config == {"seed_rows": 1_000_000, "benchmark": {"runs": 30}}
    make_ctx(empty_database, **contribution.config)  # the contributed section is a valid config

    ctx = make_ctx(empty_database, seed_rows=5_000)
    assert (await plugin.tars_sandbox_seed(ctx)).startswith("seeded 5000 evaluations")
    assert await plugin.tars_sandbox_seed(ctx) == "already seeded"
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM evaluations") == 5_000
        assert await conn.fetchval("SELECT count(*) FROM agents") == 200
        # the foreign key dropped for the COPY is back, and validated
        assert await conn.fetchval("SELECT convalidated FROM pg_constraint WHERE conname = 'evaluations_agent_id_fkey'")
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("INSERT INTO evaluations (agent_id, region, status) VALUES (9999, 'x', 'pending')")
    finally:
        await conn.close()
    # the seeded baseline is what the fix applies to
    assert (await plugin.tars_apply(make_ctx(empty_database))).changed
    assert (await plugin.tars_verify(make_ctx(empty_database))).ok


async def test_benchmark_hook_reports_before_and_after_in_a_scratch_database(
    database: str, make_ctx: Any, dsn_for: Any
) -> None:
    server = await asyncpg.connect(dsn_for("postgres"))
    try:
        ctx = make_ctx(database, benchmark={"rows": 20_000, "runs": 12})
        result = await plugin.tars_benchmark(ctx)
        leftovers = await server.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'tars1004_bench_%' "
            "AND datname NOT IN (SELECT datname FROM pg_stat_activity WHERE datname IS NOT NULL)"
        )
    finally:
        await server.close()
    assert leftovers == 0
    by_name = {m.name: m for m in result.metrics}
    for query in ("agent_history", "region_status_feed", "region_leaderboard"):
        p95 = by_name[f"{query} p95"]
        assert p95.unit == "ms" and p95.before is not None and p95.before > 0 and p95.after > 0
        assert p95.target == "p95 < 100 ms (aim < 10 ms)" and p95.met is not None
        assert by_name[f"{query} p95 ratio before/after"].unit == "x"
        assert any(n.startswith(f"{query} deep page p95") for n in by_name)
    for name in ("ix_evaluations_agent_created", "ix_evaluations_region_status_created"):
        assert by_name[f"{name} build time"].unit == "s"
        assert by_name[f"{name} size"].after > 0
    assert "20,000 evaluations" in result.detail and "| agent_history | first 10 |" in result.detail
    # the target database was not touched by the benchmark
    assert not (await plugin.tars_verify(make_ctx(database))).ok


def test_report_section(tmp_path: Path) -> None:
    info = plugin.tars_plugin_info()
    release = release_for(
        info,
        report_dir=tmp_path,
        phases=[
            PhaseRecord("r1", info.name, "apply", "ok", "2026-11-27T22:00:00Z", detail="built ix_a (1.0 s, 2.0 MB)"),
            PhaseRecord("r1", info.name, "verify", "ok", "2026-11-27T22:00:02Z", detail="indexes valid"),
        ],
        benchmark=BenchmarkResult(
            metrics=[Metric("agent_history p95", 480.0, 0.6, "ms", "p95 < 100 ms", True)], detail="table"
        ),
    )
    section = plugin.tars_report(release)
    assert section is not None and section.title.startswith("TARS-1004")
    assert "CREATE INDEX CONCURRENTLY" in section.markdown
    assert "| ix_evaluations_agent_created | agent_history | GET /api/v1/agents/{agent_id}/evaluations |" in (
        section.markdown
    )
    assert section.data["indexes"]["ix_evaluations_region_reward_completed"] == "region_leaderboard"
    # the core report renders the state, the phases and the benchmark: the section does not repeat them
    assert "built ix_a" not in section.markdown and "agent_history p95" not in section.markdown
    assert plugin.tars_report(attrs.evolve(release, plugins=[])) is None


def test_plugin_info_and_cheap_entry_point() -> None:
    info = plugin.tars_plugin_info()
    assert (info.name, info.fix_id, info.kind, info.config) == (
        "tars-1004-db",
        "TARS-1004",
        "hotfix",
        plugin.DbFixConfig,
    )
    eps = {ep.name: ep.value for ep in entry_points(group="tars.plugins")}
    assert eps["tars-1004-db"] == "tars_1004_db.plugin"
    assert_cheap_import("tars-1004-db")
