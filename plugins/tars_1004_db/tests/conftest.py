"""Fixtures: a real PostgreSQL server, one seeded template database per session, a fresh copy per test.

Every database here is created by the test run (names ``tars1004_<random>``) and dropped afterwards;
nothing else on the server is touched. ``TARS_TEST_POSTGRES`` points at the server (default: the local
trust-auth cluster), ``TARS_1004_TEST_ROWS`` sizes the seed (default 100,000: enough for builds that
take a noticeable moment, small enough that the suite runs in about a minute on two cores).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tars_1004_db import db
from tars_1004_db import plugin as plugin_module

from tars_core import Context, Targets
from tars_core.testing import make_context

SERVER = os.environ.get("TARS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
TEST_ROWS = int(os.environ.get("TARS_1004_TEST_ROWS", "100000"))
# fast retries so failure paths take seconds, not the production minute
FAST = {"lock_timeout_ms": 1000, "attempts": 3, "retry_delay_s": 0.2, "connect_timeout_s": 3.0}


def dsn_for(database: str) -> str:
    return db.with_database(SERVER, database)


async def _admin(sql: str) -> None:
    async with db.connected(SERVER) as conn:
        await conn.execute(sql)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg is asyncio-only


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A database seeded once with the v1.0.0 schema and ``TEST_ROWS`` evaluations."""
    name = f"tars1004_tpl_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        await _admin(f'CREATE DATABASE "{name}"')
        async with db.connected(dsn_for(name)) as conn:
            await db.seed(conn, TEST_ROWS)

    asyncio.run(create())
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database(template_db: str) -> Iterator[str]:
    """DSN of a private copy of the seeded template (a file-level copy: fast, and tests stay independent)."""
    name = f"tars1004_t_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    yield dsn_for(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"tars1004_e_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield dsn_for(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(name="dsn_for")
def dsn_for_fixture() -> Any:
    return dsn_for


@pytest.fixture
def make_ctx(tmp_path: Path) -> Any:
    def make(dsn: str | None, *, dry_run: bool = False, **config: Any) -> Context:
        return make_context(
            plugin_module,
            targets=Targets(postgres=dsn),
            config={**FAST, **config},
            state_dir=tmp_path / "state",
            dry_run=dry_run,
        )

    return make
