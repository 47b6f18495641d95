"""Apply, verify, rollback and their failure modes against a real PostgreSQL server.

Failures are produced on real connections: a second session holding a transaction open, a build
cancelled with ``pg_cancel_backend``, writers hammering the table while the indexes are built.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import asyncpg
import pytest
from tars_1004_db import plugin
from tars_1004_db.indexes import index_specs

from tars_core import FixError
from tars_core.testing import check_conformance
from tars_core.waiting import await_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

NAMES = [s.name for s in index_specs()]


async def indexes_on(dsn: str) -> dict[str, bool]:
    """Every TARS-1004 index in the database, valid or not."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = ANY($1::text[])",
            NAMES,
        )
    finally:
        await conn.close()
    return {r["relname"]: r["indisvalid"] for r in rows}


def test_index_file_declares_three_concurrent_builds_one_per_hot_query() -> None:
    specs = index_specs()
    assert len(specs) == 3
    assert {s.query for s in specs} == {"agent_history", "region_status_feed", "region_leaderboard"}
    for s in specs:
        assert s.create_sql.startswith(f"CREATE INDEX CONCURRENTLY {s.name} ON evaluations")
        assert "IF NOT EXISTS" not in s.create_sql.upper()


async def test_conformance(database: str, make_ctx: Any) -> None:
    await check_conformance(plugin, make_ctx(database))


async def test_apply_verify_reapply_rollback(database: str, make_ctx: Any) -> None:
    ctx = make_ctx(database)
    before = await plugin.tars_verify(ctx)
    assert not before.ok
    assert all(before.checks[n] == "missing" for n in NAMES)
    assert before.detail == "not applied: " + ", ".join(NAMES) + " missing"

    applied = await plugin.tars_apply(ctx)
    assert applied.changed
    assert all(f"built {n}" in applied.detail for n in NAMES)
    assert await indexes_on(database) == dict.fromkeys(NAMES, True)
    assert [b["name"] for b in ctx.state["builds"]] == NAMES

    verified = await plugin.tars_verify(ctx)
    assert verified.ok, verified.detail
    # each hot query, first page and next page, is an ordered scan of its own index (no Sort node)
    for spec in index_specs():
        assert verified.checks[spec.name].startswith("valid")
        for label in ("first page", "next page"):
            assert verified.checks[f"{spec.query} {label}"] == f"uses Index Scan using {spec.name}"

    again = await plugin.tars_apply(ctx)
    assert not again.changed

    rolled = await plugin.tars_rollback(ctx)
    assert rolled.changed and all(n in rolled.detail for n in NAMES)
    assert await indexes_on(database) == {}
    assert "builds" not in ctx.state
    assert not (await plugin.tars_verify(ctx)).ok
    assert not (await plugin.tars_rollback(ctx)).changed


async def test_dry_run_changes_nothing(database: str, make_ctx: Any) -> None:
    result = await plugin.tars_apply(make_ctx(database, dry_run=True))
    assert not result.changed
    assert all(f"would build {n}" in result.detail for n in NAMES)
    assert await indexes_on(database) == {}
    await plugin.tars_apply(make_ctx(database))
    rolled = await plugin.tars_rollback(make_ctx(database, dry_run=True))
    assert not rolled.changed and "would drop" in rolled.detail
    assert await indexes_on(database) == dict.fromkeys(NAMES, True)


async def _cancelled_build_leaves_invalid_index(dsn: str, create_sql: str) -> None:
    """Reproduce the classic failure: a concurrent build cancelled while it waits for a writer."""
    writer = await asyncpg.connect(dsn)
    builder = await asyncpg.connect(dsn)
    watcher = await asyncpg.connect(dsn)
    try:
        await writer.execute("BEGIN; UPDATE evaluations SET episodes = episodes + 1 WHERE id = 1")
        pid = await builder.fetchval("SELECT pg_backend_pid()")
        build = asyncio.create_task(builder.execute(create_sql))

        async def waiting() -> bool:
            return await watcher.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid) == "Lock"

        await await_until(waiting, timeout=15, interval=0.05, what="the concurrent build to wait for the open writer")
        assert await watcher.fetchval("SELECT pg_cancel_backend($1)", pid)
        with pytest.raises(asyncpg.QueryCanceledError):
            await build
        await writer.execute("ROLLBACK")
        # the trap: IF NOT EXISTS "succeeds" on the invalid leftover and leaves it invalid
        await builder.execute(create_sql.replace("CONCURRENTLY", "CONCURRENTLY IF NOT EXISTS"))
    finally:
        for conn in (writer, builder, watcher):
            await conn.close()


