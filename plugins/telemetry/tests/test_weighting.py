"""Traffic weighting, proven with promtool on a 30-day history whose traffic varies hour by hour.

The generated 30-day error ratio must equal the exact ratio of summed events. Sloth's 30-day SLI (v0.16,
``sloth_window="30d"``) is written here as the reference it publishes:

    sum_over_time(slo:sli_error:ratio_rate5m[30d]) / count_over_time(slo:sli_error:ratio_rate5m[30d])

an average of 5-minute ratios, where a quiet hour with half its few requests failing counts as much as
a busy hour. On this history it is far from the truth, and so is the remaining budget it implies.
"""

from __future__ import annotations

from pathlib import Path

from tars_telemetry.rules import eval_order, render_rules
from tars_telemetry.spec import load_documents

from tars_core.promtool import promtool

SPEC = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: weighted}
spec:
  service: tars-api
  indicator:
    metadata: {name: weighted}
    spec:
      ratioMetric:
        bad: {metricSource: {spec: {query: 'tars_http_requests_total{code=~"5.."}'}}}
        total: {metricSource: {spec: {query: tars_http_requests_total}}}
  timeWindow: [{duration: 30d, isRolling: true}]
  objectives: [{targetPercent: 99}]
"""
HOURS = 30 * 24
STEPS_PER_HOUR = 12  # one sample every 5 minutes
SLOTH_30D = (
    'sum_over_time(slo:sli_error:ratio_rate5m{slo="weighted"}[30d])'
    ' / count_over_time(slo:sli_error:ratio_rate5m{slo="weighted"}[30d])'
)


def hour_traffic(hour: int) -> tuple[int, int]:
    """(requests, failures) per 5 minutes in ``hour``: busy bad hours, quiet bad hours, quiet good hours."""
    if hour % 97 == 13:
        return 1000, 50  # busy, 5 % failing
    if hour % 41 == 7:
        return 10, 5  # quiet, 50 % failing
    return 10, 0


def test_period_ratio_is_exact_where_sloths_average_is_not(tmp_path: Path) -> None:
    # sample i (i >= 1) sits at 5*i minutes; t=0 has no sample, so every window below starts on a sample
    bad, good = [1_000_000], [1_000_000]
    for i in range(2, HOURS * STEPS_PER_HOUR + 1):
        requests, failures = hour_traffic((i - 1) // STEPS_PER_HOUR)
        bad.append(bad[-1] + failures)
        good.append(good[-1] + requests - failures)
    exact = (bad[-1] - bad[0]) / (bad[-1] - bad[0] + good[-1] - good[0])
    # rules run hourly in this test: Sloth's average is then the mean of each hour's 5-minute ratio
    ratios = [f / r for r, f in (hour_traffic(h) for h in range(HOURS))]
    sloth = sum(ratios) / len(ratios)
    assert abs(sloth - exact) > 0.5 * exact  # the history is one where averaging ratios is badly wrong

    slo = load_documents([("weighted.yaml", SPEC)])[0]
    (tmp_path / "rules.yml").write_text(render_rules([slo]))
    own = '{service="tars-api",slo="weighted"}'
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1h",
        "group_eval_order": eval_order([slo]),
        "tests": [
            {
                "interval": "5m",
                "input_series": [
                    {"series": 'tars_http_requests_total{code="500"}', "values": "_ " + " ".join(map(str, bad))},
                    {"series": 'tars_http_requests_total{code="200"}', "values": "_ " + " ".join(map(str, good))},
                ],
                "promql_expr_test": [
                    _check(f'abs(slo:sli_error:ratio_rate30d{{slo="weighted"}} - {exact!r}) < bool 1e-12', own),
                    _check(
                        f'abs(slo:period_error_budget_remaining:ratio{{slo="weighted"}} - {1 - exact / 0.01!r})'
                        " < bool 1e-9",
                        own,
                    ),
                    # the reference formula computes what we say it does ...
                    _check(f"abs({SLOTH_30D} - {sloth!r}) < bool 1e-12", own),
                    # ... and misses the exact ratio by more than half of it
                    _check(f"abs({SLOTH_30D} - {exact!r}) > bool {0.5 * exact!r}", own),
                ],
            }
        ],
    }
    import yaml

    path = tmp_path / "weighting.test.yml"
    path.write_text(yaml.safe_dump(test, width=10**9))
    assert "SUCCESS" in promtool("test", "rules", str(path))


def _check(expr: str, labels: str) -> dict[str, object]:
    return {"expr": expr, "eval_time": "30d", "exp_samples": [{"labels": labels, "value": 1}]}
