"""TARS-1005 hooks: switch the running PPO trainers to the fixed implementation behind a feature flag.

The trainers (``tars_1005_ppo.trainer_service`` processes) read the flag every iteration and report what
they actually run to Redis; these hooks act on the flag and judge the reports, never the flag alone:

* apply: checks the fixed code is importable here and that every live trainer reports it can run it, then
  (optionally) switches a canary fraction first and watches it, then turns the flag on and waits until
  every trainer reports the fixed implementation;
* verify: every live trainer runs the fixed trainer with a constant tracing count and RSS under budget,
  and a short soak of the fixed trainer, in its own process, passes the slope/peak/tracing judge;
* rollback: turns the flag off (or back to absent) and waits for the trainers to switch back.

Importing this module is cheap (attrs and tars_core only): TensorFlow is loaded by the soak subprocesses
and the trainer services, never by ``tars-run``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tars_1005_ppo.config import FLAG_NAME, STATUS_PREFIX, PPOFixConfig, canary_bucket
from tars_core import (
    ApplyResult,
    BenchmarkResult,
    Context,
    FixError,
    Metric,
    PluginInfo,
    Release,
    ReportSection,
    SandboxContribution,
    SandboxSite,
    ServiceSpec,
    TargetError,
    VerifyResult,
    hookimpl,
)

NAME = "tars-1005-ppo"
STATE_FILE = "applied.json"
SANDBOX_TRAINERS = ("sandbox-trainer-a", "sandbox-trainer-b")  # hash buckets 0.15 and 0.51


@hookimpl
def tars_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        title="TARS-1005: PPO trainer without the memory leak (bounded buffer, no retracing), canary by flag",
        kind="hotfix",
        fix_id="TARS-1005",
        config=PPOFixConfig,
        description="Switches PPO trainers to the fixed TensorFlow trainer behind the flag "
        f"{FLAG_NAME!r}; verify soaks it and judges RSS slope, peak and tracing count.",
        risk="changes runtime behaviour of training: canary fraction first, rollback turns the flag off",
    )


# -- Redis helpers ---------------------------------------------------------------------------------------
def _where(url: str) -> str:
    """host:port/db of a Redis URL, without credentials (messages must not leak secrets)."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}:{parts.port or 6379}{parts.path or ''}"


async def _connect(ctx: Context) -> Any:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    url = ctx.targets.require("redis")
    client = aioredis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=10)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise TargetError(
            f"cannot reach targets.redis at {_where(url)} ({type(exc).__name__}): start Redis or fix targets.redis"
        ) from None
    return client


async def _flag(client: Any, ctx: Context) -> str | None:
    value = await client.hget(ctx.targets.flags_key, ctx.config.flag)
    return None if value is None else str(value)


async def _set_flag(client: Any, ctx: Context, value: str | None) -> None:
    if value is None:
        await client.hdel(ctx.targets.flags_key, ctx.config.flag)
    else:
        await client.hset(ctx.targets.flags_key, ctx.config.flag, value)


async def _live_trainers(client: Any, cfg: PPOFixConfig) -> dict[str, dict[str, str]]:
    """Status of every trainer that reported within ``stale_after_s`` and has not stopped."""
    now = time.time()
    live: dict[str, dict[str, str]] = {}
    for tid in sorted(await client.smembers(f"{cfg.status_prefix}:trainers")):
        status = await client.hgetall(f"{cfg.status_prefix}:trainer:{tid}")
        if status.get("state") == "running" and now - float(status.get("heartbeat", 0)) <= cfg.stale_after_s:
            live[tid] = status
    return live


async def _samples(client: Any, cfg: PPOFixConfig, tid: str) -> list[dict[str, Any]]:
    raw = await client.lrange(f"{cfg.status_prefix}:trainer:{tid}:samples", 0, -1)
    return [json.loads(r) for r in reversed(raw)]  # oldest first


def _expected(value: str | None, trainers: list[str]) -> dict[str, str]:
    from tars_1005_ppo.config import implementation_for

    return {t: implementation_for(value, t) for t in trainers}


