"""tars-slo-monitor: the plugin's entry-point module (hooks only; the work is imported inside them).

Imports the core, attrs and the config class only, so ``tars-run list`` stays fast; the spec reader and
rule generator (yaml), the Prometheus client (httpx) and the gate are imported by the hooks that need
them. apply/verify/rollback load the SLO rules into Prometheus (``monitor``); ``tars_preflight`` and
``tars_observe`` are the release gate (``gate``). The rule hooks are plain functions because their work
blocks (the core runs them in a worker thread it waits for); ``tars_observe`` is async so Ctrl-C ends a
bake at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tars_core import PluginInfo, hookimpl
from tars_telemetry.config import SLOMonitorConfig

if TYPE_CHECKING:
    from tars_core import (
        ApplyResult,
        BenchmarkResult,
        Context,
        Release,
        ReportSection,
        SandboxContribution,
        SandboxSite,
        VerifyResult,
    )
    from tars_core.model import Change, Judgement, Plan

NAME = "tars-slo-monitor"


@hookimpl
def tars_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        title="Real-time SLO monitor: multiwindow multi-burn-rate alerts and an error-budget release gate",
        kind="monitor",
        config=SLOMonitorConfig,
        description="SLOs as code (OpenSLO v1, Sloth prometheus/v1); traffic-weighted SLI ratios, budgets, "
        "burn rates and MWMB alerts with a minimum-events guard, proven by generated promtool tests; "
        "freezes a release while a budget is spent and rolls back a fix that burns it.",
        risk="low: adds Prometheus rules only (removed on rollback)",
    )


@hookimpl
def tars_apply(ctx: Context) -> ApplyResult:
    from tars_telemetry import monitor

    return monitor.apply(ctx)


@hookimpl
def tars_verify(ctx: Context) -> VerifyResult:
    from tars_telemetry import monitor

    return monitor.verify(ctx)


@hookimpl
def tars_rollback(ctx: Context) -> ApplyResult:
    from tars_telemetry import monitor

    return monitor.rollback(ctx)


@hookimpl
def tars_preflight(ctx: Context, plan: Plan) -> Judgement:
    from tars_telemetry import gate

    return gate.preflight(ctx, plan)


@hookimpl
async def tars_observe(ctx: Context, change: Change) -> Judgement:
    from tars_telemetry import gate

    return await gate.observe(ctx, change)


@hookimpl
def tars_benchmark(ctx: Context) -> BenchmarkResult:
    """Alert quality, Sloth v0.16 (before) against ours (after), on labelled incidents backfilled into a
    throwaway Prometheus: the quick set here, ``benchmarks/tars-slo-monitor_bench.py`` for all of them."""
    from tars_core import BenchmarkResult
    from tars_telemetry import alertbench

    config: SLOMonitorConfig = ctx.config
    metrics = alertbench.run(ctx.state_dir / "alertbench", quick=config.benchmark_quick, log=ctx.log.info)
    scope = "quick set (5 scenarios)" if config.benchmark_quick else "full set"
    return BenchmarkResult(metrics=metrics, detail=f"alert quality on the {scope}; before = Sloth v0.16, after = ours")


@hookimpl
def tars_report(release: Release) -> ReportSection | None:
    if not any(p.name == NAME for p in release.plugins):
        return None
    from tars_telemetry import gate

    return gate.report_section(release, NAME)


@hookimpl
def tars_sandbox(site: SandboxSite) -> SandboxContribution:
    """The streaming monitor daemon (the sandbox Prometheus remote-writes the SLO series to it; see
    ``tars-slo watch``) and the config section: rules evaluated within seconds of a load, the gate polling
    often over short windows (the sandbox's bake times are seconds, see ``release.bake_time``)."""
    import attrs

    from tars_telemetry.stream import sandbox_contribution

    daemon = sandbox_contribution(site)
    config = {"rule_interval": "5s", "long_rule_interval": "15s", "poll_interval_s": 3.0, "min_window_s": 15.0}
    return attrs.evolve(daemon, config=config)


@hookimpl
def tars_sandbox_seed(ctx: Context) -> None:
    """The regression monitor's recorded series (``tars:regression:*``, which the daemon forecasts) in the
    sandbox Prometheus from its first start, and the forecast dashboard in a Grafana folder of its own."""
    from tars_telemetry.regression_rules import seed_sandbox

    seed_sandbox(ctx.targets)
