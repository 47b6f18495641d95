"""The release ledger: what every phase of every plugin did, and the lock that makes runs exclusive.

Two backends share one schema (versioned in ``tars_meta``): SQLite at ``.tars/state.db`` by default,
PostgreSQL (asyncpg, imported only when used) with ``--state postgresql://...`` so a team shares one
ledger. A phase row is written as ``running`` *before* the hook is called and closed after it; a row
still ``running`` when the next run holds the lock can only come from a run that died (SIGKILL, power
loss), which is how crash recovery finds the work it must resolve.

Locking: SQLite uses ``flock`` on a sibling ``.lock`` file (``state.db.lock``, ``state.db.<region>.lock``;
released by the kernel when the holder dies); PostgreSQL uses a session advisory lock whose key is derived
from the region (released when the holder's connection drops). In both cases the holder writes who it is
(host, pid, start time) so a refused run can name it. A schema migration is serialised too (a flock on
``state.db.migrate``; an advisory lock of its own), so two runs opening an old ledger migrate it once.

Regions: a ledger is opened for one region (``release.region`` / ``--region``; ``""`` is the ledger
without regions, as every ledger before schema 3). Runs, phases, plugin states, benchmarks, judgements
and the run lock belong to a region, so runners of different regions of one release proceed in parallel
on one shared ledger while two runners of the same region still exclude each other; crash recovery only
touches the rows of its own region. Reads take an optional ``region`` so ``status`` and ``report`` can
show every region.

Every write is one statement or one transaction (a row is replaced with an upsert, never DELETE then
INSERT), so a SIGKILL at any instant leaves the old row or the new one. Outcomes and states are the
enums of :mod:`tars_core.model`, stored as their string values.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs

from tars_core.config import check_region
from tars_core.errors import LedgerError, LockHeld
from tars_core.model import Evidence, JudgementRecord, Outcome, PhaseRecord, PluginState

T = TypeVar("T")

SCHEMA_VERSION = 3
ADVISORY_KEY = 0x7A125  # arbitrary constant shared by every tars-run using the same database (region "")
BUSY_TIMEOUT = 30.0  # seconds a SQLite write waits for another process's write lock before giving up
HOLDER_WAIT = 2.0  # seconds a refused run waits for the holder's identity to appear (see acquire)
CRASHED = "crashed"  # tars_runs.outcome of a run whose process died; the others are ExitCode names

_TABLES = [
    "CREATE TABLE IF NOT EXISTS tars_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS tars_runs (
        run_id TEXT PRIMARY KEY, release TEXT NOT NULL, command TEXT NOT NULL, host TEXT NOT NULL,
        pid INTEGER NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, outcome TEXT)""",
    """CREATE TABLE IF NOT EXISTS tars_phases (
        id {serial}, run_id TEXT NOT NULL, release TEXT NOT NULL, plugin TEXT NOT NULL,
        phase TEXT NOT NULL, outcome TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT,
        error TEXT, detail TEXT, version TEXT NOT NULL, config_digest TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tars_state (
        release TEXT NOT NULL, plugin TEXT NOT NULL, state TEXT NOT NULL, version TEXT NOT NULL,
        config_digest TEXT NOT NULL, updated_at TEXT NOT NULL, run_id TEXT NOT NULL,
        PRIMARY KEY (release, plugin))""",
    """CREATE TABLE IF NOT EXISTS tars_benchmarks (
        release TEXT NOT NULL, plugin TEXT NOT NULL, run_id TEXT NOT NULL, at TEXT NOT NULL,
        data TEXT NOT NULL, PRIMARY KEY (release, plugin))""",
    """CREATE TABLE IF NOT EXISTS tars_lock (
        id INTEGER PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started_at TEXT NOT NULL,
        command TEXT NOT NULL)""",
]
# schema version -> the statements that bring a ledger of the version before it up to it (in place)
_MIGRATIONS: dict[int, list[str]] = {
    2: [
        """CREATE TABLE IF NOT EXISTS tars_judgements (
        id {serial}, run_id TEXT NOT NULL, release TEXT NOT NULL, monitor TEXT NOT NULL, plugin TEXT,
        kind TEXT NOT NULL, verdict TEXT NOT NULL, reasons TEXT NOT NULL, evidence TEXT NOT NULL,
        score DOUBLE PRECISION, started_at TEXT NOT NULL, ended_at TEXT NOT NULL)""",
    ],
    # regions: every row belongs to one ("" for the rows written before, i.e. the ledger without regions);
    # the tables whose primary key must include it are rebuilt (SQLite cannot change a primary key)
    3: [
        "ALTER TABLE tars_runs ADD COLUMN region TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE tars_phases ADD COLUMN region TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE tars_judgements ADD COLUMN region TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE tars_state_v3 (
        release TEXT NOT NULL, region TEXT NOT NULL DEFAULT '', plugin TEXT NOT NULL, state TEXT NOT NULL,
        version TEXT NOT NULL, config_digest TEXT NOT NULL, updated_at TEXT NOT NULL, run_id TEXT NOT NULL,
        PRIMARY KEY (release, region, plugin))""",
        "INSERT INTO tars_state_v3 (release, plugin, state, version, config_digest, updated_at, run_id) "
        "SELECT release, plugin, state, version, config_digest, updated_at, run_id FROM tars_state",
        "DROP TABLE tars_state",
        "ALTER TABLE tars_state_v3 RENAME TO tars_state",
        """CREATE TABLE tars_benchmarks_v3 (
        release TEXT NOT NULL, region TEXT NOT NULL DEFAULT '', plugin TEXT NOT NULL, run_id TEXT NOT NULL,
        at TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (release, region, plugin))""",
        "INSERT INTO tars_benchmarks_v3 (release, plugin, run_id, at, data) "
        "SELECT release, plugin, run_id, at, data FROM tars_benchmarks",
        "DROP TABLE tars_benchmarks",
        "ALTER TABLE tars_benchmarks_v3 RENAME TO tars_benchmarks",
        # one holder row per region; ``id`` is no longer read (kept so a schema-2 style INSERT still fits)
        """CREATE TABLE tars_lock_v3 (
        region TEXT NOT NULL DEFAULT '' PRIMARY KEY, id INTEGER, host TEXT NOT NULL, pid INTEGER NOT NULL,
        started_at TEXT NOT NULL, command TEXT NOT NULL)""",
        "INSERT INTO tars_lock_v3 (region, id, host, pid, started_at, command) "
        "SELECT '', id, host, pid, started_at, command FROM tars_lock WHERE id=1",
        "DROP TABLE tars_lock",
        "ALTER TABLE tars_lock_v3 RENAME TO tars_lock",
    ],
}
_JUDGEMENT_COLS = "run_id, monitor, plugin, kind, verdict, reasons, evidence, score, started_at, ended_at"
_PHASE_COLS = "run_id, plugin, phase, outcome, started_at, ended_at, error, detail, version, config_digest"


def advisory_key(region: str) -> int:
    """The PostgreSQL advisory lock of a region's runs: :data:`ADVISORY_KEY` for the ledger without
    regions (what every tars-run before regions took), else a stable signed 64-bit digest of the name."""
    if not region:
        return ADVISORY_KEY
    return int.from_bytes(hashlib.sha256(f"tars-region:{region}".encode()).digest()[:8], "big", signed=True)


def describe_region(region: str) -> str:
    return f"region {region}" if region else "no region"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@attrs.frozen
class Holder:
    host: str
    pid: int
    started_at: str
    command: str

    @classmethod
    def me(cls, command: str) -> Holder:
        return cls(socket.gethostname(), os.getpid(), now(), command)

    def describe(self) -> str:
        return f"{self.command} by pid {self.pid} on {self.host}, started {self.started_at}"


def _read_holder(fd: int) -> Holder | None:
    """The identity in a lock file (``None``: empty or half-written, i.e. being written or cleared)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096).decode()
        return Holder(**json.loads(data)) if data.strip() else None
    except (OSError, ValueError, TypeError):
        return None


