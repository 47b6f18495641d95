"""A small Prometheus HTTP API client and a throwaway Prometheus server for tests and benchmarks.

The client speaks only the endpoints the fix needs (readiness, ``/-/reload``, ``/api/v1/rules``, queries,
series) and turns every transport failure into one clear line naming the URL, never the credentials in it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx

from tars_core.errors import ServiceError
from tars_core.processes import Service, free_port, http_ready
from tars_core.redact import safe_url


class PrometheusError(RuntimeError):
    """Prometheus is unreachable or refused a request; the message names the URL without secrets."""


class PrometheusUnreachable(PrometheusError):
    """No HTTP answer at all (bad URL, connection refused, timeout): the target cannot be used as configured,
    which the hooks report as bad input (``TargetError``), unlike a Prometheus that answers and refuses."""


class Prometheus:
    """Synchronous client for one Prometheus server."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.shown = safe_url(self.url)  # the URL as messages print it: without its password
        try:
            self.client = httpx.Client(base_url=self.url, timeout=timeout)
        except (httpx.InvalidURL, ValueError) as exc:
            raise PrometheusUnreachable(f"Prometheus URL {self.shown} is not valid ({exc})") from None

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise PrometheusUnreachable(
                f"Prometheus at {self.shown} is unreachable ({type(exc).__name__}: {exc})"
            ) from None

    def ready(self) -> None:
        """Raise :class:`PrometheusError` unless ``/-/ready`` answers 200."""
        resp = self._request("GET", "/-/ready")
        if resp.status_code != 200:
            raise PrometheusError(f"Prometheus at {self.shown} is not ready: HTTP {resp.status_code}")

    def reload(self) -> None:
        """``POST /-/reload``; Prometheus answers 500 with the error when a rule file does not load."""
        resp = self._request("POST", "/-/reload")
        if resp.status_code == 403 or (resp.status_code == 405):
            raise PrometheusError(
                f"Prometheus at {self.shown} refuses /-/reload: start it with "
                "--web.enable-lifecycle, or set reload_method: sighup"
            )
        if resp.status_code != 200:
            raise PrometheusError(f"Prometheus at {self.shown} failed to reload: {resp.text.strip()}")

    def _api(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._request(method, path, **kw)
        try:
            body = resp.json()
        except ValueError:
            raise PrometheusError(f"{self.shown}{path}: HTTP {resp.status_code}, not JSON") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{self.shown}{path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self._api("GET", "/api/v1/rules", params={"type": "record"})["groups"])

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        return list(self._api("POST", "/api/v1/query", data=params)["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query as Grafana sends it (form-encoded POST)."""
        data = {"query": expr, "start": start, "end": end, "step": step}
        return list(self._api("POST", "/api/v1/query_range", data=data)["result"])

    def series_count(self, match: str, start: float, end: float) -> int:
        data = {"match[]": match, "start": start, "end": end}
        return len(self._api("POST", "/api/v1/series", data=data))


@attrs.define
class PrometheusServer:
    """A real ``prometheus`` on a free loopback port with its own TSDB and config (tests, benchmarks).

    Built from the core's Prometheus recipe (config and command line) and run by its supervisor, so it
    is started, checked (``/-/ready``) and stopped like every other server. ``rules_dir`` is loaded
    through ``rule_files: [rules_dir/*.yml]``; ``lifecycle`` enables ``/-/reload``. It can be stopped and
    started again on the same port and TSDB (the benchmark restarts it after moving blocks in).
    """

    workdir: Path
    rules_dir: Path = attrs.field(default=attrs.Factory(lambda self: self.workdir / "rules", takes_self=True))
    scrape_targets: Sequence[str] = ()
    scrape_interval: str = "5s"
    tsdb: Path = attrs.field(default=attrs.Factory(lambda self: self.workdir / "tsdb", takes_self=True))
    extra_args: Sequence[str] = ()
    retention: str = "30d"
    lifecycle: bool = True
    # a long benchmark runs under its own name, so a cleanup of the distribution's daemon
    # (`pkill -x prometheus`) elsewhere on a shared machine does not end it midway
    process_name: str | None = None
    port: int = attrs.field(factory=free_port)
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        from tars_core.sandbox import prometheus_argv, prometheus_config

        exe = shutil.which("prometheus")
        if exe is None:
            raise ServiceError("the prometheus binary is not installed (Debian package 'prometheus')")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.process_name:
            link = self.workdir / self.process_name
            if not link.exists():
                link.symlink_to(exe)
            exe = str(link)
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        self.tsdb.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        scrape = {"tars": self.scrape_targets}
        rule_files = [str(self.rules_dir / "*.yml")]
        config.write_text(
            prometheus_config(scrape, rule_files=rule_files, scrape_interval=self.scrape_interval), "utf-8"
        )
        argv = prometheus_argv(
            exe,
            config=config,
            tsdb=self.tsdb,
            port=self.port,
            retention=self.retention,
            lifecycle=self.lifecycle,
            extra=self.extra_args,
        )
        self.service = Service(
            "prometheus",
            argv,
            log=self.workdir / "prometheus.log",
            ready=http_ready(f"{self.url}/-/ready"),
            start_timeout=timeout,
            stop_timeout=30.0,  # a large TSDB takes a while to close cleanly; SIGKILL only after that
        ).start()
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
