"""Issue 18 (faults get the contract's answer): TARS-1004 on a real PostgreSQL, with real signals.

An index build is held in flight by a young writer transaction (a concurrent build waits for every
writer of the table), so the fault lands mid-build every time without depending on the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread
import asyncpg
import pytest
import yaml
from tars_1004_db import plugin
from tars_1004_db.indexes import index_specs

from tars_core.testing import assert_bad_config_refused
from tars_core.waiting import await_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

NAMES = [s.name for s in index_specs()]
TARS_RUN = str(Path(sys.executable).with_name("tars-run"))


def test_every_bad_config_value_is_refused_naming_its_key() -> None:
    """Defects 5 and 7: every numeric and enum key (lock_timeout_ms, attempts, ...) with a value of the wrong
    kind or out of range is refused on one line that names it, before anything runs."""
    cases = assert_bad_config_refused(plugin)
    assert len({c.path for c in cases}) > 5


async def _indexes(conn: asyncpg.Connection) -> dict[str, bool]:
    rows = await conn.fetch(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = ANY($1::text[])",
        NAMES,
    )
    return {r["relname"]: r["indisvalid"] for r in rows}


async def _waiting(conn: asyncpg.Connection, statement: str) -> int | None:
    """The pid of a tars-1004-db session whose ``statement`` waits for a lock."""
    pid = await conn.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'tars-1004-db' AND state = 'active' "
        "AND wait_event_type = 'Lock' AND query LIKE $1",
        statement + "%",
    )
    return None if pid is None else int(pid)


async def test_rollback_stops_a_build_an_interrupted_apply_left_running(database: str, make_ctx: Any) -> None:
    """Defect 1: the build of an apply that was interrupted goes on on the server; the rollback dropped
    against it and failed (DeadlockDetectedError, or lock timeouts) with exit 4. It must cancel that build,
    wait for it, and then drop what it left."""
    writer = await asyncpg.connect(database)
    orphan = await asyncpg.connect(database, server_settings={"application_name": "tars-1004-db"})
    watcher = await asyncpg.connect(database)
    try:
        await writer.execute("BEGIN; UPDATE evaluations SET episodes = episodes + 1 WHERE id = 7")
        build = orphan.execute(index_specs()[0].create_sql)  # what the interrupted apply left running
        import asyncio

        build_task = asyncio.ensure_future(build)
        pid = await await_until(lambda: _waiting(watcher, "CREATE INDEX"), timeout=15, interval=0.05, what="build")
        rollback = asyncio.ensure_future(plugin.tars_rollback(make_ctx(database, lock_timeout_ms=1000, attempts=3)))

        async def cancelled() -> bool:
            return bool(await watcher.fetchval("SELECT state <> 'active' FROM pg_stat_activity WHERE pid = $1", pid))

        await await_until(cancelled, timeout=15, interval=0.05, what="the rollback cancelling the orphan build")
        await writer.execute("ROLLBACK")  # the drop of the invalid leftover may now finish
        result = await rollback
        assert result.changed and NAMES[0] in result.detail
        with pytest.raises(asyncpg.QueryCanceledError):
            await build_task
        assert await _indexes(watcher) == {}
    finally:
        for conn in (writer, orphan, watcher):
            await conn.close()


def _config(tmp_path: Path, database: str, **section: Any) -> Path:
    cfg = tmp_path / "tars.yaml"
    plugin = {"lock_timeout_ms": 60_000, "attempts": 3, "retry_delay_s": 0.2, **section}
    doc = {
        "targets": {"postgres": database},
        "release": {"timeout_grace": 30, "bake_time": 0, "rollback_retry_delay": 0.2},
        "plugins": {"tars-1004-db": plugin},
    }
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def _tars_run(tmp_path: Path, *args: str) -> list[str]:
    return [TARS_RUN, "--plugins", "tars-1004-db", "--config", str(tmp_path / "tars.yaml"),
            "--state", f"sqlite:///{tmp_path / 'ledger.db'}", *args]  # fmt: skip


async def test_ctrl_c_during_an_index_build_rolls_back_and_exits_130(database: str, tmp_path: Path) -> None:
    """Defect 1 through the real CLI: SIGINT while the first index is being built. Exit 130, one final
    line, no traceback, no index left (valid or not), no build still running on the server, no
    ``running`` phase row; the next ordinary apply and rollback succeed."""
    _config(tmp_path, database)
    writer = await asyncpg.connect(database)
    watcher = await asyncpg.connect(database)
    try:
        await writer.execute("BEGIN; UPDATE evaluations SET episodes = episodes + 1 WHERE id = 7")
        run = subprocess.Popen(
            _tars_run(tmp_path, "apply"), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            await await_until(lambda: _waiting(watcher, "CREATE INDEX"), timeout=30, interval=0.05, what="build")
            run.send_signal(signal.SIGINT)

            async def rollback_waits_or_run_ended() -> bool:
                return run.poll() is not None or await _waiting(watcher, "DROP INDEX") is not None

            await await_until(rollback_waits_or_run_ended, timeout=30, interval=0.05, what="the rollback")
            await writer.execute("ROLLBACK")
            _, err = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
        assert run.returncode == 130, err
        assert "Traceback" not in err
        final = [line for line in err.splitlines() if line.startswith("tars-run:")]
        assert len(final) == 1 and "interrupted" in final[0] and "rolled back tars-1004-db" in final[0], err
        assert await _indexes(watcher) == {}
        busy = await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tars-1004-db' AND state = 'active'"
        )
        assert busy == 0
        with sqlite3.connect(tmp_path / "ledger.db") as db:
            assert db.execute("SELECT count(*) FROM tars_phases WHERE outcome = 'running'").fetchone() == (0,)
            assert db.execute("SELECT state FROM tars_state").fetchall() == [("rolled_back",)]
        again = subprocess.run(_tars_run(tmp_path, "apply"), cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert await _indexes(watcher) == dict.fromkeys(NAMES, True)
        back = subprocess.run(
            _tars_run(tmp_path, "rollback"), cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert back.returncode == 0, back.stderr
        assert await _indexes(watcher) == {}
    finally:
        await writer.close()
        await watcher.close()


class _Proxy:
    """A TCP proxy to the test server that a test can cut (connections dropped) or take down (refused)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self.pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        for w in list(self.pipes):
            w.transport.abort()
        self.pipes.clear()

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        self.cut()
        await self.server.wait_closed()


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{port}"))


