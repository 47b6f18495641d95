"""A small Prometheus HTTP API client and a throwaway Prometheus server for tests and benchmarks.

The client speaks only the endpoints the fix needs (readiness, ``/-/reload``, ``/api/v1/rules``, queries,
series) and turns every transport failure into one clear line naming the URL, never the credentials in it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx


class PrometheusError(RuntimeError):
    """Prometheus is unreachable or refused a request; the message names the URL without secrets."""


class PrometheusUnreachable(PrometheusError):
    """No HTTP answer at all (bad URL, connection refused, timeout): the target cannot be used as configured,
    which the hooks report as bad input (``TargetError``), unlike a Prometheus that answers and refuses."""


def redact(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # unparseable: it may still hold a password, so show none of it
        return "(unparseable URL)"
    if parts.password or parts.username:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return url


class Prometheus:
    """Synchronous client for one Prometheus server."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        try:
            self.client = httpx.Client(base_url=self.url, timeout=timeout)
        except (httpx.InvalidURL, ValueError) as exc:
            raise PrometheusUnreachable(f"Prometheus URL {redact(self.url)} is not valid ({exc})") from None

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
                f"Prometheus at {redact(self.url)} is unreachable ({type(exc).__name__}: {exc})"
            ) from None

    def ready(self) -> None:
        """Raise :class:`PrometheusError` unless ``/-/ready`` answers 200."""
        resp = self._request("GET", "/-/ready")
        if resp.status_code != 200:
            raise PrometheusError(f"Prometheus at {redact(self.url)} is not ready: HTTP {resp.status_code}")

    def reload(self) -> None:
        """``POST /-/reload``; Prometheus answers 500 with the error when a rule file does not load."""
        resp = self._request("POST", "/-/reload")
        if resp.status_code == 403 or (resp.status_code == 405):
            raise PrometheusError(
                f"Prometheus at {redact(self.url)} refuses /-/reload: start it with "
                "--web.enable-lifecycle, or set reload_method: sighup"
            )
        if resp.status_code != 200:
            raise PrometheusError(f"Prometheus at {redact(self.url)} failed to reload: {resp.text.strip()}")

    def _api(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._request(method, path, **kw)
        try:
            body = resp.json()
        except ValueError:
            raise PrometheusError(f"{redact(self.url)}{path}: HTTP {resp.status_code}, not JSON") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{redact(self.url)}{path}: {body.get('errorType')}: {body.get('error')}")
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """A real ``prometheus`` process on a free loopback port with its own TSDB and config (tests, bench).

    ``rules_dir`` is loaded through ``rule_files: [rules_dir/*.yml]``; lifecycle endpoints are enabled so
    ``/-/reload`` works. ``scrape_targets`` are scraped every ``scrape_interval``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        rules_dir: Path | None = None,
        scrape_targets: Sequence[str] = (),
        scrape_interval: str = "5s",
        tsdb: Path | None = None,
        extra_args: Sequence[str] = (),
        lookback: str | None = None,
        retention: str = "30d",
        lifecycle: bool = True,
        process_name: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.rules_dir = rules_dir or workdir / "rules"
        self.tsdb = tsdb or workdir / "tsdb"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.scrape_targets = list(scrape_targets)
        self.scrape_interval = scrape_interval
        self.retention = retention
        self.lifecycle = lifecycle
        self.process_name = process_name
        self.extra_args = list(extra_args)
        if lookback:
            self.extra_args.append(f"--query.lookback-delta={lookback}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    def write_config(self) -> Path:
        import yaml

        cfg: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": "5s"},
            "rule_files": [str(self.rules_dir / "*.yml")],
            "scrape_configs": [],
        }
        if self.scrape_targets:
            cfg["scrape_configs"].append({"job_name": "tars", "static_configs": [{"targets": self.scrape_targets}]})
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return path

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        exe = shutil.which("prometheus")
        if exe is None:
            raise RuntimeError("the prometheus binary is not installed (Debian package 'prometheus')")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.process_name:
            # a long benchmark runs under its own name, so a cleanup of the distribution's daemon
            # (`pkill -x prometheus`) elsewhere on a shared machine does not end it midway
            link = self.workdir / self.process_name
            if not link.exists():
                link.symlink_to(exe)
            exe = str(link)
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        self.tsdb.mkdir(parents=True, exist_ok=True)
        cfg = self.write_config()
        argv = [
            exe,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={self.tsdb}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--storage.tsdb.retention.time={self.retention}",
            "--log.level=warn",
            *self.extra_args,
        ]
        if self.lifecycle:
            argv.append("--web.enable-lifecycle")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus did not become ready in {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Any, timeout: float, interval: float = 0.5) -> Any:
    """Poll ``predicate()`` until it returns a truthy value or ``timeout`` passes; return the last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and ``os.replace``: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
