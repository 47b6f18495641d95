"""Keyset pagination for the three hot evaluation-API queries, with opaque cursors.

v1.0.0 paged with ``LIMIT n OFFSET (page-1)*n``: PostgreSQL has to produce and throw away every row
before the page, so page 5,000 reads 250,000 rows to return 50, and rows inserted meanwhile shift pages
(duplicates and gaps). Its ORDER BY had no tiebreaker either, so rows with the same ``created_at`` could
appear on two pages or none.

v1.0.1 pages by position instead: the cursor holds the sort key of the last row returned (plus the
primary key ``id`` as a unique tiebreaker) and the next page is "the first ``limit`` rows after that key",
a single range scan of the query's composite index that costs the same at page 5,000 as at page 1.

Switching the API over (see README): a request with a legacy ``page`` is still served, once, with OFFSET
(bounded by ``max_offset``), and every response carries ``next_cursor``; clients follow ``next_cursor``
from then on, so they move to keyset pagination without a flag day.

Usage::

    page = await fetch_page(conn, "agent_history", {"agent_id": 7}, limit=50)
    while page.next_cursor:
        page = await fetch_page(conn, "agent_history", {"agent_id": 7}, cursor=page.next_cursor)
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import attrs

# what a cursor's sort values must decode to, per sort column (anything else is a forged cursor)
SORT_TYPES: dict[str, type | tuple[type, ...]] = {
    "created_at": dt.datetime,
    "reward": (int, float),
    "id": int,
}
COLUMNS = "id, agent_id, region, status, reward, duration_ms, episodes, created_at, completed_at"
CURSOR_VERSION = 1


class InvalidCursor(ValueError):
    """The cursor is malformed, from another query or for other filters (the API answers 400)."""


class PageTooDeep(ValueError):
    """A legacy ``page`` beyond ``max_offset``: the client must follow ``next_cursor`` instead."""


@attrs.frozen
class HotQuery:
    """One hot API query in its v1.0.0 form (OFFSET) and its v1.0.1 keyset form.

    ``filters`` are the equality parameters in SQL parameter order; ``sort`` the ORDER BY columns, all
    descending, ending with the unique ``id``; ``index`` the TARS-1004 index that serves it.
    """

    name: str
    endpoint: str
    filters: tuple[str, ...]
    sort: tuple[str, ...]
    index: str
    v100_sql: str
    first_sql: str
    after_sql: str

    def params(self, filters: Mapping[str, Any]) -> list[Any]:
        missing = [f for f in self.filters if f not in filters]
        extra = sorted(set(filters) - set(self.filters))
        if missing or extra:
            raise ValueError(f"{self.name} takes filters {list(self.filters)}; missing {missing}, unknown {extra}")
        return [filters[f] for f in self.filters]


def _hot_query(name: str, endpoint: str, where: str, filters: tuple[str, ...], sort: str, index: str) -> HotQuery:
    """The three SQL forms of one listing: ``where`` uses ``$1..$n`` for ``filters``; ``sort`` the column
    ordered by, descending (v1.0.0 without a tiebreaker, v1.0.1 with ``id``)."""
    n = len(filters)
    select = f"SELECT {COLUMNS} FROM evaluations WHERE {where} "
    keyset_order = f"ORDER BY {sort} DESC, id DESC"
    return HotQuery(
        name=name,
        endpoint=endpoint,
        filters=filters,
        sort=(sort, "id"),
        index=index,
        v100_sql=f"{select}ORDER BY {sort} DESC LIMIT ${n + 1} OFFSET ${n + 2}",
        first_sql=f"{select}{keyset_order} LIMIT ${n + 1}",
        after_sql=f"{select}AND ({sort}, id) < (${n + 1}, ${n + 2}) {keyset_order} LIMIT ${n + 3}",
    )


HOT_QUERIES: dict[str, HotQuery] = {
    q.name: q
    for q in (
        _hot_query(
            "agent_history",
            "GET /api/v1/agents/{agent_id}/evaluations",
            "agent_id = $1",
            ("agent_id",),
            "created_at",
            "ix_evaluations_agent_created",
        ),
        _hot_query(
            "region_status_feed",
            "GET /api/v1/evaluations?region=&status=",
            "region = $1 AND status = $2",
            ("region", "status"),
            "created_at",
            "ix_evaluations_region_status_created",
        ),
        _hot_query(
            "region_leaderboard",
            "GET /api/v1/leaderboard?region=",
            "region = $1 AND status = 'completed'",
            ("region",),
            "reward",
            "ix_evaluations_region_reward_completed",
        ),
    )
}


@attrs.frozen
class Page:
    """One page of rows and the cursor for the next (``None`` on the last page)."""

    rows: Sequence[asyncpg.Record]
    next_cursor: str | None


def _query(query: str | HotQuery) -> HotQuery:
    if isinstance(query, HotQuery):
        return query
    try:
        return HOT_QUERIES[query]
    except KeyError:
        raise ValueError(f"unknown hot query {query!r}; one of {sorted(HOT_QUERIES)}") from None


def _encode_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"t": value.isoformat()}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"t"} and isinstance(value["t"], str):
        return dt.datetime.fromisoformat(value["t"])
    if value is None or isinstance(value, (int, float, str)):
        return value
    raise InvalidCursor("cursor holds a value of an unexpected type")


def encode_cursor(query: str | HotQuery, filters: Mapping[str, Any], row: Mapping[str, Any]) -> str:
    """The opaque cursor that continues after ``row``.

    It binds the query name and filter values so a cursor cannot be replayed against another listing.
    It is not a secret and not signed: forging one only moves the caller's own position, and every
    value is a bound parameter, never SQL text.
    """
    q = _query(query)
    payload = {
        "v": CURSOR_VERSION,
        "q": q.name,
        "f": [_encode_value(v) for v in q.params(filters)],
        "k": [_encode_value(row[c]) for c in q.sort],
    }
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(query: str | HotQuery, filters: Mapping[str, Any], cursor: str) -> list[Any]:
    """The sort key stored in ``cursor``; raises :class:`InvalidCursor` if it does not fit the request."""
    q = _query(query)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidCursor("cursor is not one this API issued") from None
    if not isinstance(payload, dict) or payload.get("v") != CURSOR_VERSION:
        raise InvalidCursor("cursor is not one this API issued")
    if payload.get("q") != q.name:
        raise InvalidCursor(f"cursor belongs to {payload.get('q')!r}, not {q.name!r}")
    if payload.get("f") != [_encode_value(v) for v in q.params(filters)]:
        raise InvalidCursor("cursor was issued for different filters")
    key = payload.get("k")
    if not isinstance(key, list) or len(key) != len(q.sort):
        raise InvalidCursor("cursor is not one this API issued")
    values = [_decode_value(v) for v in key]
    for column, value in zip(q.sort, values, strict=True):
        if isinstance(value, bool) or not isinstance(value, SORT_TYPES[column]):
            raise InvalidCursor("cursor is not one this API issued")
    return values


async def fetch_page(
    conn: asyncpg.Connection | asyncpg.Pool,
    query: str | HotQuery,
    filters: Mapping[str, Any],
    *,
    limit: int = 50,
    cursor: str | None = None,
    page: int | None = None,
    max_offset: int = 10_000,
) -> Page:
    """One page of a hot query: the first page, the page after ``cursor``, or a legacy ``page`` number.

    ``page`` (1-based) keeps v1.0.0 clients working during the switch: it is served with OFFSET, but
    only up to ``max_offset`` rows deep (:class:`PageTooDeep` beyond, so nobody can make the database
    read a million rows per request), and the result carries ``next_cursor`` so the client continues
    with keyset pages. One extra row is fetched to know whether there is a next page at all.
    """
    q = _query(query)
    if not 1 <= limit <= 1000:
        raise ValueError("limit must be between 1 and 1000")
    params = q.params(filters)
    if cursor is not None and page is not None:
        raise ValueError("pass either cursor or page, not both")
    if cursor is not None:
        key = decode_cursor(q, filters, cursor)
        rows = await conn.fetch(q.after_sql, *params, *key, limit + 1)
    elif page is not None and page > 1:
        offset = (page - 1) * limit
        if offset > max_offset:
            raise PageTooDeep(f"page {page} is {offset} rows deep (max {max_offset}): follow next_cursor instead")
        rows = await conn.fetch(f"{q.first_sql} OFFSET ${len(params) + 2}", *params, limit + 1, offset)
    else:
        rows = await conn.fetch(q.first_sql, *params, limit + 1)
    if len(rows) > limit:
        rows = rows[:limit]
        return Page(rows=rows, next_cursor=encode_cursor(q, filters, rows[-1]))
    return Page(rows=rows, next_cursor=None)
