"""Apply, verify and roll back the regression monitor's own change: the ``tars:regression:*`` rule file.

The gate judges recorded series, so a Prometheus outside the sandbox needs the rules
(:mod:`tars_telemetry.regression_rules`); apply loads them through the core's rule-file code (promtool
first, atomic write, reload, wait until every rule evaluated; a refused file is replaced by what was
there). When an identical file is already loaded and healthy (the sandbox seeds it at its first start)
apply changes nothing and records nothing, so rollback leaves it alone: a rollback only ever puts back
what this plugin's apply replaced. The functions block; the hooks are plain functions the core runs in a
worker thread.
"""

from __future__ import annotations

from tars_core import ApplyResult, Context, VerifyResult
from tars_core.prometheus import connect, rule_health
from tars_core.waiting import WaitTimeout, wait_until
from tars_telemetry import regression_rules, rule_file
from tars_telemetry.regression_config import RegressionMonitorConfig

NAMES = [name for name, _ in regression_rules.SERIES]


def apply(ctx: Context) -> ApplyResult:
    config: RegressionMonitorConfig = ctx.config
    if not config.default_metrics:
        return ApplyResult(changed=False, detail="default_metrics is off: no rules of ours to load")
    text = regression_rules.render()
    return rule_file.install(
        ctx,
        text,
        file_name=config.rule_file_name,
        names=NAMES,
        timeout=config.reload_timeout_s,
        what=f"{len(NAMES)} tars:regression rules",
    )


def verify(ctx: Context) -> VerifyResult:
    """The rules evaluate and at least one default series has data: a gate with nothing to read is blind."""
    config: RegressionMonitorConfig = ctx.config
    if not config.default_metrics:
        return VerifyResult(ok=True, detail="default_metrics is off: only the configured metrics are judged")
    checks: dict[str, str] = {}
    with connect(ctx.targets) as prom:
        health = rule_health(prom, NAMES)
        bad = {k: v for k, v in health.items() if v != "ok"}
        checks["rules healthy"] = f"{len(NAMES) - len(bad)}/{len(NAMES)}" + (
            f"; e.g. {next(iter(bad))}: {next(iter(bad.values()))}" if bad else ""
        )
        if bad:
            return VerifyResult(ok=False, detail=f"{len(bad)} tars:regression rules missing or failing", checks=checks)

        def with_data() -> list[str]:
            return [n for n in NAMES if prom.query(n)]

        try:
            wait_until(lambda: bool(with_data()), timeout=config.data_timeout_s, interval=2.0, what="regression series")
        except WaitTimeout:
            pass
        have = with_data()
    checks["series with data"] = f"{len(have)}/{len(NAMES)}" + (
        f"; none yet for {', '.join(sorted(set(NAMES) - set(have)))}" if len(have) < len(NAMES) else ""
    )
    if not have:
        return VerifyResult(
            ok=False, detail="no tars:regression series has data: the gate would be blind", checks=checks
        )
    return VerifyResult(
        ok=True, detail=f"rules healthy; {len(have)} of {len(NAMES)} default series have data", checks=checks
    )


def rollback(ctx: Context) -> ApplyResult:
    config: RegressionMonitorConfig = ctx.config
    return rule_file.restore(ctx, names=NAMES, timeout=config.reload_timeout_s)
