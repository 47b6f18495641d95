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

from pathlib import Path

from tars_core import ApplyResult, Context, TargetError, VerifyResult
from tars_core.errors import FixError, PromtoolError
from tars_core.prometheus import connect, load_rule_file, rule_health, unload_rule_file
from tars_core.waiting import WaitTimeout, wait_until
from tars_telemetry import regression_rules
from tars_telemetry.regression_config import RegressionMonitorConfig

PREVIOUS = "previous_rule_file"  # ctx.state key: the file's text before our first apply (None: none)
RULES_PATH = "rule_file"
NAMES = [name for name, _ in regression_rules.SERIES]


def apply(ctx: Context) -> ApplyResult:
    config: RegressionMonitorConfig = ctx.config
    if not config.default_metrics:
        return ApplyResult(changed=False, detail="default_metrics is off: no rules of ours to load")
    text = regression_rules.render()
    try:
        regression_rules.check(text)
    except PromtoolError as exc:
        raise FixError(f"promtool refused the regression rules, nothing was changed: {exc}") from None
    rules_dir = Path(ctx.targets.require("prometheus_rules_dir"))
    if not rules_dir.is_dir():
        raise TargetError(f"targets.prometheus_rules_dir {rules_dir} is not a folder: fix the path in the config")
    path = rules_dir / config.rule_file_name
    with connect(ctx.targets) as prom:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text and all(v == "ok" for v in rule_health(prom, NAMES).values()):
            return ApplyResult(changed=False, detail=f"{len(NAMES)} tars:regression rules already loaded")
        if ctx.dry_run:
            return ApplyResult(
                changed=False, detail=f"dry run: would load {len(NAMES)} tars:regression rules into {path}"
            )
        if PREVIOUS not in ctx.state:
            ctx.state.update({PREVIOUS: current, RULES_PATH: str(path)})
        load_rule_file(prom, path, text, NAMES, timeout=config.reload_timeout_s)
    return ApplyResult(changed=True, detail=f"{len(NAMES)} tars:regression rules loaded and healthy")


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
    if PREVIOUS not in ctx.state:
        ctx.log.warning("tars-regression-monitor: nothing to roll back (apply loaded no rule file)")
        return ApplyResult(changed=False, detail="not applied")
    path = Path(ctx.state[RULES_PATH])
    previous = ctx.state[PREVIOUS]
    if ctx.dry_run:
        return ApplyResult(changed=False, detail=f"dry run: would {'restore' if previous else 'remove'} {path}")
    with connect(ctx.targets) as prom:
        unload_rule_file(prom, path, previous, NAMES, timeout=config.reload_timeout_s)
    del ctx.state[PREVIOUS]
    del ctx.state[RULES_PATH]
    return ApplyResult(changed=True, detail=f"{'restored' if previous else 'removed'} {path}")