class Ledger(ABC):
    """Backend-neutral ledger API; every method is async because the PostgreSQL backend is.

    ``on_wait`` (if set) is told, every ``on_wait_every`` seconds, how long a write has been waiting for
    a lock another process holds, so the runner can say why nothing moves.
    """

    location: str
    region: str = ""  # the region this ledger writes (see the module docstring); "" = no region
    on_wait: Callable[[float], None] | None = None
    on_wait_every: float = 5.0

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def acquire(self, holder: Holder) -> None:
        """Take the run lock or raise :class:`LockHeld` naming the current holder."""

    @abstractmethod
    async def release_lock(self) -> None: ...

    @abstractmethod
    async def holder(self, region: str | None = None) -> Holder | None:
        """Who holds the run lock of ``region`` (default: ours) right now (``None``: free), without taking it."""

    def _region(self, region: str | None) -> str:
        return self.region if region is None else region

    def _where(self) -> str:
        """Where the lock is, for :class:`LockHeld`: the ledger, and the region when there is one."""
        return f"{self.location}, {describe_region(self.region)}" if self.region else self.location

    @abstractmethod
    async def _execute(self, sql: str, *args: Any) -> None: ...

    @abstractmethod
    async def _fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    async def _insert_phase(self, values: Sequence[Any]) -> int: ...

    @abstractmethod
    async def _atomic(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run ``statements`` in one transaction: all of them or none."""

    # -- runs and phases -------------------------------------------------------------------------
    async def start_run(self, run_id: str, release: str, command: str) -> None:
        await self._execute(
            "INSERT INTO tars_runs (run_id, release, command, host, pid, started_at, region) "
            "VALUES ($1,$2,$3,$4,$5,$6,$7)",
            run_id,
            release,
            command,
            socket.gethostname(),
            os.getpid(),
            now(),
            self.region,
        )

    async def end_run(self, run_id: str, outcome: str) -> None:
        """Close the run; ``outcome`` is an ``ExitCode`` name in lower case (``ok``, ``manual_action``...)."""
        await self._execute("UPDATE tars_runs SET ended_at=$1, outcome=$2 WHERE run_id=$3", now(), outcome, run_id)

    async def phase_start(self, run_id: str, release: str, plugin: str, phase: str, version: str, digest: str) -> int:
        return await self._insert_phase(
            (run_id, release, plugin, phase, str(Outcome.RUNNING), now(), version, digest, self.region)
        )

    async def phase_end(
        self, phase_id: int, outcome: Outcome, error: str | None = None, detail: str | None = None
    ) -> None:
        await self._execute(
            "UPDATE tars_phases SET outcome=$1, ended_at=$2, error=$3, detail=$4 WHERE id=$5",
            str(outcome),
            now(),
            error,
            detail,
            phase_id,
        )

    async def unfinished(self, region: str | None = None) -> list[tuple[int, PhaseRecord, str]]:
        """Phases of ``region`` (default: ours) left ``running`` by a dead run (or in flight in a run that
        holds that region's lock), with their row id and release."""
        rows = await self._fetch(
            f"SELECT id, release, {_PHASE_COLS} FROM tars_phases WHERE outcome=$1 AND region=$2 ORDER BY id",
            str(Outcome.RUNNING),
            self._region(region),
        )
        return [(int(r[0]), PhaseRecord(*r[2:]), str(r[1])) for r in rows]

    async def close_dead_runs(self, current: str) -> list[str]:
        """Mark runs of our region that never ended (their process died) as crashed; called with our
        region's lock held (another region's open run is alive under its own lock)."""
        rows = await self._fetch(
            "SELECT run_id FROM tars_runs WHERE ended_at IS NULL AND run_id <> $1 AND region=$2", current, self.region
        )
        if rows:
            await self._execute(
                "UPDATE tars_runs SET ended_at=$1, outcome=$2 WHERE ended_at IS NULL AND run_id <> $3 AND region=$4",
                now(),
                CRASHED,
                current,
                self.region,
            )
        return [r[0] for r in rows]

    async def phases(self, release: str, region: str | None = None) -> list[PhaseRecord]:
        rows = await self._fetch(
            f"SELECT {_PHASE_COLS} FROM tars_phases WHERE release=$1 AND region=$2 ORDER BY id",
            release,
            self._region(region),
        )
        return [PhaseRecord(*r) for r in rows]

    async def last_run(self, region: str | None = None) -> dict[str, Any] | None:
        """The latest run of ``region`` (default: ours), of any release: the one its lock last served."""
        rows = await self._fetch(
            "SELECT run_id, release, command, host, pid, started_at, ended_at, outcome FROM tars_runs "
            "WHERE region=$1 ORDER BY started_at DESC LIMIT 1",
            self._region(region),
        )
        keys = ("run_id", "release", "command", "host", "pid", "started_at", "ended_at", "outcome")
        return dict(zip(keys, rows[0], strict=True)) if rows else None

    async def regions(self, release: str) -> list[str]:
        """Every region that has run, or holds a state, of ``release`` (``""``: rows without a region)."""
        rows = await self._fetch(
            "SELECT region FROM tars_runs WHERE release=$1 UNION SELECT region FROM tars_state WHERE release=$1 "
            "UNION SELECT region FROM tars_phases WHERE release=$1",
            release,
        )
        return sorted({str(r[0]) for r in rows})

    # -- per-plugin state ------------------------------------------------------------------------
    async def set_state(
        self, release: str, plugin: str, state: PluginState, version: str, digest: str, run_id: str
    ) -> None:
        await self._execute(
            "INSERT INTO tars_state (release, region, plugin, state, version, config_digest, updated_at, run_id) "
            "VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (release, region, plugin) DO UPDATE SET "
            "state=excluded.state, version=excluded.version, config_digest=excluded.config_digest, "
            "updated_at=excluded.updated_at, run_id=excluded.run_id",
            release,
            self.region,
            plugin,
            str(state),
            version,
            digest,
            now(),
            run_id,
        )

    async def states(self, release: str, region: str | None = None) -> dict[str, dict[str, str]]:
        rows = await self._fetch(
            "SELECT plugin, state, version, config_digest, updated_at, run_id FROM tars_state "
            "WHERE release=$1 AND region=$2",
            release,
            self._region(region),
        )
        keys = ("state", "version", "config_digest", "updated_at", "run_id")
        return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}

    async def save_benchmark(self, release: str, plugin: str, run_id: str, data: dict[str, Any]) -> None:
        await self._execute(
            "INSERT INTO tars_benchmarks (release, region, plugin, run_id, at, data) VALUES ($1,$2,$3,$4,$5,$6) "
            "ON CONFLICT (release, region, plugin) DO UPDATE SET run_id=excluded.run_id, at=excluded.at, "
            "data=excluded.data",
            release,
            self.region,
            plugin,
            run_id,
            now(),
            json.dumps(data),
        )

    async def benchmarks(self, release: str, region: str | None = None) -> dict[str, dict[str, Any]]:
        rows = await self._fetch(
            "SELECT plugin, data FROM tars_benchmarks WHERE release=$1 AND region=$2", release, self._region(region)
        )
        return {r[0]: json.loads(r[1]) for r in rows}

    # -- release gates ---------------------------------------------------------------------------
    async def save_judgement(self, release: str, record: JudgementRecord) -> None:
        """One row per judgement, in one INSERT: a crash leaves the judgement recorded whole or not at all."""
        evidence = [attrs.asdict(e) for e in record.evidence]
        await self._execute(
            f"INSERT INTO tars_judgements (release, region, {_JUDGEMENT_COLS}) "
            "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
            release,
            self.region,
            record.run_id,
            record.monitor,
            record.plugin,
            record.kind,
            record.verdict,
            json.dumps(list(record.reasons)),
            json.dumps(evidence),
            record.score,
            record.started_at,
            record.ended_at,
        )

    async def judgements(self, release: str, region: str | None = None) -> list[JudgementRecord]:
        rows = await self._fetch(
            f"SELECT {_JUDGEMENT_COLS} FROM tars_judgements WHERE release=$1 AND region=$2 ORDER BY id",
            release,
            self._region(region),
        )
        return [
            JudgementRecord(
                run_id=r[0],
                monitor=r[1],
                plugin=r[2],
                kind=r[3],
                verdict=r[4],
                reasons=tuple(json.loads(r[5])),
                evidence=tuple(Evidence(**e) for e in json.loads(r[6])),
                score=None if r[7] is None else float(r[7]),
                started_at=r[8],
                ended_at=r[9],
            )
            for r in rows
        ]

    async def _migrate(self) -> None:
        """Create the schema, or bring an older one up to date, in one transaction each, so a killed run
        leaves the old schema or the new one, never half of it (the version row changes with the tables)."""
        await self._execute(_TABLES[0])
        rows = await self._fetch("SELECT value FROM tars_meta WHERE key='schema_version'")
        found = int(rows[0][0]) if rows else None
        if found is not None and found > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.location} has schema {found}, newer than this tars-run ({SCHEMA_VERSION}); "
                "upgrade tars-core"
            )
        if found == SCHEMA_VERSION:
            return
        if found is None:
            ddl = _TABLES[1:] + [stmt for version in sorted(_MIGRATIONS) for stmt in _MIGRATIONS[version]]
        else:
            ddl = [stmt for version in sorted(_MIGRATIONS) if version > found for stmt in _MIGRATIONS[version]]
        statements: list[tuple[str, Sequence[Any]]] = [(sql.format(serial=self._serial), ()) for sql in ddl]
        statements.append(
            (
                "INSERT INTO tars_meta (key, value) VALUES ('schema_version', $1) "
                "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (str(SCHEMA_VERSION),),
            )
        )
        await self._atomic(statements)

    _serial = "INTEGER PRIMARY KEY AUTOINCREMENT"


