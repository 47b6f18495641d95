"""The streaming monitor against real components: a real Prometheus evaluating generated SLO rules on a
real exporter pushes by remote write to the real daemon; the daemon's state is held against Prometheus'
own query API, and so is the query-API fallback; ``tars-slo watch`` runs as the console script.

One stack for the module (about 20 s to first data): a prometheus-client exporter whose error ratio is
exactly 10 % at every scrape, a test SLO with a 1 h period and min-events 1 whose rule groups run every
second with ``for: 0s``, a Prometheus scraping every second, a remote-write daemon and a query-API daemon.
"""

from __future__ import annotations

import json
import math
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from tars_telemetry.live import BUDGET, BURN, ERROR, MonitorState, Sample, poll
from tars_telemetry.rules import dump, slo_groups
from tars_telemetry.spec import load_files
from tars_telemetry.stream import KEEP_REGEX, WRITE_PATH, decode, encode, sandbox_contribution

from tars_core.model import SandboxSite, Targets
from tars_core.processes import Service, free_port, http_ready
from tars_core.prometheus import Prometheus, PrometheusServer
from tars_core.testing import assert_cheap_import
from tars_core.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

SLO_NAME = "stream-test"
METRIC = "tars_stream_test_requests_total"
SLO_DOC = f"""\
apiVersion: openslo/v1
kind: SLO
metadata:
  name: {SLO_NAME}
  annotations:
    tars.dev/min-events: "1"
spec:
  description: test requests answered without a 5xx
  service: stream-test
  indicator:
    metadata:
      name: {SLO_NAME}
    spec:
      ratioMetric:
        counter: true
        bad:
          metricSource:
            type: Prometheus
            spec:
              query: {METRIC}{{code=~"5.."}}
        total:
          metricSource:
            type: Prometheus
            spec:
              query: {METRIC}
  timeWindow:
    - duration: 1h
      isRolling: true
  budgetingMethod: Occurrences
  objectives:
    - target: 0.8
"""
# 10 % errors on a 20 % budget: burn rate 0.5 everywhere, half the 1 h budget left, and the 1 h page tier
# (threshold 0.02 x budget at a 1 h period) fires
ERROR_RATIO = 0.1
HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}


class _Requests:
    """Counters derived from one tick count, so every scrape sees exactly 10 % of the requests fail."""

    def __init__(self) -> None:
        self.t0 = time.time()

    def collect(self) -> Iterator[CounterMetricFamily]:
        n = int((time.time() - self.t0) * 50)
        family = CounterMetricFamily(METRIC.removesuffix("_total"), "test requests", labels=["code"])
        family.add_metric(["200"], 9 * n)
        family.add_metric(["500"], n)
        yield family


@attrs.define
class Stack:
    tmp: Path
    slo_file: Path
    prom: PrometheusServer
    pushed: str  # the remote-write daemon
    polled: str  # the query-API daemon

    def view(self, url: str) -> dict[str, Any]:
        resp = httpx.get(f"{url}/api/slos", timeout=10)
        resp.raise_for_status()
        return dict(resp.json())


def _slo(view: dict[str, Any], name: str = SLO_NAME) -> dict[str, Any]:
    return next(s for s in view["slos"] if s["slo"] == name)


def _daemon(tmp: Path, name: str, *args: str) -> tuple[Service, str]:
    """``python -m tars_telemetry.stream`` on a free port, ready; and its URL."""
    url = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "tars_telemetry.stream", "--port", url.rsplit(":", 1)[1], *args]
    service = Service(name, argv, log=tmp / f"{name}.log", ready=http_ready(f"{url}/-/ready"))
    return service.start(), url