async def _wait_switch(client: Any, ctx: Context, value: str | None, trainers: list[str]) -> None:
    """Until each trainer reports the implementation the flag value gives it, having read that value."""
    cfg: PPOFixConfig = ctx.config
    want = _expected(value, trainers)
    deadline = time.monotonic() + cfg.switch_timeout_s
    pending: dict[str, str] = {}
    while time.monotonic() < deadline:
        live = await _live_trainers(client, cfg)
        pending = {}
        for tid, impl in want.items():
            st = live.get(tid)
            if st is None:
                pending[tid] = "stopped reporting"
            elif st.get("flag_value", "") != (value or "") or st.get("implementation") != impl:
                pending[tid] = f"runs {st.get('implementation')!r} (flag seen {st.get('flag_value')!r})"
        if not pending:
            return
        await asyncio.sleep(0.5)
    detail = "; ".join(f"{t}: {why}" for t, why in pending.items())
    raise FixError(
        f"trainers did not switch to the flag value {value!r} within {cfg.switch_timeout_s:.0f} s "
        f"({detail}): check the trainer services' logs"
    )


async def _trainer_health(client: Any, cfg: PPOFixConfig, tids: list[str]) -> dict[str, str]:
    """Per trainer, whether the fixed trainer it runs has a constant tracing count and RSS under budget.

    The first sample after a switch is warm-up (the three ``tf.function``s trace on their first call).
    """
    problems: dict[str, str] = {}
    for tid in tids:
        fixed = [s for s in await _samples(client, cfg, tid) if s.get("impl") == "fixed"][1:]
        if not fixed:
            problems[tid] = "no sample of the fixed trainer after warm-up yet"
            continue
        traces = {int(s["tracing"]) for s in fixed}
        peak = max(int(s["rss"]) for s in fixed)
        if len(traces) > 1:
            problems[tid] = f"tracing count changed {min(traces)} -> {max(traces)}"
        elif peak >= cfg.peak_budget_mb * 2**20:
            problems[tid] = f"RSS {peak / 2**20:.0f} MB over {cfg.peak_budget_mb:.0f} MB"
    return problems


def _fixed_code_here() -> bool:
    from tars_1005_ppo.trainer_service import fixed_code_available

    return fixed_code_available()


# present while the last apply never reached Redis: it changed nothing, so a rollback has nothing to undo even
# when Redis is still unreachable (otherwise a dead target turns a failed apply into "rollback failed", exit 4)
UNREACHED_FILE = "apply-unreached.json"


def _state_path(ctx: Context) -> Path:
    return Path(ctx.state_dir) / STATE_FILE


# -- hooks -----------------------------------------------------------------------------------------------
@hookimpl
async def tars_apply(ctx: Context) -> ApplyResult:
    cfg: PPOFixConfig = ctx.config
    if not _fixed_code_here():
        raise FixError(
            "the fixed trainer (tars_1005_ppo.trainer with tensorflow) is not importable: install "
            "tars-1005-ppo with its dependencies"
        )
    unreached = Path(ctx.state_dir) / UNREACHED_FILE
    try:
        client = await _connect(ctx)
    except TargetError as exc:
        if not ctx.dry_run:
            unreached.parent.mkdir(parents=True, exist_ok=True)
            unreached.write_text(json.dumps({"at": time.time(), "error": str(exc)}))
        raise
    unreached.unlink(missing_ok=True)
    try:
        live = await _live_trainers(client, cfg)
        if len(live) < cfg.min_trainers:
            raise FixError(
                f"{len(live)} live PPO trainer(s) report under {cfg.status_prefix}:trainers, "
                f"need {cfg.min_trainers}: start the trainer services "
                "(python -m tars_1005_ppo.trainer_service) first"
            )
        missing = [t for t, st in live.items() if st.get("fixed_available") != "1"]
        if missing:
            raise FixError(
                f"trainers {', '.join(missing)} cannot import the fixed trainer: upgrade them to "
                "tars-1005-ppo before turning the flag on"
            )
        trainers = sorted(live)
        current = await _flag(client, ctx)
        all_fixed = all(st.get("implementation") == "fixed" for st in live.values())
        if current == "on" and all_fixed:
            ctx.log.info("flag %s already on and %d trainer(s) run the fixed trainer", cfg.flag, len(live))
            return ApplyResult(changed=False, detail=f"{len(live)} trainer(s) already run the fixed trainer")
        staged = 0 < cfg.canary_fraction < 1
        canary = [t for t in trainers if canary_bucket(t) < cfg.canary_fraction] if staged else []
        plan = (
            f"set {ctx.targets.flags_key}[{cfg.flag}] "
            + (
                f"to {cfg.canary_fraction:g} (canary: {', '.join(canary) or 'none'}), watch "
                f"{cfg.canary_observe_s:g} s, then "
                if staged
                else ""
            )
            + f"to 'on' for {len(trainers)} trainer(s) (now {current!r})"
        )
        if ctx.dry_run:
            ctx.log.info("dry run: would %s", plan)
            return ApplyResult(changed=False, detail=f"dry run: would {plan}")

        state_path = _state_path(ctx)
        if not state_path.exists():
            state_path.write_text(json.dumps({"previous": current, "trainers": trainers, "at": time.time()}))
        if staged:
            value = f"{cfg.canary_fraction:g}"
            if not canary:
                ctx.log.warning(
                    "canary fraction %s selects none of %d trainer(s); switching all at once", value, len(trainers)
                )
            else:
                ctx.log.info("canary: %s -> fixed (flag %s=%s)", ", ".join(canary), cfg.flag, value)
                await _set_flag(client, ctx, value)
                await _wait_switch(client, ctx, value, trainers)
                await asyncio.sleep(cfg.canary_observe_s)
                problems = await _trainer_health(client, cfg, canary)
                if problems:
                    await _set_flag(client, ctx, current)
                    detail = "; ".join(f"{t}: {p}" for t, p in problems.items())
                    raise FixError(f"canary failed ({detail}): flag restored to {current!r}")
        await _set_flag(client, ctx, "on")
        await _wait_switch(client, ctx, "on", trainers)
        ctx.log.info("flag %s on: %d trainer(s) run the fixed trainer", cfg.flag, len(trainers))
        return ApplyResult(
            changed=True,
            detail=f"{len(trainers)} trainer(s) switched to the fixed trainer"
            + (f" after canary {', '.join(canary)}" if canary else ""),
        )
    finally:
        await client.aclose()


