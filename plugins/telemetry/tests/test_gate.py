"""tars-slo-monitor on a real Prometheus scraping live test traffic: its rules, its gate, its errors.

Every test points a fresh Prometheus at :class:`conftest.Traffic` and changes the error share while the
gate watches, so the verdicts come from the queries the plugin really runs. Rule intervals are 1 s here
(the plugin's config), so a load is evaluated in about a second.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from conftest import Exporter
from tars_telemetry import gate, plugin

from tars_core import Targets
from tars_core.errors import TargetError
from tars_core.ledger import now
from tars_core.model import Change, Plan
from tars_core.prometheus import PrometheusServer, rule_health
from tars_core.testing import check_conformance, make_context
from tars_core.waiting import wait_until

SLOS = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: test-availability}
spec:
  service: test
  indicator:
    metadata: {name: test-availability}
    spec:
      ratioMetric:
        counter: true
        bad: {metricSource: {spec: {query: 'tars_test_requests_total{code=~"5.."}'}}}
        total: {metricSource: {spec: {query: tars_test_requests_total}}}
  timeWindow: [{duration: 30d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{targetPercent: 99}]
---
apiVersion: openslo/v1
kind: SLO
metadata: {name: test-latency}
spec:
  service: test
  indicator:
    metadata: {name: test-latency}
    spec:
      thresholdMetric: {metricSource: {spec: {query: tars_test_latency_seconds_bucket}}}
  timeWindow: [{duration: 30d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{target: 0.85, op: lte, value: LE}]
"""


def _config(tmp_path: Path, le: str = "0.1", **extra: Any) -> dict[str, Any]:
    path = tmp_path / "slos.yaml"
    path.write_text(SLOS.replace("LE", le), encoding="utf-8")
    return {
        "slo_files": [str(path)],
        "rule_interval": "1s",
        "long_rule_interval": "1s",
        "poll_interval_s": 0.5,
        "min_window_s": 4.0,
        "bake_min_events": 50,
        **extra,
    }


@pytest.fixture
def prom(tmp_path: Path, exporter: Exporter) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path / "prom", scrape_targets=[exporter.target], scrape_interval="1s") as srv:
        wait_until(lambda: _has_data(srv), timeout=60, interval=0.5, what="first scrapes")
        yield srv


def _has_data(srv: PrometheusServer) -> bool:
    from tars_core.prometheus import Prometheus

    with Prometheus(srv.url) as p:
        return bool(p.query("increase(tars_test_requests_total[5s])"))


def _targets(srv: PrometheusServer) -> Targets:
    return Targets(prometheus_url=srv.url, prometheus_rules_dir=str(srv.rules_dir))


def _ctx(srv: PrometheusServer, tmp_path: Path, phase: str, **config: Any) -> Any:
    return make_context(
        plugin, targets=_targets(srv), config=_config(tmp_path, **config), state_dir=tmp_path / "st", phase=phase
    )


def test_rules_load_verify_and_roll_back_on_a_real_prometheus(prom: PrometheusServer, tmp_path: Path) -> None:
    ctx = _ctx(prom, tmp_path, "apply")
    anyio.run(check_conformance, plugin, ctx)
    assert not (prom.rules_dir / "tars-slo-rules.yml").exists()


def test_a_latency_bucket_the_histogram_lacks_is_refused_naming_the_real_ones(
    prom: PrometheusServer, tmp_path: Path
) -> None:
    from tars_telemetry import monitor

    ctx = _ctx(prom, tmp_path, "apply", le="0.2")
    with pytest.raises(TargetError) as info:
        monitor.apply(ctx)
    assert str(info.value).startswith(
        'SLO test-latency: tars_test_latency_seconds_bucket has no bucket le="0.2"; it has le=0.1, 0.25, +Inf:'
    )
    assert not (prom.rules_dir / "tars-slo-rules.yml").exists()  # refused before anything was written


def _observe(ctx: Any, seconds: float, applied: str | None = None) -> Any:
    change = Change("fix-x", "TARS-X", applied or now(), bake_seconds=seconds)
    return anyio.run(gate.observe, ctx, change)


def test_a_burn_that_starts_during_the_bake_fails_the_fix_with_its_evidence(
    prom: PrometheusServer, exporter: Exporter, tmp_path: Path
) -> None:
    ctx = _ctx(prom, tmp_path, "observe")
    time.sleep(5)  # a clean history before the fix
    applied = now()
    exporter.traffic.set(errors=0.3)  # 30x the 1 % budget
    started = time.monotonic()
    judgement = _observe(ctx, 60, applied)
    assert judgement.verdict == "fail", judgement
    assert time.monotonic() - started < 60  # it did not wait out the bake
    assert judgement.reasons[0].startswith("test-availability: error budget burning at ")
    assert "since fix-x was applied, 0.0x before it" in judgement.reasons[0]
    queries = [e.query for e in judgement.evidence]
    assert any("tars_test_requests_total" in q and "[" in q for q in queries)