def _rules(slo_file: Path) -> str:
    """The generated rules of the test SLO, evaluated every second and alerting without a ``for`` delay."""
    groups = slo_groups(load_files([slo_file])[0])
    for group in groups:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    return dump({"groups": groups})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stream")
    slo_file = tmp / "slo.yaml"
    slo_file.write_text(SLO_DOC, encoding="utf-8")
    registry = CollectorRegistry()
    registry.register(_Requests())
    exporter_port = free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    services: list[Service] = []
    prom: PrometheusServer | None = None
    try:
        pushed, pushed_url = _daemon(tmp, "pushed", "--slo", str(slo_file))
        services.append(pushed)
        prom = PrometheusServer(
            tmp / "prometheus",
            scrape_targets=[f"127.0.0.1:{exporter_port}"],
            scrape_interval="1s",
            remote_write=[pushed_url + WRITE_PATH],
            remote_write_keep=KEEP_REGEX,
        )
        prom.rules_dir.mkdir(parents=True, exist_ok=True)
        (prom.rules_dir / "slo.yml").write_text(_rules(slo_file), encoding="utf-8")
        prom.start()
        fallback = ("--prometheus", prom.url, "--poll-interval", "1", "--push-grace", "1")
        polled, polled_url = _daemon(tmp, "polled", "--slo", str(slo_file), *fallback)
        services.append(polled)
        st = Stack(tmp, slo_file, prom, pushed_url, polled_url)

        def paging(url: str) -> bool:
            slo = _slo(st.view(url))
            # the start-up alerts (absent, insufficient data: `for: 0s` here) resolved, the page tier firing
            return slo["status"] == "page" and slo["firing"] == ["page-1h"] and slo["budget_remaining"] is not None

        wait_until(lambda: paging(st.pushed) and paging(st.polled), timeout=90, interval=1, what="both daemons paging")
        yield st
    finally:
        for svc in reversed(services):
            svc.stop()
        if prom is not None:
            prom.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _assert_series_match_prometheus(stack: Stack, slo: dict[str, Any], names: list[str]) -> None:
    """Each reading equals what the query API returns for the same series at the reading's own timestamp."""
    with Prometheus(stack.prom.url) as prom:
        for name in names:
            reading = slo["series"][name]
            rows = prom.query(f'{name}{{slo="{SLO_NAME}"}}', at=reading["at"])
            assert len(rows) == 1, (name, rows)
            assert float(rows[0]["value"][1]) == reading["value"], (name, rows, reading)


def test_remote_write_state_equals_the_query_api(stack: Stack) -> None:
    view = stack.view(stack.pushed)
    assert view["source"] == "remote-write"
    assert [s["slo"] for s in view["slos"]] == [SLO_NAME]
    slo = _slo(view)
    windows = ["5m", "30m", "1h"]
    names = [BUDGET, *(f"{BURN}{w}" for w in windows), *(f"{ERROR}{w}" for w in windows)]
    _assert_series_match_prometheus(stack, slo, names)
    # the figures the exporter makes: 10 % errors on a 20 % budget
    assert slo["error_ratio"]["5m"] == pytest.approx(ERROR_RATIO, rel=1e-9)
    assert slo["burn_rate"]["5m"] == pytest.approx(ERROR_RATIO / 0.2, rel=1e-9)
    assert slo["budget_remaining"] == pytest.approx(1 - ERROR_RATIO / 0.2, rel=1e-9)
    assert slo["budget_remaining"] == slo["series"][BUDGET]["value"]
    assert slo["firing"] == ["page-1h"] and slo["tiers"] == ["page-1h"]
    assert {"alert": "SLOErrorBudgetBurn", "tier": "page-1h", "severity": "page", "state": "firing"}.items() <= next(
        a for a in slo["alerts"] if a["tier"] == "page-1h"
    ).items()
    assert slo["status"] == "page" and slo["status_changes"] >= 1 and slo["status_since"] <= time.time()
    assert slo["insufficient_data"] is False and slo["absent"] is False


def test_query_api_fallback_gives_the_same_state(stack: Stack) -> None:
    pushed, polled = _slo(stack.view(stack.pushed)), _slo(stack.view(stack.polled))
    assert stack.view(stack.polled)["source"] == "query"
    for key in ("status", "firing", "tiers", "insufficient_data", "absent", "objective", "period", "service"):
        assert polled[key] == pushed[key], key
    assert set(polled["series"]) == set(pushed["series"])
    assert set(polled["burn_rate"]) == set(pushed["burn_rate"])
    _assert_series_match_prometheus(stack, polled, sorted(polled["series"]))
    # the library call the daemon makes, on its own: the same readings as a fresh query API read
    state = MonitorState(load_files([stack.slo_file]))
    with Prometheus(stack.prom.url) as prom:
        state.replace(poll(prom))
    own = state.view()["slos"][0]
    assert own["status"] == "page" and own["firing"] == ["page-1h"]
    _assert_series_match_prometheus(stack, own, sorted(own["series"]))


