"""TARS-1004 as a T.A.R.S. plugin: the hooks ``tars-run`` calls (entry point ``tars-1004-db``).

Importing this module must stay cheap (``tars-run list`` imports every plugin), so asyncpg and the
library modules are imported inside the hooks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import attrs

from tars_1004_db.config import DbFixConfig
from tars_core import ApplyResult, BenchmarkResult, PluginInfo, ReportSection, VerifyResult, hookimpl
from tars_core.model import SandboxContribution

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    import asyncpg

    from tars_core import Context, Release, SandboxSite

NAME = "tars-1004-db"
T = TypeVar("T")


@hookimpl
def tars_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        title="TARS-1004: composite indexes for the evaluation API, built without blocking writes",
        kind="hotfix",
        fix_id="TARS-1004",
        config=DbFixConfig,
        description=(
            "Three composite indexes (v1_0_1_add_indexes.sql) built CONCURRENTLY with lock/statement "
            "timeouts, retries and invalid-index repair; keyset pagination for the hot queries "
            "(tars_1004_db.pagination). Database p95 500 ms -> < 100 ms."
        ),
        risk="medium: schema change (indexes only, no table rewrite); needs migration testing",
    )


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _config(ctx: Context) -> DbFixConfig:
    return ctx.config if isinstance(ctx.config, DbFixConfig) else DbFixConfig()


def _connected(ctx: Context, cfg: DbFixConfig) -> AbstractAsyncContextManager[asyncpg.Connection]:
    from tars_1004_db import db

    return db.connected(ctx.targets.require("postgres"), timeout=cfg.connect_timeout_s, schema=cfg.schema)


async def _stop_on_cancel(ctx: Context, cfg: DbFixConfig, conn: asyncpg.Connection) -> None:
    """A cancelled hook (Ctrl-C, its timeout) ends here, not on the server: the statement in flight (an
    index build can run for minutes) goes on until a cancel request lands. Cancel it from a second
    connection and wait until the backend is idle, shielded, before the hook gives up its worker, so the
    rollback that follows never drops an index while its build still runs (that deadlocked)."""
    import anyio

    from tars_1004_db import indexes

    pid = conn.get_server_pid()
    with anyio.CancelScope(shield=True), anyio.move_on_after(20):
        try:
            async with _connected(ctx, cfg) as other:
                if not await indexes.stop_backend(other, pid):
                    ctx.log.warning("backend %d still busy 10 s after the cancel; rollback will stop it", pid)
        except Exception as exc:  # the rollback stops a leftover too; this must not hide the cancellation
            ctx.log.warning("could not cancel backend %d after the interruption: %s", pid, exc)
    conn.terminate()


async def _on_the_server(
    ctx: Context, cfg: DbFixConfig, phase: str, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """``work`` on a fresh connection; a connection lost midway (server restarted, backend terminated,
    network cut) is retried on a new one with backoff for up to ``reconnect_s``, since every phase of this
    fix is idempotent (a half-built index is found INVALID and rebuilt). The first connection failing is
    an unusable target (``TargetError`` from ``db.connect``: nothing changed); one lost later and not back
    in time is :class:`TargetLost` (exit 2, and apply's rollback still runs)."""
    import anyio
    import asyncpg

    from tars_1004_db import db
    from tars_core.errors import TargetError, TargetLost
    from tars_core.redact import host_port
    from tars_core.waiting import WaitTimeout, await_until

    dsn = ctx.targets.require("postgres")
    lost: str | None = None

    async def attempt() -> list[T]:
        """One connection's go at ``work``: ``[its result]`` (boxed: a falsy result is still done), or
        ``[]`` when the connection was lost, which ``await_until`` retries."""
        nonlocal lost
        try:
            async with _connected(ctx, cfg) as conn:
                try:
                    return [await work(conn)]
                except anyio.get_cancelled_exc_class():
                    await _stop_on_cancel(ctx, cfg, conn)
                    raise
                except db.CONNECTION_LOST as exc:
                    if isinstance(exc, asyncpg.InterfaceError) and not conn.is_closed():
                        raise  # a misuse of the connection, not a lost one
                    lost = db.one_line(exc)
        except TargetError as exc:
            if lost is None:  # never connected in this phase: the target is unusable as configured
                raise
            lost = f"{lost}; then {exc}"
        return []

    def reconnecting(delay: float, _: BaseException | None) -> None:
        ctx.log.warning("lost the connection to PostgreSQL during %s (%s); reconnecting in %.1f s", phase, lost, delay)

    try:
        (result,) = await await_until(
            attempt,
            timeout=cfg.reconnect_s,
            interval=0.5,
            backoff=2.0,
            max_interval=5.0,
            on_retry=reconnecting,
            what=f"PostgreSQL back during {phase}",
        )
    except WaitTimeout:
        raise TargetLost(
            f"lost the connection to PostgreSQL at {host_port(dsn, 5432)} during {phase} ({lost}) and it did "
            f"not come back within {cfg.reconnect_s:g} s (plugins.{NAME}.reconnect_s): start the server, then "
            f"run tars-run {phase} again"
        ) from None
    return result


@hookimpl
async def tars_apply(ctx: Context) -> ApplyResult:
    from tars_1004_db import indexes

    cfg = _config(ctx)
    # an unreachable server raises TargetError here, before anything changed: the runner records the
    # apply as unreached and skips this plugin's rollback
    records, plan = await _on_the_server(
        ctx,
        cfg,
        "apply",
        lambda conn: indexes.apply(conn, schema=cfg.schema, settings=cfg, log=ctx.log, dry_run=ctx.dry_run),
    )
    if ctx.dry_run:
        return ApplyResult(changed=False, detail="dry run: " + ("; ".join(plan) or "nothing to do"))
    if not records:
        return ApplyResult(changed=False, detail="all TARS-1004 indexes present and valid")
    # build times and sizes, kept for the operator until a rollback drops the indexes
    ctx.state.update(applied_at=_now(), schema=cfg.schema, builds=[attrs.asdict(r) for r in records])
    return ApplyResult(
        changed=True,
        detail="; ".join(
            f"{'repaired' if r.repaired else 'built'} {r.name} "
            f"({r.seconds:.1f} s, {r.size_bytes / 1e6:.1f} MB"
            + (f", {r.attempts} attempts)" if r.attempts > 1 else ")")
            for r in records
        ),
    )


@hookimpl
async def tars_verify(ctx: Context) -> VerifyResult:
    from tars_1004_db import indexes

    cfg = _config(ctx)
    ok, checks = await _on_the_server(ctx, cfg, "verify", lambda conn: indexes.verify(conn, schema=cfg.schema))
    names = [s.name for s in indexes.index_specs()]
    broken = [n for n in names if checks[n].startswith(("missing", "INVALID"))]
    if ok:
        detail = "indexes valid and used by every hot query"
    elif all(checks[n] == "missing" for n in names):
        detail = "not applied: " + ", ".join(names) + " missing"
    else:
        # a query cannot use a missing or invalid index: name the index, not its queries
        detail = "; ".join(
            f"{k}: {v}"
            for k, v in checks.items()
            if k in broken or (v.startswith("does NOT") and not any(b in v for b in broken))
        )
    return VerifyResult(ok=ok, detail=detail, checks=checks)


@hookimpl
async def tars_rollback(ctx: Context) -> ApplyResult:
    from tars_1004_db import indexes

    cfg = _config(ctx)
    dropped = await _on_the_server(
        ctx,
        cfg,
        "rollback",
        lambda conn: indexes.rollback(conn, schema=cfg.schema, settings=cfg, log=ctx.log, dry_run=ctx.dry_run),
    )
    if ctx.dry_run:
        return ApplyResult(changed=False, detail="dry run: would drop " + (", ".join(dropped) or "nothing"))
    ctx.state.clear()
    if not dropped:
        ctx.log.warning("TARS-1004 indexes are not present: nothing to roll back")
        return ApplyResult(changed=False, detail="no TARS-1004 index present")
    return ApplyResult(changed=True, detail="dropped concurrently: " + ", ".join(dropped))


@hookimpl
async def tars_benchmark(ctx: Context) -> BenchmarkResult:
    from tars_1004_db.bench import run_benchmark

    cfg = _config(ctx)
    report = await run_benchmark(
        ctx.targets.require("postgres"), cfg.benchmark, settings=cfg, log=ctx.log, connect_timeout=cfg.connect_timeout_s
    )
    return BenchmarkResult(metrics=report.metrics(), detail=report.markdown())


@hookimpl
def tars_report(release: Release) -> ReportSection | None:
    """What the fix is and which index serves which endpoint; phases and figures are the core's tables."""
    if not any(p.name == NAME for p in release.plugins):
        return None
    from tars_1004_db.indexes import index_specs
    from tars_1004_db.pagination import HOT_QUERIES
    from tars_core.report import markdown_table

    rows = [(s.name, s.query, HOT_QUERIES[s.query].endpoint) for s in index_specs()]
    markdown = "\n".join(
        [
            "Three composite indexes built with `CREATE INDEX CONCURRENTLY` (lock_timeout, statement_timeout, "
            "retries, invalid-index repair); the API pages with keyset cursors (`tars_1004_db.pagination`).",
            "",
            markdown_table(("index", "hot query", "endpoint"), rows),
        ]
    )
    return ReportSection(
        title="TARS-1004 database indexes and keyset pagination",
        markdown=markdown,
        data={"indexes": {name: query for name, query, _ in rows}},
    )


@hookimpl
def tars_sandbox(site: SandboxSite) -> SandboxContribution:
    # No service of its own: the evaluation schema and its seed live in the sandbox's PostgreSQL.
    # The demo's benchmark keeps the full 1M rows but 30 timed runs per figure (about a minute and a
    # half instead of ten); benchmarks/tars-1004-db_bench.py runs the full 200.
    return SandboxContribution(config={"seed_rows": 1_000_000, "benchmark": {"runs": 30}})


@hookimpl
async def tars_sandbox_seed(ctx: Context) -> str:
    """Load the v1.0.0 schema and 1M evaluations into the sandbox; skips a database already seeded."""
    from tars_1004_db import db

    cfg = _config(ctx)
    async with _connected(ctx, cfg) as conn:
        if await db.table_exists(conn, "evaluations") and await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM evaluations)"
        ):
            ctx.log.info("evaluations already seeded: skipping")
            return "already seeded"
        seconds = await db.seed(conn, cfg.seed_rows)
    ctx.log.info("seeded %d evaluations in %.1f s", cfg.seed_rows, seconds)
    return f"seeded {cfg.seed_rows} evaluations in {seconds:.1f} s"
