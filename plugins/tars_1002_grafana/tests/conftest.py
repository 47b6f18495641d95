"""Fixtures: a real metrics exporter process and a real Prometheus per test, on free loopback ports."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from tars_1002_grafana.dashboards import dashboard_files

from tars_core.processes import Service, free_port, http_ready
from tars_core.prometheus import PrometheusServer
from tars_core.waiting import wait_until

if shutil.which("prometheus") is None or shutil.which("promtool") is None:  # pragma: no cover
    raise pytest.UsageError("tars-1002-grafana tests need prometheus and promtool (Debian package 'prometheus')")


@pytest.fixture(scope="session")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m tars_1002_grafana.exporter`` as the sandbox runs it (small topology)."""
    port = free_port()
    argv = [sys.executable, "-m", "tars_1002_grafana.exporter", "--port", str(port), "--agents", "4", "--regions", "2"]
    log = tmp_path_factory.mktemp("exporter") / "exporter.log"
    with Service("exporter", argv, log=log, ready=http_ready(f"http://127.0.0.1:{port}/metrics"), start_timeout=30):
        yield f"127.0.0.1:{port}"


@attrs.define
class Env:
    server: PrometheusServer
    rules_dir: Path
    dash_dir: Path
    state_dir: Path

    @property
    def targets(self) -> Any:
        from tars_core import Targets

        return Targets(
            prometheus_url=self.server.url,
            prometheus_rules_dir=str(self.rules_dir),
            grafana_dashboards_dir=str(self.dash_dir),
        )

    def wait_scraped(self) -> None:
        """rate() needs two samples: wait for a few scrapes before rules that must have data are loaded."""
        wait_until(
            lambda: _query(self.server.url, "count_over_time(up[1m]) >= 3"),
            timeout=30,
            interval=0.5,
            what="Prometheus scraping the exporter",
        )

    def snapshot(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.rules_dir.parent)): p.read_bytes()
            for d in (self.rules_dir, self.dash_dir)
            for p in sorted(d.iterdir())
        }


@pytest.fixture
def env(tmp_path: Path, exporter: str) -> Iterator[Env]:
    """A running Prometheus scraping the exporter every second, rules from an empty rules dir, and a
    Grafana provisioning dir holding the shipped v1.0.0 dashboards."""
    rules_dir, dash_dir = tmp_path / "rules", tmp_path / "dashboards"
    dash_dir.mkdir()
    for name, text in dashboard_files().items():
        (dash_dir / name).write_text(text, encoding="utf-8")
    with PrometheusServer(
        tmp_path / "prom", rules_dir=rules_dir, scrape_targets=[exporter], scrape_interval="1s"
    ) as server:
        yield Env(server, rules_dir, dash_dir, tmp_path / "state")


def _query(url: str, q: str) -> list[Any]:
    body = httpx.post(f"{url}/api/v1/query", data={"query": q}, timeout=10).json()
    return list(body["data"]["result"])


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
