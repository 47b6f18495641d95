"""tars-regression-monitor: its config, how it builds the two arms, its gate on a real Prometheus, its report.

The comparison is checked on series built here (which samples land on which side, in which order, how
error rates become counts, which trainers a canary flag selects: the core's own buckets). The gate runs
against a real Prometheus scraping :class:`conftest.Traffic` whose error share a test raises mid-bake, and
``tars-run`` refuses bad config sections with one line and exit 2 before anything runs.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
import yaml
from conftest import Exporter
from tars_telemetry import judges, regression_gate, regression_monitor, regression_plugin, regression_rules
from tars_telemetry.regression_config import KINDS, MetricSpec, RegressionMonitorConfig
from tars_telemetry.regression_gate import Series

from tars_core import PluginInfo, Targets
from tars_core.config import TarsConfig, plugin_config
from tars_core.errors import ConfigError
from tars_core.flags import canary_bucket
from tars_core.ledger import now
from tars_core.model import Change, Evidence, JudgementRecord
from tars_core.prometheus import PrometheusServer
from tars_core.testing import (
    HEAVY_MODULES,
    assert_bad_config_refused,
    assert_cheap_import,
    make_context,
    release_for,
)
from tars_core.waiting import wait_until

APPLIED = 1_000_000.0


def test_plugin_info_and_entry_point() -> None:
    info = regression_plugin.tars_plugin_info()
    assert (info.name, info.kind, info.config) == ("tars-regression-monitor", "monitor", RegressionMonitorConfig)
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="tars.plugins")}
    assert eps["tars-regression-monitor"] == "tars_telemetry.regression_plugin"


def test_entry_point_module_is_cheap_to_import() -> None:
    assert_cheap_import("tars_telemetry.regression_plugin", forbidden=(*HEAVY_MODULES, "yaml"))


def test_the_config_knows_the_judges_kinds() -> None:
    assert KINDS == judges.KINDS


def test_every_bad_config_value_is_refused_in_one_line() -> None:
    assert len(assert_bad_config_refused(regression_plugin)) > 20


@pytest.mark.parametrize(
    ("metric", "words"),
    [
        ({"name": "rss", "selector": "x", "kind": "leakiness"}, ("unknown metric kind 'leakiness'", "memory")),
        ({"name": "rss", "selector": "  ", "kind": "memory"}, ("selector is empty",)),
        ({"name": "rss", "selector": "x", "kind": "memory", "bad": "up"}, ("'up' is not one of",)),
    ],
)
def test_a_bad_metric_is_refused_naming_the_problem(metric: dict[str, Any], words: tuple[str, ...]) -> None:
    info = regression_plugin.tars_plugin_info()
    for section in ({"metrics": [metric]}, {"metrics_for": {"tars-1005-ppo": [metric]}}):
        with pytest.raises(ConfigError) as exc:
            plugin_config(info, TarsConfig(plugins={info.name: section}, source="tars.yaml"))
        text = str(exc.value)
        assert "\n" not in text and "plugins.tars-regression-monitor" in text, text
        for word in words:
            assert word in text, text


def test_tars_run_refuses_an_unknown_kind_with_one_line_and_exit_2(tmp_path: Path) -> None:
    doc = {
        "release": {"name": "v1.0.1", "bake_time": 0},
        "state": {"url": f"sqlite:///{tmp_path / 'ledger.db'}"},
        "targets": {"prometheus_url": "http://127.0.0.1:1", "prometheus_rules_dir": str(tmp_path)},
        "plugins": {"tars-regression-monitor": {"metrics": [{"name": "x", "selector": "up", "kind": "vibes"}]}},
    }
    path = tmp_path / "tars.yaml"
    path.write_text(yaml.safe_dump(doc))
    exe = str(Path(sys.executable).with_name("tars-run"))
    proc = subprocess.run(
        [exe, "--config", str(path), "--plugins", "tars-regression-monitor", "apply"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown metric kind 'vibes'" in lines[0], proc.stderr
    assert not (tmp_path / "tars-regression-rules.yml").exists()


# -- the arms --------------------------------------------------------------------------------------------------------


def _series(labels: dict[str, str], values: list[float], start: float = APPLIED - 50, step: float = 5.0) -> Series:
    return Series(labels, tuple(start + i * step for i in range(len(values))), tuple(values))


def _change(canary: str | None = None) -> Change:
    return Change("tars-x", None, regression_gate.iso(APPLIED), canary=canary, bake_seconds=60)


def test_before_after_grows_outward_from_the_change() -> None:
    spec = MetricSpec("lat", "lat_seconds", "latency")
    # 11 samples up to and including APPLIED (before), 9 after
    s = _series({"service": "api"}, [float(i) for i in range(20)])
    (c,) = regression_gate.compare(RegressionMonitorConfig(), [spec], {"lat": ([s], [])}, _change(), APPLIED)
    assert c.how == "after vs before" and c.name == 'lat{service="api"}'
    assert c.query == 'lat_seconds{service="api"}'
    assert c.baseline.values == tuple(float(i) for i in range(10, -1, -1))  # the latest first
    assert c.canary.values == tuple(float(i) for i in range(11, 20))
    (m,) = regression_gate.inputs([c])
    assert m.baseline_times is None and m.canary_times is None  # unpaired; the order is the judge's


def test_memory_keeps_time_order_and_times_for_its_slope() -> None:
    spec = MetricSpec("rss", "rss_bytes", "memory")
    s = _series({"trainer": "a"}, [float(i) for i in range(20)])
    (c,) = regression_gate.compare(RegressionMonitorConfig(), [spec], {"rss": ([s], [])}, _change(), APPLIED)
    (m,) = regression_gate.inputs([c])
    assert m.baseline == tuple(float(i) for i in range(11)) and m.baseline_times == s.times[:11]


def test_error_rates_become_counts_per_chunk_with_their_requests() -> None:
    spec = MetricSpec("err", "errs_per_s", "errors", exposure="reqs_per_s")
    config = RegressionMonitorConfig(step_s=5.0, count_chunk_s=20.0)  # 4 samples a chunk
    errs = _series({"service": "api"}, [0.1] * 8 + [0.5] * 8, start=APPLIED - 35)
    reqs = _series({"service": "api"}, [10.0] * 16, start=APPLIED - 35)
    (c,) = regression_gate.compare(config, [spec], {"err": ([errs], [reqs])}, _change(), APPLIED)
    assert c.baseline.values == pytest.approx((2.0, 2.0)) and c.baseline.exposure == pytest.approx((200.0, 200.0))
    assert c.canary.values == pytest.approx((10.0, 10.0)) and c.canary.exposure == pytest.approx((200.0, 200.0))


def test_no_series_is_a_metric_with_no_data_never_a_pass() -> None:
    spec = MetricSpec("lat", "lat_seconds", "latency")
    compared = regression_gate.compare(RegressionMonitorConfig(), [spec], {}, _change(), APPLIED)
    result = regression_gate.run_judges(RegressionMonitorConfig(), compared)
    assert result.verdict == "inconclusive" and result.metrics[0].label == "Nodata"


def _ids(flag: str, share: float) -> tuple[str, str]:
    """One trainer id inside a canary of ``share`` under ``flag`` and one outside, by the core's buckets."""
    names = [f"trainer-{i}" for i in range(50)]
    inside = next(n for n in names if canary_bucket(flag, n) < share)
    outside = next(n for n in names if canary_bucket(flag, n) >= share)
    return inside, outside


