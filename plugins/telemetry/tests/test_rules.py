"""The rule generator: promtool accepts the rules, and the generated promtool tests pass and have teeth."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml
from tars_telemetry.promtests import render_tests
from tars_telemetry.rules import (
    BURN_ALERT,
    RULE_FILE,
    TIERS,
    eval_order,
    render_rules,
    slo_groups,
    threshold,
    tiers_for,
)
from tars_telemetry.spec import SLO, load_documents, tars_slos

from tars_core.errors import PromtoolError
from tars_core.promtool import check_rules_text, promtool

SLOS = {s.name: s for s in tars_slos()}


def test_promtool_check_rules_passes_and_output_is_stable() -> None:
    text = render_rules(tars_slos())
    assert "SUCCESS" in check_rules_text(text)
    assert render_rules(list(reversed(tars_slos()))) == text
    shipped = resources.files("tars_telemetry") / "data" / "rules" / RULE_FILE
    assert shipped.read_text(encoding="utf-8") == text, "regenerate: python -m tars_telemetry.rules --out src/..."


def test_error_ratios_are_ratios_of_summed_events_for_every_window() -> None:
    groups = slo_groups(SLOS["api-availability"])
    ratios = {
        r["record"]: r["expr"] for g in groups for r in g["rules"] if r.get("record", "").startswith("slo:sli_error")
    }
    assert sorted(ratios) == sorted(
        f"slo:sli_error:ratio_rate{w}" for w in ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d")
    )
    assert ratios["slo:sli_error:ratio_rate30d"] == (
        '(sum(rate(tars_http_requests_total{code=~"5.."}[30d])) or vector(0))'
        " / (sum(rate(tars_http_requests_total[30d])))"
    )
    assert not any("avg" in e or "sum_over_time(slo:" in e for e in ratios.values())


def test_tier_thresholds_follow_the_workbook_and_scale_with_the_period() -> None:
    thirty = load_documents([("a.yaml", _ratio_slo("30d", 99.9))])[0]
    assert [round(t.factor(thirty.period), 6) for t in TIERS] == [14.4, 6, 3, 1]
    assert [threshold(thirty, t) for t in TIERS] == [0.0144, 0.006, 0.003, 0.001]
    four_weeks = load_documents([("a.yaml", _ratio_slo("28d", 99.9))])[0]
    assert [round(t.factor(four_weeks.period), 6) for t in TIERS] == [13.44, 5.6, 2.8, 0.933333]
    week = load_documents([("a.yaml", _ratio_slo("2d", 99.9))])[0]
    assert [t.name for t in tiers_for(week)] == ["page-1h", "page-6h", "ticket-1d"]  # 3d does not fit in 2d


def test_every_burn_alert_carries_its_labels() -> None:
    for slo in SLOS.values():
        alerts = [r for g in slo_groups(slo) for r in g["rules"] if r.get("alert") == BURN_ALERT]
        assert [a["labels"]["tier"] for a in alerts] == [t.name for t in tiers_for(slo)]
        for a in alerts:
            assert {"tier", "severity", "exhaustion", "runbook_url"} <= set(a["labels"])
            assert f'slo="{slo.name}"' in a["expr"] and "slo:sli_events:increase" in a["expr"]
    page = next(r for g in slo_groups(SLOS["api-availability"]) for r in g["rules"] if r.get("alert") == BURN_ALERT)
    assert page["labels"]["exhaustion"] == "2d2h" and page["labels"]["severity"] == "page"  # 30d / 14.4


def _ratio_slo(period: str, objective: float) -> str:
    return f"""
apiVersion: openslo/v1
kind: SLO
metadata: {{name: avail}}
spec:
  indicator:
    metadata: {{name: avail}}
    spec:
      ratioMetric:
        bad: {{metricSource: {{spec: {{query: 'req_total{{code=~"5.."}}'}}}}}}
        total: {{metricSource: {{spec: {{query: req_total}}}}}}
  timeWindow: [{{duration: {period}}}]
  objectives: [{{targetPercent: {objective}}}]
