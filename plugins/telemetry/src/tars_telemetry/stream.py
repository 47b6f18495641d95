"""The streaming SLO monitor: a remote-write receiver that keeps every SLO's live state and forecasts the
regression monitor's series.

Prometheus pushes the samples its SLO rules record (and the ``ALERTS`` they raise), and the regression
monitor's recorded series (``tars:regression:*``, :mod:`tars_telemetry.regression_rules`), to ``POST
/api/v1/write`` (remote write 1.0: a snappy-compressed protobuf ``WriteRequest``). The daemon keeps the
``slo:*`` series and the alerts with an ``slo`` label, and the series to forecast (``tars:regression:*``
and what ``--forecast REGEX`` adds), counts and drops everything else, and serves:

* ``/api/slos``: the state as JSON (:meth:`tars_telemetry.live.MonitorState.view`), read by
  ``tars-slo watch`` and the release gate;
* ``/api/forecasts``: each forecast series' last sample, expected value, band, anomaly score and drift;
* ``/metrics``: its own exposition (budget, burn rate per window, status, status changes, samples) and
  the forecasts as ``tars_forecast_*`` gauges (:class:`tars_telemetry.forecast.ForecastBank`), which the
  Grafana dashboard ``tars-regression.json`` plots once Prometheus scrapes them;
* ``/-/ready``.

Each forecast series gets an online forecaster (:mod:`tars_telemetry.forecast`) fed sample by sample from
the push; its fit runs in a worker thread once the warm-up (``--forecast-train``) has streamed in, so the
event loop keeps taking writes.

With ``--prometheus URL`` it also reads the same series through the query API whenever nothing has pushed
for a while (remote write not configured, or broken), so the state is there either way.

    python -m tars_telemetry.stream --port 9464 [--prometheus http://127.0.0.1:9090] [--slo FILE...]
        [--forecast REGEX] [--forecast-step 5] [--forecast-season 3600] [--forecast-train 600]

Why these libraries (measured in ``benchmarks/tars-slo-monitor_stream_bench.py``): the ``WriteRequest``
classes are built at run time from a descriptor (no protoc step, no generated file to keep in sync) and
parsed by protobuf's upb backend, about 3.6x faster than a hand-written varint decoder here; snappy is
cramjam's (python-snappy 0.7 wraps the same cramjam call and copies the result). aiohttp serves: one
maintained package with a C HTTP parser, keep-alive and a request size limit.

Heavy imports (aiohttp, protobuf, cramjam, prometheus_client) happen inside the functions that need
them, so importing this module for :func:`sandbox_contribution` stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import re
import signal
import struct
import sys
import time
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from tars_core.model import SandboxContribution, SandboxSite, ServiceSpec
from tars_telemetry import regression_rules

if TYPE_CHECKING:
    from aiohttp import web

    from tars_telemetry.forecast import ForecastBank, ForecastConfig
    from tars_telemetry.live import Sample
    from tars_telemetry.spec import SLO

log = logging.getLogger("tars.slo.stream")

WRITE_PATH = "/api/v1/write"
# what the sandbox Prometheus sends us (write_relabel_configs); the rest is dropped
KEEP_REGEX = f"slo:.*|ALERTS|{regression_rules.KEEP}"
FORECAST_REGEX = regression_rules.KEEP  # forecast by default: the regression monitor's recorded series
_OWN_FORECASTS = "tars_forecast_"  # never forecast a forecast (a --forecast '.*' would feed the daemon itself)
MAX_BODY = 16 * 1024 * 1024  # a compressed request; Prometheus sends 500 samples (~10 KiB) by default
MAX_DECODED = 64 * 1024 * 1024  # a snappy body declares its decoded length: refuse a bomb before allocating
STALE_NAN = struct.pack("<Q", 0x7FF0000000000002)  # Prometheus' stale marker, a NaN with this exact payload
DEFAULT_POLL_S = 5.0
DEFAULT_PUSH_GRACE_S = 90.0  # no push for this long (3 evaluations of the 30 s rule groups): read the query API
# The forecasts' defaults suit the sandbox: the regression rules run every 5 s, its simulated traffic has an
# hourly cycle (and a daily one, longer than a sandbox lives); a forecast is ready 10 minutes after the
# series appears (level only) and learns the hour once three hours have streamed in.
DEFAULT_FORECAST_STEP_S = 5.0
DEFAULT_FORECAST_SEASON_S = 3600.0
DEFAULT_FORECAST_TRAIN_S = 600.0
MIN_FIT_SAMPLES = 60  # what a forecaster fit needs (forecast.Forecaster: 40 to fit, 20 to calibrate)
REFIT_RETRY_S = 60.0  # a fit that failed (a flat warm-up the optimiser cannot fit) is tried again after this


class BadWrite(ValueError):
    """A remote-write body the daemon cannot read; its message is the one-line 400 answer."""


@cache
def write_request_class() -> Any:
    """``prometheus.WriteRequest`` of remote write 1.0, built from a descriptor at run time.

    Only the fields the monitor reads; what Prometheus sends beyond them (exemplars, histograms,
    metadata) is skipped by the parser as unknown fields.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="tars_telemetry/remote_write.proto", package="prometheus")
    proto.syntax = "proto3"
    messages: dict[str, list[tuple[str, int, int, int, str]]] = {
        "Label": [("name", 1, f.TYPE_STRING, f.LABEL_OPTIONAL, ""), ("value", 2, f.TYPE_STRING, f.LABEL_OPTIONAL, "")],
        "Sample": [
            ("value", 1, f.TYPE_DOUBLE, f.LABEL_OPTIONAL, ""),
            ("timestamp", 2, f.TYPE_INT64, f.LABEL_OPTIONAL, ""),
        ],
        "TimeSeries": [
            ("labels", 1, f.TYPE_MESSAGE, f.LABEL_REPEATED, ".prometheus.Label"),
            ("samples", 2, f.TYPE_MESSAGE, f.LABEL_REPEATED, ".prometheus.Sample"),
        ],
        "WriteRequest": [("timeseries", 1, f.TYPE_MESSAGE, f.LABEL_REPEATED, ".prometheus.TimeSeries")],
    }
    for name, fields in messages.items():
        message = proto.message_type.add(name=name)
        for field, number, kind, label, type_name in fields:
            message.field.add(name=field, number=number, type=kind, label=label, type_name=type_name or None)
    pool = descriptor_pool.DescriptorPool()  # our own pool: no clash with another prometheus.proto in the process
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


