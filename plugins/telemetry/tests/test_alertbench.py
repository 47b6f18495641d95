"""The benchmark's labels and theory (pure math), and a small real replay: promtool backfill, a real Prometheus,
our generated rules. The figures themselves come from benchmarks/tars-slo-monitor_bench.py; nothing is timed."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from tars_telemetry import alertbench as ab
from tars_telemetry.rules import TIERS

NOW = 1_800_000_000.0  # any fixed past clock: labels do not depend on it


def specs() -> list[ab.TierSpec]:
    return [ab.TierSpec.of(ab.bench_slo(ab.incidents()[0]), t) for t in TIERS]


def labelled(sc: ab.Scenario, plan: ab.Plan = ab.FULL_PLAN) -> ab.Label:
    clock = ab.Clock.of(plan, NOW)
    m = ab.Model(sc, clock.origin, clock.start, 0.001)
    return ab.label(m, specs(), ab.eval_grid(m, clock))


def by_id(sid: str) -> ab.Scenario:
    return next(s for s in ab.incidents() if s.id == sid)


def test_the_incident_set_spans_what_the_issue_asks_for() -> None:
    full = ab.incidents()
    burns = [s.burn for s in full if s.kind == "incident"]
    durations = [s.duration for s in full if s.kind == "incident"]
    assert len([s for s in full if s.kind == "incident"]) >= 20
    assert min(burns) == 0.5 and max(burns) == 1000
    assert min(durations) == 2 * ab.MINUTE and max(durations) == 2 * ab.DAY
    assert {s.kind for s in full} == {"incident", "clean", "low-traffic"}
    assert {s.id for s in ab.incidents(quick=True)} <= {s.id for s in full}


@pytest.mark.parametrize("tier", range(4))
def test_detection_theory_is_the_workbooks_formula_on_steady_traffic(tier: int) -> None:
    """No baseline errors, constant traffic: the long window crosses at long x factor / burn."""
    spec = specs()[tier]
    sc = ab.Scenario("x", "1000x for 1 h", "incident", 10, 1000, ab.HOUR, baseline=0)
    onset = labelled(sc).tiers[spec.name].onset
    factor = spec.threshold / 0.001
    assert onset == pytest.approx(spec.long * factor / 1000, abs=0.6)


def test_counters_never_decrease_and_sum_to_the_model() -> None:
    clock = ab.Clock.of(ab.FULL_PLAN, NOW)
    for sc in (by_id("i19"), by_id("L1"), by_id("i01")):
        m = ab.Model(sc, clock.origin, clock.start, 0.001)
        times = ab.sample_times(m, clock, clock.origin, ab.COARSE)
        counts = [m.counts(t) for t in times]
        assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(counts))
        ok, bad = counts[-1]  # two floors: each counter at most one request behind its fluid
        assert 0 <= m.total(times[-1]) - (ok + bad) < 2 and 0 <= m.bad(times[-1]) - bad < 1


def test_labels_follow_the_budget_share_not_the_rules() -> None:
    # 15x for an hour spends 2.08 % of a 30 d budget: a page is due, and it is in the recall target
    i08 = labelled(by_id("i08"))
    assert i08.page and i08.target and i08.shares["1h"] == pytest.approx(2.08, abs=0.02)
    assert i08.tiers["page-1h"].expected and not i08.tiers["page-6h"].expected
    # a 300x spike of 2 minutes spends 1.4 %: nothing is due even though the 5 m window burns at 120x
    i09 = labelled(by_id("i09"))
    assert not i09.page and not any(t.expected for t in i09.tiers.values())
    # 10x for 6 h: no 1 h page, but 8.3 % in 6 h pages through the 6 h tier
    i11 = labelled(by_id("i11"))
    assert i11.page and not i11.target and i11.tiers["page-6h"].expected and not i11.tiers["page-1h"].expected
    # an hour at 1.7x average traffic spends 2.8 % of the budget at a burn of 12: due, yet no tier's math fires
    i20 = labelled(by_id("i20"))
    assert i20.target and not any(t.expected for t in i20.tiers.values())


def test_a_single_failure_at_low_traffic_is_a_huge_burn_but_never_due() -> None:
    low = labelled(by_id("L1"))
    assert low.shares["1h"] > 20  # one failure of 4,320 requests a month is 23 % of the budget...
    assert low.tiers["page-1h"].episodes >= 1  # ...and the exact two-window condition holds...
    assert not low.page and not low.ticket and not any(t.expected for t in low.tiers.values())  # ...on 6 events


def test_sloth_rules_follow_its_published_formula() -> None:
    sc = by_id("i01")
    conds = {c.tier: c for c in ab.sloth_conditions(sc)}
    assert set(conds) == {"page-1h", "page-6h", "ticket-1d", "ticket-3d", "page", "ticket"}
    assert all(c.for_s == 0 for c in conds.values())
    page = conds["page"].recorded
    assert "slo:sli_error:ratio_rate5m" in page and "slo:sli_error:ratio_rate6h" in page
    assert "or ignoring (sloth_window)" in page and "(14.4 * 0.0009999999999999432)" in page
    assert "avg_over_time" in ab.sloth_remaining_expr(sc, recorded=False)
    for c in (*conds.values(), *ab.our_conditions(ab.bench_slo(sc))):
        assert "slo:" not in c.inline  # every recording rule inlined


@pytest.mark.timeout(300)
def test_a_1000x_burn_pages_and_a_clean_period_does_not_on_a_real_prometheus(tmp_path: Path) -> None:
    small = ab.Plan(lead=3 * ab.HOUR, after=2 * ab.HOUR, eval_before=ab.HOUR, budget_days=0, budget_step=60)
    scenarios = [by_id("i01"), by_id("L1"), by_id("C1")]
    r = ab.bench(tmp_path, scenarios=scenarios, plan=small, log=lambda _: None, now=time.time())
    page = r.tier("ours", "page-1h")
    assert [d.scenario for d in page.detections] == ["i01"]
    # fired with the condition (no ``for`` on burn tiers), which came within 10 s of the theory's 52 s
    d = page.detections[0]
    assert d.measured_s == d.onset_s and abs(d.onset_s - d.theory_s) <= 10
    fired = {(o.scenario, o.tier) for o in r.outcomes if o.ruleset == "ours" and o.firing}
    assert not {s for s, _ in fired} & {"C1", "L1"}
    assert r.severity("ours", "page").quiet == 0
    # Sloth's page alert, on the same data, pages for the single failed request
    assert any(o.firing for o in r.outcomes if (o.scenario, o.ruleset, o.tier) == ("L1", "sloth", "page"))
    assert not any(o.firing for o in r.outcomes if o.scenario == "C1")
