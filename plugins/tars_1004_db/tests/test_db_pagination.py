"""Keyset pagination: exact, stable under concurrent inserts, opaque cursors, and flat cost with depth."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from tars_1004_db import plugin
from tars_1004_db.pagination import HOT_QUERIES, InvalidCursor, PageTooDeep, encode_cursor, fetch_page

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


@pytest.fixture
async def conn(database: str, make_ctx: Any) -> AsyncIterator[asyncpg.Connection]:
    await plugin.tars_apply(make_ctx(database))
    c = await asyncpg.connect(database)
    yield c
    await c.close()


async def walk(conn: asyncpg.Connection, query: str, filters: dict[str, Any], limit: int) -> list[int]:
    ids: list[int] = []
    page = await fetch_page(conn, query, filters, limit=limit)
    ids += [r["id"] for r in page.rows]
    while page.next_cursor:
        page = await fetch_page(conn, query, filters, limit=limit, cursor=page.next_cursor)
        assert 0 < len(page.rows) <= limit
        ids += [r["id"] for r in page.rows]
    return ids


@pytest.mark.parametrize(
    ("query", "filters", "order"),
    [
        ("agent_history", {"agent_id": 9}, "WHERE agent_id = 9 ORDER BY created_at DESC, id DESC"),
        (
            "region_status_feed",
            {"region": "sa-east-1", "status": "failed"},
            "WHERE region = 'sa-east-1' AND status = 'failed' ORDER BY created_at DESC, id DESC",
        ),
        (
            "region_leaderboard",
            {"region": "af-south-1"},
            "WHERE region = 'af-south-1' AND status = 'completed' ORDER BY reward DESC, id DESC",
        ),
    ],
)
async def test_walking_every_page_returns_each_row_once_in_order(
    conn: asyncpg.Connection, query: str, filters: dict[str, Any], order: str
) -> None:
    expected = [r["id"] for r in await conn.fetch(f"SELECT id FROM evaluations {order}")]
    assert len(expected) > 300  # several pages
    assert await walk(conn, query, filters, 97) == expected


async def test_rows_with_equal_timestamps_are_split_exactly_by_the_id_tiebreaker(
    conn: asyncpg.Connection,
) -> None:
    same = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    await conn.executemany(
        "INSERT INTO evaluations (agent_id, region, status, created_at) VALUES (199, 'us-east-1', 'pending', $1)",
        [(same,)] * 30,
    )
    ids = await walk(conn, "agent_history", {"agent_id": 199}, 7)
    tied = [
        r["id"] for r in await conn.fetch("SELECT id FROM evaluations WHERE created_at = $1 ORDER BY id DESC", same)
    ]
    assert ids[:30] == tied
    assert len(ids) == len(set(ids))


async def test_new_rows_between_requests_shift_offset_pages_but_not_cursors(conn: asyncpg.Connection) -> None:
    q = HOT_QUERIES["agent_history"]
    first_offset = [r["id"] for r in await conn.fetch(q.v100_sql, 3, 50, 0)]
    first = await fetch_page(conn, "agent_history", {"agent_id": 3}, limit=50)
    # the API keeps inserting evaluations for this agent while a client pages
    await conn.execute(
        "INSERT INTO evaluations (agent_id, region, status, created_at) "
        "SELECT 3, 'eu-west-1', 'pending', now() FROM generate_series(1, 5)"
    )
    second_offset = [r["id"] for r in await conn.fetch(q.v100_sql, 3, 50, 50)]
    second = await fetch_page(conn, "agent_history", {"agent_id": 3}, limit=50, cursor=first.next_cursor)
    assert len(set(first_offset) & set(second_offset)) == 5  # v1.0.0: five rows shown twice
    assert not {r["id"] for r in first.rows} & {r["id"] for r in second.rows}
    assert second.rows[0]["created_at"] <= first.rows[-1]["created_at"]


async def test_legacy_page_is_served_once_then_the_client_follows_the_cursor(
    conn: asyncpg.Connection,
) -> None:
    filters = {"region": "us-west-2", "status": "completed"}
    walked = [
        await fetch_page(conn, "region_status_feed", filters, limit=20),
    ]
    for _ in range(3):
        walked.append(await fetch_page(conn, "region_status_feed", filters, limit=20, cursor=walked[-1].next_cursor))
    legacy = await fetch_page(conn, "region_status_feed", filters, limit=20, page=3)
    assert [r["id"] for r in legacy.rows] == [r["id"] for r in walked[2].rows]
    after = await fetch_page(conn, "region_status_feed", filters, limit=20, cursor=legacy.next_cursor)
    assert [r["id"] for r in after.rows] == [r["id"] for r in walked[3].rows]
    with pytest.raises(PageTooDeep, match="follow next_cursor"):
        await fetch_page(conn, "region_status_feed", filters, limit=20, page=502)
    with pytest.raises(ValueError, match="either cursor or page"):
        await fetch_page(conn, "region_status_feed", filters, cursor=legacy.next_cursor, page=2)


async def test_last_page_has_no_cursor(conn: asyncpg.Connection) -> None:
    n = await conn.fetchval("SELECT count(*) FROM evaluations WHERE agent_id = 200")
    page = await fetch_page(conn, "agent_history", {"agent_id": 200}, limit=n)
    assert len(page.rows) == n and page.next_cursor is None


async def test_cursors_are_bound_to_their_query_and_filters(conn: asyncpg.Connection) -> None:
    page = await fetch_page(conn, "agent_history", {"agent_id": 4}, limit=10)
    assert page.next_cursor is not None
    with pytest.raises(InvalidCursor, match="different filters"):
        await fetch_page(conn, "agent_history", {"agent_id": 5}, cursor=page.next_cursor)
    with pytest.raises(InvalidCursor, match="belongs to 'agent_history'"):
        await fetch_page(conn, "region_leaderboard", {"region": "us-east-1"}, cursor=page.next_cursor)
    for garbage in ("", "not a cursor!", page.next_cursor[:-3], base64.urlsafe_b64encode(b"[1,2]").decode()):
        with pytest.raises(InvalidCursor):
            await fetch_page(conn, "agent_history", {"agent_id": 4}, cursor=garbage)
    forged = json.loads(base64.urlsafe_b64decode(page.next_cursor + "=="))
    forged["k"][0] = "2020-01-01; DROP TABLE evaluations"
    token = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode()
    with pytest.raises(InvalidCursor):
        await fetch_page(conn, "agent_history", {"agent_id": 4}, cursor=token)
    with pytest.raises(ValueError, match="missing"):
        encode_cursor("agent_history", {}, page.rows[-1])


async def _buffers(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args))[0]["Plan"]
    return int(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"])


async def test_a_deep_keyset_page_reads_as_little_as_the_first(conn: asyncpg.Connection) -> None:
    """Page cost measured in buffers touched (deterministic), not in milliseconds."""
    q = HOT_QUERIES["agent_history"]
    depth = (await conn.fetchval("SELECT count(*) FROM evaluations WHERE agent_id = 1")) * 9 // 10
    boundary = await conn.fetchrow(f"{q.first_sql} OFFSET $3", 1, 1, depth - 1)
    first = await _buffers(conn, q.first_sql, 1, 51)
    deep_keyset = await _buffers(conn, q.after_sql, 1, boundary["created_at"], boundary["id"], 51)
    deep_offset = await _buffers(conn, q.v100_sql, 1, 50, depth)
    assert deep_keyset <= first + 5
    assert deep_offset > 20 * deep_keyset
