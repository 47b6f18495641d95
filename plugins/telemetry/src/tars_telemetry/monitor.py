"""Apply, verify and roll back the SLO rules on a real Prometheus (the monitor's own change).

Like TARS-1002's recording rules, and through the same core code (``tars_core.prometheus``): the rule file
is checked by promtool before Prometheus can see it, written atomically, Prometheus reloaded, and apply
returns only when every rule evaluated; a file Prometheus refuses is replaced by what was there before.
What was there before (a previous version of our file, or nothing) is kept in ``ctx.state`` so rollback
puts exactly that back.

Before anything is written the SLOs are checked against the target: a latency SLO whose ``le`` bucket the
histogram does not have would record a ratio of nothing forever, so apply refuses it (exit 2) naming the
buckets that exist. The functions block (HTTP, promtool); the hooks are plain functions the core runs in
a worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import attrs

from tars_core import ApplyResult, Context, TargetError, VerifyResult
from tars_core.errors import ConfigError
from tars_core.prometheus import Prometheus, connect, rule_health
from tars_core.waiting import WaitTimeout, wait_until
from tars_telemetry import rule_file
from tars_telemetry.config import SLOMonitorConfig
from tars_telemetry.rules import absent_expr, render_rules, slo_groups
from tars_telemetry.spec import SLO, Latency, load_files, tars_slos


def load_slos(config: SLOMonitorConfig, base: Path | None = None) -> list[SLO]:
    """The configured SLOs; a bad spec is bad input (exit 2), raised before anything is touched."""
    try:
        if not config.slo_files:
            return tars_slos()
        paths = [Path(p) if base is None or Path(p).is_absolute() else base / p for p in config.slo_files]
        return load_files(paths)
    except ConfigError as exc:
        raise TargetError(f"{exc}") from None


def rule_names(slos: Sequence[SLO]) -> list[str]:
    """Every rule name the file defines (recording ``record``, alerting ``alert``), each once."""
    names: dict[str, None] = {}
    for slo in slos:
        for group in slo_groups(slo):
            for rule in group["rules"]:
                names[rule.get("record") or rule["alert"]] = None
    return list(names)


def _le_value(text: str) -> float:
    return math.inf if text in ("+Inf", "Inf", "inf") else float(text)


def check_buckets(prom: Prometheus, slos: Sequence[SLO]) -> list[str]:
    """Refuse a latency SLO whose ``le`` bucket is not on the target; return the SLOs without any data.

    Prometheus prints ``le`` the way the client library did (``0.15``, ``0.150``, ``1e-1``), so buckets are
    compared as numbers; the error quotes them as the server has them.
    """
    absent: list[str] = []
    for slo in slos:
        ind = slo.indicator
        if isinstance(ind, Latency):
            series = prom.query(f"count by (le) ({ind.histogram})")
            les = sorted({r["metric"].get("le", "") for r in series} - {""}, key=_le_value)
            if not les:
                absent.append(slo.name)
                continue
            if not any(_le_value(le) == _le_value(ind.le) for le in les):
                raise TargetError(
                    f'SLO {slo.name}: {ind.histogram.metric} has no bucket le="{ind.le}"; it has le='
                    f"{', '.join(les)}: use one of those as the threshold in {slo.source}"
                )
        elif prom.query(absent_expr(slo)):
            absent.append(slo.name)
    return absent


def apply(ctx: Context) -> ApplyResult:
    config: SLOMonitorConfig = ctx.config
    slos = load_slos(config)
    text = render_rules(slos, config.long_rule_interval, config.rule_interval)
    names = rule_names(slos)
    with connect(ctx.targets) as prom:
        absent = check_buckets(prom, slos)
    note = f"; no data yet for {', '.join(absent)} (SLOMetricAbsent fires until it comes)" if absent else ""
    result = rule_file.install(
        ctx,
        text,
        file_name=config.rule_file_name,
        names=names,
        timeout=config.reload_timeout_s,
        what=f"{len(names)} SLO rules for {len(slos)} SLOs",
    )
    return attrs.evolve(result, detail=result.detail + note)


def verify(ctx: Context) -> VerifyResult:
    config: SLOMonitorConfig = ctx.config
    slos = load_slos(config)
    names = rule_names(slos)
    checks: dict[str, str] = {}
    with connect(ctx.targets) as prom:
        health = rule_health(prom, names)
        bad = {k: v for k, v in health.items() if v != "ok"}
        checks["rules healthy"] = f"{len(names) - len(bad)}/{len(names)}" + (
            f"; e.g. {next(iter(bad))}: {next(iter(bad.values()))}" if bad else ""
        )
        if bad:
            return VerifyResult(ok=False, detail=f"{len(bad)} SLO rules missing or failing", checks=checks)
        with_source = [s for s in slos if not prom.query(absent_expr(s))]

        def missing() -> list[str]:
            # the short ratio and the period's remaining budget (the long group, what the gate's preflight
            # reads): a monitor applied in the same release is judged by its preflight right after this
            # verify, and found "no data yet" when the long group had not been evaluated once
            recorded = [
                {r["metric"].get("slo") for r in prom.query(q)}
                for q in ("slo:sli_error:ratio_rate5m", "slo:period_error_budget_remaining:ratio")
            ]
            return [s.name for s in with_source if not all(s.name in r for r in recorded)]

        try:
            wait_until(lambda: not missing(), timeout=config.data_timeout_s, interval=2.0, what="SLO ratios")
        except WaitTimeout:
            pass
        lacking = missing()
        blind = sorted({s.name for s in slos} - {s.name for s in with_source})
        checks["SLOs evaluated with data"] = f"{len(with_source) - len(lacking)}/{len(slos)}" + (
            f"; no source series for {', '.join(blind)}" if blind else ""
        )
    if lacking:
        return VerifyResult(
            ok=False,
            detail=f"source data is there but no error ratio was recorded for {', '.join(lacking)}",
            checks=checks,
        )
    if not with_source:
        return VerifyResult(
            ok=False, detail="no SLO has source data on this Prometheus: nothing is watched", checks=checks
        )
    return VerifyResult(ok=True, detail=f"{len(names)} rules healthy; {len(with_source)} SLOs evaluated", checks=checks)


def rollback(ctx: Context) -> ApplyResult:
    config: SLOMonitorConfig = ctx.config
    return rule_file.restore(ctx, names=rule_names(load_slos(config)), timeout=config.reload_timeout_s)