async def _tars_run_async(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """tars-run in a thread, so the proxy in this event loop keeps serving it."""
    return await anyio.to_thread.run_sync(
        lambda: subprocess.run(_tars_run(tmp_path, *args), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    )


async def test_a_connection_lost_mid_apply_is_retried_and_the_apply_completes(database: str, tmp_path: Path) -> None:
    """Defects 8 and 9: the server ending our backend mid-build (a restart, an admin's terminate) was a raw
    'InterfaceError: connection is closed' and exit 1. Now the apply reconnects, repairs the INVALID
    leftover and finishes: exit 0, every index valid."""
    _config(tmp_path, database)
    writer = await asyncpg.connect(database)
    watcher = await asyncpg.connect(database)
    try:
        await writer.execute("BEGIN; UPDATE evaluations SET episodes = episodes + 1 WHERE id = 7")
        run = anyio.to_thread.run_sync(
            lambda: subprocess.run(
                _tars_run(tmp_path, "apply"), cwd=tmp_path, capture_output=True, text=True, timeout=180
            )
        )
        async with anyio.create_task_group() as tg:
            result: list[subprocess.CompletedProcess[str]] = []

            async def go() -> None:
                result.append(await run)

            tg.start_soon(go)
            pid = await await_until(lambda: _waiting(watcher, "CREATE INDEX"), timeout=30, interval=0.05, what="build")
            assert await watcher.fetchval("SELECT pg_terminate_backend($1)", pid)
            await writer.execute("ROLLBACK")
        res = result[0]
        assert res.returncode == 0, res.stderr
        assert "reconnecting" in res.stderr and "Traceback" not in res.stderr
        assert await _indexes(watcher) == dict.fromkeys(NAMES, True)
    finally:
        await writer.close()
        await watcher.close()


async def test_a_server_that_stays_away_is_exit_2_and_the_next_run_recovers(database: str, tmp_path: Path) -> None:
    """Defect 9: the server gone for good mid-apply is exit 2 with one line naming PostgreSQL and what to do
    (not exit 1 with a raw exception); the rollback is tried (the target may be half-applied) and, the
    server still away, the fix is left as it is; once it is back the next ordinary apply succeeds."""
    proxy = _Proxy(urlsplit(database).port or 5432)
    await proxy.start()
    _config(tmp_path, _via(database, proxy.port), reconnect_s=2)
    writer = await asyncpg.connect(database)
    watcher = await asyncpg.connect(database)
    try:
        await writer.execute("BEGIN; UPDATE evaluations SET episodes = episodes + 1 WHERE id = 7")
        result: list[subprocess.CompletedProcess[str]] = []
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                result.append(await _tars_run_async(tmp_path, "apply"))

            tg.start_soon(go)
            await await_until(lambda: _waiting(watcher, "CREATE INDEX"), timeout=30, interval=0.05, what="build")
            await proxy.down()
        await writer.execute("ROLLBACK")
        res = result[0]
        assert res.returncode == 2, res.stderr
        final = [line for line in res.stderr.splitlines() if line.startswith("tars-run:")]
        assert len(final) == 1 and "Traceback" not in res.stderr, res.stderr
        assert "lost the connection to PostgreSQL" in final[0] and "again once the target answers" in final[0]
        assert "rollback" in res.stderr
        await proxy.start()  # the same port again
        again = await _tars_run_async(tmp_path, "apply")
        assert again.returncode == 0, again.stderr
        assert await _indexes(watcher) == dict.fromkeys(NAMES, True)
    finally:
        await writer.close()
        await watcher.close()
        await proxy.down()