@hookimpl
async def tars_verify(ctx: Context) -> VerifyResult:
    cfg: PPOFixConfig = ctx.config
    client = await _connect(ctx)
    try:
        value = await _flag(client, ctx)
    finally:
        await client.aclose()
    if value != "on":
        return VerifyResult(
            ok=False,
            detail=f"not applied: flag {cfg.flag} is {value!r}",
            checks={"flag": f"FAIL: {value!r}, want 'on'"},
        )
    checks: dict[str, str] = {"flag": "ok: on"}

    # The soak first: while it runs the live trainers accumulate the samples judged below.
    from tars_1005_ppo.soak import soak_subprocess

    try:
        verdict = await asyncio.to_thread(
            soak_subprocess,
            ctx.state_dir / "verify-soak",
            impl="fixed",
            config=cfg.trainer,
            iterations=cfg.verify_iterations,
            warmup=str(cfg.verify_warmup),
            slope_budget_kb=cfg.slope_budget_kb,
            peak_budget_mb=cfg.peak_budget_mb,
            timeout_s=cfg.soak_timeout_s,
        )
    except Exception as exc:
        checks["soak"] = f"FAIL: soak could not run: {exc}"
    else:
        checks["soak"] = (
            ("ok" if verdict.ok else "FAIL")
            + f" ({verdict.iterations} iterations): "
            + "; ".join(f"{k} {v.split(': ', 1)[-1]}" for k, v in verdict.checks.items())
        )

    client = await _connect(ctx)
    try:
        live = await _live_trainers(client, cfg)
        legacy = [t for t, st in live.items() if st.get("implementation") != "fixed"]
        enough = len(live) >= cfg.min_trainers
        checks["trainers"] = (
            f"{'ok' if enough and not legacy else 'FAIL'}: {len(live) - len(legacy)}/{len(live)} "
            "live trainer(s) run the fixed trainer"
            + (f" (still legacy: {', '.join(legacy)})" if legacy else "")
            + ("" if enough else f"; need {cfg.min_trainers}")
        )
        problems = await _trainer_health(client, cfg, [t for t in live if t not in legacy])
        checks["trainer_memory"] = (
            "ok: tracing count constant and RSS under budget on every trainer"
            if not problems
            else "FAIL: " + "; ".join(f"{t}: {p}" for t, p in problems.items())
        )
    finally:
        await client.aclose()
    failed = [k for k, v in checks.items() if not v.startswith("ok")]
    return VerifyResult(
        ok=not failed,
        detail="fixed trainer running, memory flat" if not failed else f"failed: {', '.join(failed)}",
        checks=checks,
    )


