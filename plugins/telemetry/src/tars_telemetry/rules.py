"""Prometheus rules for SLOs: traffic-weighted error ratios, budgets, burn rates and MWMB alerts.

Error ratios are ratios of summed events over each window (``sum(rate(bad[w])) / sum(rate(total[w]))``),
never averages of short ratios: Sloth's 30-day SLI averages 5-minute ratios, so a busy bad hour counts as
much as a quiet good one and the remaining budget it reports is wrong when traffic varies.

Alert tiers follow the SRE Workbook (ch. 5) plus Sloth's 3x ticket; the burn-rate factor is derived from
the share of the budget a tier may spend in its long window, ``b = share x period / long window``, so a
28-day or calendar-month SLO gets thresholds for its own period. A tier fires only when both of its
windows exceed the threshold *and* its long window holds ten failures' worth of events at that threshold: with a few
requests one failure is a 1000x burn, and that is "insufficient data", not a page.

Run ``python -m tars_telemetry.rules --out DIR [--test]`` to write the rule file (and its promtool tests).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from tars_core.errors import ConfigError, PromtoolError
from tars_core.promtool import promtool
from tars_telemetry.spec import (
    OPS,
    SLO,
    EventQuery,
    Latency,
    Ratio,
    RawQuery,
    Selector,
    Threshold,
    default_min_events,
    load_files,
    parse_duration,
    seconds_text,
    tars_slos,
)

RULE_FILE = "tars-slo-rules.yml"
SHORT_WINDOWS = ("5m", "30m", "1h", "2h", "6h")
LONG_WINDOWS = ("1d", "3d")
SHORT_INTERVAL = "30s"
LONG_INTERVAL = "2m"  # windows of a day or more change slowly; a 30-day rate every 30 s is wasted work
ABSENT_FOR = "10m"
INSUFFICIENT_FOR = "15m"
EXHAUSTED_FOR = "5m"
BURN_ALERT = "SLOErrorBudgetBurn"


@attrs.frozen
class Tier:
    name: str
    severity: str
    long: str
    short: str
    share: float  # of the period's budget this tier lets the long window spend before it alerts
    for_: str

    def factor(self, period: int) -> float:
        return self.share * period / parse_duration(self.long, "tier")


# No ``for`` on the burn tiers (as in the Workbook): the short window already keeps an alert from firing
# on a blip and resets it fast, and a ``for`` only adds its length to every detection time (the benchmark
# measured a 1000x burn paging at 1m55s with ``for: 1m`` against the Workbook's 52 s).
TIERS = (
    Tier("page-1h", "page", "1h", "5m", 0.02, "0s"),
    Tier("page-6h", "page", "6h", "30m", 0.05, "0s"),
    Tier("ticket-1d", "ticket", "1d", "2h", 0.10, "0s"),
    Tier("ticket-3d", "ticket", "3d", "6h", 0.10, "0s"),
)


def num(value: float) -> str:
    """A float as PromQL text, short and stable (``0.0144``, never ``0.014400000000000001``)."""
    return format(value, ".10g")


def tiers_for(slo: SLO) -> list[Tier]:
    """The tiers that can fire for this SLO: the long window fits in the period and the threshold is < 1."""
    return [
        t for t in TIERS if parse_duration(t.long, "tier") <= slo.period and t.factor(slo.period) * slo.budget < 1.0
    ]


def threshold(slo: SLO, tier: Tier) -> float:
    return float(num(tier.factor(slo.period) * slo.budget))


def tier_min_events(slo: SLO, tier: Tier, bad_events: int = 10) -> int:
    """Events a tier's long window must hold before that tier may fire: ``bad_events`` failures' worth at
    its threshold. One minimum for every tier would let a single failure raise a ticket (at the 1x
    threshold a 1h-sized minimum is less than one failure's worth); the SLO's own ``min_events`` wins."""
    if slo.min_events is not None:
        return slo.min_events
    return max(1, math.ceil(bad_events / threshold(slo, tier)))


def windows(slo: SLO) -> list[str]:
    """Every window a ratio is recorded for: the tiers' windows and the SLO period (deduplicated)."""
    out = [*SHORT_WINDOWS, *LONG_WINDOWS]
    if slo.period_text not in out:
        out.append(slo.period_text)
    return out


def _selector_text(slo: SLO) -> str:
    return f'{{slo="{slo.name}"}}'


def _over(query: EventQuery, window: str, fn: str = "rate") -> str:
    if isinstance(query, RawQuery):
        text = query.at(window)
        return text if fn == "rate" else f"({text}) * {parse_duration(window, 'window')}"
    return f"sum({fn}({query}[{window}]))"


def _part(query: EventQuery, window: str) -> str:
    """A numerator's rate, 0 when its series do not exist: a counter that was never incremented (no 5xx
    yet, no trace continued yet) is often not exported at all, and that is a ratio of 0 (or 1), not none."""
    return f"({_over(query, window)} or vector(0))"


def _good_share(good: EventQuery, total: EventQuery, window: str) -> str:
    return f"{_part(good, window)} / ({_over(total, window)})"


def _bucket(h: Latency, le: str) -> Selector:
    return h.histogram.with_matcher("le", le)


def indicator_rule(slo: SLO) -> dict[str, Any] | None:
    """Timeslices: ``slo:sli_good:bool`` records 1 for a good slice, 0 for a bad one, per evaluation."""
    ind = slo.indicator
    if isinstance(ind, Threshold):
        expr = f"{ind.gauge} {OPS[ind.op]} bool {num(ind.value)}"
    elif slo.budgeting == "Timeslices" and slo.slice_target is not None and slo.slice_window is not None:
        w = seconds_text(slo.slice_window)
        expr = f"({error_ratio_expr(slo, w, timeslices=False)}) <= bool {num(1 - slo.slice_target)}"
    else:
        return None
    return {"record": "slo:sli_good:bool", "expr": expr, "labels": _labels(slo)}


def error_ratio_expr(slo: SLO, window: str, *, timeslices: bool = True) -> str:
    """Bad events over total events in ``window`` (sums of rates, so the ratio is traffic-weighted)."""
    ind = slo.indicator
    if timeslices and (isinstance(ind, Threshold) or slo.budgeting == "Timeslices"):
        sel = f"slo:sli_good:bool{_selector_text(slo)}"
        return f"1 - (sum(sum_over_time({sel}[{window}])) / sum(count_over_time({sel}[{window}])))"
    if isinstance(ind, Latency):
        return f"1 - ({_good_share(_bucket(ind, ind.le), _bucket(ind, '+Inf'), window)})"
    assert isinstance(ind, Ratio)
    if ind.bad is not None:
        return f"{_part(ind.bad, window)} / ({_over(ind.total, window)})"
    assert ind.good is not None
    return f"1 - ({_good_share(ind.good, ind.total, window)})"


def events_expr(slo: SLO, window: str) -> str:
    """Events (or time slices) in ``window``; 0 rather than nothing when there is no data at all."""
    ind = slo.indicator
    if isinstance(ind, Threshold) or slo.budgeting == "Timeslices":
        inner = f"sum(count_over_time(slo:sli_good:bool{_selector_text(slo)}[{window}]))"
    elif isinstance(ind, Latency):
        inner = _over(_bucket(ind, "+Inf"), window, "increase")
    else:
        inner = _over(ind.total, window, "increase")
    return f"({inner}) or vector(0)"


def absent_expr(slo: SLO) -> str:
    ind = slo.indicator
    if isinstance(ind, Threshold):
        return f"absent({ind.gauge})"
    if isinstance(ind, Latency):
        return f"absent({_bucket(ind, '+Inf')})"
    total = ind.total
    return f"absent({total.at('5m')})" if isinstance(total, RawQuery) else f"absent({total})"


def _labels(slo: SLO) -> dict[str, str]:
    return {"slo": slo.name, "service": slo.service}


def runbook(slo: SLO) -> str:
    return slo.runbook_url or f"plugins/telemetry/README.md#runbook-{slo.name}"


def alert_labels(slo: SLO, tier: Tier) -> dict[str, str]:
    """Every label of a burn alert but those the expression carries (slo, service)."""
    return {
        **dict(slo.alert_labels),
        "tier": tier.name,
        "severity": tier.severity,
        "exhaustion": seconds_text(round(slo.period / tier.factor(slo.period))),
        "long_window": tier.long,
        "short_window": tier.short,
        "runbook_url": runbook(slo),
    }


def slo_groups(slo: SLO, long_interval: str = LONG_INTERVAL, interval: str = SHORT_INTERVAL) -> list[dict[str, Any]]:
    """The four rule groups of one SLO: short windows, long windows, budget, alerts.

    ``long_interval`` is how often the day-and-longer windows are evaluated, ``interval`` the rest; a
    sandbox or a test with minutes of history lowers them so a fresh load is evaluated (and apply
    returns) within seconds.
    """
    labels = _labels(slo)
    sel = _selector_text(slo)
    short: list[dict[str, Any]] = []
    ind_rule = indicator_rule(slo)
    if ind_rule is not None:
        short.append(ind_rule)
    long: list[dict[str, Any]] = []
    for w in windows(slo):
        target = short if w in SHORT_WINDOWS else long
        target.append({"record": f"slo:sli_error:ratio_rate{w}", "expr": error_ratio_expr(slo, w), "labels": labels})
        target.append({"record": f"slo:sli_events:increase{w}", "expr": events_expr(slo, w), "labels": labels})
    budget = num(slo.budget)
    minimum = default_min_events(slo)
    meta: list[dict[str, Any]] = [
        {"record": "slo:objective:ratio", "expr": f"vector({num(slo.objective)})", "labels": labels},
        {"record": "slo:error_budget:ratio", "expr": f"vector({budget})", "labels": labels},
        {"record": "slo:min_events:total", "expr": f"vector({minimum})", "labels": labels},
    ]
    meta += [
        {"record": f"slo:burn_rate:ratio_rate{w}", "expr": f"slo:sli_error:ratio_rate{w}{sel} / {budget}"}
        for w in windows(slo)
    ]
    meta += [
        {
            "record": "slo:period_error_budget_remaining:ratio",
            "expr": f"1 - slo:sli_error:ratio_rate{slo.period_text}{sel} / {budget}",
        },
        {
            "record": "slo:insufficient_data:bool",
            "expr": f"slo:sli_events:increase{TIERS[0].long}{sel} < bool {minimum}",
        },
    ]
    alerts: list[dict[str, Any]] = []
    for tier in tiers_for(slo):
        thr = num(threshold(slo, tier))
        expr = (
            f"(slo:sli_error:ratio_rate{tier.long}{sel} > {thr} and slo:sli_error:ratio_rate{tier.short}{sel} > {thr})"
            f" and slo:sli_events:increase{tier.long}{sel} >= {tier_min_events(slo, tier)}"
        )
        factor = num(tier.factor(slo.period))
        alerts.append(
            {
                "alert": BURN_ALERT,
                "expr": expr,
                **({"for": tier.for_} if parse_duration(tier.for_, "for") else {}),
                "labels": alert_labels(slo, tier),
                "annotations": {
                    "title": f"{slo.name}: {tier.severity} burn rate over {tier.long} and {tier.short}",
                    "description": f"{slo.name} ({slo.description}) spends its {slo.period_text} error budget at "
                    f"more than {factor}x over both {tier.long} and {tier.short} (error ratio > {thr}); at "
                    f"this rate it is gone in {alert_labels(slo, tier)['exhaustion']}.",
                },
            }
        )
    common = {**dict(slo.alert_labels), "runbook_url": runbook(slo)}
    alerts += [
        {
            "alert": "SLOErrorBudgetExhausted",
            "expr": f"slo:period_error_budget_remaining:ratio{sel} <= 0"
            f" and slo:sli_events:increase{slo.period_text}{sel} >= {minimum}",
            "for": EXHAUSTED_FOR,
            "labels": {**common, "tier": "budget", "severity": "ticket"},
            "annotations": {"title": f"{slo.name}: the {slo.period_text} error budget is spent"},
        },
        {
            "alert": "SLOMetricAbsent",
            "expr": absent_expr(slo),
            "for": ABSENT_FOR,
            "labels": {**common, **labels, "tier": "absent", "severity": "ticket"},
            "annotations": {"title": f"{slo.name}: no data for its SLI; every burn alert is blind"},
        },
        {
            "alert": "SLOInsufficientData",
            "expr": f"slo:insufficient_data:bool{sel} == 1",
            "for": INSUFFICIENT_FOR,
            "labels": {**common, "tier": "insufficient", "severity": "info"},
            "annotations": {
                "title": f"{slo.name}: fewer than {minimum} events in {TIERS[0].long}; burn alerts are held back",
            },
        },
    ]
    for rule in meta:
        rule.setdefault("labels", labels)
    return [
        {"name": f"slo:{slo.name}:sli-short", "interval": interval, "rules": short},
        {"name": f"slo:{slo.name}:sli-long", "interval": long_interval, "rules": long},
        {"name": f"slo:{slo.name}:budget", "interval": interval, "rules": meta},
        {"name": f"slo:{slo.name}:alerts", "interval": interval, "rules": alerts},
    ]


class _Dumper(yaml.SafeDumper):
    """No ``&id001`` anchors: a rule file is read by people, and every rule should show its own labels."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def eval_order(slos: Sequence[SLO]) -> list[str]:
    """Group names in the order promtool must evaluate them (its ``group_eval_order``).

    A rule reads the rules of the groups before it at the same timestamp. Prometheus runs groups on their
    own timers, so a dependency reads a value at most one interval old; promtool evaluates the loaded groups
    in map order, which changes from run to run, and a rule read before it is written at a coarse
    ``evaluation_interval`` is older than the lookback and absent. Without this order the tests flake.
    """
    return [g["name"] for slo in sorted(slos, key=lambda s: s.name) for g in slo_groups(slo)]


def render_rules(slos: Sequence[SLO], long_interval: str = LONG_INTERVAL, interval: str = SHORT_INTERVAL) -> str:
    """The rule file for ``slos``: same SLOs, same bytes (sorted by name, no timestamps)."""
    groups = [g for slo in sorted(slos, key=lambda s: s.name) for g in slo_groups(slo, long_interval, interval)]
    header = "# Generated by tars_telemetry.rules from the SLO specs; do not edit by hand.\n"
    return header + dump({"groups": groups})


def write(out: Path, slos: Sequence[SLO], tests: bool) -> list[Path]:
    """Write the rule file (and, with ``tests``, per SLO its own rule file and promtool test file) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rule_file = out / RULE_FILE
    rule_file.write_text(render_rules(slos), encoding="utf-8")
    written = [rule_file]
    if tests:
        from tars_telemetry.promtests import render_tests

        # Each test file loads only its SLO's groups (the same rules as in the full file): promtool evaluates
        # every loaded rule at every step, so loading all SLOs would multiply the run time by their number.
        for slo in slos:
            rules = out / f"{slo.name}.rules.yml"
            rules.write_text(render_rules([slo]), encoding="utf-8")
            path = out / f"{slo.name}.test.yml"
            path.write_text(render_tests(slo, rules.name), encoding="utf-8")
            written += [rules, path]
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tars_telemetry.rules --out DIR [--slo FILE...] [--tests] [--check]``."""
    ap = argparse.ArgumentParser(prog="python -m tars_telemetry.rules", description=main.__doc__)
    ap.add_argument("--out", type=Path, required=True, help="folder for the rule file (and tests)")
    ap.add_argument("--slo", type=Path, action="append", help="OpenSLO/Sloth file or folder (default: T.A.R.S.)")
    ap.add_argument("--tests", action="store_true", help="also write promtool test files, one per SLO")
    ap.add_argument("--check", action="store_true", help="run promtool check rules (and test rules with --tests)")
    args = ap.parse_args(argv)
    try:
        slos = load_files(args.slo) if args.slo else tars_slos()
        written = write(args.out, slos, args.tests)
        if args.check:
            promtool("check", "rules", str(written[0]))
            for test in written[2::2]:
                promtool("test", "rules", str(test))
    except (ConfigError, PromtoolError, OSError) as exc:  # OSError: --out or --slo cannot be read or written
        print(f"tars_telemetry.rules: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, PromtoolError) else 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
