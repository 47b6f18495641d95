"""The streaming SLO monitor: a remote-write receiver that keeps every SLO's live state.

Prometheus pushes the samples its SLO rules record (and the ``ALERTS`` they raise) to ``POST
/api/v1/write`` (remote write 1.0: a snappy-compressed protobuf ``WriteRequest``). The daemon keeps the
``slo:*`` series and the alerts with an ``slo`` label, counts and drops everything else, and serves:

* ``/api/slos``: the state as JSON (:meth:`tars_telemetry.live.MonitorState.view`), read by
  ``tars-slo watch`` and the release gate;
* ``/metrics``: its own exposition (budget, burn rate per window, status, status changes, samples);
* ``/-/ready``.

With ``--prometheus URL`` it also reads the same series through the query API whenever nothing has pushed
for a while (remote write not configured, or broken), so the state is there either way.

    python -m tars_telemetry.stream --port 9464 [--prometheus http://127.0.0.1:9090] [--slo FILE...]

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
import logging
import signal
import struct
import sys
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tars_core.model import SandboxContribution, SandboxSite, ServiceSpec

if TYPE_CHECKING:
    from aiohttp import web

    from tars_telemetry.live import Sample
    from tars_telemetry.spec import SLO

log = logging.getLogger("tars.slo.stream")

WRITE_PATH = "/api/v1/write"
KEEP_REGEX = "slo:.*|ALERTS"  # what the sandbox Prometheus sends us (write_relabel_configs); the rest is dropped
MAX_BODY = 16 * 1024 * 1024  # a compressed request; Prometheus sends 500 samples (~10 KiB) by default
MAX_DECODED = 64 * 1024 * 1024  # a snappy body declares its decoded length: refuse a bomb before allocating
STALE_NAN = struct.pack("<Q", 0x7FF0000000000002)  # Prometheus' stale marker, a NaN with this exact payload
DEFAULT_POLL_S = 5.0
DEFAULT_PUSH_GRACE_S = 90.0  # no push for this long (3 evaluations of the 30 s rule groups): read the query API


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


def decode(body: bytes) -> tuple[list[Sample], int]:
    """The kept samples of one remote-write body, and how many samples it held that were dropped.

    Kept: ``slo:*`` series and ``ALERTS`` with a non-empty ``slo`` label. :class:`BadWrite` (one line) for
    anything that is not a snappy-compressed ``WriteRequest``.
    """
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
    kept: list[Sample] = []
    dropped = 0
    for ts in req.timeseries:
        labels = ts.labels
        name = ""
        for label in labels:  # sorted by name, so __name__ is first unless a label name has capitals
            if label.name == "__name__":
                name = label.value
                break
        if not (name.startswith("slo:") or name == "ALERTS"):
            dropped += len(ts.samples)
            continue
        found = {label.name: label.value for label in labels}
        if not found.get("slo"):
            dropped += len(ts.samples)
            continue
        for s in ts.samples:
            value = s.value
            stale = value != value and struct.pack("<d", value) == STALE_NAN
            kept.append(Sample(found, value, s.timestamp / 1000.0, stale))
    return kept, dropped


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
    ) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        from tars_core.prometheus import Prometheus
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
            samples, dropped = decode(body)
        except BadWrite as exc:
            self._count(400)
            self.bad_writes.warn(f"400 from {request.remote}: {exc}")
            return web.Response(status=400, text=f"{exc}\n")
        self.state.ingest(samples, dropped=dropped)
        self.last_push = time.monotonic()
        self._count(204)
        self.write_seconds.observe(time.perf_counter() - started)
        return web.Response(status=204)

    async def slos(self, request: web.Request) -> web.Response:
        from aiohttp import web

        view = self.state.view()
        view["poll_error"] = self.poll_error
        return web.json_response(view)

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
        try:
            samples = await asyncio.to_thread(poll, self.prom)
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

    async def background(self) -> None:
        """Re-decide every second (a silent SLO turns ``no-data``); poll while nothing pushes."""
        next_poll = 0.0
        while True:
            if self.prom is not None and self._push_quiet() and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_interval
                await self.poll_once()
            self.state.decide()
            await asyncio.sleep(1.0)

    def app(self) -> web.Application:
        from aiohttp import web

        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(WRITE_PATH, self.write)
        app.router.add_get("/api/slos", self.slos)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/-/ready", self.ready)
        app.router.add_get("/-/healthy", self.ready)

        async def run_background(app: web.Application) -> Any:
            task = asyncio.create_task(self.background())
            yield
            task.cancel()
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
            "tars_slo_samples_dropped", "Samples dropped: not slo:* nor ALERTS with an slo label"
        )
        dropped.add_metric([], state.samples_dropped)
        requests = CounterMetricFamily(
            "tars_slo_write_requests", "Remote-write requests by HTTP status", labels=["code"]
        )
        for code, count in sorted(self.daemon.requests.items()):
            requests.add_metric([code], count)
        return [budget, burn, status, changes, firing, received, dropped, requests]

    def describe(self) -> list[Any]:
        return []


def sandbox_contribution(site: SandboxSite, slo_files: Sequence[str] = ()) -> SandboxContribution:
    """The daemon as a sandbox service: pushed to by the sandbox Prometheus (only ``slo:*`` and ``ALERTS``),
    scraped by it, and reading its query API when the push stops. Its URL is
    ``http://127.0.0.1:<services[0].port>``."""
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
        log.info("SLO monitor on http://%s:%d (%d SLOs%s)", host, port, len(daemon.state.slos), source)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tars_telemetry.stream --port P [--prometheus URL] [--slo FILE...]``."""
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
    ap.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    prog = "tars_telemetry.stream"
    try:
        slos = load_files(args.slo) if args.slo else tars_slos()
        daemon = Daemon(
            slos,
            prometheus_url=args.prometheus,
            poll_interval=args.poll_interval,
            push_grace=args.push_grace,
            stale_after=args.stale_after,
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