def test_a_canary_flag_splits_the_series_its_buckets_select() -> None:
    inside, outside = _ids("ppo-fixed", 0.5)
    spec = MetricSpec("rss", "rss_bytes", "memory")
    series = [
        _series({"trainer": inside}, [1.0] * 20, start=APPLIED - 45),
        _series({"trainer": outside}, [2.0] * 20, start=APPLIED - 45),
    ]
    change = _change(canary="ppo-fixed=0.5")
    (c,) = regression_gate.compare(RegressionMonitorConfig(), [spec], {"rss": (series, [])}, change, APPLIED)
    assert c.how.startswith("canary vs baseline") and inside in c.how
    assert set(c.canary.values) == {1.0} and set(c.baseline.values) == {2.0}
    assert len(c.canary.values) == 10  # the bake only, both arms at the same instants
    assert c.canary.times == c.baseline.times
    # a fraction selecting every trainer leaves nothing to compare with: before against after instead
    everyone = regression_gate.compare(
        RegressionMonitorConfig(), [spec], {"rss": (series, [])}, _change(canary="ppo-fixed=0.999999"), APPLIED
    )
    assert {c.how for c in everyone} <= {"after vs before"} or len(everyone) == 1


def test_a_partial_rollback_judges_the_rolled_back_instances_as_the_canary() -> None:
    # TARS-1005 on everywhere, then the flag back to a fraction: the v1.0.0 code returns on the trainers
    # outside it, and those are what changed (the leaky "canary" of issue 13)
    inside, outside = _ids("ppo-fixed", 0.5)
    spec = MetricSpec("rss", "rss_bytes", "memory")
    series = [
        _series({"trainer": inside}, [1.0] * 20, start=APPLIED - 45),
        _series({"trainer": outside}, [2.0] * 20, start=APPLIED - 45),
    ]
    change = _change(canary="ppo-fixed=0.5")
    (c,) = regression_gate.compare(
        RegressionMonitorConfig(), [spec], {"rss": (series, [])}, change, APPLIED, {"ppo-fixed": "on"}
    )
    assert set(c.canary.values) == {2.0} and outside in c.how


