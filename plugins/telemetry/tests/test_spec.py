"""SLOs as code: OpenSLO v1 and Sloth documents into one model; bad specs give one line naming doc, path, fix."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tars_telemetry.spec import Latency, Ratio, RawQuery, Selector, Threshold, load_documents, tars_slos

from tars_core.errors import ConfigError


def load(text: str) -> list:
    return load_documents([("slo.yaml", textwrap.dedent(text))])


OPENSLO = """
apiVersion: openslo/v1
kind: SLO
metadata: {{name: checkout}}
spec:
  service: shop
  indicator:
    metadata: {{name: checkout}}
    spec:
      {sli}
  timeWindow: [{window}]
  budgetingMethod: {budgeting}
  objectives: [{objective}]
"""
RATIO = """ratioMetric:
        counter: true
        bad: {metricSource: {type: Prometheus, spec: {query: 'http_requests_total{code=~"5.."}'}}}
        total: {metricSource: {type: Prometheus, spec: {query: http_requests_total}}}"""


def openslo(
    sli: str = RATIO,
    window: str = "{duration: 28d, isRolling: true}",
    budgeting: str = "Occurrences",
    objective: str = "{target: 0.999}",
) -> str:
    return OPENSLO.format(sli=sli, window=window, budgeting=budgeting, objective=objective)


def test_shipped_tars_slos() -> None:
    slos = {s.name: s for s in tars_slos()}
    assert sorted(slos) == [
        "api-availability",
        "api-latency",
        "evaluation-success",
        "queue-wait",
        "trace-continuity",
        "trainer-memory",
        "websocket-delivery",
    ]
    assert slos["api-availability"].indicator == Ratio(
        total=Selector("tars_http_requests_total"),
        bad=Selector("tars_http_requests_total", (slos["api-availability"].indicator.bad.matchers)),  # type: ignore[union-attr]
    )
    latency = slos["api-latency"].indicator
    assert isinstance(latency, Latency) and latency.le == "0.15"
    assert latency.histogram.metric == "tars_http_request_duration_seconds_bucket"
    memory = slos["trainer-memory"]
    assert memory.indicator == Threshold(Selector("tars_ppo_rss_bytes"), "lt", 1073741824.0)
    assert memory.budgeting == "Timeslices" and memory.min_events == 60
    assert all(s.period == 30 * 86400 for s in slos.values())


def test_openslo_ratio_rolling_and_sli_reference() -> None:
    (slo,) = load(
        """
        apiVersion: openslo/v1
        kind: SLI
        metadata: {name: ok-jobs}
        spec:
          ratioMetric:
            good: {metricSource: {type: Prometheus, spec: {query: 'jobs_total{status="ok"}'}}}
            total: {metricSource: {type: Prometheus, spec: {query: jobs_total}}}
        ---
        apiVersion: openslo/v1
        kind: SLO
        metadata: {name: jobs}
        spec:
          indicatorRef: ok-jobs
          timeWindow: [{duration: 4w, isRolling: true}]
          budgetingMethod: Occurrences
          objectives: [{targetPercent: 99.5}]
        """
    )
    assert slo.period == 28 * 86400 and slo.objective == pytest.approx(0.995) and slo.calendar is None
    assert isinstance(slo.indicator, Ratio) and str(slo.indicator.good) == 'jobs_total{status="ok"}'


def test_openslo_calendar_window_and_timeslices() -> None:
    (slo,) = load(
        openslo(
            window="{duration: 1M, isRolling: false, calendar: {startTime: '2024-01-01 00:00:00', timeZone: UTC}}",
            budgeting="Timeslices",
            objective="{target: 0.99, timeSliceTarget: 0.95, timeSliceWindow: 2m}",
        )
    )
    assert slo.calendar == "Month" and slo.period == 30 * 86400
    assert slo.budgeting == "Timeslices" and slo.slice_target == 0.95 and slo.slice_window == 120


def test_openslo_threshold_on_a_histogram_is_a_latency_sli() -> None:
    sli = "thresholdMetric: {metricSource: {type: Prometheus, spec: {query: 'lat_seconds_bucket{job=\"api\"}'}}}"
    (slo,) = load(openslo(sli=sli, objective="{target: 0.9, op: lte, value: 0.25}"))
    assert slo.indicator == Latency(Selector("lat_seconds_bucket", slo.indicator.histogram.matchers), "0.25")  # type: ignore[union-attr]


def test_sloth_prometheus_v1() -> None:
    slos = load(
        """
        version: prometheus/v1
        service: myservice
        slos:
          - name: requests-availability
            objective: 99.9
            sli:
              events:
                error_query: sum(rate(http_request_duration_seconds_count{job="svc",code=~"(5..|429)"}[{{.window}}]))
                total_query: sum(rate(http_request_duration_seconds_count{job="svc"}[{{.window}}]))
            alerting:
              labels: {category: availability}
              annotations: {runbook: https://runbooks.example/avail}
          - name: raw
            objective: 99
            sli:
              events:
                error_query: sum(rate(a_total{x="1"}[{{.window}}])) + sum(rate(b_total[{{.window}}]))
                total_query: sum(rate(c_total[{{ .window }}]))
        """
    )
    by = {s.name: s for s in slos}
    avail = by["requests-availability"]
    assert avail.objective == pytest.approx(0.999) and avail.service == "myservice" and avail.period == 30 * 86400
    assert isinstance(avail.indicator, Ratio) and isinstance(avail.indicator.bad, Selector)
    assert str(avail.indicator.bad) == 'http_request_duration_seconds_count{job="svc",code=~"(5..|429)"}'
    assert avail.runbook_url == "https://runbooks.example/avail" and avail.alert_labels == (
        ("category", "availability"),
    )
    raw = by["raw"].indicator
    assert isinstance(raw, Ratio) and isinstance(raw.bad, RawQuery)
    assert raw.bad.at("5m") == 'sum(rate(a_total{x="1"}[5m])) + sum(rate(b_total[5m]))'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            openslo(sli="latencyMetric: {metricSource: {spec: {query: x}}}"),
            [
                "slo.yaml document 1 (SLO checkout)",
                "spec.indicator.spec",
                "unknown SLI kind (latencyMetric)",
                "use ratioMetric",
            ],
        ),
        (openslo(objective="{target: 1.5}"), ["spec.objectives[0].target", "out of range", "between 0 and 1"]),
        (openslo(objective="{targetPercent: 100}"), ["spec.objectives[0].targetPercent", "between 0 and 100"]),
        (
            openslo(sli="ratioMetric: {bad: {metricSource: {spec: {}}}, total: {metricSource: {spec: {query: t}}}}"),
            ["spec.indicator.spec.ratioMetric.bad.metricSource.spec.query", "missing metric"],
        ),
        (
            openslo(budgeting="Ratios"),
            ["spec.budgetingMethod", "unknown budgeting method 'Ratios'", "Occurrences or Timeslices"],
        ),
        (
            openslo(
                sli="thresholdMetric: {metricSource: {spec: {query: rss_bytes}}}",
                objective="{target: 0.9, op: lt, value: 1}",
            ),
            ["spec.budgetingMethod", "use Timeslices"],
        ),
        (
            "version: prometheus/v1\nslos: [{name: a, objective: 0, sli: {events: {error_query: x, total_query: y}}}]",
            ["slo.yaml document 1 (SLO a)", "slos[0].objective", "out of range"],
        ),
        (
            "version: prometheus/v1\nslos: [{name: a, objective: 99, sli: {plugin: {id: x}}}]",
            ["slos[0].sli", "unknown SLI kind (plugin)"],
        ),
        (
            "version: prometheus/v1\nslos: [{name: a, objective: 99, sli: {events: {total_query: y}}}]",
            ["slos[0].sli.events.error_query", "missing metric"],
        ),
        ("apiVersion: openslo/v1alpha\nkind: SLO\n", ["apiVersion", "openslo/v1alpha is not read", "openslo/v1"]),
    ],
)
def test_bad_specs_give_one_line_naming_document_path_and_fix(text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_documents([("slo.yaml", text)])
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_cli_bad_spec_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(openslo(objective="{target: 2}"))
    proc = subprocess.run(
        [sys.executable, "-m", "tars_telemetry.rules", "--slo", str(bad), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith(f"tars_telemetry.rules: {bad} document 1 (SLO checkout): spec.objectives[0].target")


def test_cli_unwritable_out_exits_2_with_one_line(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    proc = subprocess.run(
        [sys.executable, "-m", "tars_telemetry.rules", "--out", str(taken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("tars_telemetry.rules: ") and str(taken) in lines[0]
