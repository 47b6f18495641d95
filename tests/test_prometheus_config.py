"""Remote write in the Prometheus config the core generates: plugins, the sandbox and the test server.

The SLO monitor receives its series by remote write; the config that sends them is the core's, so these
tests hold it to what the real ``promtool`` and a real ``prometheus`` accept and do.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import yaml

from tars_core.model import SandboxContribution
from tars_core.processes import free_port
from tars_core.prometheus import Prometheus, PrometheusServer
from tars_core.promtool import promtool
from tars_core.sandbox.recipes import prometheus_config, remote_write_entry, sandbox_prometheus_config
from tars_core.sandbox.state import Contributed, ServiceRecord, State
from tars_core.waiting import wait_until

KEEP = "slo:.*|ALERTS"


def _check(tmp_path: Path, text: str) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(text, encoding="utf-8")
    promtool("check", "config", str(path))  # raises PromtoolError with promtool's output when refused


def test_remote_write_urls_with_and_without_a_series_filter(tmp_path: Path) -> None:
    text = prometheus_config(
        {"tars": ["127.0.0.1:9101"]},
        remote_write=["http://127.0.0.1:9201/api/v1/write", "http://127.0.0.1:9202/api/v1/write"],
        remote_write_keep=KEEP,
        remote_write_entries=[remote_write_entry("http://127.0.0.1:9203/api/v1/write")],
    )
    doc = yaml.safe_load(text)
    keep = [{"source_labels": ["__name__"], "regex": KEEP, "action": "keep"}]
    assert doc["remote_write"] == [
        {"url": "http://127.0.0.1:9201/api/v1/write", "write_relabel_configs": keep},
        {"url": "http://127.0.0.1:9202/api/v1/write", "write_relabel_configs": keep},
        {"url": "http://127.0.0.1:9203/api/v1/write"},
    ]
    _check(tmp_path, text)


def test_no_remote_write_key_without_urls() -> None:
    assert "remote_write" not in yaml.safe_load(prometheus_config({"tars": ["127.0.0.1:9101"]}))


def test_sandbox_config_pushes_to_every_contributed_receiver(tmp_path: Path) -> None:
    contrib = SandboxContribution(remote_write=["http://127.0.0.1:9301/api/v1/write"], remote_write_keep=KEEP)
    state = State(
        created_at="now",
        pg_dir="",
        bindir="",
        run_as=None,
        targets={},
        services=[ServiceRecord("prometheus", [], 9090, "http:/-/ready", "prometheus.log")],
        contributed={
            "tars-slo-monitor": Contributed(
                version="1",
                scrape_targets=["127.0.0.1:9301"],
                remote_write=list(contrib.remote_write),
                remote_write_keep=contrib.remote_write_keep,
            ),
            "acme-archive": Contributed(version="1", remote_write=["http://127.0.0.1:9302/api/v1/write"]),
            "tars-1004-db": Contributed(version="1", scrape_targets=["127.0.0.1:9303"]),
        },
    )
    text = sandbox_prometheus_config(state)
    doc = yaml.safe_load(text)
    assert doc["remote_write"] == [
        {"url": "http://127.0.0.1:9302/api/v1/write"},
        {
            "url": "http://127.0.0.1:9301/api/v1/write",
            "write_relabel_configs": [{"source_labels": ["__name__"], "regex": KEEP, "action": "keep"}],
        },
    ]
    _check(tmp_path, text)


class _Receiver(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()} | {"path": self.path})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Receiver", (_Receiver,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/write", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_test_server_pushes_by_remote_write(tmp_path: Path, receiver: tuple[str, list[dict[str, str]]]) -> None:
    """PrometheusServer(remote_write=...) really pushes: remote write 1.0 headers, to the given path."""
    url, seen = receiver
    port = free_port()
    self_scrape = [f"127.0.0.1:{port}"]  # something to push: its own `up` series
    server = PrometheusServer(
        tmp_path,
        scrape_targets=self_scrape,
        scrape_interval="1s",
        port=port,
        remote_write=[url],
        remote_write_keep="up",
    )
    with server:
        loaded = httpx.get(f"{server.url}/api/v1/status/config", timeout=10).json()["data"]["yaml"]
        assert "write_relabel_configs" in loaded and url in loaded
        wait_until(lambda: seen, timeout=30, interval=0.5, what="a remote-write request")
    first = seen[0]
    assert first["path"] == "/api/v1/write"
    assert first["content-encoding"] == "snappy"
    assert first["content-type"] == "application/x-protobuf"
    assert first["x-prometheus-remote-write-version"] == "0.1.0"


def test_the_test_server_scrapes_further_jobs(tmp_path: Path) -> None:
    """PrometheusServer(scrape_jobs=...) scrapes one target under several job names (hosts and Kubernetes
    nodes in one Prometheus), beside the "tars" job."""
    port = free_port()
    me = [f"127.0.0.1:{port}"]
    with PrometheusServer(tmp_path, scrape_targets=me, scrape_jobs={"node": me}, scrape_interval="1s", port=port):
        with Prometheus(f"http://127.0.0.1:{port}") as prom:
            wait_until(lambda: len(prom.query("up == 1")) == 2, timeout=30, interval=0.5, what="both jobs scraped")
            assert sorted(s["metric"]["job"] for s in prom.query("up")) == ["node", "tars"]