async def test_invalid_index_from_a_cancelled_build_is_dropped_and_rebuilt(database: str, make_ctx: Any) -> None:
    spec = index_specs()[1]
    await _cancelled_build_leaves_invalid_index(database, spec.create_sql)
    assert await indexes_on(database) == {spec.name: False}

    ctx = make_ctx(database)
    found = await plugin.tars_verify(ctx)
    assert not found.ok and found.checks[spec.name].startswith("INVALID")
    assert f"{spec.name}: INVALID" in found.detail and "does NOT use" not in found.detail

    applied = await plugin.tars_apply(ctx)
    assert applied.changed
    assert f"repaired {spec.name}" in applied.detail
    assert await indexes_on(database) == dict.fromkeys(NAMES, True)
    assert (await plugin.tars_verify(ctx)).ok


async def test_long_transaction_gives_clear_error_and_builds_nothing(database: str, make_ctx: Any) -> None:
    blocker = await asyncpg.connect(database, server_settings={"application_name": "nightly-batch"})
    try:
        blocker_pid = await blocker.fetchval("SELECT pg_backend_pid()")
        await blocker.execute("BEGIN; UPDATE evaluations SET episodes = episodes + 1 WHERE id = 42")
        await asyncio.sleep(1.2)  # now older than lock_timeout (1 s): the build would queue behind it
        # the blocker holds its lock until the finally below: an apply that waited for it would never
        # return, so returning at all proves it gave up at lock_timeout (no wall-clock threshold needed)
        with pytest.raises(FixError) as failure:
            await plugin.tars_apply(make_ctx(database))
        message = str(failure.value)
        assert "\n" not in message
        assert f"pid {blocker_pid} (postgres, nightly-batch, idle in transaction" in message
        assert "RowExclusiveLock" in message and "nothing was left half-built" in message
        assert await indexes_on(database) == {}  # not even an invalid leftover
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    assert (await plugin.tars_apply(make_ctx(database))).changed