def encode(series: Sequence[tuple[dict[str, str], Sequence[tuple[float, int]]]]) -> bytes:
    """A snappy-compressed ``WriteRequest`` (labels, [(value, timestamp ms)]) as Prometheus sends it.

    For tests and the benchmark: the daemon never sends.
    """
    import cramjam

    req: Any = write_request_class()()
    for labels, samples in series:
        ts = req.timeseries.add()
        for name in sorted(labels):
            ts.labels.add(name=name, value=labels[name])
        for value, stamp in samples:
            ts.samples.add(value=value, timestamp=stamp)
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def _declared_length(body: bytes) -> int:
    """The decoded length a snappy block body starts with (a little-endian base-128 varint, <= 32 bits)."""
    result = 0
    for i, byte in enumerate(body[:5]):
        result |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return result
    raise BadWrite("body is not snappy block-compressed (no length header); send Content-Encoding: snappy")


@attrs.frozen
class Decoded:
    """One remote-write body, sorted: samples for the SLO state, samples to forecast (a series may be in
    both), every kept sample once (``kept``, in body order), and how many were dropped."""

    slo: list[Sample]
    forecast: list[Sample]
    kept: list[Sample]
    dropped: int


def forecast_pattern(extra: Sequence[str] = ()) -> re.Pattern[str]:
    """The names to forecast: ``tars:regression:*`` and each ``extra`` regex, matched whole like a
    Prometheus relabel regex. :class:`re.error` for a regex Python cannot compile."""
    return re.compile("|".join(f"(?:{r})" for r in (FORECAST_REGEX, *extra)))


DEFAULT_FORECAST = forecast_pattern()


@lru_cache(maxsize=8192)
def _forecast_name(pattern: re.Pattern[str], name: str) -> bool:
    return not name.startswith(_OWN_FORECASTS) and pattern.fullmatch(name) is not None


