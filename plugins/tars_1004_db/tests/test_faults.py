"""Issue 18 (faults get the contract's answer): TARS-1004 on a real PostgreSQL, with real signals.

An index build is held in flight by a young writer transaction (a concurrent build waits for every
writer of the table), so the fault lands mid-build every time without depending on the machine's speed.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _config(tmp_path: Path, database: str) -> Path:
    cfg = tmp_path / "tars.yaml"
    doc = {
        "targets": {"postgres": database},
        "release": {"timeout_grace": 30, "bake_time": 0},
        "plugins": {"tars-1004-db": {"lock_timeout_ms": 60_000, "attempts": 3, "retry_delay_s": 0.2}},
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