def test_metrics_exposition(stack: Stack) -> None:
    text = httpx.get(f"{stack.pushed}/metrics", timeout=10).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    slo = _slo(stack.view(stack.pushed))
    assert samples[("tars_slo_budget_remaining_ratio", (("slo", SLO_NAME),))] == pytest.approx(0.5, rel=1e-9)
    assert samples[("tars_slo_burn_rate", (("slo", SLO_NAME), ("window", "1h")))] == pytest.approx(0.5, rel=1e-9)
    assert samples[("tars_slo_status", (("slo", SLO_NAME), ("status", "page")))] == 1.0
    assert samples[("tars_slo_status", (("slo", SLO_NAME), ("status", "ok")))] == 0.0
    assert samples[("tars_slo_status_changes_total", (("slo", SLO_NAME),))] >= slo["status_changes"]
    assert samples[("tars_slo_samples_received_total", ())] > 0
    assert ("tars_slo_samples_dropped_total", ()) in samples
    assert samples[("tars_slo_tier_firing", (("slo", SLO_NAME), ("tier", "page-1h")))] == 1.0
    assert samples[("tars_slo_write_requests_total", (("code", "204"),))] > 0


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A daemon of its own for hand-made requests (they must not disturb the stack's state)."""
    tmp = tmp_path_factory.mktemp("scratch")
    service, url = _daemon(tmp, "scratch")
    try:
        yield url
    finally:
        service.stop()


def _post(url: str, body: bytes, headers: dict[str, str] = HEADERS) -> httpx.Response:
    return httpx.post(f"{url}{WRITE_PATH}", content=body, headers=headers, timeout=10)


def test_a_bad_body_gets_400_with_one_line_and_the_daemon_keeps_serving(scratch: str) -> None:
    import cramjam

    bad = {
        "garbage": (b"\x10not snappy at all", HEADERS),
        "empty": (b"", HEADERS),
        "not protobuf": (bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff\xff")), HEADERS),
        "bomb": (b"\xff\xff\xff\xff\x0f" + b"\x00" * 10, HEADERS),
        "gzip": (encode([]), {**HEADERS, "Content-Encoding": "gzip"}),
    }
    for what, (body, headers) in bad.items():
        resp = _post(scratch, body, headers)
        assert resp.status_code == 400, what
        assert resp.text.endswith("\n") and "\n" not in resp.text.rstrip("\n") and resp.text.strip(), what
    assert httpx.get(f"{scratch}/-/ready", timeout=5).status_code == 200
    before = httpx.get(f"{scratch}/api/slos", timeout=5).json()
    now = int(time.time() * 1000)
    body = encode([({"__name__": "up", "job": "tars"}, [(1.0, now), (1.0, now + 1000)])])
    assert _post(scratch, body).status_code == 204
    after = httpx.get(f"{scratch}/api/slos", timeout=5).json()
    assert after["samples_dropped"] == before["samples_dropped"] + 2
    assert after["samples_received"] == before["samples_received"] + 2
    text = httpx.get(f"{scratch}/metrics", timeout=5).text
    assert 'tars_slo_write_requests_total{code="400"} 5.0' in text


def test_alerts_follow_stale_markers_and_order(scratch: str) -> None:
    """A resolved alert ends with Prometheus' stale marker; an older sample never replaces a newer one."""
    now = int(time.time() * 1000)
    alert = {
        "__name__": "ALERTS",
        "alertname": "SLOErrorBudgetBurn",
        "alertstate": "firing",
        "slo": "api-availability",
        "tier": "page-6h",
        "severity": "page",
    }
    budget = {"__name__": BUDGET, "slo": "api-availability", "service": "tars-api"}
    assert _post(scratch, encode([(alert, [(1.0, now)]), (budget, [(0.8, now)])])).status_code == 204
    slo = _slo(httpx.get(f"{scratch}/api/slos", timeout=5).json(), "api-availability")
    assert slo["status"] == "page" and slo["firing"] == ["page-6h"] and slo["budget_remaining"] == 0.8
    stale = _stale_nan()
    older = [(0.1, now - 5000)]
    assert _post(scratch, encode([(alert, [(stale, now + 1000)]), (budget, older)])).status_code == 204
    slo = _slo(httpx.get(f"{scratch}/api/slos", timeout=5).json(), "api-availability")
    assert slo["firing"] == [] and slo["status"] == "ok" and slo["budget_remaining"] == 0.8
    assert slo["status_changes"] == 2


def _stale_nan() -> float:
    import struct

    value: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
    return value


def test_decode_keeps_slo_series_and_alerts_with_an_slo_label_only() -> None:
    now = 1_700_000_000_123
    body = encode(
        [
            ({"__name__": "slo:burn_rate:ratio_rate5m", "slo": "a", "service": "s"}, [(2.0, now)]),
            ({"__name__": "slo:burn_rate:ratio_rate5m"}, [(3.0, now)]),  # no slo label
            ({"__name__": "ALERTS", "alertname": "Other"}, [(1.0, now)]),  # an alert of another rule
            ({"__name__": "ALERTS", "alertname": "SLOMetricAbsent", "slo": "a"}, [(1.0, now)]),
            ({"__name__": "tars_http_requests_total", "Zone": "eu"}, [(5.0, now), (6.0, now + 1)]),
            ({"__name__": "slo:sli_error:ratio_rate5m", "slo": "a"}, [(math.nan, now), (_stale_nan(), now + 1)]),
        ]
    )
    kept, dropped = decode(body)
    assert dropped == 4
    assert [(s.labels["__name__"], s.at, s.stale) for s in kept] == [
        ("slo:burn_rate:ratio_rate5m", 1_700_000_000.123, False),
        ("ALERTS", 1_700_000_000.123, False),
        ("slo:sli_error:ratio_rate5m", 1_700_000_000.123, False),
        ("slo:sli_error:ratio_rate5m", 1_700_000_000.124, True),
    ]
    assert math.isnan(kept[2].value)


def test_state_statuses_from_rules_and_alerts() -> None:
    """The precedence no-data > page > budget-exhausted > ticket > insufficient-data > ok, on one SLO."""
    state = MonitorState(stale_after=60)
    now = time.time()

    def put(name: str, value: float, **labels: str) -> None:
        state.ingest([Sample({"__name__": name, "slo": "x", **labels}, value, now)])

    def alert(name: str, severity: str, tier: str, stale: bool = False) -> None:
        labels = {"__name__": "ALERTS", "slo": "x", "alertname": name, "alertstate": "firing"}
        state.ingest([Sample({**labels, "severity": severity, "tier": tier}, 1.0, now, stale)])

    assert "x" not in state.slos
    put("slo:insufficient_data:bool", 1.0)
    assert state.slos["x"].status == "no-data"  # no budget figure: blind
    put(BUDGET, 0.4)
    assert state.slos["x"].status == "insufficient-data"
    put("slo:insufficient_data:bool", 0.0)
    assert state.slos["x"].status == "ok"
    alert("SLOErrorBudgetBurn", "ticket", "ticket-1d")
    assert state.slos["x"].status == "ticket"
    alert("SLOErrorBudgetExhausted", "ticket", "budget")
    assert state.slos["x"].status == "budget-exhausted"
    alert("SLOErrorBudgetBurn", "page", "page-1h")
    assert state.slos["x"].status == "page"
    alert("SLOMetricAbsent", "ticket", "absent")
    assert state.slos["x"].status == "no-data"
    assert state.slos["x"].changes == 6  # the first reading left it at no-data: not a change
    state.decide(now=now + 61)  # nothing new for longer than stale_after
    assert state.slos["x"].status == "no-data"


def _watch(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("tars-slo")
    return subprocess.run([str(exe), "watch", *args], capture_output=True, text=True, timeout=60)


def test_watch_once_json_and_plain(stack: Stack) -> None:
    res = _watch("--monitor", stack.pushed, "--once", "--format", "json")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["slo"] for x in lines] == [SLO_NAME]
    assert lines[0]["status"] == "page" and lines[0]["firing"] == ["page-1h"] and lines[0]["source"] == "remote-write"
    assert lines[0]["budget_remaining"] == pytest.approx(0.5, rel=1e-9)
    assert lines[0]["burn_rate"]["1h"] == pytest.approx(0.5, rel=1e-9)

    res = _watch("--monitor", stack.pushed, "--once")
    assert res.returncode == 0, res.stderr
    (line,) = res.stdout.splitlines()
    assert f" {SLO_NAME} status=page budget=50.0% burn=5m:0.50,30m:0.50,1h:0.50" in line
    assert line.endswith(" firing=page-1h pending=-")

    res = _watch("--prometheus", stack.prom.url, "--slo", str(stack.slo_file), "--once", "--format", "json")
    assert res.returncode == 0, res.stderr
    (direct,) = [json.loads(x) for x in res.stdout.splitlines()]
    assert direct["source"] == "query" and direct["status"] == "page" and direct["firing"] == ["page-1h"]
    assert direct["budget_remaining"] == pytest.approx(0.5, rel=1e-9)


def test_watch_draws_a_table_on_a_terminal(stack: Stack) -> None:
    exe = Path(sys.executable).with_name("tars-slo")
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(exe), "watch", "--monitor", stack.pushed, "--once"],
            stdout=follower,
            stderr=subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1"},
        )
        os.close(follower)
        follower = -1
        out = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = out.decode()
    header = next(x for x in text.splitlines() if x.startswith("SLO"))
    assert "status" in header and "budget left" in header and "burn 5m" in header and "firing" in header
    row = next(x for x in text.splitlines() if x.startswith(SLO_NAME))
    assert "page" in row and "50.0%" in row and "page-1h" in row


