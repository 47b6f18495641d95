"""The gate's third criterion: the release as a whole spending more than ``max_release_burn_percent`` of an
SLO's budget above the pre-release error rate, on a real Prometheus scraping live test traffic.

The SLO here has a one-hour period (99 %: a budget of 0.6 min of full outage), so seconds of errors are
a share of it the gate's figures show legibly; and the traffic burns at 10x, under the 14.4x bake burn
rate, so this criterion is the only one that can trip (no rules are loaded: no alert can fire either).

With the error ratio steady over the whole window, what the release spent is known before the gate
reads it: 10 % errors for 30 s is 0.05 min, 8.3 % of 0.6 min. The pair of limits around that figure
(10 % either side, far beyond the counters' rounding) shows the gate compares against the limit, and
the baseline case that it charges the release only for what it added to the pre-release rate.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
from conftest import Exporter
from tars_telemetry import gate, plugin
from tars_telemetry.config import SLOMonitorConfig
from test_gate import _targets, prom  # noqa: F401 (prom: fixture)

from tars_core.ledger import now
from tars_core.model import Change, Plan
from tars_core.prometheus import Prometheus, PrometheusServer
from tars_core.testing import make_context

SLO = """
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
  timeWindow: [{duration: 1h, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{targetPercent: 99}]
"""
ERRORS = 0.1  # 10x the 1 % budget: under the 14.4x bake burn rate
WINDOW_S = 30
SPENT_PERCENT = ERRORS * WINDOW_S / 60 / 0.6 * 100  # 8.33 % of the hour's 0.6 min budget


def _config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    path = tmp_path / "slo.yaml"
    path.write_text(SLO, encoding="utf-8")
    return {"slo_files": [str(path)], "poll_interval_s": 0.5, "min_window_s": 4.0, "bake_min_events": 50, **extra}


def _check(srv: PrometheusServer, tmp_path: Path, baseline: float, limit: float) -> gate.Round:
    """One round of the gate over the last WINDOW_S seconds (the release started then)."""
    config = SLOMonitorConfig(**_config(tmp_path, max_release_burn_percent=limit))  # type: ignore[arg-type]
    slos = gate.gated(config)
    change = Change("fix-x", "TARS-X", now(), bake_seconds=0)
    with Prometheus(srv.url) as p:
        return gate.check(p, config, slos, change, time.time() - WINDOW_S, {"test-availability": baseline})


def _spent(round_: gate.Round) -> str:
    (detail,) = [e.detail for e in round_.evidence if e.detail.startswith(gate.SPENT)]
    return detail


def test_the_release_burning_over_its_share_fails_and_just_under_passes(
    prom: PrometheusServer,  # noqa: F811
    exporter: Exporter,
    tmp_path: Path,
) -> None:
    exporter.traffic.set(rate=200.0, errors=ERRORS)
    time.sleep(WINDOW_S + 3)  # a steady 10 % over the whole window, and a scrape either side

    over = _check(prom, tmp_path, baseline=0.0, limit=0.9 * SPENT_PERCENT)
    (failure,) = over.failures
    assert failure.startswith("test-availability: the release has spent 8.3 % of the 1h error budget above "), failure
    assert failure.endswith(f" min; limit {0.9 * SPENT_PERCENT:g} %)"), failure
    assert "0.05 min of its 0.6 min 1h budget in 30s, 0.05 min (8.3 %) above the pre-release" in _spent(over)

    under = _check(prom, tmp_path, baseline=0.0, limit=1.1 * SPENT_PERCENT)
    assert under.failures == [] and under.judged == 1, under
    assert "(8.3 %) above the pre-release error rate" in _spent(under)

    # the hour before the release already ran at 5 % errors: the release added half of its burn, under the limit
    added = _check(prom, tmp_path, baseline=ERRORS / 2, limit=0.9 * SPENT_PERCENT)
    assert added.failures == [], added
    assert "0.05 min of its 0.6 min 1h budget in 30s, " in _spent(added)
    assert "(4.2 %) above the pre-release error rate" in _spent(added)


def test_observe_fails_the_fix_once_the_release_overspends_the_default_share(
    prom: PrometheusServer,  # noqa: F811
    exporter: Exporter,
    tmp_path: Path,
) -> None:
    """Preflight on clean traffic, then 10 % errors: 2 % (the default) of 0.6 min is 7 s of them."""
    ctx = make_context(
        plugin, targets=_targets(prom), config=_config(tmp_path), state_dir=tmp_path / "st", phase="preflight"
    )
    assert ctx.config.max_release_burn_percent == 2.0
    gate.preflight(ctx, Plan("v1.0.1", ()))  # no rules loaded: inconclusive, but it records the baseline
    assert ctx.state.get(gate.BASELINE) == {"test-availability": 0.0}
    exporter.traffic.set(rate=200.0, errors=ERRORS)
    judgement = anyio.run(gate.observe, ctx, Change("fix-x", "TARS-X", now(), bake_seconds=120))
    assert judgement.verdict == "fail", judgement
    (reason,) = judgement.reasons
    assert reason.startswith("test-availability: the release has spent "), reason
    assert " of the 1h error budget above the pre-release rate (" in reason and reason.endswith("; limit 2 %)"), reason
    spent = [e for e in judgement.evidence if e.detail.startswith(gate.SPENT)]
    assert spent and spent[0].query.endswith(" / 60") and (spent[0].value or 0.0) > 0.012  # 2 % of 0.6 min
