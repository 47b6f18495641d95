"""The streaming daemon's forecasts, end to end: a real Prometheus evaluates the regression rules
(``tars_telemetry.regression_rules``) on an exporter of the sandbox catalogue's series and remote-writes the
``tars:regression:*`` series to the real daemon, which forecasts them sample by sample and exports the
forecasts on ``/metrics`` (scraped back by the same Prometheus, as the dashboard reads them) and
``/api/forecasts``; a level shift injected into the exporter is flagged. Plus the rules' values under
``promtool test rules``, the sandbox seed, the decoder's sorting and the daemon's option checks.

One stack for the module (about 90 s to the first fitted forecasts): rules and scrapes every second, the
daemon's forecasters on a 1 s step with a 20 s season (60 samples of warm-up, the least a fit takes).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from tars_telemetry import regression_rules
from tars_telemetry.forecast import ForecastConfig, Forecaster, series_key
from tars_telemetry.regression_rules import ERROR_RATIO, LATENCY_P95, THROUGHPUT, TRAINER_RSS
from tars_telemetry.stream import KEEP_REGEX, WRITE_PATH, decode, decode_split, encode, forecast_pattern

from tars_core.errors import TargetError
from tars_core.model import Targets
from tars_core.processes import Service, free_port, http_ready
from tars_core.prometheus import Prometheus, PrometheusServer
from tars_core.promtool import promtool
from tars_core.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

EXTRA = "tars_fc_test_queue_depth"  # an operator's own series, forecast through --forecast
BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0, math.inf)


class Catalogue:
    """The sandbox catalogue's series the regression rules read, for one service and two trainers.

    Each scrape adds a Poisson number of requests since the last one (1 % of them 5xx), spread over the
    latency buckets by a multinomial draw from a log-normal (median 50 ms), so every recorded series has
    sampling noise for the band to learn; RSS is a level with 0.5 % noise. :meth:`shift` multiplies the
    canary's RSS and the latencies from now on.
    """

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        self.last = time.time()
        self.ok = self.errors = 0.0
        self.buckets = np.zeros(len(BUCKETS))
        self.rps = 500.0
        self.median = 0.05
        self.rss = {"canary": 500e6, "baseline": 480e6}

    def shift(self, *, rss: float = 1.0, latency: float = 1.0) -> None:
        with self.lock:
            self.rss["canary"] *= rss
            self.median *= latency

    def _advance(self) -> None:
        now = time.time()
        n = int(self.rng.poisson(self.rps * max(now - self.last, 0.0)))
        self.last = now
        bad = int(self.rng.binomial(n, 0.01))
        self.ok += n - bad
        self.errors += bad
        cdf = [
            1.0 if math.isinf(b) else 0.5 * (1 + math.erf(math.log(b / self.median) / (0.5 * math.sqrt(2))))
            for b in BUCKETS
        ]
        shares = np.diff([0.0, *cdf])
        self.buckets += np.cumsum(self.rng.multinomial(n, shares))

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            self._advance()
            requests = CounterMetricFamily("tars_http_requests", "requests", labels=["service", "code"])
            requests.add_metric(["eval-api", "200"], self.ok)
            requests.add_metric(["eval-api", "503"], self.errors)
            latency = HistogramMetricFamily("tars_http_request_duration_seconds", "latency", labels=["service"])
            bounds = ["+Inf" if math.isinf(b) else repr(b) for b in BUCKETS]
            latency.add_metric(["eval-api"], list(zip(bounds, self.buckets.tolist(), strict=True)), sum_value=0.0)
            rss = GaugeMetricFamily("tars_ppo_rss_bytes", "trainer RSS", labels=["trainer"])
            for trainer, level in self.rss.items():
                rss.add_metric([trainer], level * (1 + self.rng.normal(0, 0.005)))
            queue = GaugeMetricFamily(EXTRA, "an operator's own series")
            queue.add_metric([], 40 + self.rng.normal(0, 2))
        yield from (requests, latency, rss, queue)


@attrs.define
class Stack:
    catalogue: Catalogue
    prom: PrometheusServer
    pushed: str  # the daemon Prometheus remote-writes to
    polled: str  # a daemon reading the query API only
    exporter: str

    def forecasts(self, url: str | None = None) -> dict[str, Any]:
        resp = httpx.get(f"{url or self.pushed}/api/forecasts", timeout=10)
        resp.raise_for_status()
        return dict(resp.json())

    def rows(self, url: str | None = None) -> dict[str, dict[str, Any]]:
        return {r["series"]: r for r in self.forecasts(url)["series"]}

    def expected_keys(self) -> set[str]:
        return {
            series_key({"__name__": LATENCY_P95, "service": "eval-api"}),
            series_key({"__name__": ERROR_RATIO, "service": "eval-api"}),
            series_key({"__name__": THROUGHPUT, "service": "eval-api"}),
            series_key({"__name__": TRAINER_RSS, "trainer": "canary"}),
            series_key({"__name__": TRAINER_RSS, "trainer": "baseline"}),
            series_key({"__name__": EXTRA, "instance": self.exporter, "job": "tars"}),
        }


def _daemon(tmp: Path, name: str, *args: str) -> tuple[Service, str]:
    url = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "tars_telemetry.stream", "--port", url.rsplit(":", 1)[1], *args]
    return Service(name, argv, log=tmp / f"{name}.log", ready=http_ready(f"{url}/-/ready")).start(), url


FORECAST_ARGS = ("--forecast-step", "1", "--forecast-season", "20", "--forecast", EXTRA)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("forecast")
    registry = CollectorRegistry()
    catalogue = Catalogue()
    registry.register(catalogue)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    services: list[Service] = []
    prom: PrometheusServer | None = None
    try:
        pushed, pushed_url = _daemon(tmp, "pushed", *FORECAST_ARGS)
        services.append(pushed)
        prom = PrometheusServer(
            tmp / "prometheus",
            scrape_targets=[f"127.0.0.1:{port}", pushed_url.removeprefix("http://")],
            scrape_interval="1s",
            remote_write=[pushed_url + WRITE_PATH],
            remote_write_keep=f"{KEEP_REGEX}|{EXTRA}",  # an operator adds their --forecast series here too
        )
        prom.rules_dir.mkdir(parents=True, exist_ok=True)
        rules = regression_rules.render(interval="1s", window="5s")
        (prom.rules_dir / regression_rules.FILE_NAME).write_text(rules, encoding="utf-8")
        prom.start()
        fallback = ("--prometheus", prom.url, "--poll-interval", "1", "--push-grace", "1")
        polled, polled_url = _daemon(tmp, "polled", *FORECAST_ARGS, *fallback)
        services.append(polled)
        st = Stack(catalogue, prom, pushed_url, polled_url, f"127.0.0.1:{port}")

        def all_ready() -> bool:
            rows = st.rows()
            keys = st.expected_keys()
            # fitted, and a sample judged since (the push after the fit)
            return set(rows) >= keys and all(rows[k]["ready"] and rows[k]["expected"] is not None for k in keys)

        wait_until(all_ready, timeout=200, interval=2, what="every forecast fitted")
        yield st
    finally:
        for svc in reversed(services):
            svc.stop()
        if prom is not None:
            prom.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_show_expected_and_band_for_every_kept_series(stack: Stack) -> None:
    samples = _samples(httpx.get(f"{stack.pushed}/metrics", timeout=10).text)
    forecast = {labels for (name, labels) in samples if name == "tars_forecast_expected"}
    keys = {dict(labels)["series"] for labels in forecast}
    assert keys == stack.expected_keys()  # the kept series, and only those (no raw bucket, no tars_forecast_*)
    for labels in forecast:
        lower, expected, upper = (samples[(f"tars_forecast_{k}", labels)] for k in ("lower", "expected", "upper"))
        assert lower <= expected <= upper, labels
        assert samples[("tars_forecast_ready", labels)] == 1.0
        assert math.isfinite(samples[("tars_forecast_anomaly_score", labels)])
    rss = series_key({"__name__": TRAINER_RSS, "trainer": "baseline"})
    labels = (("metric", TRAINER_RSS), ("series", rss))
    assert 470e6 < samples[("tars_forecast_expected", labels)] < 490e6
    assert samples[("tars_forecast_series", (("ready", "1"),))] == len(keys)
    assert samples[("tars_forecast_fits_total", (("outcome", "ok"),))] >= len(keys)
    assert samples[("tars_forecast_fits_total", (("outcome", "failed"),))] == 0
    # the raw series the rules read never reached the daemon (the keep regex), nor were counted as kept
    assert not any(dict(lb).get("metric", "").startswith("tars_http_") for (_, lb) in samples)
    # the dashboard's path: Prometheus scrapes the gauges back, per metric and series
    with Prometheus(stack.prom.url) as prom:
        found = wait_until(
            lambda: prom.query(f'tars_forecast_expected{{metric="{TRAINER_RSS}"}}'), timeout=30, what="a scrape"
        )
        assert {r["metric"]["series"] for r in found} == {
            series_key({"__name__": TRAINER_RSS, "trainer": t}) for t in ("canary", "baseline")
        }


def test_api_forecasts_gives_each_series_sample_forecast_and_band(stack: Stack) -> None:
    view = stack.forecasts()
    assert view["pattern"] == forecast_pattern([EXTRA]).pattern
    assert view["config"] == {"step": 1.0, "season": 20.0, "train": 60.0, "level": 0.95}
    rows = {r["series"]: r for r in view["series"]}
    with Prometheus(stack.prom.url) as prom:
        for key in stack.expected_keys():
            row = rows[key]
            assert row["ready"] and row["seasonal"] and row["fit_error"] is None and row["fitted_at"]
            lower, upper = row["band"]
            assert lower <= row["expected"] <= upper
            assert row["anomaly_score"] >= 0 and row["direction"] in (-1, 0, 1)
            assert row["samples"] > 0 and 0 <= row["coverage"] <= 1
            # the sample it judged is the one Prometheus recorded at that time (pushed, not recomputed)
            selector = row["metric"] + "{" + ",".join(f'{k}="{v}"' for k, v in row["labels"].items()) + "}"
            (found,) = prom.query(selector, at=row["at"])
            assert float(found["value"][1]) == row["value"], key
    error = rows[series_key({"__name__": ERROR_RATIO, "service": "eval-api"})]
    assert 0 <= error["value"] < 0.1


def test_the_query_api_fallback_forecasts_the_same_series(stack: Stack) -> None:
    """A daemon nothing pushes to reads the forecast series through the query API, sample timestamps included."""

    def listed() -> dict[str, dict[str, Any]] | None:
        rows = stack.rows(stack.polled)
        return rows if set(rows) >= stack.expected_keys() else None

    rows = wait_until(listed, timeout=60, what="the polled daemon's series")
    with Prometheus(stack.prom.url) as prom:
        for key in stack.expected_keys():
            row = rows[key]
            selector = row["metric"] + "{" + ",".join(f'{k}="{v}"' for k, v in row["labels"].items()) + "}"
            (found,) = prom.query(selector, at=row["at"])
            assert float(found["value"][1]) == row["value"], key
    assert httpx.get(f"{stack.polled}/api/slos", timeout=10).json()["source"] == "query"


def test_a_level_shift_raises_the_anomaly_score_and_drift(stack: Stack) -> None:
    """Last in the module: the exporter stays shifted. The canary's RSS +30 % and latency x2 are flagged
    upwards; the baseline trainer, unchanged, is the control."""
    canary = series_key({"__name__": TRAINER_RSS, "trainer": "canary"})
    baseline = series_key({"__name__": TRAINER_RSS, "trainer": "baseline"})
    latency = series_key({"__name__": LATENCY_P95, "service": "eval-api"})
    before = stack.rows()
    assert not before[canary]["drift"] and not before[baseline]["drift"]
    stack.catalogue.shift(rss=1.3, latency=2.0)

    def flagged() -> dict[str, dict[str, Any]] | None:
        rows = stack.rows()
        return rows if all(rows[k]["drift"] for k in (canary, latency)) else None

    rows = wait_until(flagged, timeout=90, interval=1, what="the shift flagged as a drift")
    for key in (canary, latency):
        assert rows[key]["direction"] == 1, rows[key]
        assert rows[key]["drifts"] >= 1
        assert rows[key]["value"] > rows[key]["band"][1]
    assert rows[canary]["anomaly_score"] > 10  # 30 % against a band of about 1 %
    assert not rows[baseline]["drift"] and rows[baseline]["anomaly_score"] < 3
    samples = _samples(httpx.get(f"{stack.pushed}/metrics", timeout=10).text)
    labels = (("metric", TRAINER_RSS), ("series", canary))
    assert samples[("tars_forecast_drift", labels)] == 1.0
    assert samples[("tars_forecast_drift_direction", labels)] == 1.0
    assert samples[("tars_forecast_drifts_total", labels)] >= 1
    assert samples[("tars_forecast_anomaly_score", labels)] > 1


# -- without the stack ----------------------------------------------------------------------------------------
PROMTOOL_TEST = """\
rule_files: [{rules}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'tars_http_requests_total{{service="a",code="200",instance="x"}}'
        values: '0+135x20'
      - series: 'tars_http_requests_total{{service="a",code="503",instance="x"}}'
        values: '0+15x20'
      - series: 'tars_http_requests_total{{service="b",code="200",instance="x"}}'
        values: '0+15x20'
      - series: 'tars_http_request_duration_seconds_bucket{{service="a",le="0.1",instance="x"}}'
        values: '0+90x20'
      - series: 'tars_http_request_duration_seconds_bucket{{service="a",le="0.5",instance="x"}}'
        values: '0+100x20'
      - series: 'tars_http_request_duration_seconds_bucket{{service="a",le="+Inf",instance="x"}}'
        values: '0+100x20'
      - series: 'tars_ppo_rss_bytes{{trainer="t1",instance="i1"}}'
        values: '100x20'
      - series: 'tars_ppo_rss_bytes{{trainer="t1",instance="i2"}}'
        values: '200x20'
    promql_expr_test:
      - expr: {throughput}
        eval_time: 4m
        exp_samples:
          - labels: '{throughput}{{service="a"}}'
            value: 10
          - labels: '{throughput}{{service="b"}}'
            value: 1
      - expr: {errors}
        eval_time: 4m
        exp_samples:
          - labels: '{errors}{{service="a"}}'
            value: 0.1
          - labels: '{errors}{{service="b"}}'
            value: 0
      - expr: round({latency}, 0.001)  # 0.3 interpolated in (0.1, 0.5], give or take a rounding error
        eval_time: 4m
        exp_samples:
          - labels: '{{service="a"}}'
            value: 0.3
      - expr: {rss}
        eval_time: 4m
        exp_samples:
          - labels: '{rss}{{trainer="t1"}}'
            value: 200
"""


def test_the_regression_rules_pass_promtool_and_record_the_default_metrics(tmp_path: Path) -> None:
    """p95 interpolated in its bucket, the error ratio 0 (not absent) without 5xx, RSS per trainer."""
    text = regression_rules.render()
    assert "SUCCESS: 4 rules found" in regression_rules.check(text)
    assert [name for name, _ in regression_rules.SERIES] == list(regression_rules.KINDS)
    assert all(name.startswith(regression_rules.PREFIX) for name in regression_rules.KINDS)
    assert set(regression_rules.KINDS.values()) == {"latency", "errors", "throughput", "memory"}
    rules = tmp_path / regression_rules.FILE_NAME
    rules.write_text(text, encoding="utf-8")
    test = tmp_path / "test.yml"
    test.write_text(
        PROMTOOL_TEST.format(
            rules=rules.name, throughput=THROUGHPUT, errors=ERROR_RATIO, latency=LATENCY_P95, rss=TRAINER_RSS
        ),
        encoding="utf-8",
    )
    assert "SUCCESS" in promtool("test", "rules", str(test))
    assert "interval: 1s" in regression_rules.render("1s", "5s") and "[5s]" in regression_rules.render("1s", "5s")
    res = subprocess.run(
        [sys.executable, "-m", "tars_telemetry.regression_rules", "--out", str(tmp_path / "out"), "--window", "1 m"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "1 m" in res.stderr


def test_the_sandbox_seed_writes_the_rules_and_the_dashboard_once(tmp_path: Path) -> None:
    rules_dir, dash_dir = tmp_path / "prometheus" / "rules", tmp_path / "grafana" / "dashboards"
    targets = Targets(prometheus_rules_dir=str(rules_dir), grafana_dashboards_dir=str(dash_dir))
    written = regression_rules.seed_sandbox(targets)
    rules, dash = rules_dir / regression_rules.FILE_NAME, dash_dir / "telemetry" / regression_rules.DASHBOARD_FILE
    assert written == [rules, dash]
    assert rules.read_text(encoding="utf-8") == regression_rules.render()
    assert json.loads(dash.read_text(encoding="utf-8"))["uid"] == "tars-regression"
    assert regression_rules.seed_sandbox(targets) == []  # idempotent: nothing rewritten
    with pytest.raises(TargetError, match=r"targets\.grafana_dashboards_dir is not set"):
        regression_rules.seed_sandbox(Targets(prometheus_rules_dir=str(rules_dir)))


def test_decode_sorts_slo_and_forecast_samples() -> None:
    now = 1_700_000_000_000
    body = encode(
        [
            ({"__name__": "slo:burn_rate:ratio_rate5m", "slo": "a"}, [(2.0, now)]),
            ({"__name__": TRAINER_RSS, "trainer": "canary"}, [(5e8, now), (5.1e8, now + 1000)]),
            ({"__name__": "tars_ppo_rss_bytes", "trainer": "canary"}, [(5e8, now)]),  # raw: dropped
            ({"__name__": "tars_forecast_expected", "metric": TRAINER_RSS}, [(5e8, now)]),  # ours: never
            ({"__name__": "slo:sli_error:ratio_rate5m", "slo": "a"}, [(0.1, now)]),
        ]
    )
    split = decode_split(body)
    assert [s.labels["__name__"] for s in split.slo] == ["slo:burn_rate:ratio_rate5m", "slo:sli_error:ratio_rate5m"]
    assert [(s.labels["__name__"], s.value) for s in split.forecast] == [(TRAINER_RSS, 5e8), (TRAINER_RSS, 5.1e8)]
    assert split.dropped == 2 and len(split.kept) == 4
    kept, dropped = decode(body, None)  # the SLO monitor alone
    assert len(kept) == 2 and dropped == 4
    # an operator's regex: an SLO series may be forecast too (once in `kept`, in both lists)
    both = decode_split(body, forecast_pattern(["slo:sli_error:.*", "tars_forecast_.*"]))
    assert [s.labels["__name__"] for s in both.forecast] == [TRAINER_RSS, TRAINER_RSS, "slo:sli_error:ratio_rate5m"]
    assert len(both.kept) == 4 and both.dropped == 2
    assert KEEP_REGEX == "slo:.*|ALERTS|tars:regression:.*"


def test_a_short_warm_up_forecasts_the_level_then_learns_the_season() -> None:
    """The daemon's default: forecast after ``train`` (level only), refit with the season at three seasons."""
    rng = np.random.default_rng(3)
    config = ForecastConfig(step=5.0, season=300.0, train=300.0)  # 60 samples per season and of warm-up
    f = Forecaster(config, auto_fit=False)
    t = 0
    for _ in range(60):
        f.update(t * 5.0, 100 + 20 * math.sin(2 * math.pi * t / 60) + rng.normal(0, 1))
        t += 1
    assert f.fit_due and not f.ready
    f.refit()
    assert f.ready and not f.seasonal and not f.fit_due
    while not f.fit_due:
        f.update(t * 5.0, 100 + 20 * math.sin(2 * math.pi * t / 60) + rng.normal(0, 1))
        t += 1
    assert t == 180 and len(f.history) == 180  # three seasons kept for the seasonal fit
    level_only = f.band.bounds()
    f.refit()
    assert f.seasonal and not f.fit_due and f.describe()["period"] == 60
    lo, hi = f.band.bounds()
    assert hi - lo < (level_only[1] - level_only[0]) / 2  # the season explains what the level-only band had to cover


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--forecast", "tars_("), "is not a regular expression"),
        (("--forecast-step", "0"), "--forecast-step must be positive"),
        (("--forecast-train", "100"), "a fit needs 60: use at least 300"),
        (("--forecast-season", "8"), "forecast season 8.0s is under two steps"),
    ],
)
def test_bad_forecast_options_are_one_line_and_exit_2(args: tuple[str, ...], words: str) -> None:
    cmd = [sys.executable, "-m", "tars_telemetry.stream", "--port", str(free_port()), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("tars_telemetry.stream: ") and words in line and "Traceback" not in res.stderr
