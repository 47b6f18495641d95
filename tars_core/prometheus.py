"""Prometheus as every plugin meets it: an HTTP API client, rule files loaded and unloaded safely, and a
throwaway server for tests and benchmarks.

One home because TARS-1002 (recording rules) and the telemetry monitors (SLO rules, queries) both write
rule files into a running Prometheus and must leave it healthy: the file written atomically, a reload
that a broken file cannot survive (the previous file goes back), and a wait until every rule evaluated.
The client speaks only the endpoints those need (readiness, ``/-/reload``, ``/api/v1/rules``, queries,
series) and turns every transport failure into one clear line naming the URL, never the credentials in it.
Imported by hooks only (httpx is not needed by ``tars-run list``).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx

from tars_core.errors import FixError, PrometheusError, PrometheusUnreachable, ServiceError, TargetError
from tars_core.model import Targets
from tars_core.processes import Service, free_port, http_ready
from tars_core.redact import safe_url
from tars_core.state import atomic_write_bytes, atomic_write_text
from tars_core.waiting import WaitTimeout, sleep, wait_until


class Prometheus:
    """Synchronous client for one Prometheus server."""

    def __init__(self, url: str, *, timeout: float = 30.0, reconnect_for: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.shown = safe_url(self.url)  # the URL as messages print it: without its password
        # once it has answered, a Prometheus that stops answering (restarted, paused) is tried again for
        # this long before a request fails: a dependency that came back must not fail the step
        self.reconnect_for = reconnect_for
        self._answered = False
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
        deadline: float | None = None
        delay = 0.25
        while True:
            try:
                resp = self.client.request(method, path, **kw)
            except httpx.TransportError as exc:
                if self._answered and self.reconnect_for > 0:
                    deadline = deadline if deadline is not None else time.monotonic() + self.reconnect_for
                    if time.monotonic() < deadline:
                        sleep(delay)  # ends at once (HookStopped) when the runner stops the hook
                        delay = min(delay * 2, 3.0)
                        continue
                raise PrometheusUnreachable(
                    f"Prometheus at {self.shown} is unreachable ({type(exc).__name__}: {exc})"
                ) from None
            except httpx.HTTPError as exc:
                raise PrometheusUnreachable(
                    f"Prometheus at {self.shown} is unreachable ({type(exc).__name__}: {exc})"
                ) from None
            self._answered = True
            return resp

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

    def rule_groups(self, type: str | None = None) -> list[dict[str, Any]]:
        """Loaded rule groups; ``type`` ``"record"`` or ``"alert"`` keeps only those rules."""
        params = {"type": type} if type else {}
        return list(self._api("GET", "/api/v1/rules", params=params)["groups"])

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


def connect(targets: Targets, key: str = "prometheus_url") -> Prometheus:
    """A client for ``targets.<key>`` that answered ``/-/ready``.

    No answer at all is bad input (:class:`TargetError`, exit 2: fix the URL or start the server); a server
    that answers but is not ready is a failed step (:class:`PrometheusError`).
    """
    try:
        prom = Prometheus(targets.require(key))
    except PrometheusUnreachable as exc:
        raise TargetError(f"{exc}: fix targets.{key}") from None
    try:
        prom.ready()
    except PrometheusUnreachable as exc:
        prom.close()
        raise TargetError(f"{exc}: start it or fix targets.{key}") from None
    except PrometheusError as exc:
        prom.close()
        raise PrometheusError(f"{exc}: start it or fix targets.{key}") from None
    return prom


def rule_health(prom: Prometheus, names: Collection[str]) -> dict[str, str]:
    """Each named rule's state on the server: ``ok``, ``missing``, ``unknown`` (not evaluated yet) or
    ``error: ...``. Recording rules are named by ``record``, alerting rules by ``alert``; a name several
    alerting rules share (one per SLO and tier) is ``ok`` only when every one of them is."""
    states: dict[str, str] = {}
    for group in prom.rule_groups():
        for r in group.get("rules", []):
            name = r.get("name")
            if name not in names:
                continue
            health = r.get("health")
            state = "ok" if health == "ok" else f"error: {r.get('lastError')}" if health == "err" else "unknown"
            if states.get(name, "ok") == "ok" or state.startswith("error"):
                states[name] = state
    return {name: states.get(name, "missing") for name in names}


def wait_healthy(prom: Prometheus, names: Collection[str], timeout: float) -> dict[str, str]:
    """Wait for every rule's first evaluation and return :func:`rule_health`. A reload is synchronous, so
    rules that are all still missing a few seconds later were not loaded at all (the folder is not in
    ``rule_files``): give up on those after 5 s instead of the whole ``timeout``."""

    def loaded() -> bool:
        return any(v != "missing" for v in rule_health(prom, names).values())

    def evaluated() -> bool:
        return all(v == "ok" or v.startswith("error") for v in rule_health(prom, names).values())

    with contextlib.suppress(WaitTimeout):
        wait_until(loaded, timeout=min(5.0, timeout), interval=0.5, what="rules loaded")
        wait_until(evaluated, timeout=timeout, interval=1.0, what="rules evaluated")
    return rule_health(prom, names)


def wait_absent(prom: Prometheus, names: Collection[str], timeout: float) -> bool:
    """True once none of ``names`` is loaded any more, False if some still are after ``timeout``."""
    try:
        return wait_until(
            lambda: all(v == "missing" for v in rule_health(prom, names).values()),
            timeout=timeout,
            interval=0.5,
            what="rules unloaded",
        )
    except WaitTimeout:
        return False


def _restore(path: Path, previous: str | bytes | None) -> None:
    """Put ``previous`` back at ``path`` (``None``: no file), keeping the file's mode and owner; bytes are
    put back exactly (a text round trip would turn CRLF line ends into LF)."""
    if previous is None:
        path.unlink(missing_ok=True)
    elif isinstance(previous, bytes):
        atomic_write_bytes(path, previous)
    else:
        atomic_write_text(path, previous)


def load_rule_file(
    prom: Prometheus,
    path: Path,
    text: str,
    names: Collection[str],
    *,
    timeout: float,
    reload: Callable[[], None] | None = None,
) -> None:
    """Put ``text`` at ``path`` and make Prometheus serve it, healthy, or raise :class:`FixError`.

    The file is written atomically (Prometheus never reads half a file); when the reload fails (Prometheus
    answers 500 with the parse error) the previous file, or none, is put back and Prometheus reloaded
    again, so a bad file never stays behind. ``reload`` replaces ``prom.reload`` (e.g. a SIGHUP to a
    server without ``--web.enable-lifecycle``). Rules that load but do not evaluate are reported and
    left for the caller's rollback, which knows what was there before the release.
    """
    reload = reload or prom.reload
    previous = path.read_bytes() if path.exists() else None
    if previous != text.encode("utf-8"):
        atomic_write_text(path, text)
    try:
        reload()
    except TargetError:  # lost after its retries: the old file back for when it returns, exit 2
        _restore(path, previous)
        raise
    except FixError as exc:  # PrometheusError included
        _restore(path, previous)
        with contextlib.suppress(FixError):
            reload()
        raise FixError(f"Prometheus did not take the rules, previous rule file restored: {exc}") from None
    health = wait_healthy(prom, names, timeout)
    bad = {k: v for k, v in health.items() if v != "ok"}
    if not bad:
        return
    if all(v == "missing" for v in bad.values()):
        raise FixError(f"Prometheus did not load {path}: add '{path.parent}/*.yml' to rule_files in its configuration")
    name, state = next(iter(bad.items()))
    raise FixError(f"{len(bad)} rules are not healthy after reload (e.g. {name}: {state})")


def unload_rule_file(
    prom: Prometheus,
    path: Path,
    previous: str | bytes | None,
    names: Collection[str],
    *,
    timeout: float,
    reload: Callable[[], None] | None = None,
) -> None:
    """Put back what was at ``path`` before (``None``: no file) and reload; when there was no file, wait
    until Prometheus no longer serves ``names``. :class:`FixError` when it does not."""
    _restore(path, previous)
    try:
        (reload or prom.reload)()
    except TargetError:
        raise
    except FixError as exc:
        raise FixError(f"rule file restored but Prometheus did not reload: {exc}") from None
    if previous is None and not wait_absent(prom, names, timeout):
        raise FixError(f"{path} removed but Prometheus still serves its rules after reload")


@attrs.define
class PrometheusServer:
    """A real ``prometheus`` on a free loopback port with its own TSDB and config (tests, benchmarks).

    Built from the core's Prometheus recipe (config and command line) and run by its supervisor, so it
    is started, checked (``/-/ready``) and stopped like every other server. ``rules_dir`` is loaded
    through ``rule_files: [rules_dir/*.yml]``; ``lifecycle`` enables ``/-/reload``. It can be stopped and
    started again on the same port and TSDB (the benchmark restarts it after moving blocks in).
    ``remote_write`` URLs receive its samples (remote write 1.0), only the series whose name matches
    ``remote_write_keep`` when that is set.
    """

    workdir: Path
    rules_dir: Path = attrs.field(default=attrs.Factory(lambda self: self.workdir / "rules", takes_self=True))
    scrape_targets: Sequence[str] = ()
    # further scrape jobs by job name, beside "tars": the same exporter under two jobs, as when one
    # Prometheus scrapes plain hosts and Kubernetes nodes
    scrape_jobs: Mapping[str, Sequence[str]] = attrs.field(factory=dict)
    scrape_interval: str = "5s"
    tsdb: Path = attrs.field(default=attrs.Factory(lambda self: self.workdir / "tsdb", takes_self=True))
    extra_args: Sequence[str] = ()
    retention: str = "30d"
    lifecycle: bool = True
    remote_write: Sequence[str] = ()
    remote_write_keep: str | None = None
    # a long benchmark runs under its own name, so a cleanup of the distribution's daemon
    # (`pkill -x prometheus`) elsewhere on a shared machine does not end it midway
    process_name: str | None = None
    port: int = attrs.field(factory=free_port)
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        from tars_core.sandbox import prometheus_argv, prometheus_config  # only a started server needs it

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
        scrape = {"tars": self.scrape_targets, **self.scrape_jobs}
        rule_files = [str(self.rules_dir / "*.yml")]
        config.write_text(
            prometheus_config(
                scrape,
                rule_files=rule_files,
                scrape_interval=self.scrape_interval,
                remote_write=self.remote_write,
                remote_write_keep=self.remote_write_keep,
            ),
            "utf-8",
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