"""


def run_generated_tests(slo: SLO, tmp_path: Path, rules: str | None = None) -> str:
    (tmp_path / "rules.yml").write_text(rules if rules is not None else render_rules([slo]))
    test = tmp_path / "test.yml"
    test.write_text(render_tests(slo, "rules.yml"))
    return promtool("test", "rules", str(test))


@pytest.mark.parametrize("name", sorted(SLOS))
def test_generated_promtool_tests_pass(name: str, tmp_path: Path) -> None:
    """Per tier: fires at 1.05x, silent at 0.95x, resets; per SLO: absent data and the low-traffic guard."""
    slo = SLOS[name]
    assert "SUCCESS" in run_generated_tests(slo, tmp_path)
    assert render_tests(slo, "rules.yml") == (tmp_path / "test.yml").read_text()  # same spec, same bytes


@pytest.mark.parametrize(
    ("mutation", "caught"),
    [
        # a threshold 10 % too high misses the "just above" case
        (lambda text: text.replace(" > 0.144 ", " > 0.16 "), 'tier=\\"page-1h\\"'),
        # without the minimum-events guard the low-traffic case pages
        (lambda text: re.sub(r' and slo:sli_events:increase1h\{slo="api-availability"\} >= \d+', "", text), "got: {"),
        # a single-window alert does not reset when the short window is clean
        (lambda text: text.replace(' and slo:sli_error:ratio_rate5m{slo="api-availability"} > 0.144', ""), "time: 28m"),
        # budget exhausted: an alert that waits for 10 % overspent misses the budget spent at 1.05x ...
        (
            lambda text: text.replace('ratio{slo="api-availability"} <= 0 ', 'ratio{slo="api-availability"} <= -0.1 '),
            "time: 8m",
        ),
        # ... one that fires with 10 % left pages on the 5 % left ...
        (
            lambda text: text.replace('ratio{slo="api-availability"} <= 0 ', 'ratio{slo="api-availability"} <= 0.1 '),
            'alertstate=\\"firing\\"}", time: 8m,\n        exp: nil',
        ),
        # ... one without its "for" fires at once ...
        (lambda text: text.replace(" >= 70\n    for: 5m\n", " >= 70\n"), "time: 3m"),
        # ... and one without the minimum-events guard fires on low traffic (50 % errors, 1/4 of the 70 events)
        (
            lambda text: text.replace(' and slo:sli_events:increase30d{slo="api-availability"} >= 70', ""),
            'slo=\\"api-availability\\"}", time: 20m',
        ),
    ],
)
def test_generated_tests_catch_broken_rules(mutation, caught: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    slo = SLOS["api-availability"]
    good = render_rules([slo])
    bad = mutation(good)
    assert bad != good
    with pytest.raises(PromtoolError) as err:
        run_generated_tests(slo, tmp_path, bad)
    assert caught in str(err.value)


def test_a_bad_counter_never_exported_is_a_ratio_of_zero_not_no_data(tmp_path: Path) -> None:
    """Clients export a 5xx counter only once a 5xx happened: no such series is 0 % errors, not a blind SLO."""
    slo = SLOS["api-availability"]
    (tmp_path / "rules.yml").write_text(render_rules([slo]))
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "30s",
        "group_eval_order": eval_order([slo]),
        "tests": [
            {
                "interval": "30s",
                "input_series": [{"series": 'tars_http_requests_total{code="200"}', "values": "0+100x40"}],
                "promql_expr_test": [
                    {
                        "expr": 'slo:sli_error:ratio_rate5m{slo="api-availability"}',
                        "eval_time": "15m",
                        "exp_samples": [{"labels": _own(slo, "slo:sli_error:ratio_rate5m"), "value": 0}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "zero.test.yml"
    path.write_text(yaml.safe_dump(test))
    assert "SUCCESS" in promtool("test", "rules", str(path))


def _own(slo: SLO, name: str) -> str:
    return f'{name}{{service="{slo.service}",slo="{slo.name}"}}'
