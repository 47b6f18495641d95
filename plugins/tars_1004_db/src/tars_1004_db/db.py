"""The v1.0.0 baseline: connecting with one-line errors, the evaluation schema, and the seed generator.

The seed exists so that the fix is measured on data shaped like production: a few hot agents own a large
share of the evaluations, regions are uneven and recent days are denser than old ones. That skew is what
makes the v1.0.0 queries slow (and what a too-optimistic benchmark on uniform data would hide), so the
generator is deterministic (``random_seed``) and loads through COPY to keep 1M rows a matter of seconds.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tars_core import FixError, TargetError
from tars_core.redact import host_port

REGIONS: tuple[tuple[str, float], ...] = (
    ("us-east-1", 0.42),
    ("eu-west-1", 0.24),
    ("us-west-2", 0.16),
    ("ap-southeast-1", 0.11),
    ("sa-east-1", 0.05),
    ("af-south-1", 0.02),
)
STATUSES: tuple[str, ...] = ("pending", "running", "completed", "failed")
EVALUATION_COLUMNS: tuple[str, ...] = (
    "agent_id",
    "region",
    "status",
    "reward",
    "duration_ms",
    "episodes",
    "created_at",
    "completed_at",
)


def sql_text(name: str) -> str:
    """A SQL file shipped in the package (``sql/<name>``)."""
    return resources.files("tars_1004_db").joinpath("sql", name).read_text(encoding="utf-8")


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database of the same server (scratch and test databases)."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


async def connect(
    dsn: str, *, timeout: float = 10.0, schema: str = "public", application_name: str = "tars-1004-db"
) -> asyncpg.Connection:
    """Open one autocommit connection, or raise ``TargetError`` (exit 2) with one line that says what to fix.

    Autocommit matters: ``CREATE INDEX CONCURRENTLY`` refuses to run inside a transaction block, and
    asyncpg only opens one when asked (``conn.transaction()``). Messages name the server by host:port
    only: a DSN can carry its password in the user part, in ``?password=`` or in keyword form.
    """
    if not dsn.startswith(("postgres://", "postgresql://")):
        raise TargetError("targets.postgres is not a PostgreSQL URL: use postgresql://user[:password]@host:port/db")
    try:
        urlsplit(dsn).port  # noqa: B018 - a bad port only raises when read
    except ValueError as exc:
        raise TargetError(f"targets.postgres has an invalid port: {exc}") from None
    where = host_port(dsn, 5432)
    try:
        return await asyncpg.connect(
            dsn,
            timeout=timeout,
            server_settings={"search_path": schema, "application_name": application_name},
        )
    except asyncpg.InvalidCatalogNameError as exc:
        raise TargetError(
            f"PostgreSQL at {where}: {one_line(exc)}; fix the database name in targets.postgres"
        ) from None
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
        raise TargetError(f"PostgreSQL at {where} refused the login: {one_line(exc)}; check targets.postgres") from None
    except (TimeoutError, OSError) as exc:
        if isinstance(exc, TimeoutError):
            reason = f"timed out after {timeout:g} s"
        else:
            reason = os.strerror(exc.errno).lower() if exc.errno else one_line(exc)
        raise TargetError(
            f"cannot reach PostgreSQL at {where} ({reason}): start the server or fix host/port in targets.postgres"
        ) from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise TargetError(f"cannot connect to PostgreSQL at {where}: {one_line(exc)}") from None


@asynccontextmanager
async def connected(
    dsn: str, *, timeout: float = 10.0, schema: str = "public", application_name: str = "tars-1004-db"
) -> AsyncIterator[asyncpg.Connection]:
    """``connect`` for an ``async with`` block: the connection is closed however the block ends."""
    conn = await connect(dsn, timeout=timeout, schema=schema, application_name=application_name)
    try:
        yield conn
    finally:
        await conn.close()


#: What a connection lost mid-phase raises (the server restarted or shut down, our backend was terminated,
#: the network cut): the hooks reconnect and go on. An ``InterfaceError`` counts only on a closed connection.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    ConnectionError,
)


def one_line(exc: BaseException) -> str:
    """An exception as one line, for FixError messages (asyncpg errors can carry DETAIL lines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


async def table_exists(conn: asyncpg.Connection, table: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))


async def ensure_schema(conn: asyncpg.Connection) -> None:
    """Create the v1.0.0 tables if they are missing (never alters existing ones)."""
    await conn.execute(sql_text("v1_0_0_schema.sql"))


