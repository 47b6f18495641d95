"""tars-regression-monitor: the plugin's entry-point module (hooks only; the work is imported inside them).

Imports the core, attrs and the config class only, so ``tars-run list`` stays fast; the Prometheus client,
the judges (numpy, scipy) and matplotlib are imported by the hooks that need them. apply/verify/rollback
load the ``tars:regression:*`` rules (``regression_monitor``); ``tars_observe`` is the regression gate
(``regression_gate``): canary against baseline, or after against before, judged at every poll with the
anytime-valid sequential judges. It is async so Ctrl-C ends a bake at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tars_core import PluginInfo, hookimpl
from tars_telemetry.regression_config import RegressionMonitorConfig

if TYPE_CHECKING:
    from tars_core import ApplyResult, Context, Release, ReportSection, SandboxContribution, SandboxSite, VerifyResult
    from tars_core.model import Change, Judgement, Plan

NAME = "tars-regression-monitor"


@hookimpl
def tars_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        title="Live regression monitor: canary and before/after judgement of latency, errors, throughput, memory",
        kind="monitor",
        config=RegressionMonitorConfig,
        description="Judges each fix while it bakes with anytime-valid sequential tests (rate ratio for errors, "
        "rank/mean tests for latency and throughput, slope difference for memory, Holm across metrics): canary "
        "against baseline when the fix leaves a flag at a fraction, else after against before; fails a fix that "
        "regresses, never passes one it could not see, and puts every statistic and a chart in the report.",
        risk="low: adds Prometheus recording rules only (removed on rollback when it added them)",
    )


@hookimpl
def tars_apply(ctx: Context) -> ApplyResult:
    from tars_telemetry import regression_monitor

    return regression_monitor.apply(ctx)


@hookimpl
def tars_verify(ctx: Context) -> VerifyResult:
    from tars_telemetry import regression_monitor

    return regression_monitor.verify(ctx)


@hookimpl
def tars_rollback(ctx: Context) -> ApplyResult:
    from tars_telemetry import regression_monitor

    return regression_monitor.rollback(ctx)


@hookimpl
async def tars_preflight(ctx: Context, plan: Plan) -> None:
    """Records the feature flags before the release (for the canary split); judges nothing, so abstains."""
    from tars_telemetry import regression_gate

    await regression_gate.preflight(ctx)


@hookimpl
async def tars_observe(ctx: Context, change: Change) -> Judgement | None:
    from tars_telemetry import regression_gate

    return await regression_gate.observe(ctx, change)


@hookimpl
def tars_report(release: Release) -> ReportSection | None:
    if not any(p.name == NAME for p in release.plugins):
        return None
    from tars_telemetry import regression_gate

    return regression_gate.report_section(release, NAME)


@hookimpl
def tars_sandbox(site: SandboxSite) -> SandboxContribution:
    """Only a config section (the rules are seeded by tars-slo-monitor's sandbox seed): poll every 5 s over a
    2-minute pre-release window, as the sandbox's bake times are short (a 15 s demo bake that ends inconclusive
    is not judged: ``min_bake_s``). The error ratio and trainer RSS are
    optional there: a two-minute bake of sandbox traffic holds a few dozen errors (an error-rate test needs
    hundreds to see a 50 % change) and 24 RSS samples (a slope needs 30), so they could only ever be
    "inconclusive"; they are still judged, and a regression in them still fails the fix."""
    from tars_core import SandboxContribution

    config = {
        # the demo bakes each fix 15 s (release.bake_time): too short for a verdict, so the monitor abstains
        # there unless it sees a regression; give a fix 90 s or more (bake_times) to have it judged
        "min_bake_s": 90.0,
        "poll_interval_s": 5.0,
        "step_s": 5.0,
        "baseline_window_s": 120.0,
        "optional_metrics": ["api_error_ratio", "trainer_rss_bytes"],
    }
    return SandboxContribution(config=config)