@hookimpl
async def tars_rollback(ctx: Context) -> ApplyResult:
    cfg: PPOFixConfig = ctx.config
    state_path = _state_path(ctx)
    try:
        client = await _connect(ctx)
    except TargetError:
        if not state_path.exists() and (Path(ctx.state_dir) / UNREACHED_FILE).exists():
            ctx.log.warning("Redis is unreachable, but the last apply never reached it: nothing to undo")
            return ApplyResult(changed=False, detail="nothing to undo: the last apply never reached Redis")
        raise
    try:
        current = await _flag(client, ctx)
        previous = json.loads(state_path.read_text()).get("previous") if state_path.exists() else None
        restore = None if previous is None else "off"
        if current in (None, "off") and not state_path.exists():
            ctx.log.warning("rollback: flag %s is %r and no apply is recorded; nothing to undo", cfg.flag, current)
            return ApplyResult(changed=False, detail="not applied")
        if ctx.dry_run:
            ctx.log.info("dry run: would set flag %s from %r to %r", cfg.flag, current, restore)
            return ApplyResult(changed=False, detail=f"dry run: would set flag to {restore!r}")
        await _set_flag(client, ctx, restore)
        trainers = sorted(await _live_trainers(client, cfg))
        if trainers:
            await _wait_switch(client, ctx, restore, trainers)
        state_path.unlink(missing_ok=True)
        ctx.log.info(
            "flag %s %s: %d trainer(s) back on the v1.0.0 trainer",
            cfg.flag,
            "cleared" if restore is None else "off",
            len(trainers),
        )
        return ApplyResult(
            changed=True,
            detail=f"flag {'cleared' if restore is None else 'off'}; {len(trainers)} trainer(s) switched back",
        )
    finally:
        await client.aclose()


def _metrics(before: Any, after: Any) -> list[Metric]:
    kb = 1024.0
    return [
        Metric(
            "rss_slope_per_iteration",
            before.slope_bytes_per_iter / kb,
            after.slope_bytes_per_iter / kb,
            "KB/iteration",
            target=f"fixed upper 95% bound < {after.slope_budget_bytes / kb:.0f} "
            f"(fixed bound {after.slope_upper / kb:+.1f}, legacy bound [{before.slope_lower / kb:+.1f}, "
            f"{before.slope_upper / kb:+.1f}])",
            met=bool(after.slope_upper < after.slope_budget_bytes),
        ),
        Metric(
            "peak_rss",
            before.peak_rss_bytes / 2**20,
            after.peak_rss_bytes / 2**20,
            "MB",
            target=f"< {after.peak_budget_bytes / 2**20:.0f}",
            met=bool(after.peak_rss_bytes < after.peak_budget_bytes),
        ),
        Metric(
            "tracings_after_warmup",
            float(before.tracing_counts[1] - before.tracing_counts[0]),
            float(after.tracing_counts[1] - after.tracing_counts[0]),
            "retraces",
            target="0",
            met=after.tracing_constant,
        ),
        Metric(
            "steps_per_second",
            before.steps_per_s,
            after.steps_per_s,
            "env steps/s",
            target=">= before",
            met=bool(after.steps_per_s >= before.steps_per_s),
        ),
        _return_metric(before, after),
    ]


def _return_metric(before: Any, after: Any) -> Metric:
    """CartPole return reached; judged only when the run reached 195 or was long enough to have to."""
    steps = after.global_step
    reached = after.steps_to_return_target
    target = ">= 195 within 100000 steps"
    if reached is not None and reached <= 100_000:
        met: bool | None = True
        target += f" (reached at step {reached})"
    elif steps >= 100_000:
        met = False
    else:
        met = None
        target += f" (not judged: this run has {steps} steps; benchmarks/tars-1005-ppo_bench.py runs 100000)"
    return Metric(
        "cartpole_mean_return",
        before.mean_return,
        after.mean_return,
        f"return (last 100 episodes at {steps} steps)",
        target=target,
        met=met,
    )