def test_the_flags_seen_are_the_next_fix_s_before() -> None:
    state: dict[str, Any] = {}
    regression_gate.record_flags(state, {"a": "off", "b": "on"})
    regression_gate.record_flags(state, {"a": "0.25"})
    assert state[regression_gate.FLAGS] == {"a": "0.25", "b": "on"}


def test_optional_metrics_and_the_fix_s_own_metrics() -> None:
    own = MetricSpec("queue_depth", "tars_queue_depth", "gauge", bad="increase")
    config = RegressionMonitorConfig(optional_metrics=["api_error_ratio"], metrics_for={"tars-x": [own]})
    specs = {s.name: s for s in regression_gate.specs_for(config, "tars-x")}
    assert set(specs) == {
        "api_latency_p95_seconds",
        "api_error_ratio",
        "api_requests_per_second",
        "trainer_rss_bytes",
        "queue_depth",
    }
    assert not specs["api_error_ratio"].required and specs["api_latency_p95_seconds"].required
    assert "queue_depth" not in {s.name for s in regression_gate.specs_for(config, "tars-other")}


# -- the gate on a real Prometheus -----------------------------------------------------------------------------------


@pytest.fixture
def prom(tmp_path: Path, exporter: Exporter) -> Iterator[PrometheusServer]:
    srv = PrometheusServer(tmp_path / "prom", scrape_targets=[exporter.target], scrape_interval="1s")
    with srv:
        yield srv


ERRORS = MetricSpec(
    "test_errors",
    'sum(rate(tars_test_requests_total{code="500"}[5s]))',
    "errors",
    exposure="sum(rate(tars_test_requests_total[5s]))",
)


def _observe(prom: PrometheusServer, tmp_path: Path, bake: float, applied: float, **config: Any) -> Any:
    section = {
        "default_metrics": False,
        "metrics": [attrs.asdict(ERRORS)],
        "step_s": 1.0,
        "poll_interval_s": 1.0,
        "count_chunk_s": 5.0,
        "baseline_window_s": 20.0,
        "mde": {"errors": 1.0},
        **config,
    }
    targets = Targets(prometheus_url=prom.url)
    ctx = make_context(regression_plugin, targets=targets, config=section, state_dir=tmp_path / "state")
    change = Change("tars-x", None, regression_gate.iso(applied), bake_seconds=bake)
    return anyio.run(regression_plugin.tars_observe, ctx, change)


def _wait_for_data(prom: PrometheusServer, seconds: float) -> None:
    from tars_core.prometheus import Prometheus

    with Prometheus(prom.url) as p:
        wait_until(lambda: bool(p.query("tars_test_requests_total")), timeout=60, interval=0.5, what="scrapes")
    time.sleep(seconds)