def generate_evaluations(
    rows: int, *, agents: int = 200, random_seed: int = 1004, now: dt.datetime | None = None
) -> Iterator[tuple[Any, ...]]:
    """Evaluation rows in ``EVALUATION_COLUMNS`` order, oldest first, with production-like skew.

    - agents: Zipf(1.1) popularity, so the top three agents own about a third of all rows;
    - regions: fixed uneven shares (``REGIONS``);
    - age: exponential with a 20-day mean, capped at 180 days, so the last days are the densest;
    - status: the newest minutes are mostly pending/running, older rows completed (91%) or failed;
    - reward: per-agent mean plus noise, only for completed rows; duration log-normal around 30 s.

    Rows come out in creation order so that ids grow with ``created_at`` as they do when the API
    inserts them, which keeps the physical order (and the planner's correlation statistics) realistic.
    """
    rng = random.Random(random_seed)
    now = now or dt.datetime.now(dt.timezone.utc)
    agent_ids = list(range(1, agents + 1))
    agent_cum = _cumulative([1.0 / (k**1.1) for k in agent_ids])
    agent_mean = [rng.uniform(-50.0, 250.0) for _ in agent_ids]
    region_names = [r for r, _ in REGIONS]
    region_cum = _cumulative([w for _, w in REGIONS])
    max_age = 180 * 86400.0
    ages = sorted((min(rng.expovariate(1.0 / (20 * 86400.0)), max_age) for _ in range(rows)), reverse=True)
    agent_pick = rng.choices(agent_ids, cum_weights=agent_cum, k=rows)
    region_pick = rng.choices(region_names, cum_weights=region_cum, k=rows)
    # status thresholds (cumulative): the newest 15 minutes are mostly queued or running
    fresh = (0.45, 0.80, 0.95)
    old = (0.002, 0.005, 0.910)
    log_mu = math.log(30_000.0)
    rand = rng.random
    gauss = rng.gauss
    lognorm = rng.lognormvariate
    delta = dt.timedelta
    for age, agent, region in zip(ages, agent_pick, region_pick, strict=True):
        p_pending, p_running, p_completed = fresh if age < 900.0 else old
        r = rand()
        created = now - delta(seconds=age)
        if r >= p_running:
            duration = int(lognorm(log_mu, 0.8)) + 1
            completed = created + delta(milliseconds=duration)
            episodes = 10 + int(rand() * 990)
            if r < p_completed:
                yield (
                    agent,
                    region,
                    "completed",
                    round(gauss(agent_mean[agent - 1], 25.0), 3),
                    duration,
                    episodes,
                    created,
                    completed,
                )
            else:
                yield (agent, region, "failed", None, duration, episodes, created, completed)
        else:
            yield (agent, region, "pending" if r < p_pending else "running", None, None, 0, created, None)


def _cumulative(weights: list[float]) -> list[float]:
    total = 0.0
    out = []
    for w in weights:
        total += w
        out.append(total)
    return out


async def seed(
    conn: asyncpg.Connection,
    rows: int,
    *,
    agents: int = 200,
    random_seed: int = 1004,
) -> float:
    """Create the v1.0.0 schema and load ``rows`` evaluations in one transaction; returns seconds.

    Refuses to touch a table that already has evaluations (callers decide whether that means "already
    seeded"). The foreign key is dropped for the COPY and re-added afterwards: checking it once with one
    anti-join is an order of magnitude faster than a trigger per row, and the whole load is one
    transaction, so an interrupted seed leaves nothing behind and can simply run again.
    """
    started = time.perf_counter()
    async with conn.transaction():
        await ensure_schema(conn)
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM evaluations)"):
            raise FixError("evaluations already has rows: refusing to seed over existing data")
        await conn.executemany(
            "INSERT INTO agents (id, name, algorithm) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            [(i, f"agent-{i:04d}", ("ppo", "ppo", "ppo", "a2c", "dqn")[i % 5]) for i in range(1, agents + 1)],
        )
        await conn.execute("ALTER TABLE evaluations DROP CONSTRAINT IF EXISTS evaluations_agent_id_fkey")
        await conn.copy_records_to_table(
            "evaluations",
            records=generate_evaluations(rows, agents=agents, random_seed=random_seed),
            columns=list(EVALUATION_COLUMNS),
        )
        await conn.execute(
            "ALTER TABLE evaluations ADD CONSTRAINT evaluations_agent_id_fkey "
            "FOREIGN KEY (agent_id) REFERENCES agents (id)"
        )
    # statistics and the visibility map, so the planner sees the real skew and the first queries
    # do not pay for hint bits
    await conn.execute("VACUUM (ANALYZE) agents, evaluations")
    return time.perf_counter() - started