@pytest.mark.parametrize("flag", ["--monitor", "--prometheus"])
def test_watch_unreachable_source_is_one_line_and_exit_2(flag: str) -> None:
    res = _watch(flag, f"http://127.0.0.1:{free_port()}", "--once")
    assert res.returncode == 2
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("tars-slo: ")
    assert "Traceback" not in res.stderr and "Connection refused" in res.stderr


def test_daemon_on_a_port_in_use_is_one_line_and_exit_2(scratch: str) -> None:
    port = scratch.rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "tars_telemetry.stream", "--port", port]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = [x for x in res.stderr.splitlines() if "tars_telemetry.stream:" in x]
    assert len(lines) == 1 and "choose another --port" in lines[0] and "Traceback" not in res.stderr


def test_sandbox_contribution_and_cheap_import(tmp_path: Path) -> None:
    site = SandboxSite(dir=tmp_path, targets=Targets(prometheus_url="http://127.0.0.1:9090"), python=sys.executable)
    contrib = sandbox_contribution(site)
    (service,) = contrib.services
    assert service.ready == "http:/-/ready" and service.port is not None
    assert service.argv[1:] == [
        "-m",
        "tars_telemetry.stream",
        "--port",
        str(service.port),
        "--prometheus",
        "http://127.0.0.1:9090",
    ]
    assert contrib.remote_write == [f"http://127.0.0.1:{service.port}/api/v1/write"]
    assert contrib.remote_write_keep == KEEP_REGEX
    assert contrib.scrape_targets == [f"127.0.0.1:{service.port}"]
    # the plugin's sandbox hook imports this module: the server libraries come only with the daemon
    assert_cheap_import(
        "tars_telemetry.stream", forbidden=("aiohttp", "google", "cramjam", "prometheus_client", "yaml")
    )
    assert_cheap_import(
        "tars_telemetry.watch", forbidden=("aiohttp", "google", "cramjam", "prometheus_client", "httpx")
    )
