"""Incidents in the sandbox exporter: what ``tars-run sandbox incident`` does to the simulated traffic.

The exact checks scrape the collector over real HTTP at chosen instants (a stepped clock; the values are a
pure function of time and incidents), next to the same collector without incidents, so every series can be
compared with what it would have been. Then a real exporter process picks an incident up from the file as
it runs, and a real Prometheus scraping it sees the 5xx ratio the SLO reads rise to the injected share.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from tars_1002_grafana.catalogue import Simulator, Topology
from tars_1002_grafana.exporter import SimulatedTars

from tars_core.processes import Service, free_port, http_ready
from tars_core.prometheus import Prometheus, PrometheusServer
from tars_core.sandbox import incidents as inc
from tars_core.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

NOW = 1_800_000_000.0
Key = tuple[str, tuple[tuple[str, str], ...]]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def parse(text: str) -> dict[Key, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if not s.name.endswith("_created")
    }


class Pair:
    """The collector with incidents and the same collector without, served over HTTP, on one clock."""

    def __init__(self, path: Path) -> None:
        self.clock = Clock(NOW)
        self.path = path
        self.servers: list[Any] = []
        self.urls: list[str] = []
        sim = Simulator(Topology(agents=4, regions=2, hosts=1), with_instance=False)
        for incidents in (path, None):
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SimulatedTars(sim, start=NOW - 3600, incidents=incidents, clock=self.clock))
            port = free_port()
            server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
            self.servers.append((server, thread))
            self.urls.append(f"http://127.0.0.1:{port}/metrics")

    def add(self, kind: str, value: float, start: float, length: float, **kw: Any) -> inc.Incident:
        incident = inc.Incident(kind=kind, value=value, start=start, end=start + length, **kw)  # type: ignore[arg-type]
        return inc.add(self.path, incident, now=self.clock.t)

    def scrape(self, t: float) -> tuple[dict[Key, float], dict[Key, float]]:
        """(with incidents, without) at ``t``."""
        self.clock.t = t
        with_, without = (parse(httpx.get(url, timeout=10).text) for url in self.urls)
        return with_, without

    def close(self) -> None:
        for server, thread in self.servers:
            server.shutdown()
            thread.join(timeout=5)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path / "incidents.json")
    try:
        yield p
    finally:
        p.close()


def growing(key: Key) -> bool:
    """Counters and histogram series of T.A.R.S. (``pg_stat_activity_count`` is a gauge)."""
    return key[0].startswith("tars_") and key[0].endswith(("_total", "_bucket", "_count", "_sum"))


def labels(key: Key) -> dict[str, str]:
    return dict(key[1])


def increments(a: dict[Key, float], b: dict[Key, float]) -> dict[Key, float]:
    return {k: b[k] - a[k] for k in b}


def group_of(key: Key, outcome: str) -> tuple[tuple[str, str], ...]:
    return tuple(p for p in key[1] if p[0] != outcome)


def test_errors_raise_the_5xx_share_of_the_matching_series_only(pair: Pair) -> None:
    pair.add("errors", 0.02, NOW + 10, 60, match={"service": "eval-api", "region": "us-east-1"})
    before, base_before = pair.scrape(NOW + 10)
    assert before == base_before  # nothing changes before the start
    after, base_after = pair.scrape(NOW + 70)
    d, base = increments(before, after), increments(base_before, base_after)
    requests = [k for k in d if k[0] == "tars_http_requests_total"]
    matching = [k for k in requests if labels(k)["service"] == "eval-api" and labels(k)["region"] == "us-east-1"]
    assert matching and len(matching) < len(requests)
    for k in d:
        if k not in matching:
            assert after[k] == base_after[k], k  # every other series is exactly what it would have been
    groups = {group_of(k, "code") for k in matching}  # the series that differ only in the code
    for g in groups:
        series = [k for k in requests if group_of(k, "code") == g]
        bad = [k for k in series if labels(k)["code"].startswith("5")]
        total, total_base = sum(d[k] for k in series), sum(base[k] for k in series)
        assert math.isclose(total, total_base, rel_tol=1e-9)  # events moved, none created or lost
        b = sum(base[k] for k in bad) / total_base
        share = sum(d[k] for k in bad) / total
        assert math.isclose(share, b + 0.02 * (1 - b), rel_tol=1e-6), (g, b, share)
        assert all(d[k] <= base[k] for k in series if k not in bad)  # each good series gave up events
    # the overall 5xx ratio the SLO reads rose, by the matching series' part of the traffic only
    share_all = sum(d[k] for k in requests if labels(k)["code"].startswith("5")) / sum(d[k] for k in requests)
    base_all = sum(base[k] for k in requests if labels(k)["code"].startswith("5")) / sum(base[k] for k in requests)
    assert base_all < share_all < base_all + 0.02


def test_counters_and_buckets_never_decrease_across_starts_and_ends(pair: Pair) -> None:
    pair.add("errors", 0.5, NOW + 20, 40, match={"region": "us-east-1"})
    pair.add("traffic", 0.01, NOW + 30, 50)
    pair.add("latency", 3, NOW + 10, 30, match={"service": "eval-api"})
    pair.add("latency", 0.5, NOW + 50, 20)
    pair.add("traffic", 4, NOW + 70, 30, match={"region": "us-west-2"})
    edges = [NOW + e for e in (10, 20, 30, 40, 50, 60, 70, 80, 100)]
    times = sorted({*(NOW + i * 7.5 for i in range(16)), *(e + d for e in edges for d in (-1e-3, 1e-3))})
    previous: dict[Key, float] = {}
    prev_base: dict[Key, float] = {}
    prev_t = -math.inf
    for t in times:
        now, base = pair.scrape(t)
        buckets: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = {}
        for (name, lab), value in now.items():
            if name.endswith("_bucket"):
                d = dict(lab)
                le = float(d.pop("le"))
                buckets.setdefault((name, tuple(sorted(d.items()))), []).append((le, value))
        for series in buckets.values():
            counts = [v for _, v in sorted(series)]
            assert counts == sorted(counts), series  # cumulative in le
        for k, v in previous.items():
            if growing(k):
                assert now[k] >= v, (k, t - NOW, v, now[k])
        if t - prev_t < 0.01:
            # across an edge (2 ms apart): continuous, what the incidents add or take changes by less than
            # one event (a bucket count is a whole number, so it may move by one)
            jumps = [abs((now[k] - base[k]) - (previous[k] - prev_base[k])) for k in now if growing(k)]
            assert max(jumps) <= 1.0, (t - NOW, max(jumps))
        previous, prev_base, prev_t = now, base, t


def test_a_traffic_drop_scales_the_increments_inside_the_window(pair: Pair) -> None:
    pair.add("traffic", 0.01, NOW + 10, 300, match={"region": "us-west-2"})
    before, base_before = pair.scrape(NOW + 10)
    after, base_after = pair.scrape(NOW + 310)
    d, base = increments(before, after), increments(base_before, base_after)
    changed = 0
    for k in d:
        lab = labels(k)
        applies = k[0].startswith(("tars_http_request", "tars_evaluation")) and lab.get("region") == "us-west-2"
        if not applies:
            assert d[k] == base[k], k
        elif k[0].endswith(("_total", "_sum")):
            assert math.isclose(d[k], 0.01 * base[k], rel_tol=1e-6), k
            changed += 1
        else:  # bucket counts are whole numbers
            assert abs(d[k] - 0.01 * base[k]) <= 1.0, k
    assert changed > 50
    requests = [k for k in d if k[0] == "tars_http_requests_total" and labels(k)["region"] == "us-west-2"]
    assert sum(d[k] for k in requests) < 0.011 * sum(base[k] for k in requests)


def test_a_latency_factor_moves_counts_above_the_slo_bucket(pair: Pair) -> None:
    pair.add("latency", 3, NOW + 10, 600, match={"service": "dashboard-api"})
    before, base_before = pair.scrape(NOW + 10)
    after, base_after = pair.scrape(NOW + 610)
    d, base = increments(before, after), increments(base_before, base_after)
    name = "tars_http_request_duration_seconds"
    for k in d:
        if k[0].startswith(name) and labels(k)["service"] != "dashboard-api":
            assert d[k] == base[k], k
    for region in ("us-east-1", "us-west-2"):
        sel = (("endpoint", "/v1/leaderboard"), ("method", "GET"), ("region", region), ("service", "dashboard-api"))
        fast = (f"{name}_bucket", tuple(sorted((*sel, ("le", "0.15")))))
        count = (f"{name}_count", sel)
        assert abs(d[count] - base[count]) <= 1  # as many requests, slower
        slow_share, base_share = 1 - d[fast] / d[count], 1 - base[fast] / base[count]
        # a median of about 0.11 s tripled: most requests now take longer than the 0.15 s objective
        assert base_share < 0.45 and slow_share > 0.7, (region, base_share, slow_share)
        sums = (f"{name}_sum", sel)
        assert 2.9 < d[sums] / base[sums] < 3.1  # every latency of the window times 3


def test_a_running_exporter_picks_incidents_up_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "incidents.json"
    port = free_port()
    argv = [sys.executable, "-m", "tars_1002_grafana.exporter", "--port", str(port), "--agents", "2", "--regions", "1"]
    argv += ["--incidents", str(path)]
    url = f"http://127.0.0.1:{port}/metrics"
    log = tmp_path / "exporter.log"
    with Service("exporter", argv, log=log, ready=http_ready(url), start_timeout=30):
        scrapes = [parse(httpx.get(url, timeout=5).text)]
        start = time.time() + inc.EFFECT_DELAY + 0.5
        added = inc.add(path, inc.Incident(kind="errors", value=0.5, start=start, end=start + 3))
        inside: list[dict[Key, float]] = []
        while time.time() < added.end + 1.0:
            t0 = time.time()
            scrapes.append(parse(httpx.get(url, timeout=5).text))
            t1 = time.time()
            if added.start + 0.1 < t0 and t1 < added.end - 0.1:
                inside.append(scrapes[-1])
            if len(scrapes) == 4:
                path.write_text("{half written")  # a broken file keeps the incidents read before
            time.sleep(0.15)
        text = log.read_text()
    for a, b in itertools.pairwise(scrapes):
        for k, v in b.items():
            if growing(k):
                assert v >= a[k], k
    assert len(inside) >= 2, "no two scrapes inside the incident window"
    d = increments(inside[0], inside[-1])
    requests = [k for k in d if k[0] == "tars_http_requests_total"]
    share = sum(d[k] for k in requests if labels(k)["code"].startswith("5")) / sum(d[k] for k in requests)
    assert 0.45 < share < 0.56, share  # 0.5 + the normal 0.8%
    assert "1 incident(s) from" in text and "#1 errors +50%" in text
    assert "is unreadable" in text and "keeping the 1 incident(s) read before" in text


def test_prometheus_sees_the_5xx_ratio_rise_to_the_injected_share(tmp_path: Path) -> None:
    """Two identical exporters, one with the incident: the SLO's 5xx ratio, as Prometheus computes it over
    the same scrapes, is b + r·(1 − b) on one and b on the other (b ≈ 0.8 %, the normal 5xx share)."""
    path = tmp_path / "incidents.json"
    targets = []
    services = []
    for name, extra in (("a", ["--incidents", str(path)]), ("b", [])):
        port = free_port()
        argv = [sys.executable, "-m", "tars_1002_grafana.exporter", "--port", str(port), "--agents", "4"]
        argv += ["--regions", "2", *extra]
        url = f"http://127.0.0.1:{port}/metrics"
        services.append(Service(f"exporter-{name}", argv, log=tmp_path / f"{name}.log", ready=http_ready(url)))
        targets.append(f"127.0.0.1:{port}")
    r = 0.02
    with services[0], services[1]:
        incident = inc.add(path, inc.Incident(kind="errors", value=r, start=0, end=120), shift=True)
        wait_until(lambda: time.time() > incident.start, timeout=5, interval=0.1, what="the incident's start")
        # Prometheus starts after the incident did, so every sample of the 30s window is inside it
        with PrometheusServer(tmp_path / "prom", scrape_targets=targets, scrape_interval="1s") as server:
            prom = Prometheus(server.url)

            def ratio(instance: str) -> float | None:
                sel = f'instance="{instance}"'
                rows = prom.query(
                    f'sum(rate(tars_http_requests_total{{code=~"5..",{sel}}}[30s]))'
                    f" / sum(rate(tars_http_requests_total{{{sel}}}[30s]))"
                )
                return float(rows[0]["value"][1]) if rows else None

            def enough() -> bool:
                rows = prom.query("min(count_over_time(up[1m]))")
                return bool(rows) and float(rows[0]["value"][1]) >= 4

            wait_until(enough, timeout=40, interval=0.5, what="four scrapes of both exporters")
            with_incident, normal = ratio(targets[0]), ratio(targets[1])
            resets = prom.query(f'sum(resets(tars_http_requests_total{{instance="{targets[0]}"}}[1m]))')
            prom.close()
    assert with_incident is not None and normal is not None
    assert 0.004 < normal < 0.013, normal
    expected = normal + r * (1 - normal)
    assert math.isclose(with_incident, expected, rel_tol=0.1), (with_incident, expected, normal)
    assert float(resets[0]["value"][1]) == 0
