"""Fixtures: the core's real PostgreSQL server, one seeded template database per session, a fresh copy
per test.

The server is tars_core.testing's ``tars_postgres_url`` (``TARS_TEST_POSTGRES``, default the local
trust-auth cluster) and every database is made and dropped by its ``create_database`` /
``tars_postgres_db``, so nothing else on the server is touched. ``TARS_1004_TEST_ROWS`` sizes the seed
(default 100,000: enough for builds that take a noticeable moment, small enough that the suite runs in
about a minute on two cores).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tars_1004_db import db
from tars_1004_db import plugin as plugin_module

from tars_core import Context, Targets
from tars_core.testing import create_database, database_url, drop_database, make_context

TEST_ROWS = int(os.environ.get("TARS_1004_TEST_ROWS", "100000"))
# fast retries so failure paths take seconds, not the production minute
FAST = {"lock_timeout_ms": 1000, "attempts": 3, "retry_delay_s": 0.2, "connect_timeout_s": 3.0}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg is asyncio-only


@pytest.fixture(scope="session")
def template_db(tars_postgres_url: str) -> Iterator[str]:
    """URL of a database seeded once with the v1.0.0 schema and ``TEST_ROWS`` evaluations."""
    url = create_database(tars_postgres_url, prefix="tars1004_tpl")
    try:

        async def seed() -> None:
            async with db.connected(url) as conn:
                await db.seed(conn, TEST_ROWS)

        asyncio.run(seed())
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def database(template_db: str, tars_postgres_db: Callable[..., str]) -> str:
    """DSN of a private copy of the seeded template (a file-level copy: fast, and tests stay independent)."""
    return tars_postgres_db(template=template_db)


@pytest.fixture
def empty_database(tars_postgres_db: Callable[..., str]) -> str:
    """DSN of a database with nothing in it (no evaluation schema)."""
    return tars_postgres_db()


@pytest.fixture
def dsn_for(tars_postgres_url: str) -> Callable[[str], str]:
    """``dsn_for(name)``: the test server's URL pointing at database ``name``."""
    return lambda name: database_url(tars_postgres_url, name)


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