def test_a_steady_burn_that_was_there_before_the_fix_is_not_blamed_on_it(
    prom: PrometheusServer, exporter: Exporter, tmp_path: Path
) -> None:
    exporter.traffic.set(errors=0.3)
    time.sleep(6)  # burning before the fix too
    ctx = _ctx(prom, tmp_path, "observe", max_release_burn_percent=100.0)
    judgement = _observe(ctx, 4)
    assert judgement.verdict == "pass", judgement
    details = " ".join(e.detail for e in judgement.evidence)
    assert "already burning this fast before fix-x, so not judged against it" in details


def test_too_few_events_is_inconclusive_never_a_pass(
    prom: PrometheusServer, exporter: Exporter, tmp_path: Path
) -> None:
    exporter.traffic.set(rate=1.0, errors=0.5)  # one failure in two: a 50x "burn" on a handful of requests
    time.sleep(3)
    judgement = _observe(_ctx(prom, tmp_path, "observe"), 3)
    assert judgement.verdict == "inconclusive", judgement
    assert "had 50 events during its 3s bake: nothing to judge it on" in judgement.reasons[0]


def test_the_budget_policy_freezes_a_release_unless_it_is_a_reliability_release(
    prom: PrometheusServer, exporter: Exporter, tmp_path: Path
) -> None:
    from tars_telemetry import monitor

    exporter.traffic.set(errors=0.5)
    time.sleep(4)
    monitor.apply(_ctx(prom, tmp_path, "apply"))
    wait_until(lambda: _remaining(prom) is not None and _remaining(prom) < 0, timeout=30, interval=0.5, what="budget")
    ctx = _ctx(prom, tmp_path, "preflight")
    frozen = gate.preflight(ctx, Plan("v1.0.1", (), reliability=False))
    assert frozen.verdict == "fail"
    assert frozen.reasons[0].startswith("release frozen by the error-budget policy: test-availability has -")
    allowed = gate.preflight(ctx, Plan("v1.0.1", (), reliability=True))
    assert allowed.verdict == "pass" and allowed.reasons[0].startswith("warning: test-availability has -")
    assert allowed.reasons[0].endswith("allowed because v1.0.1 is a reliability release")
    assert {e.query for e in allowed.evidence} >= {'slo:period_error_budget_remaining:ratio{slo="test-availability"}'}


def _remaining(srv: PrometheusServer) -> float | None:
    from tars_core.prometheus import Prometheus

    with Prometheus(srv.url) as p:
        r = p.query('slo:period_error_budget_remaining:ratio{slo="test-availability"}')
        return float(r[0]["value"][1]) if r else None


def _tars_run(
    tmp_path: Path, srv: PrometheusServer, config: dict[str, Any], *args: str
) -> subprocess.CompletedProcess[str]:
    doc = {
        "release": {"name": "v1.0.1", "bake_time": 0},
        "state": {"url": f"sqlite:///{tmp_path / 'ledger.db'}"},
        "targets": {"prometheus_url": srv.url, "prometheus_rules_dir": str(srv.rules_dir)},
        "plugins": {"tars-slo-monitor": config},
    }
    path = tmp_path / "tars.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    exe = str(Path(sys.executable).with_name("tars-run"))
    cmd = [exe, "--config", str(path), "--plugins", "tars-slo-monitor", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ratioMetric", "unknown"),  # replaced below by an unknown SLI kind
        ("objective", "between 0 and 100"),
        ("total", "total"),
    ],
)
def test_a_bad_spec_is_one_line_and_exit_2_with_nothing_loaded(
    prom: PrometheusServer, tmp_path: Path, spec: str, expected: str
) -> None:
    config = _config(tmp_path)
    path = Path(config["slo_files"][0])
    text = path.read_text()
    if spec == "ratioMetric":
        text = text.replace("ratioMetric:", "fooMetric:", 1)
    elif spec == "objective":
        text = text.replace("targetPercent: 99", "targetPercent: 120")
    else:
        text = text.replace("        total: {metricSource: {spec: {query: tars_test_requests_total}}}\n", "")
    path.write_text(text)
    proc = _tars_run(tmp_path, prom, config, "apply")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and expected in last.lower(), proc.stderr
    assert not (prom.rules_dir / "tars-slo-rules.yml").exists()


def test_tars_run_apply_then_rollback_leaves_prometheus_as_it_was(prom: PrometheusServer, tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert _tars_run(tmp_path, prom, config, "apply").returncode == 0
    from tars_core.prometheus import Prometheus

    with Prometheus(prom.url) as p:
        assert rule_health(p, ["slo:sli_error:ratio_rate5m"]) == {"slo:sli_error:ratio_rate5m": "ok"}
        assert _tars_run(tmp_path, prom, config, "rollback").returncode == 0
        assert rule_health(p, ["slo:sli_error:ratio_rate5m"]) == {"slo:sli_error:ratio_rate5m": "missing"}
