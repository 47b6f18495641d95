"""Shared test pieces: promtool is required, and a scraped exporter whose traffic a test changes live.

The rule tests run the real promtool binary (Debian package ``prometheus``); the gate and stream tests
point a real Prometheus at :class:`Traffic` and change its error share mid-test.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator

import attrs
import pytest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if shutil.which("promtool") is None:  # pragma: no cover
    raise pytest.UsageError("tars-telemetry tests need promtool (Debian package 'prometheus')")


class Traffic(Collector):
    """Test requests whose rate and error share a test changes while Prometheus scrapes them.

    Counters are integrals of a piecewise-constant rate, so they never go down when ``set`` changes it:
    ``tars_test_requests_total{code="200"|"500"}`` and a latency histogram ``tars_test_latency_seconds``
    (buckets 0.1, 0.25, +Inf; 90 % under 0.1 s) that counts the same requests.
    """

    def __init__(self, rate: float = 50.0, errors: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.since = time.time()
        self.rate, self.errors = rate, errors
        self.good = self.bad = 0.0

    def _advance(self, now: float) -> tuple[float, float]:
        n = (now - self.since) * self.rate
        return self.good + n * (1 - self.errors), self.bad + n * self.errors

    def set(self, *, rate: float | None = None, errors: float | None = None) -> None:
        with self.lock:
            now = time.time()
            self.good, self.bad = self._advance(now)
            self.since = now
            self.rate = self.rate if rate is None else rate
            self.errors = self.errors if errors is None else errors

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            good, bad = self._advance(time.time())
        requests = CounterMetricFamily("tars_test_requests", "test requests", labels=["code"])
        requests.add_metric(["200"], int(good))
        requests.add_metric(["500"], int(bad))
        yield requests
        total = int(good) + int(bad)
        latency = HistogramMetricFamily("tars_test_latency_seconds", "test latency")
        latency.add_metric(
            [], buckets=[("0.1", int(total * 0.9)), ("0.25", int(total * 0.98)), ("+Inf", total)], sum_value=0
        )
        yield latency


@attrs.define
class Exporter:
    traffic: Traffic
    port: int
    stop: object

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    """A prometheus-client exporter of :class:`Traffic` on a free port (50 requests/s, no errors)."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    from tars_core.processes import free_port

    registry = CollectorRegistry()
    traffic = Traffic()
    registry.register(traffic)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield Exporter(traffic, port, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