async def test_lock_timeout_on_the_build_is_retried_then_fails_cleanly(
    database: str, make_ctx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # a young SHARE lock (a plain CREATE INDEX run by hand, say): the pre-flight check lets the first
    # attempt start, the build itself hits lock_timeout, later attempts see the blocker has grown old
    blocker = await asyncpg.connect(database)
    try:
        await blocker.execute("BEGIN; LOCK TABLE evaluations IN SHARE MODE")
        with caplog.at_level(logging.WARNING), pytest.raises(FixError, match="after 3 attempts") as failure:
            await plugin.tars_apply(make_ctx(database))
        assert "holds ShareLock on evaluations" in str(failure.value)
        assert any("lock timeout (1000 ms)" in r.getMessage() for r in caplog.records)
        assert await indexes_on(database) == {}
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()


async def test_build_timing_out_behind_a_young_writer_says_what_it_left(
    database: str, make_ctx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The one case PostgreSQL cannot clean up: the writer the build waits for is still open.

    The writer is younger than lock_timeout when apply starts, so the build starts, commits its invalid
    entry and times out waiting for the writer; the drop of that leftover waits for the same writer.
    The error must say so, and the next apply (writer gone) repairs it.
    """
    writer = await asyncpg.connect(database)
    try:
        await writer.execute("BEGIN; UPDATE evaluations SET episodes = episodes + 1 WHERE id = 3")
        ctx = make_ctx(database, lock_timeout_ms=500, attempts=2, retry_delay_s=0.1)
        with caplog.at_level(logging.WARNING), pytest.raises(FixError) as failure:
            await plugin.tars_apply(ctx)
        message = str(failure.value)
        assert "\n" not in message
        assert f"the invalid index {NAMES[0]} could not be dropped yet" in message
        assert "idle in transaction" in message and "holds RowExclusiveLock on evaluations" in message
        assert any("lock timeout (500 ms)" in r.getMessage() for r in caplog.records)
        assert await indexes_on(database) == {NAMES[0]: False}
    finally:
        await writer.execute("ROLLBACK")
        await writer.close()
    repaired = await plugin.tars_apply(make_ctx(database))
    assert f"repaired {NAMES[0]}" in repaired.detail
    assert await indexes_on(database) == dict.fromkeys(NAMES, True)


async def test_cancelled_apply_drops_its_partial_index(database: str, make_ctx: Any) -> None:
    writer = await asyncpg.connect(database)
    watcher = await asyncpg.connect(database)
    try:
        await writer.execute("BEGIN; UPDATE evaluations SET episodes = episodes + 1 WHERE id = 7")
        # a generous lock_timeout: the build waits for the young writer instead of timing out
        apply = asyncio.create_task(plugin.tars_apply(make_ctx(database, lock_timeout_ms=60_000)))

        async def build_pid() -> int | None:
            return await watcher.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'tars-1004-db' "
                "AND wait_event_type = 'Lock' AND query LIKE 'CREATE INDEX CONCURRENTLY%'"
            )

        pid = await await_until(build_pid, timeout=15, interval=0.05, what="apply's build to wait for the writer")
        assert await indexes_on(database) == {NAMES[0]: False}  # the invalid entry exists mid-build
        assert await watcher.fetchval("SELECT pg_cancel_backend($1)", pid)

        async def dropping() -> bool:
            # the cancel landed and apply's clean-up drop now waits for the same writer
            return bool(
                await watcher.fetchval(
                    "SELECT wait_event_type = 'Lock' AND query LIKE 'DROP INDEX CONCURRENTLY%' "
                    "FROM pg_stat_activity WHERE pid = $1",
                    pid,
                )
            )

        await await_until(dropping, timeout=15, interval=0.05, what="apply's clean-up drop to wait for the writer")
        await writer.execute("ROLLBACK")  # lets the clean-up drop finish
        with pytest.raises(FixError, match="stopped by a cancel request; nothing was left half-built"):
            await apply
        assert await indexes_on(database) == {}
    finally:
        await writer.close()
        await watcher.close()


async def test_writes_keep_flowing_during_apply(database: str, make_ctx: Any) -> None:
    """Writers with the same lock_timeout as the build: none fails, none waits as long as the timeout."""
    lock_timeout_ms = 1000
    stop = asyncio.Event()
    latencies: list[tuple[float, float]] = []  # (start, seconds)
    errors: list[BaseException] = []
    max_id = 0

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        conn = await asyncpg.connect(database, server_settings={"lock_timeout": str(lock_timeout_ms)})
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    async with conn.transaction():
                        await conn.execute(
                            "INSERT INTO evaluations (agent_id, region, status, created_at) "
                            "VALUES ($1, $2, 'pending', now())",
                            rng.randint(1, 20),
                            rng.choice(["us-east-1", "eu-west-1"]),
                        )
                        # moves rows between index entries: reward and status are indexed columns
                        await conn.execute(
                            "UPDATE evaluations SET status = 'completed', reward = $2, completed_at = now(), "
                            "duration_ms = 1000 WHERE id = $1",
                            rng.randint(1, max_id),
                            rng.uniform(0, 100),
                        )
                except Exception as exc:  # every failure is a finding, whatever its type
                    errors.append(exc)
                latencies.append((started, time.monotonic() - started))
                await asyncio.sleep(0.005)
        finally:
            await conn.close()

    conn = await asyncpg.connect(database)
    max_id = await conn.fetchval("SELECT max(id) FROM evaluations")
    await conn.close()
    writers = [asyncio.create_task(writer(i)) for i in range(4)]
    await asyncio.sleep(0.2)
    apply_started = time.monotonic()
    result = await plugin.tars_apply(make_ctx(database, lock_timeout_ms=lock_timeout_ms))
    apply_ended = time.monotonic()
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*writers)

    assert result.changed
    assert errors == []
    during = [s for started, s in latencies if apply_started <= started <= apply_ended]
    assert len(during) > 20, "the writers did not overlap the build"
    # no writer waited past its own lock_timeout: it would have raised LockNotAvailable (errors == [] above)
    # the indexes hold every row, including those written during the build (amcheck heapallindexed)
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        for name in NAMES:
            await conn.execute("SELECT bt_index_check($1::regclass, true)", name)
    finally:
        await conn.close()
    assert (await plugin.tars_verify(make_ctx(database))).ok