def decode(body: bytes, forecast: re.Pattern[str] | None = DEFAULT_FORECAST) -> tuple[list[Sample], int]:
    """The kept samples of one remote-write body, and how many samples it held that were dropped.

    Kept: ``slo:*`` series and ``ALERTS`` with a non-empty ``slo`` label, and series whose name
    ``forecast`` matches whole (default ``tars:regression:.*``; None: none). :class:`BadWrite` (one line)
    for anything that is not a snappy-compressed ``WriteRequest``.
    """
    decoded = decode_split(body, forecast)
    return decoded.kept, decoded.dropped


def decode_split(body: bytes, forecast: re.Pattern[str] | None = DEFAULT_FORECAST) -> Decoded:
    """:func:`decode`, with the kept samples sorted by who reads them."""
    import cramjam
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    from tars_telemetry.live import Sample

    if not body:
        raise BadWrite("empty body; send a snappy-compressed remote-write WriteRequest")
    size = _declared_length(body)
    if size > MAX_DECODED:
        raise BadWrite(f"body declares {size} bytes decoded, over the {MAX_DECODED}-byte limit; send smaller batches")
    try:
        raw = cramjam.snappy.decompress_raw(body)
    except cramjam.DecompressionError as exc:
        raise BadWrite(f"body is not snappy block-compressed ({exc})") from None
    req: Any = write_request_class()()
    try:
        req.ParseFromString(bytes(raw))
    except DecodeError as exc:
        raise BadWrite(f"body is not a remote-write 1.0 WriteRequest (protobuf: {exc})") from None
    slo: list[Sample] = []
    forecast_samples: list[Sample] = []
    kept: list[Sample] = []
    dropped = 0
    for ts in req.timeseries:
        labels = ts.labels
        name = ""
        for label in labels:  # sorted by name, so __name__ is first unless a label name has capitals
            if label.name == "__name__":
                name = label.value
                break
        to_forecast = forecast is not None and _forecast_name(forecast, name)
        if not (to_forecast or name.startswith("slo:") or name == "ALERTS"):
            dropped += len(ts.samples)
            continue
        found = {label.name: label.value for label in labels}
        to_slo = bool(found.get("slo")) and (name.startswith("slo:") or name == "ALERTS")
        if not (to_slo or to_forecast):
            dropped += len(ts.samples)
            continue
        for s in ts.samples:
            value = s.value
            stale = value != value and struct.pack("<d", value) == STALE_NAN
            sample = Sample(found, value, s.timestamp / 1000.0, stale)
            kept.append(sample)
            if to_slo:
                slo.append(sample)
            if to_forecast:
                forecast_samples.append(sample)
    return Decoded(slo, forecast_samples, kept, dropped)


def default_forecast_config(
    step: float = DEFAULT_FORECAST_STEP_S,
    season: float | None = DEFAULT_FORECAST_SEASON_S,
    train: float | None = None,
) -> ForecastConfig:
    """The daemon's forecaster settings. ``train`` defaults to ``DEFAULT_FORECAST_TRAIN_S`` (three seasons if
    shorter), and at least 60 steps (what a fit needs). :class:`tars_core.errors.ConfigError` (one line) for
    values that cannot work."""
    from tars_core.errors import ConfigError
    from tars_telemetry.forecast import ForecastConfig

    if not (math.isfinite(step) and step > 0):
        raise ConfigError(f"--forecast-step must be positive seconds, got {step:g}")
    if season is not None and not math.isfinite(season):
        raise ConfigError(f"--forecast-season must be seconds (0 for none), got {season:g}")
    if train is None:
        short = min(DEFAULT_FORECAST_TRAIN_S, 3 * season) if season else DEFAULT_FORECAST_TRAIN_S
        train = max(short, MIN_FIT_SAMPLES * step)
    elif not (math.isfinite(train) and train / step >= MIN_FIT_SAMPLES):
        raise ConfigError(
            f"--forecast-train {train:g}s is {train / step:g} steps of {step:g}s; a fit needs {MIN_FIT_SAMPLES}: "
            f"use at least {MIN_FIT_SAMPLES * step:g}"
        )
    return ForecastConfig(step=step, season=season or None, train=train)


