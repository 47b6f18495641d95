"""The TARS-1004 benchmark: the three hot queries before (v1.0.0) and after (v1.0.1), in one run.

It never touches the target's data: it creates a scratch database on the target server, seeds it with
the v1.0.0 generator, measures the v1.0.0 queries (no index, OFFSET), builds the indexes with the same
code ``tars-run apply`` uses (so the build time and size are the real ones), measures the v1.0.1 queries
(index + keyset) on the same pages, and drops the scratch database.

Pages: each run draws a listing (agent, region/status, region) with probability proportional to its size,
so hot listings are read most, as in production, and a page:
- "first pages": page 1..10 of that listing;
- "deep pages": a random position in the back half of the listing (up to hundreds of thousands of rows
  deep for the hot agent), measured with OFFSET without index, OFFSET with the index, and keyset.
Latency is wall time of ``conn.fetch`` on a prepared statement from the client, rows decoded.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import attrs

from tars_1004_db import db, indexes
from tars_1004_db.config import BenchmarkConfig, BuildSettings
from tars_1004_db.indexes import Log
from tars_1004_db.pagination import COLUMNS, HOT_QUERIES, HotQuery
from tars_core import FixError, Metric
from tars_core.report import format_number, markdown_table, percentile

TARGET_MS = 100.0
AIM_MS = 10.0


@attrs.frozen
class Percentiles:
    p50: float
    p95: float
    runs: int

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Percentiles:
        return cls(p50=percentile(samples_ms, 50), p95=percentile(samples_ms, 95), runs=len(samples_ms))


@attrs.frozen
class QueryFigures:
    """Latencies of one hot query. ``before``/``after``: first pages; ``deep_*``: back half of a listing."""

    query: str
    before: Percentiles
    after: Percentiles
    deep_before: Percentiles
    deep_offset_indexed: Percentiles
    deep_after: Percentiles
    max_depth: int


@attrs.frozen
class BenchReport:
    size: BenchmarkConfig
    seed_seconds: float
    server_version: str
    queries: Sequence[QueryFigures]
    builds: Sequence[indexes.BuildRecord]

    def metrics(self) -> list[Metric]:
        target = f"p95 < {TARGET_MS:.0f} ms (aim < {AIM_MS:.0f} ms)"
        out = []
        for q in self.queries:
            out += [
                Metric(f"{q.query} p95", q.before.p95, q.after.p95, "ms", target, q.after.p95 < TARGET_MS),
                Metric(f"{q.query} p50", q.before.p50, q.after.p50, "ms"),
                Metric(
                    f"{q.query} deep page p95 (OFFSET vs keyset, up to {q.max_depth} rows deep)",
                    q.deep_before.p95,
                    q.deep_after.p95,
                    "ms",
                    target,
                    q.deep_after.p95 < TARGET_MS,
                ),
                Metric(f"{q.query} p95 ratio before/after", None, _ratio(q.before.p95, q.after.p95), "x"),
            ]
        for b in self.builds:
            out += [
                Metric(f"{b.name} build time", None, round(b.seconds, 3), "s"),
                Metric(f"{b.name} size", None, round(b.size_bytes / 1e6, 1), "MB"),
            ]
        return out

    def markdown(self) -> str:
        """The figures the metrics table cannot hold: p50 beside p95, index + OFFSET, and the builds."""
        pages = []
        for q in self.queries:
            pages += [
                (q.query, "first 10", _pair(q.before), "–", _pair(q.after), _times(q.before.p95, q.after.p95)),
                (
                    q.query,
                    f"deep (≤ {format_number(q.max_depth)} rows)",
                    _pair(q.deep_before),
                    f"{format_number(q.deep_offset_indexed.p95)} ms",
                    _pair(q.deep_after),
                    _times(q.deep_before.p95, q.deep_after.p95),
                ),
            ]
        builds = [
            (b.name, f"{format_number(b.seconds)} s", f"{format_number(b.size_bytes / 1e6)} MB") for b in self.builds
        ]
        return "\n".join(
            [
                f"{format_number(self.size.rows)} evaluations "
                f"(seeded by COPY in {format_number(self.seed_seconds)} s), "
                f"{self.size.runs} runs per figure, page size {self.size.page_size}, {self.server_version}.",
                "",
                markdown_table(
                    (
                        "query",
                        "pages",
                        "v1.0.0 p50 / p95 (no index, OFFSET)",
                        "index + OFFSET p95",
                        "v1.0.1 p50 / p95 (index, keyset)",
                        "p95 ratio",
                    ),
                    pages,
                ),
                "",
                markdown_table(("index", "build time (CONCURRENTLY)", "size"), builds),
            ]
        )


def _pair(p: Percentiles) -> str:
    return f"{format_number(p.p50)} / {format_number(p.p95)} ms"


def _times(before: float, after: float) -> str:
    return f"{format_number(_ratio(before, after))}×"


def _ratio(before: float, after: float) -> float:
    return round(before / after, 1) if after > 0 else float("inf")


@attrs.frozen
class _Run:
    filters: dict[str, Any]
    offset: int
    key: list[Any] | None = None  # keyset position: sort key of the row just before ``offset``


async def _listings(conn: asyncpg.Connection, q: HotQuery) -> list[tuple[dict[str, Any], int]]:
    where = " WHERE status = 'completed'" if q.name == "region_leaderboard" else ""
    cols = ", ".join(q.filters)
    rows = await conn.fetch(f"SELECT {cols}, count(*) AS n FROM evaluations{where} GROUP BY {cols}")
    return [({f: r[f] for f in q.filters}, int(r["n"])) for r in rows]


def _draw(
    rng: random.Random, listings: list[tuple[dict[str, Any], int]], runs: int, page_size: int, deep: bool
) -> list[_Run]:
    chosen = rng.choices(listings, weights=[n for _, n in listings], k=runs)
    out = []
    for filters, n in chosen:
        last = max(n - page_size, 0)
        if deep:
            offset = rng.randint(min(n // 2, last), last)
        else:
            offset = min((rng.randint(1, 10) - 1) * page_size, last)
        out.append(_Run(filters=filters, offset=offset))
    return out


async def _time(conn: asyncpg.Connection, sql: str, args: Sequence[Any]) -> float:
    started = time.perf_counter()
    await conn.fetch(sql, *args)
    return (time.perf_counter() - started) * 1000.0


async def _offset_ms(conn: asyncpg.Connection, sql: str, q: HotQuery, runs: list[_Run], limit: int) -> list[float]:
    return [await _time(conn, sql, [*(r.filters[f] for f in q.filters), limit, r.offset]) for r in runs]


async def _keyset_ms(conn: asyncpg.Connection, q: HotQuery, runs: list[_Run], limit: int) -> list[float]:
    out = []
    for r in runs:
        params = [r.filters[f] for f in q.filters]
        if r.key is None:
            out.append(await _time(conn, q.first_sql, [*params, limit]))
        else:
            out.append(await _time(conn, q.after_sql, [*params, *r.key, limit]))
    return out


async def _with_keys(conn: asyncpg.Connection, q: HotQuery, runs: list[_Run]) -> list[_Run]:
    """Attach the keyset position equal to each OFFSET (what a client that followed cursors would hold)."""
    out = []
    # only the sort columns, so the deep OFFSET can be an index-only scan (untimed set-up, but at 1M
    # rows and 200 deep pages it would otherwise dominate the benchmark's run time)
    sql = q.first_sql.replace(COLUMNS, ", ".join(q.sort), 1).replace(
        " LIMIT $", f" OFFSET ${len(q.filters) + 2} LIMIT $"
    )
    for r in runs:
        if r.offset == 0:
            out.append(r)
            continue
        row = await conn.fetchrow(sql, *(r.filters[f] for f in q.filters), 1, r.offset - 1)
        out.append(attrs.evolve(r, key=[row[c] for c in q.sort]))
    return out


async def run_benchmark(
    server_dsn: str,
    size: BenchmarkConfig,
    *,
    settings: BuildSettings | None = None,
    log: Log | None = None,
    connect_timeout: float = 10.0,
) -> BenchReport:
    """Seed a scratch database on the server of ``server_dsn``, measure before/after, drop it."""
    log = log or logging.getLogger("tars_1004_db.bench")
    settings = settings or BuildSettings()
    admin = await db.connect(server_dsn, timeout=connect_timeout)
    scratch = f"tars1004_bench_{uuid.uuid4().hex[:10]}"
    try:
        try:
            await admin.execute(f'CREATE DATABASE "{scratch}"')
        except asyncpg.PostgresError as exc:
            raise FixError(
                f"the benchmark needs a scratch database on the target server: {db.one_line(exc)} "
                "(grant CREATEDB, or run benchmarks/tars-1004-db_bench.py against another server)"
            ) from None
        async with db.connected(db.with_database(server_dsn, scratch), timeout=connect_timeout) as conn:
            return await _measure(conn, size, settings, log)
    finally:
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        finally:
            await admin.close()


async def _measure(conn: asyncpg.Connection, size: BenchmarkConfig, settings: BuildSettings, log: Log) -> BenchReport:
    rng = random.Random(size.random_seed)
    runs, page_size = size.runs, size.page_size
    log.info("seeding %d evaluations", size.rows)
    seed_seconds = await db.seed(conn, size.rows, random_seed=size.random_seed)
    version = str(await conn.fetchval("SELECT split_part(version(), ' on ', 1)"))
    plans: dict[str, tuple[list[_Run], list[_Run]]] = {}
    for q in HOT_QUERIES.values():
        listings = await _listings(conn, q)
        plans[q.name] = (
            _draw(rng, listings, runs, page_size, False),
            _draw(rng, listings, runs, page_size, True),
        )
    before: dict[str, tuple[list[float], list[float]]] = {}
    for q in HOT_QUERIES.values():
        shallow, deep = plans[q.name]
        log.info("measuring v1.0.0 %s (no index, OFFSET)", q.name)
        await _offset_ms(conn, q.v100_sql, q, shallow[:3], page_size)  # warm-up, not counted
        before[q.name] = (
            await _offset_ms(conn, q.v100_sql, q, shallow, page_size),
            await _offset_ms(conn, q.v100_sql, q, deep, page_size),
        )
    log.info("building the TARS-1004 indexes concurrently")
    builds, _ = await indexes.apply(conn, schema="public", settings=settings, log=log)
    figures = []
    for q in HOT_QUERIES.values():
        shallow, deep = plans[q.name]
        shallow_k, deep_k = await _with_keys(conn, q, shallow), await _with_keys(conn, q, deep)
        log.info("measuring v1.0.1 %s (index, keyset)", q.name)
        await _keyset_ms(conn, q, shallow_k[:3], page_size)  # warm-up
        offset_sql = q.first_sql.rsplit(" LIMIT ", 1)[0] + f" LIMIT ${len(q.filters) + 1} OFFSET ${len(q.filters) + 2}"
        figures.append(
            QueryFigures(
                query=q.name,
                before=Percentiles.of(before[q.name][0]),
                after=Percentiles.of(await _keyset_ms(conn, q, shallow_k, page_size)),
                deep_before=Percentiles.of(before[q.name][1]),
                deep_offset_indexed=Percentiles.of(await _offset_ms(conn, offset_sql, q, deep, page_size)),
                deep_after=Percentiles.of(await _keyset_ms(conn, q, deep_k, page_size)),
                max_depth=max(r.offset for r in deep),
            )
        )
    return BenchReport(size=size, seed_seconds=seed_seconds, server_version=version, queries=figures, builds=builds)