@hookimpl
async def tars_benchmark(ctx: Context) -> BenchmarkResult:
    """Leaky (v1.0.0 reproduction) and fixed trainer, same iterations, each in its own process."""
    from tars_1005_ppo.soak import plot_comparison, read_samples, soak_subprocess

    cfg: PPOFixConfig = ctx.config
    out = ctx.state_dir / "benchmark"
    verdicts = {}
    for impl in ("legacy", "fixed"):
        ctx.log.info("benchmark: %s trainer, %d iterations", impl, cfg.benchmark_iterations)
        verdicts[impl] = await asyncio.to_thread(
            soak_subprocess,
            out / impl,
            impl=impl,
            config=cfg.trainer,
            iterations=cfg.benchmark_iterations,
            warmup="0.2",
            slope_budget_kb=cfg.slope_budget_kb,
            peak_budget_mb=cfg.peak_budget_mb,
            timeout_s=cfg.soak_timeout_s,
        )
    plot_comparison(
        {k: (read_samples(out / k / "samples.csv"), v) for k, v in verdicts.items()}, out / "rss-compare.png"
    )
    return BenchmarkResult(
        metrics=_metrics(verdicts["legacy"], verdicts["fixed"]),
        detail=f"{cfg.benchmark_iterations} iterations x {cfg.trainer.batch_size} steps each; chart "
        f"{out / 'rss-compare.png'}; full size: benchmarks/tars-1005-ppo_bench.py",
    )


@hookimpl
def tars_report(release: Release) -> ReportSection | None:
    state = release.states.get(NAME)
    if state is None:
        return None
    lines = [f"TARS-1005 PPO trainer: **{state}**.", ""]
    phases = [p for p in release.phases if p.plugin == NAME]
    for p in phases:
        lines.append(f"- {p.phase}: {p.outcome}" + (f" ({p.detail or p.error})" if (p.detail or p.error) else ""))
    bench = release.benchmarks.get(NAME)
    data: dict[str, Any] = {"state": state}
    if bench is not None:
        lines += ["", "| metric | v1.0.0 | fixed | unit | target | met |", "|---|---|---|---|---|---|"]
        for m in bench.metrics:
            before = "" if m.before is None else f"{m.before:.1f}"
            lines.append(
                f"| {m.name} | {before} | {m.after:.1f} | {m.unit} | {m.target} | "
                f"{'yes' if m.met else 'no' if m.met is not None else ''} |"
            )
        if bench.detail:
            lines += ["", bench.detail]
        data["benchmark"] = {
            m.name: {"before": m.before, "after": m.after, "unit": m.unit, "met": m.met} for m in bench.metrics
        }
    return ReportSection(title="TARS-1005: PPO memory leak", markdown="\n".join(lines), data=data)


@hookimpl
def tars_sandbox(site: SandboxSite) -> SandboxContribution:
    """Two flag-driven trainers (one inside a 0.5 canary, one outside), small and paused to spare CPU."""
    redis_url = site.targets.require("redis")
    site.dir.mkdir(parents=True, exist_ok=True)
    trainer_cfg = {"num_envs": 4, "n_steps": 32, "n_epochs": 4, "hidden": [32, 32], "anneal_steps": 500_000}
    cfg_file = site.dir / "trainer-config.json"
    cfg_file.write_text(json.dumps(trainer_cfg))
    services = []
    for tid in SANDBOX_TRAINERS:
        port = site.free_port()
        services.append(
            ServiceSpec(
                name=f"ppo-{tid.rsplit('-', 1)[-1]}",
                argv=[
                    site.python,
                    "-m",
                    "tars_1005_ppo.trainer_service",
                    "--redis",
                    redis_url,
                    "--flags-key",
                    site.targets.flags_key,
                    "--flag",
                    FLAG_NAME,
                    "--status-prefix",
                    STATUS_PREFIX,
                    "--trainer-id",
                    tid,
                    "--port",
                    str(port),
                    "--config",
                    str(cfg_file),
                    "--pause",
                    "3",
                    "--max-rss-mb",
                    "1200",
                ],
                port=port,
                ready="tcp",
                env={"TF_CPP_MIN_LOG_LEVEL": "2", "TARS_TF_INTRA_THREADS": "1"},
            )
        )
    return SandboxContribution(
        services=services,
        scrape_targets=[f"127.0.0.1:{s.port}" for s in services],
        config={
            "flag": FLAG_NAME,
            "status_prefix": STATUS_PREFIX,
            "canary_fraction": 0.5,
            "canary_observe_s": 10.0,
            "min_trainers": len(services),
            "verify_iterations": 40,
            "benchmark_iterations": 60,
        },
    )


@hookimpl
async def tars_sandbox_seed(ctx: Context) -> None:
    """The v1.0.0 baseline: the flag exists and is off (kept as is if already set)."""
    client = await _connect(ctx)
    try:
        await client.hsetnx(ctx.targets.flags_key, ctx.config.flag, "off")
    finally:
        await client.aclose()