def _number(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


class _Throttle:
    """Log a repeated warning at most once per ``every`` seconds, with the count of those held back."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.last = -float("inf")
        self.held = 0

    def warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            self.held += 1
            return
        more = f" (and {self.held} more like it)" if self.held else ""
        log.warning("%s%s", message, more)
        self.last, self.held = now, 0


class Daemon:
    """The state, the HTTP handlers and the background work (re-deciding, polling) of one monitor."""

    def __init__(
        self,
        slos: Sequence[SLO],
        *,
        prometheus_url: str | None = None,
        poll_interval: float = DEFAULT_POLL_S,
        push_grace: float = DEFAULT_PUSH_GRACE_S,
        stale_after: float = 300.0,
        forecast: re.Pattern[str] = DEFAULT_FORECAST,
        forecast_config: ForecastConfig | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        from tars_core.prometheus import Prometheus
        from tars_telemetry.forecast import ForecastBank
        from tars_telemetry.live import MonitorState

        self.state = MonitorState(slos, stale_after=stale_after)
        self.prometheus_url = prometheus_url
        # PrometheusUnreachable here (a URL that is not one) is the caller's one-line exit 2
        self.prom = Prometheus(prometheus_url, timeout=max(2.0, poll_interval * 2)) if prometheus_url else None
        self.poll_interval = poll_interval
        self.push_grace = push_grace
        self.last_push: float | None = None
        self.requests: dict[str, int] = {}
        self.poll_error: str | None = None
        self.bad_writes = _Throttle()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))
        self.write_seconds = Histogram(
            "tars_slo_write_seconds",
            "Time to decode and apply one remote-write request",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.forecast = forecast
        self.forecast_config = forecast_config or default_forecast_config()
        # fits run in a worker thread from refits(), never inside update() on the event loop
        self.bank: ForecastBank = ForecastBank(self.registry, self._forecast_config_for, auto_fit=False)
        self.fitting: str | None = None
        self.fits = {"ok": 0, "failed": 0}
        self.fit_errors: dict[str, str] = {}
        self.retry_at: dict[str, float] = {}
        self.preloaded = False

    def _forecast_config_for(self, labels: Any) -> ForecastConfig | None:
        name = labels.get("__name__", "")
        return self.forecast_config if _forecast_name(self.forecast, name) else None

    def _count(self, code: int) -> None:
        self.requests[str(code)] = self.requests.get(str(code), 0) + 1

    async def write(self, request: web.Request) -> web.Response:
        from aiohttp import web

        started = time.perf_counter()
        encoding = request.headers.get("Content-Encoding", "snappy").lower()
        content_type = request.headers.get("Content-Type", "")
        if "io.prometheus.write.v2" in content_type:
            self._count(415)
            return web.Response(
                status=415,
                text="remote write 2.0 is not supported; configure protobuf_message: prometheus.WriteRequest\n",
            )
        body = await request.read()
        try:
            if encoding != "snappy":
                raise BadWrite(f"Content-Encoding {encoding} is not supported; remote write 1.0 bodies are snappy")
            decoded = decode_split(body, self.forecast)
        except BadWrite as exc:
            self._count(400)
            self.bad_writes.warn(f"400 from {request.remote}: {exc}")
            return web.Response(status=400, text=f"{exc}\n")
        elsewhere = len(decoded.kept) - len(decoded.slo)
        self.state.ingest(decoded.slo, dropped=decoded.dropped, elsewhere=elsewhere)
        if decoded.forecast:
            self.bank.ingest(decoded.forecast)
        self.last_push = time.monotonic()
        self._count(204)
        self.write_seconds.observe(time.perf_counter() - started)
        return web.Response(status=204)

    async def slos(self, request: web.Request) -> web.Response:
        from aiohttp import web

        view = self.state.view()
        view["poll_error"] = self.poll_error
        return web.json_response(view)

    async def forecasts(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response(self.forecasts_view())

    def forecasts_view(self) -> dict[str, Any]:
        """``/api/forecasts``: per series its last sample judged against the forecast made before it."""
        bank = self.bank
        rows = []
        for key in sorted(bank.forecasters):
            f = bank.forecasters[key]
            p = bank.last.get(key)
            j = p if p is not None and p.ready else None  # judged against a forecast (not in the warm-up)
            labels = {k: v for k, v in bank.labels.get(key, {}).items() if k != "__name__"}
            rows.append(
                {
                    "series": key,
                    "metric": bank.names.get(key, ""),
                    "labels": labels,
                    "ready": f.ready,
                    "seasonal": f.seasonal,
                    "fitting": key == self.fitting,
                    "warm_up": {"samples": len(f.history), "needed": f.config.train_samples},
                    "at": p.at if p else None,
                    "value": _number(p.value) if p else None,
                    "expected": _number(j.expected) if j else None,
                    "band": [_number(j.lower), _number(j.upper)] if j else None,
                    "anomaly_score": _number(j.anomaly_score) if j else None,
                    "drift": j.drift if j else False,
                    "direction": j.direction if j else 0,
                    "coverage": _number(f.coverage),
                    "samples": f.samples,
                    "drifts": f.drifts,
                    "fitted_at": f.fitted_at,
                    "fit_error": self.fit_errors.get(key),
                }
            )
        c = self.forecast_config
        return {
            "generated_at": time.time(),
            "pattern": self.forecast.pattern,
            "config": {"step": c.step, "season": c.season, "train": c.train_samples * c.step, "level": c.level},
            "fits": dict(self.fits),
            "series": rows,
        }

    async def metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def ready(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(text="ready\n")

    def _push_quiet(self) -> bool:
        return self.last_push is None or time.monotonic() - self.last_push > self.push_grace

    async def poll_once(self) -> None:
        """Replace the state with the query API's view; a failure is logged once (per kind) and the state
        kept, so a Prometheus restart does not blank the screen (``--stale-after`` turns it no-data)."""
        from tars_core.errors import PrometheusError
        from tars_telemetry.live import poll

        assert self.prom is not None
        prom = self.prom
        # the forecast series too, with their own sample timestamps: a sample already seen is skipped by
        # the forecaster, so polling faster than the rules evaluate does not count a sample twice
        selector = "{__name__=~" + json.dumps(self.forecast.pattern) + "}"

        def read() -> tuple[list[Sample], list[Sample]]:
            return poll(prom), poll(prom, selector=selector)

        try:
            samples, forecast = await asyncio.to_thread(read)
        except Exception as exc:  # the loop must outlive a malformed answer too
            error = str(exc) if isinstance(exc, PrometheusError) else f"{type(exc).__name__}: {exc}"
            if error != self.poll_error:
                log.warning("query API fallback failed: %s", error)
            self.poll_error = error
            return
        if self.poll_error:
            log.info("query API fallback works again")
        self.poll_error = None
        if self._push_quiet():  # a push that arrived while we were reading is newer: keep it
            self.state.replace(samples)
            self.bank.ingest(s for s in forecast if _forecast_name(self.forecast, s.labels.get("__name__", "")))

    async def background(self) -> None:
        """Re-decide every second (a silent SLO turns ``no-data``); poll while nothing pushes."""
        next_poll = 0.0
        while True:
            if self.prom is not None and self._push_quiet() and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_interval
                await self.poll_once()
            self.state.decide()
            await asyncio.sleep(1.0)

    async def refits(self) -> None:
        """Fit each forecaster whose warm-up is complete (or that can now learn its season), one at a time
        in a worker thread: a fit takes 13 to 29 ms, the first one 2 to 4 s of imports unless preloaded, and
        the forecaster keeps taking samples meanwhile (replayed onto the new fit). A failed fit is logged,
        shown in ``/api/forecasts`` and tried again after ``REFIT_RETRY_S``."""
        from tars_telemetry.forecast import preload

        while True:
            if not self.preloaded and len(self.bank):  # the first series arrived: import while it warms up
                await asyncio.to_thread(preload)
                self.preloaded = True
            now = time.monotonic()
            for key in [k for k in self.bank.due() if self.retry_at.get(k, 0.0) <= now]:
                forecaster = self.bank.forecasters.get(key)
                if forecaster is None:  # ended (stale marker) since due() was read
                    continue
                self.fitting = key
                try:
                    await asyncio.to_thread(forecaster.refit)
                except Exception as exc:  # InsufficientHistory, a fit that did not converge: this series only
                    error = str(exc) or type(exc).__name__
                    if self.fit_errors.get(key) != error:
                        log.warning("forecast fit of %s failed: %s", key, error)
                    self.fit_errors[key] = error
                    self.retry_at[key] = time.monotonic() + REFIT_RETRY_S
                    self.fits["failed"] += 1
                else:
                    if key in self.bank.forecasters:  # the band and score follow with the next sample
                        self.bank.gauges["ready"].labels(self.bank.names[key], key).set(1)
                    self.fit_errors.pop(key, None)
                    self.retry_at.pop(key, None)
                    self.fits["ok"] += 1
                    kind = "seasonal" if forecaster.seasonal else "level-only"
                    log.info("forecast of %s fitted (%s, %d samples)", key, kind, len(forecaster.history))
                finally:
                    self.fitting = None
            await asyncio.sleep(1.0)

    def app(self) -> web.Application:
        from aiohttp import web

        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(WRITE_PATH, self.write)
        app.router.add_get("/api/slos", self.slos)
        app.router.add_get("/api/forecasts", self.forecasts)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/-/ready", self.ready)
        app.router.add_get("/-/healthy", self.ready)

        async def run_background(app: web.Application) -> Any:
            tasks = [asyncio.create_task(self.background()), asyncio.create_task(self.refits())]
            yield
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.prom is not None:
                self.prom.close()

        app.cleanup_ctx.append(run_background)
        return app


class _Collector:
    """The daemon's own series, read from the state at scrape time (no per-sample metric updates)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from tars_telemetry.live import STATUSES

        state = self.daemon.state
        budget = GaugeMetricFamily(
            "tars_slo_budget_remaining_ratio", "Share of the period's error budget left", labels=["slo"]
        )
        burn = GaugeMetricFamily(
            "tars_slo_burn_rate", "Error ratio over the window / error budget", labels=["slo", "window"]
        )
        status = GaugeMetricFamily(
            "tars_slo_status", "1 for the SLO's current status, 0 for every other", labels=["slo", "status"]
        )
        changes = CounterMetricFamily(
            "tars_slo_status_changes", "Status changes since the monitor started", labels=["slo"]
        )
        firing = GaugeMetricFamily("tars_slo_tier_firing", "1 while the tier's alert fires", labels=["slo", "tier"])
        for name in sorted(state.slos):
            slo = state.slos[name]
            view = slo.view()
            if view["budget_remaining"] is not None:
                budget.add_metric([name], view["budget_remaining"])
            for window, value in view["burn_rate"].items():
                if value is not None:
                    burn.add_metric([name, window], value)
            for s in STATUSES:
                status.add_metric([name, s], 1.0 if slo.status == s else 0.0)
            changes.add_metric([name], slo.changes)
            for tier in view["firing"]:
                firing.add_metric([name, tier], 1.0)
        received = CounterMetricFamily("tars_slo_samples_received", "Remote-write samples received (kept and dropped)")
        received.add_metric([], state.samples_received)
        dropped = CounterMetricFamily(
            "tars_slo_samples_dropped", "Samples dropped: not slo:* nor ALERTS with an slo label, nor forecast"
        )
        dropped.add_metric([], state.samples_dropped)
        requests = CounterMetricFamily(
            "tars_slo_write_requests", "Remote-write requests by HTTP status", labels=["code"]
        )
        for code, count in sorted(self.daemon.requests.items()):
            requests.add_metric([code], count)
        bank = self.daemon.bank
        series = GaugeMetricFamily("tars_forecast_series", "Series forecast, by readiness", labels=["ready"])
        ready = sum(1 for f in bank.forecasters.values() if f.ready)
        series.add_metric(["1"], ready)
        series.add_metric(["0"], len(bank) - ready)
        fits = CounterMetricFamily("tars_forecast_fits", "Forecaster fits by outcome", labels=["outcome"])
        for outcome, count in sorted(self.daemon.fits.items()):
            fits.add_metric([outcome], count)
        return [budget, burn, status, changes, firing, received, dropped, requests, series, fits]

    def describe(self) -> list[Any]:
        return []


def sandbox_contribution(site: SandboxSite, slo_files: Sequence[str] = ()) -> SandboxContribution:
    """The daemon as a sandbox service: pushed to by the sandbox Prometheus (only ``slo:*``, ``ALERTS`` and
    ``tars:regression:*``), scraped by it (the forecast gauges reach Grafana that way), and reading its
    query API when the push stops. Its URL is ``http://127.0.0.1:<services[0].port>``. The forecast
    defaults are the sandbox's; the regression rules come from
    :func:`tars_telemetry.regression_rules.seed_sandbox`."""
    port = site.free_port()
    argv = [site.python, "-m", "tars_telemetry.stream", "--port", str(port)]
    if site.targets.prometheus_url:
        argv += ["--prometheus", site.targets.prometheus_url]
    for path in slo_files:
        argv += ["--slo", str(path)]
    return SandboxContribution(
        services=[ServiceSpec("stream", argv, port=port, ready="http:/-/ready")],
        scrape_targets=[f"127.0.0.1:{port}"],
        remote_write=[f"http://127.0.0.1:{port}{WRITE_PATH}"],
        remote_write_keep=KEEP_REGEX,
    )


async def serve(daemon: Daemon, host: str, port: int, stop: asyncio.Event) -> None:
    from aiohttp import web

    runner = web.AppRunner(daemon.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        source = f"; query API fallback {daemon.prometheus_url}" if daemon.prometheus_url else ""
        log.info(
            "SLO monitor on http://%s:%d (%d SLOs; forecasting %s%s)",
            host,
            port,
            len(daemon.state.slos),
            daemon.forecast.pattern,
            source,
        )
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tars_telemetry.stream --port P [--prometheus URL] [--slo FILE...] [--forecast REGEX...]``."""
    from tars_core.errors import ConfigError, PrometheusError
    from tars_core.redact import safe_url
    from tars_telemetry.spec import load_files, tars_slos

    ap = argparse.ArgumentParser(prog="python -m tars_telemetry.stream", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True, help="port to listen on")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--prometheus", metavar="URL", help="read the query API when nothing pushes (fallback)")
    ap.add_argument("--slo", type=Path, action="append", help="OpenSLO/Sloth file or folder (default: T.A.R.S.)")
    ap.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_S, help="seconds between fallback reads")
    ap.add_argument("--push-grace", type=float, default=DEFAULT_PUSH_GRACE_S, help="no push for this long: poll")
    ap.add_argument("--stale-after", type=float, default=300.0, help="no sample for this long: status no-data")
    ap.add_argument(
        "--forecast",
        metavar="REGEX",
        action="append",
        default=[],
        help=f"also forecast the series whose name matches (whole, repeatable; always {FORECAST_REGEX}); "
        "add it to Prometheus' remote-write keep regex too",
    )
    ap.add_argument(
        "--forecast-step",
        type=float,
        default=DEFAULT_FORECAST_STEP_S,
        metavar="S",
        help=f"seconds between samples of a forecast series: the rule interval (default {DEFAULT_FORECAST_STEP_S:g})",
    )
    ap.add_argument(
        "--forecast-season",
        type=float,
        default=DEFAULT_FORECAST_SEASON_S,
        metavar="S",
        help=f"seasonal period in seconds, 0 for none (default {DEFAULT_FORECAST_SEASON_S:g})",
    )
    ap.add_argument(
        "--forecast-train",
        type=float,
        metavar="S",
        help=f"warm-up before a series is forecast (default {DEFAULT_FORECAST_TRAIN_S:g}, at least "
        f"{MIN_FIT_SAMPLES} steps; the season is learnt once three have arrived)",
    )
    ap.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    prog = "tars_telemetry.stream"
    try:
        try:
            pattern = forecast_pattern(args.forecast)
        except re.error as exc:
            raise ConfigError(f"--forecast {args.forecast!r} is not a regular expression ({exc}); fix it") from None
        config = default_forecast_config(args.forecast_step, args.forecast_season, args.forecast_train)
        slos = load_files(args.slo) if args.slo else tars_slos()
        daemon = Daemon(
            slos,
            prometheus_url=args.prometheus,
            poll_interval=args.poll_interval,
            push_grace=args.push_grace,
            stale_after=args.stale_after,
            forecast=pattern,
            forecast_config=config,
        )
    except (ConfigError, PrometheusError, OSError) as exc:  # a bad spec, an unreadable file, a URL that is not one
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(daemon, args.host, args.port, stop)

    try:
        asyncio.run(run())
    except OSError as exc:
        if args.debug:
            raise
        where = f"{args.host}:{args.port}"
        print(f"{prog}: cannot listen on {where} ({exc.strerror or exc}); choose another --port", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        url = f" (Prometheus {safe_url(args.prometheus)})" if args.prometheus else ""
        print(f"{prog}: {type(exc).__name__}: {exc}{url}; rerun with --debug for the traceback", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