class SQLiteLedger(Ledger):
    """The embedded default; SQLite's own locking is per transaction, so the run lock is a flock.

    Every statement runs in a worker thread, one at a time on one connection, so the event loop keeps
    serving Ctrl-C and progress while SQLite waits for a write lock another process holds. The wait is
    cut into short busy timeouts, retried (a statement refused with SQLITE_BUSY did nothing) and reported
    through ``on_wait``, up to :data:`BUSY_TIMEOUT`.
    """

    def __init__(self, path: Path, region: str = "") -> None:
        self.path = path
        self.location = str(path)
        self.region = region
        self.lock_path = self._lock_path(region)
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    async def open(self) -> None:
        self._limiter = anyio.CapacityLimiter(1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=0.2, check_same_thread=False)
            await self._call(lambda db: db.execute("PRAGMA journal_mode=WAL"))
            await self._call(lambda db: db.execute("PRAGMA synchronous=NORMAL"))
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}; check --state and permissions") from None
        # Two runs opening an older ledger at once (two regions starting together) must not both migrate
        # it: a flock around the check and the migration, as PostgreSQL's advisory lock does there.
        fd = os.open(self.path.with_name(self.path.name + ".migrate"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX)
            await self._migrate()
        finally:
            os.close(fd)  # releases the flock

    async def close(self) -> None:
        await self.release_lock()
        if self._db is not None:
            await self._call(lambda db: db.close())
            self._db = None

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._db is not None and self._limiter is not None
        return await anyio.to_thread.run_sync(self._patiently, fn, limiter=self._limiter)

    def _patiently(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the worker thread, retrying while another process holds the write lock."""
        assert self._db is not None
        start = told = time.monotonic()
        while True:
            try:
                return fn(self._db)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
            waited = time.monotonic() - start
            if waited >= BUSY_TIMEOUT:
                raise LedgerError(
                    f"ledger {self.location} stayed locked by another process for {BUSY_TIMEOUT:g}s; "
                    f"find it (fuser {self.location}) and run again"
                )
            if self.on_wait is not None and time.monotonic() - told >= self.on_wait_every:
                told = time.monotonic()
                self.on_wait(waited)

    async def acquire(self, holder: Holder) -> None:
        """Take the flock and write who we are into the lock file.

        The holder writes its identity just after the lock becomes visible, and empties the file just
        before it lets go, so a loser can find the lock held and the file empty: it then looks again
        (and tries the lock again) for up to :data:`HOLDER_WAIT` seconds instead of naming "an unknown
        process" (1 race in 6 when two applies started together).
        """
        deadline = time.monotonic() + HOLDER_WAIT
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                current = _read_holder(fd)
                if current is None and time.monotonic() < deadline:
                    await anyio.sleep(0.01)
                    continue
                os.close(fd)
                raise LockHeld(current, self._where()) from None
            break
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(attrs.asdict(holder)).encode())
        os.fsync(fd)
        self._lock_fd = fd

    def _lock_path(self, region: str) -> Path:
        """The run lock of a region: ``state.db.lock`` without one (as before regions), else
        ``state.db.<region>.lock`` (a region name is a plain file-name word, see :data:`REGION`)."""
        return self.path.with_name(f"{self.path.name}.{region}.lock" if region else f"{self.path.name}.lock")

    async def holder(self, region: str | None = None) -> Holder | None:
        deadline = time.monotonic() + HOLDER_WAIT
        fd = os.open(self._lock_path(self._region(region)), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    current = _read_holder(fd)
                    if current is None and time.monotonic() < deadline:
                        await anyio.sleep(0.01)
                        continue
                    return current or Holder("?", 0, "?", "unknown")
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
        finally:
            os.close(fd)

    async def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @staticmethod
    def _sql(sql: str) -> str:
        # The statements are written with PostgreSQL placeholders; SQLite accepts ?NNN.
        return re.sub(r"\$(\d+)", r"?\1", sql)

    async def _execute(self, sql: str, *args: Any) -> None:
        await self._call(lambda db: db.execute(self._sql(sql), args))

    async def _fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self._call(lambda db: list(db.execute(self._sql(sql), args).fetchall()))

    async def _insert_phase(self, values: Sequence[Any]) -> int:
        sql = (
            "INSERT INTO tars_phases (run_id, release, plugin, phase, outcome, started_at, version, config_digest,"
            " region) VALUES (?,?,?,?,?,?,?,?,?)"
        )
        return await self._call(lambda db: int(db.execute(sql, tuple(values)).lastrowid or 0))

    async def _atomic(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")  # takes the write lock first: SQLITE_BUSY here has changed nothing
            try:
                for sql, args in statements:
                    db.execute(self._sql(sql), tuple(args))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        await self._call(run)


class PostgresLedger(Ledger):
    """A shared ledger in PostgreSQL; the advisory lock lives as long as this connection."""

    _serial = "BIGSERIAL PRIMARY KEY"

    def __init__(self, dsn: str, redacted: str, region: str = "") -> None:
        self.dsn = dsn
        self.location = redacted
        self.region = region
        self._key = advisory_key(region)
        self._conn: Any = None
        self._locked = False

    async def open(self) -> None:
        import asyncpg

        try:
            self._conn = await asyncpg.connect(self.dsn, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LedgerError(f"cannot connect to ledger {self.location}: {msg}; check --state") from None
        await self._conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_KEY + 1)  # serialise migration
        try:
            await self._migrate()
        finally:
            await self._conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_KEY + 1)

    async def close(self) -> None:
        await self.release_lock()
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def acquire(self, holder: Holder) -> None:
        """The session advisory lock, then our row in ``tars_lock``; a loser that finds no row yet (taken,
        not written; or being released) looks again for up to :data:`HOLDER_WAIT` s (see SQLite's)."""
        deadline = time.monotonic() + HOLDER_WAIT
        while not await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key):
            current = await self._lock_row(self.region)
            if current is not None or time.monotonic() >= deadline:
                raise LockHeld(current, self._where())
            await anyio.sleep(0.01)
        self._locked = True
        await self._conn.execute(
            "INSERT INTO tars_lock (region, host, pid, started_at, command) VALUES ($1,$2,$3,$4,$5) "
            "ON CONFLICT (region) DO UPDATE SET host=excluded.host, pid=excluded.pid, "
            "started_at=excluded.started_at, command=excluded.command",
            self.region,
            holder.host,
            holder.pid,
            holder.started_at,
            holder.command,
        )

    async def _lock_row(self, region: str) -> Holder | None:
        row = await self._conn.fetchrow("SELECT host, pid, started_at, command FROM tars_lock WHERE region=$1", region)
        return Holder(**dict(row)) if row else None

    async def holder(self, region: str | None = None) -> Holder | None:
        region = self._region(region)
        if self._locked and region == self.region:
            return Holder.me("this run")
        key = advisory_key(region)
        deadline = time.monotonic() + HOLDER_WAIT
        while True:
            if await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                await self._conn.execute("SELECT pg_advisory_unlock($1)", key)
                return None
            current = await self._lock_row(region)
            if current is not None:
                return current
            if time.monotonic() >= deadline:
                return Holder("?", 0, "?", "unknown")
            await anyio.sleep(0.01)

    async def release_lock(self) -> None:
        if self._locked and self._conn is not None:
            await self._conn.execute("DELETE FROM tars_lock WHERE region=$1", self.region)
            await self._conn.execute("SELECT pg_advisory_unlock($1)", self._key)
            self._locked = False

    async def _execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, *args)

    async def _fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._conn.fetch(sql, *args)]

    async def _atomic(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        async with self._conn.transaction():
            for sql, args in statements:
                await self._conn.execute(sql, *args)

    async def _insert_phase(self, values: Sequence[Any]) -> int:
        return int(
            await self._conn.fetchval(
                "INSERT INTO tars_phases (run_id, release, plugin, phase, outcome, started_at, version,"
                " config_digest, region) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) RETURNING id",
                *values,
            )
        )


def open_ledger(url: str | None, root: Path, redact: Any, region: str = "") -> Ledger:
    """``None`` or ``sqlite:///path`` -> SQLite; ``postgresql://`` / ``postgres://`` -> PostgreSQL; either
    written for ``region`` (``""``: no region). Both backends take regions with the same meaning; a SQLite
    file serves the regions of one machine (its locks are flocks), PostgreSQL those of many."""
    if region:
        check_region(region, "--region")
    if not url:
        return SQLiteLedger(root / ".tars" / "state.db", region)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(url, redact(url), region)
    if url.startswith("sqlite:///"):
        return SQLiteLedger(Path(url[len("sqlite:///") :]), region)
    raise LedgerError(f"unsupported --state {redact(url)!r}: use sqlite:///PATH or postgresql://...")
