"""``promtool test rules`` files generated from an SLO: proof that each tier fires, stays silent and resets.

For every tier of an SLO the file holds three cases: constant traffic at 1.05x the tier's error-ratio
threshold (the tier's alert fires, with every label), at 0.95x (it stays silent), and a burst at 2x
followed by clean traffic (it fires, then resolves once the short window has moved past the burst). Per
SLO four more: no data at all (``SLOMetricAbsent`` fires, no burn alert); low traffic at a 50 % error
ratio (no burn alert, not even pending, and no ``SLOErrorBudgetExhausted`` although the ratio is 50x the
budget; ``slo:insufficient_data:bool`` is 1 and its alert fires); and the period's error ratio at 1.05x
the budget (the budget is spent: ``SLOErrorBudgetExhausted`` is pending for its ``for`` and then fires,
with every label) and at 0.95x (5 % of it left: silent).

Input series are built from the spec's own selectors: label values are chosen so the "bad" side matches
the bad (or not the good) selector and the rest matches only the total, so the test exercises the
expressions Prometheus will run. Time slices (boolean gauges) use N series of which k are bad, with N
just large enough for k/N to land within 10 % of the threshold on either side.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from tars_telemetry.live import EXHAUSTED_ALERT  # the rule's name, as the live view reads it
from tars_telemetry.rules import (
    ABSENT_FOR,
    BURN_ALERT,
    EXHAUSTED_FOR,
    INSUFFICIENT_FOR,
    Tier,
    alert_labels,
    dump,
    eval_order,
    num,
    runbook,
    threshold,
    tier_min_events,
    tiers_for,
)
from tars_telemetry.spec import (
    OPS,
    SLO,
    Latency,
    Matcher,
    Ratio,
    RawQuery,
    Selector,
    Threshold,
    default_min_events,
    parse_duration,
)

STEP = 60  # seconds between input samples and between rule evaluations
_CANDIDATES = ("x", "200", "500", "503", "ok", "success", "error", "failed", "0", "1", "a")
_SLICE_SERIES = (10, 20, 50, 100, 200, 500, 1000, 2000)

# (error ratio, minutes) pieces of a traffic plan, applied one after the other from t=0.
Plan = Sequence[tuple[float, int]]


class NoTestInput(ValueError):
    """The SLO's selectors leave no label values the generator can pick (e.g. a raw Sloth query)."""


def _minutes(duration: str) -> int:
    return parse_duration(duration, "duration") // 60


def _solve(metric: str, must: Sequence[Selector], must_not: Selector | None) -> dict[str, str]:
    """Label values (besides the name) for a series of ``metric`` matching every ``must`` and not ``must_not``."""
    matchers: list[Matcher] = [m for s in must for m in s.matchers]
    names = sorted({m.name for m in matchers} | ({m.name for m in must_not.matchers} if must_not else set()))
    options = []
    for name in names:
        values = [m.value for m in matchers if m.name == name and m.op == "="]
        options.append([*values, *_CANDIDATES, ""])
    for combo in itertools.product(*options):
        labels = dict(zip(names, combo, strict=True))
        if not all(m.matches(labels.get(m.name, "")) for m in matchers):
            continue
        if must_not is not None and must_not.metric == metric:
            if all(m.matches(labels.get(m.name, "")) for m in must_not.matchers):
                continue
        return {k: v for k, v in labels.items() if v}
    raise NoTestInput(
        f"no label values satisfy {', '.join(map(str, must))}" + (f" but not {must_not}" if must_not else "")
    )


