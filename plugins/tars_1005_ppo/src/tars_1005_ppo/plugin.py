"""TARS-1005 hooks: switch the running PPO trainers to the fixed implementation behind a feature flag.

The trainers (``tars_1005_ppo.trainer_service`` processes) read the flag every iteration and report what
they actually run to Redis; these hooks act on the flag and judge the reports, never the flag alone:

* apply: checks the fixed code is importable here and that every live trainer reports it can run it, then
  (optionally) switches a canary fraction first and watches it, then turns the flag on and waits until
  every trainer reports the fixed implementation;
* verify: every live trainer runs the fixed trainer with a constant tracing count and RSS under budget,
  and a short soak of the fixed trainer, in its own process, passes the slope/peak/tracing judge;
* rollback: puts the flag back to the value the first apply replaced (``ctx.flags`` keeps it in Redis) and
  waits for the trainers to switch back.

Importing this module is cheap (attrs and tars_core only): TensorFlow is loaded by the soak subprocesses
and the trainer services, never by ``tars-run``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from tars_1005_ppo.config import FLAG_NAME, STATUS_PREFIX, PPOFixConfig, implementation_for
from tars_core import ApplyResult, BenchmarkResult, Metric, PluginInfo, ReportSection, VerifyResult, hookimpl
from tars_core.errors import FixError
from tars_core.flags import enabled_for, is_on
from tars_core.model import SandboxContribution, ServiceSpec
from tars_core.waiting import WaitTimeout, await_until

if TYPE_CHECKING:
    from tars_1005_ppo.soak import Verdict
    from tars_core import Context, Release, SandboxSite

NAME = "tars-1005-ppo"
# canary buckets under the flag 0.21 and 0.26, so the sandbox's canary fraction 0.25 switches one first
SANDBOX_TRAINERS = ("sandbox-trainer-a", "sandbox-trainer-b")
SANDBOX_CANARY = 0.25


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
        risk="changes runtime behaviour of training: canary fraction first, rollback restores the flag",
    )


# -- trainer status (the reports the trainer services write; the flag itself goes through ctx.flags) --------
def _status_client(ctx: Context) -> Any:
    """A client for the trainers' status keys, used as ``async with`` (which closes it). Hooks read the flag
    through ``ctx.flags`` first, so an unreachable Redis has already been reported as a ``TargetError``."""
    from tars_core.flags import redis_client

    # a Redis that pauses or restarts mid-phase is ridden out (retries), not a failed release
    return redis_client(ctx.targets.require("redis"), socket_connect_timeout=5, socket_timeout=10)


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


def _expected(cfg: PPOFixConfig, value: str | None, trainers: list[str]) -> dict[str, str]:
    return {t: implementation_for(value, cfg.flag, t) for t in trainers}


async def _wait_switch(client: Any, cfg: PPOFixConfig, value: str | None, trainers: list[str]) -> None:
    """Until each trainer reports the implementation the flag value gives it, having read that value."""
    want = _expected(cfg, value, trainers)
    pending: dict[str, str] = {}

    async def switched() -> bool:
        live = await _live_trainers(client, cfg)
        pending.clear()
        for tid, impl in want.items():
            st = live.get(tid)
            if st is None:
                pending[tid] = "stopped reporting"
            elif st.get("flag_value", "") != (value or "") or st.get("implementation") != impl:
                pending[tid] = f"runs {st.get('implementation')!r} (flag seen {st.get('flag_value')!r})"
        return not pending

    try:
        await await_until(switched, timeout=cfg.switch_timeout_s, interval=0.5, what="trainers switch")
    except WaitTimeout:
        detail = "; ".join(f"{t}: {why}" for t, why in pending.items())
        raise FixError(
            f"trainers did not switch to the flag value {value!r} within {cfg.switch_timeout_s:.0f} s "
            f"({detail}): check the trainer services' logs"
        ) from None


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


# -- hooks -----------------------------------------------------------------------------------------------
@hookimpl
async def tars_apply(ctx: Context) -> ApplyResult:
    cfg: PPOFixConfig = ctx.config
    if not _fixed_code_here():
        raise FixError(
            "the fixed trainer (tars_1005_ppo.trainer with tensorflow) is not importable: install "
            "tars-1005-ppo with its dependencies"
        )
    current = await ctx.flags.get(cfg.flag)  # an unusable Redis is a TargetError here, before any change
    async with _status_client(ctx) as client:
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
        all_fixed = all(st.get("implementation") == "fixed" for st in live.values())
        if enabled_for(current, cfg.flag, None) and all_fixed:
            ctx.log.info("flag %s already on and %d trainer(s) run the fixed trainer", cfg.flag, len(live))
            return ApplyResult(changed=False, detail=f"{len(live)} trainer(s) already run the fixed trainer")
        staged = 0 < cfg.canary_fraction < 1
        value = f"{cfg.canary_fraction:g}"
        canary = [t for t, impl in _expected(cfg, value, trainers).items() if impl == "fixed"] if staged else []
        plan = (
            f"set {ctx.targets.flags_key}[{cfg.flag}] "
            + (
                f"to {value} (canary: {', '.join(canary) or 'none'}), watch {cfg.canary_observe_s:g} s, then "
                if staged
                else ""
            )
            + f"to 'on' for {len(trainers)} trainer(s) (now {current!r})"
        )
        if ctx.dry_run:
            ctx.log.info("dry run: would %s", plan)
            return ApplyResult(changed=False, detail=f"dry run: would {plan}")

        if staged and not canary:
            ctx.log.warning(
                "canary fraction %s selects none of %d trainer(s); switching all at once", value, len(trainers)
            )
        elif staged:
            ctx.log.info("canary: %s -> fixed (flag %s=%s)", ", ".join(canary), cfg.flag, value)
            await ctx.flags.set(cfg.flag, value, remember=True)
            await _wait_switch(client, cfg, value, trainers)
            await asyncio.sleep(cfg.canary_observe_s)
            problems = await _trainer_health(client, cfg, canary)
            if problems:
                restored = await ctx.flags.restore(cfg.flag)
                detail = "; ".join(f"{t}: {p}" for t, p in problems.items())
                raise FixError(f"canary failed ({detail}): flag restored to {restored!r}")
        await ctx.flags.set(cfg.flag, "on", remember=True)
        await _wait_switch(client, cfg, "on", trainers)
        ctx.log.info("flag %s on: %d trainer(s) run the fixed trainer", cfg.flag, len(trainers))
        return ApplyResult(
            changed=True,
            detail=f"{len(trainers)} trainer(s) switched to the fixed trainer"
            + (f" after canary {', '.join(canary)}" if canary else ""),
        )


@hookimpl
async def tars_verify(ctx: Context) -> VerifyResult:
    cfg: PPOFixConfig = ctx.config
    value = await ctx.flags.get(cfg.flag)
    if not enabled_for(value, cfg.flag, None):
        return VerifyResult(
            ok=False,
            detail=f"not applied: flag {cfg.flag} is {value!r}",
            checks={"flag": f"FAIL: {value!r}, want 'on'"},
        )
    checks: dict[str, str] = {"flag": f"ok: {value}"}

    # The soak first: while it runs the live trainers accumulate the samples judged below.
    from tars_1005_ppo.soak import soak_subprocess

    warmup = str(cfg.verify_warmup)
    try:
        verdict = await soak_subprocess(
            ctx.state_dir / "verify-soak", impl="fixed", fix=cfg, iterations=cfg.verify_iterations, warmup=warmup
        )
    except Exception as exc:
        checks["soak"] = f"FAIL: soak could not run: {exc}"
    else:
        checks["soak"] = (
            ("ok" if verdict.ok else "FAIL")
            + f" ({verdict.iterations} iterations): "
            + "; ".join(f"{k} {v.split(': ', 1)[-1]}" for k, v in verdict.checks.items())
        )

    async with _status_client(ctx) as client:
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
    failed = [k for k, v in checks.items() if not v.startswith("ok")]
    return VerifyResult(
        ok=not failed,
        detail="fixed trainer running, memory flat" if not failed else f"failed: {', '.join(failed)}",
        checks=checks,
    )


@hookimpl
async def tars_rollback(ctx: Context) -> ApplyResult:
    """Put the flag back to what the first apply replaced (kept in Redis beside the flags), or "off"."""
    cfg: PPOFixConfig = ctx.config
    current = await ctx.flags.get(cfg.flag)
    kept, previous = await ctx.flags.remembered(cfg.flag)
    if not kept and not is_on(current):
        ctx.log.warning("rollback: flag %s is %r and no apply is recorded; nothing to undo", cfg.flag, current)
        return ApplyResult(changed=False, detail="not applied")
    if ctx.dry_run:
        restore = previous if kept else "off"
        ctx.log.info("dry run: would set flag %s from %r to %r", cfg.flag, current, restore)
        return ApplyResult(changed=False, detail=f"dry run: would set flag to {restore!r}")
    restored = await ctx.flags.restore(cfg.flag)
    async with _status_client(ctx) as client:
        trainers = sorted(await _live_trainers(client, cfg))
        if trainers:
            await _wait_switch(client, cfg, restored, trainers)
    now = "cleared" if restored is None else f"back to {restored!r}"
    ctx.log.info("flag %s %s: %d trainer(s) switched back", cfg.flag, now, len(trainers))
    return ApplyResult(changed=True, detail=f"flag {now}; {len(trainers)} trainer(s) switched back")


def _metrics(before: Verdict, after: Verdict) -> list[Metric]:
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


def _return_metric(before: Verdict, after: Verdict) -> Metric:
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
        verdicts[impl] = await soak_subprocess(out / impl, impl=impl, fix=cfg, iterations=cfg.benchmark_iterations)
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
    """What the figures mean for this fix; the core report already has its phases and metric tables."""
    state = release.states.get(NAME)
    if state is None:
        return None
    lines = [
        f"TARS-1005 PPO trainer: **{state}**. The fixed trainer runs behind the flag `{FLAG_NAME}`; apply and "
        "verify judge what each trainer service reports it runs, never the flag alone.",
        "",
        "Memory is judged by RSS, not tracemalloc (TensorFlow and NumPy allocate natively): the slope of RSS per "
        "iteration after warm-up, with its 95% interval, must stay under the budget while the v1.0.0 "
        "reproduction's grows; the peak stays under 1 GB; the tf.function tracing count stays constant "
        "(one retrace per iteration is a leak before the slope shows it).",
    ]
    if NAME in release.benchmarks:
        lines += ["", "Both trainers ran the same iterations, each in its own process; the chart is named above."]
    return ReportSection(title="TARS-1005: PPO memory leak", markdown="\n".join(lines), data={"state": state})


@hookimpl
def tars_sandbox(site: SandboxSite) -> SandboxContribution:
    """Two flag-driven trainers (one inside the canary, one outside), small and paused to spare CPU."""
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
            "canary_fraction": SANDBOX_CANARY,
            "canary_observe_s": 10.0,
            "min_trainers": len(services),
            "verify_iterations": 40,
            "benchmark_iterations": 60,
        },
    )


@hookimpl
async def tars_sandbox_seed(ctx: Context) -> None:
    """The v1.0.0 baseline: the flag exists and is off (kept as is if already set)."""
    if await ctx.flags.get(ctx.config.flag) is None:
        await ctx.flags.set(ctx.config.flag, "off")