def test_errors_that_triple_during_the_bake_fail_the_fix_early_with_statistics_and_a_chart(
    prom: PrometheusServer, exporter: Exporter, tmp_path: Path
) -> None:
    exporter.traffic.set(rate=200.0, errors=0.02)
    _wait_for_data(prom, 22)
    applied = time.time()
    exporter.traffic.set(errors=0.10)
    started = time.monotonic()
    j = _observe(prom, tmp_path, 60, applied)
    assert j.verdict == "fail", j.reasons
    assert time.monotonic() - started < 60  # stopped at the regression, not at the end of the bake
    assert j.reasons[0].startswith("test_errors (errors): regression: +"), j.reasons
    (row,) = [e for e in j.evidence if e.query == ERRORS.selector]
    assert row.value is not None and row.value > 1.0  # relative effect: several times the rate
    assert "fail (High)" in row.detail and "e=" in row.detail and "MDE" in row.detail, row.detail
    files = {e.detail.split(": ", 1)[0]: Path(e.detail.split(": ", 1)[1]) for e in j.evidence if ": /" in e.detail}
    assert files["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads(files["statistics"].read_text())
    assert stats["result"]["verdict"] == "fail" and stats["result"]["metrics"][0]["e_value"] >= 100


def test_steady_traffic_passes_and_too_little_traffic_is_inconclusive(
    prom: PrometheusServer, exporter: Exporter, tmp_path: Path
) -> None:
    exporter.traffic.set(rate=400.0, errors=0.05)
    _wait_for_data(prom, 22)
    j = _observe(prom, tmp_path, 12, time.time())
    assert j.verdict == "pass", j.reasons
    # asking to see a 1 % change in errors: a few hundred errors cannot, so no pass
    k = _observe(prom, tmp_path, 8, time.time(), mde={"errors": 0.01})
    assert k.verdict == "inconclusive", k.reasons
    assert any("on_inconclusive" in r for r in k.reasons) and "LowPower" in k.reasons[0]
    # the same, in a bake shorter than min_bake_s: not judged (abstains), rather than failing the fix
    assert _observe(prom, tmp_path, 8, time.time(), mde={"errors": 0.01}, min_bake_s=60) is None


class _Requests:
    """``tars_http_requests_total{service="api"}`` growing 20/s: what the default rules read (a collector,
    so the counter is computed at each scrape)."""

    def __init__(self) -> None:
        self.since = time.time()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("tars_http_requests", "requests", labels=["service", "code"])
        family.add_metric(["api", "200"], int((time.time() - self.since) * 20))
        yield family


def test_the_rules_load_verify_and_roll_back_on_a_real_prometheus(tmp_path: Path) -> None:
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    from tars_core.processes import free_port
    from tars_core.testing import check_conformance

    registry = CollectorRegistry()
    registry.register(_Requests())  # type: ignore[arg-type]
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        with PrometheusServer(tmp_path / "prom", scrape_targets=[f"127.0.0.1:{port}"], scrape_interval="1s") as srv:
            targets = Targets(prometheus_url=srv.url, prometheus_rules_dir=str(srv.rules_dir))
            ctx = make_context(regression_plugin, targets=targets, config={}, state_dir=tmp_path / "st")
            anyio.run(check_conformance, regression_plugin, ctx)
            assert not (srv.rules_dir / "tars-regression-rules.yml").exists()
            # a file already loaded (the sandbox seeds it) is left as it is: apply records nothing to undo
            (srv.rules_dir / "tars-regression-rules.yml").write_text(regression_rules.render())
            ctx = make_context(regression_plugin, targets=targets, config={}, state_dir=tmp_path / "st2")
            from tars_core.prometheus import Prometheus, wait_healthy

            with Prometheus(srv.url) as p:
                p.reload()
                wait_healthy(p, regression_monitor.NAMES, timeout=60)
            assert not regression_plugin.tars_apply(ctx).changed
            assert not regression_plugin.tars_rollback(ctx).changed
            assert (srv.rules_dir / "tars-regression-rules.yml").exists()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- the report ------------------------------------------------------------------------------------------------------


def test_the_report_shows_the_statistics_and_the_chart(tmp_path: Path) -> None:
    spec = MetricSpec("lat", "lat_seconds", "latency")
    s = _series({"service": "api"}, [0.1] * 12 + [0.2] * 12, start=APPLIED - 55)
    compared = regression_gate.compare(RegressionMonitorConfig(), [spec], {"lat": ([s], [])}, _change(), APPLIED)
    result = regression_gate.run_judges(RegressionMonitorConfig(), compared)
    png = regression_gate.chart(tmp_path / "c.png", compared, result, APPLIED, "tars-x")
    stats = tmp_path / "s.json"
    stats.write_text(json.dumps({"result": result.as_dict()}))
    evidence = [
        Evidence("tars-regression-monitor: comparison", 1.0, now(), "tars-x: after vs before"),
        Evidence('lat_seconds{service="api"}', 1.0, now(), regression_gate.metric_detail(result.metrics[0])),
        Evidence("tars-regression-monitor: statistics", None, now(), regression_gate.STATISTICS + str(stats)),
        Evidence("tars-regression-monitor: chart", None, now(), regression_gate.CHART + str(png)),
    ]
    record = JudgementRecord(
        "run", "tars-regression-monitor", "tars-x", "observe", result.verdict, result.reasons, evidence,
        result.score, now(), now(),
    )  # fmt: skip
    info = regression_plugin.tars_plugin_info()
    release = attrs.evolve(release_for(info, report_dir=tmp_path / "report"), judgements=[record])
    section = regression_plugin.tars_report(release)
    assert section is not None and result.verdict == "fail"
    assert "#### tars-x: fail" in section.markdown
    assert '| lat{service="api"} | latency | fail | High | +100.0%' in section.markdown
    assert "![tars-x: judged metrics](regression-1-tars-x.png)" in section.markdown
    assert (tmp_path / "report" / "regression-1-tars-x.png").is_file()
    other = release_for(PluginInfo(name="other", title="other"), report_dir=tmp_path / "r2")
    assert regression_plugin.tars_report(other) is None