def _series(selector: Selector, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{selector.metric}{{{inner}}}"


def _counter(per_minute: Sequence[float]) -> str:
    """Counter values, one per minute from t=0, starting at 0."""
    value, out = 0.0, ["0"]
    for inc in per_minute:
        value += inc
        out.append(num(value))
    return " ".join(out)


def _per_minute(plan: Plan, bad_side: bool, rate: float) -> list[float]:
    out: list[float] = []
    for ratio, minutes in plan:
        out += [rate * (ratio if bad_side else 1.0 - ratio)] * minutes
    return out


def event_inputs(slo: SLO, plan: Plan, rate: float) -> list[dict[str, str]]:
    """Counter or bucket series carrying ``rate`` events per minute at the plan's error ratios."""
    ind = slo.indicator
    if isinstance(ind, Latency):
        good = ind.histogram.with_matcher("le", ind.le)
        total = ind.histogram.with_matcher("le", "+Inf")
        base = _solve(ind.histogram.metric, [ind.histogram], None)
        return [
            {"series": _series(good, {**base, "le": ind.le}), "values": _counter(_per_minute(plan, False, rate))},
            {"series": _series(total, {**base, "le": "+Inf"}), "values": _counter([rate] * sum(m for _, m in plan))},
        ]
    assert isinstance(ind, Ratio)
    part, part_is_bad = (ind.bad, True) if ind.bad is not None else (ind.good, False)
    if isinstance(part, RawQuery) or isinstance(ind.total, RawQuery) or part is None:
        raise NoTestInput("a raw Sloth query: write sum(rate(SELECTOR[{{.window}}])) to get generated tests")
    total = ind.total
    if part.metric == total.metric:
        inside = _solve(total.metric, [total, part], None)
        outside = _solve(total.metric, [total], part)
        return [
            {"series": _series(part, inside), "values": _counter(_per_minute(plan, part_is_bad, rate))},
            {"series": _series(total, outside), "values": _counter(_per_minute(plan, not part_is_bad, rate))},
        ]
    return [
        {
            "series": _series(part, _solve(part.metric, [part], None)),
            "values": _counter(_per_minute(plan, part_is_bad, rate)),
        },
        {
            "series": _series(total, _solve(total.metric, [total], None)),
            "values": _counter([rate] * sum(m for _, m in plan)),
        },
    ]


def _gauge_values(ind: Threshold) -> tuple[str, str]:
    """A good and a bad sample value for the threshold."""
    delta = max(1.0, abs(ind.value) / 2)
    below, above = num(ind.value - delta), num(ind.value + delta)
    return (below, above) if OPS[ind.op].startswith("<") else (above, below)


def slice_inputs(slo: SLO, n: int, bad_plan: Sequence[tuple[int, int]]) -> list[dict[str, str]]:
    """``n`` gauge series; ``bad_plan`` is (bad series, minutes) pieces: that many series read bad then."""
    ind = slo.indicator
    assert isinstance(ind, Threshold)
    good, bad = _gauge_values(ind)
    base = _solve(ind.gauge.metric, [ind.gauge], None)
    out = []
    for i in range(n):
        values = [bad if i < k else good for k, minutes in bad_plan for _ in range(minutes)]
        text = " ".join(f"{v}x{len(list(g)) - 1}" for v, g in itertools.groupby(values))
        out.append({"series": _series(ind.gauge, {**base, "tars_test_slice": f"{i:04d}"}), "values": text})
    return out


def slice_counts(thr: float) -> tuple[int, int, int]:
    """(N, k above, k below): the smallest N whose k/N lands within 10 % of ``thr`` on each side."""
    for n in _SLICE_SERIES:
        hi, lo = math.floor(thr * n) + 1, math.ceil(thr * n) - 1
        if lo >= 0 and hi / n <= 1.1 * thr and lo / n >= 0.9 * thr:
            return n, hi, lo
    n = _SLICE_SERIES[-1]
    return n, math.floor(thr * n) + 1, max(0, math.ceil(thr * n) - 1)


def _alerts(name: str, slo: SLO, extra: str = "") -> str:
    return f'ALERTS{{alertname="{name}",slo="{slo.name}",alertstate="firing"{extra}}}'


def _firing_labels(slo: SLO, tier: Tier) -> str:
    labels = {"alertname": BURN_ALERT, "alertstate": "firing", "slo": slo.name, "service": slo.service}
    labels.update(alert_labels(slo, tier))
    return "ALERTS{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _case(name: str, series: list[dict[str, str]], checks: list[dict[str, Any]]) -> dict[str, Any]:
    if not series:  # promtool needs some input; an unrelated series keeps the SLO's own metrics absent
        series = [{"series": "tars_telemetry_unrelated", "values": "1x120"}]
    return {"name": name, "interval": f"{STEP}s", "input_series": series, "promql_expr_test": checks}


def _expect(expr: str, at: int, samples: list[tuple[str, float]]) -> dict[str, Any]:
    return {
        "expr": expr,
        "eval_time": f"{at}m",
        "exp_samples": [{"labels": labels, "value": value} for labels, value in samples],
    }


def tier_cases(slo: SLO, tier: Tier) -> list[dict[str, Any]]:
    thr = threshold(slo, tier)
    minimum = tier_min_events(slo, tier)
    run = _minutes(tier.for_) + 20
    reset = _minutes(tier.short) + 3
    tier_alert = _alerts(BURN_ALERT, slo, f',tier="{tier.name}"')
    if isinstance(slo.indicator, Threshold):
        n, hi, lo = slice_counts(thr)
        above, below = slice_inputs(slo, n, [(hi, run)]), slice_inputs(slo, n, [(lo, run)])
        # the burst needs no fine resolution, only to be well above: ten series keep the long run cheap
        resets = slice_inputs(slo, 10, [(min(10, math.floor(20 * thr) + 1), run), (0, reset)])
        what = f"{hi}/{n} vs {lo}/{n} slices bad"
    else:
        rate = max(1000.0, 10.0 * minimum)
        above = event_inputs(slo, [(1.05 * thr, run)], rate)
        below = event_inputs(slo, [(0.95 * thr, run)], rate)
        resets = event_inputs(slo, [(min(1.0, 2 * thr), run), (0.0, reset)], rate)
        what = f"error ratio 1.05x / 0.95x of {num(thr)}"
    prefix = f"{slo.name} {tier.name}"
    return [
        _case(
            f"{prefix}: fires just above the threshold ({what})",
            above,
            [_expect(tier_alert, run, [(_firing_labels(slo, tier), 1)])],
        ),
        _case(f"{prefix}: silent just below the threshold", below, [_expect(tier_alert, run, [])]),
        _case(
            f"{prefix}: fires on a burst, resets once the {tier.short} window is clean",
            resets,
            [_expect(f"count({tier_alert})", run, [("{}", 1)]), _expect(tier_alert, run + reset, [])],
        ),
    ]


def _exhausted_labels(slo: SLO) -> str:
    labels = {"alertname": EXHAUSTED_ALERT, "alertstate": "firing", "slo": slo.name, "service": slo.service}
    labels.update({**dict(slo.alert_labels), "runbook_url": runbook(slo), "tier": "budget", "severity": "ticket"})
    return "ALERTS{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def exhausted_cases(slo: SLO) -> list[dict[str, Any]]:
    """The period's budget spent (error ratio 1.05x the budget all along) and 5 % of it left (0.95x).

    The inputs start at t=0, so the period's ratio is the plan's ratio from the first evaluation on: the
    alert is pending from then and fires once its ``for`` has passed; checked before (pending, not firing)
    and well after. The budget is the rule's own (``num``-rounded) figure: ``slo.budget`` carries float
    noise (0.010000000000000009) that would put a 1000-slice "just below" count exactly on the budget.
    """
    budget = float(num(slo.budget))
    minimum = default_min_events(slo)
    hold = _minutes(EXHAUSTED_FOR)
    run = hold + 3  # fires at 5m (slices: a ratio from t=0) or 6m (counters: a rate from t=1m)
    alert = _alerts(EXHAUSTED_ALERT, slo)
    if isinstance(slo.indicator, Threshold):
        n, hi, lo = slice_counts(budget)
        spent, left = slice_inputs(slo, n, [(hi, run)]), slice_inputs(slo, n, [(lo, run)])
        what = f"{hi}/{n} slices bad vs {lo}/{n}"
    else:
        rate = max(1000.0, 10.0 * minimum)
        spent = event_inputs(slo, [(1.05 * budget, run)], rate)
        left = event_inputs(slo, [(0.95 * budget, run)], rate)
        what = f"error ratio 1.05x / 0.95x of the budget {num(budget)}"
    return [
        _case(
            f"{slo.name}: budget spent ({what}): {EXHAUSTED_ALERT} fires after its {EXHAUSTED_FOR}",
            spent,
            [_expect(alert, hold - 2, []), _expect(alert, run, [(_exhausted_labels(slo), 1)])],
        ),
        _case(f"{slo.name}: 5% of the budget left: {EXHAUSTED_ALERT} stays silent", left, [_expect(alert, run, [])]),
    ]


def slo_cases(slo: SLO) -> list[dict[str, Any]]:
    minimum = default_min_events(slo)
    sel = f'{{slo="{slo.name}"}}'
    any_burn = f'ALERTS{{alertname="{BURN_ALERT}",slo="{slo.name}"}}'
    absent_at = _minutes(ABSENT_FOR) + 2
    low_at = _minutes(INSUFFICIENT_FOR) + 5
    if isinstance(slo.indicator, Threshold):
        low = slice_inputs(slo, 1, [(1, 5)])  # one trainer, bad, seen for 5 minutes
    else:
        low = event_inputs(slo, [(0.5, low_at)], minimum / 4 / low_at)
    own = f'{{service="{slo.service}",slo="{slo.name}"}}'
    return [
        _case(
            f"{slo.name}: no data: SLOMetricAbsent fires, no burn alert",
            [],
            [
                _expect(f"count({_alerts('SLOMetricAbsent', slo)})", absent_at, [("{}", 1)]),
                _expect(any_burn, absent_at, []),
            ],
        ),
        _case(
            f"{slo.name}: low traffic at a 50% error ratio: insufficient data, never a burn or exhausted alert",
            low,
            [
                _expect(any_burn, low_at, []),
                _expect(f'ALERTS{{alertname="{EXHAUSTED_ALERT}",slo="{slo.name}"}}', low_at, []),
                _expect(f"slo:insufficient_data:bool{sel}", low_at, [(f"slo:insufficient_data:bool{own}", 1)]),
                _expect(f"count({_alerts('SLOInsufficientData', slo)})", low_at, [("{}", 1)]),
            ],
        ),
        *exhausted_cases(slo),
    ]


def test_document(slo: SLO, rule_file: str) -> dict[str, Any]:
    tests = [case for tier in tiers_for(slo) for case in tier_cases(slo, tier)]
    return {
        "rule_files": [rule_file],
        "evaluation_interval": f"{STEP}s",
        "group_eval_order": eval_order([slo]),
        "tests": tests + slo_cases(slo),
    }


def render_tests(slo: SLO, rule_file: str) -> str:
    """The promtool test file for one SLO (stable: same SLO, same bytes)."""
    header = f"# Generated by tars_telemetry.promtests for SLO {slo.name}; run: promtool test rules THIS_FILE\n"
    return header + dump(test_document(slo, rule_file))
