"""Ledger writes survive SIGKILL at any instant: a plugin's state and benchmark rows are replaced, never lost.

A subprocess rewrites every plugin's state and benchmark rows as fast as it can; the test kills it with
SIGKILL at random moments, again and again, and after every kill reads the ledger (a real SQLite file, or
a real PostgreSQL database created for the test) with a separate connection.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

KILLS = 30
PLUGINS = [f"fix-{i}" for i in range(5)]
HAMMER = """
import sys
from pathlib import Path

import anyio

from tars_core.ledger import open_ledger

PLUGINS = [f"fix-{i}" for i in range(5)]
STATES = ["applying", "applied", "rolled_back"]


async def main(url: str) -> None:
    ledger = open_ledger(url, Path.cwd(), str)
    await ledger.open()
    for p in PLUGINS:
        await ledger.set_state("v1", p, "applied", "1.0", "digest", "r0")
        await ledger.save_benchmark("v1", p, "r0", {"n": 0})
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        for p in PLUGINS:
            await ledger.set_state("v1", p, STATES[n % 3], "1.0", "digest", f"r{n}")
            await ledger.save_benchmark("v1", p, f"r{n}", {"n": n})


anyio.run(main, sys.argv[1])
"""


def kill_loop(url: str, cwd: Path, rows: Callable[[str], set[str]]) -> None:
    """Start the hammer, let it write for a random moment, SIGKILL it; every plugin must keep both rows."""
    rng = random.Random()
    for kill in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-c", HAMMER, url], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=30)
            time.sleep(rng.uniform(0.005, 0.2))
            assert proc.poll() is None, proc.communicate()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for table in ("tars_state", "tars_benchmarks"):
            assert rows(table) == set(PLUGINS), f"after kill {kill + 1}: {table} lost rows"


def test_sqlite_rows_survive_sigkill_at_any_moment(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    def rows(table: str) -> set[str]:
        db = sqlite3.connect(path)
        try:
            return {r[0] for r in db.execute(f"SELECT plugin FROM {table} WHERE release='v1'")}
        finally:
            db.close()

    kill_loop(f"sqlite:///{path}", tmp_path, rows)


def test_postgres_rows_survive_sigkill_at_any_moment(tmp_path: Path, tars_postgres_db: Callable[..., str]) -> None:
    pg_database = tars_postgres_db()
    import anyio
    import asyncpg

    async def fetch(table: str) -> set[str]:
        conn = await asyncpg.connect(pg_database)
        try:
            return {r[0] for r in await conn.fetch(f"SELECT plugin FROM {table} WHERE release='v1'")}
        finally:
            await conn.close()

    kill_loop(pg_database, tmp_path, lambda table: anyio.run(fetch, table))
