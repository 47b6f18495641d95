"""The evaluation-stream producer and consumer of the T.A.R.S. stand-in, with the fix behind its flag.

``python -m tars_1003_jaeger.services producer ...`` submits evaluation jobs to the jobs stream;
``python -m tars_1003_jaeger.services consumer ...`` runs the evaluation workers (group ``tars-evaluators``)
and, as a second hop, the dashboard feed that consumes their results (group ``tars-dashboard``),
taking over entries of dead workers with XAUTOCLAIM.

Both read the feature flag (default ``tars-1003-trace-propagation`` in ``tars:feature_flags``) about once
a second. Off, they behave as v1.0.0 did: spans on both sides, no context in the entries, so every
consumer span starts a new trace. On, they use :mod:`tars_1003_jaeger.streams`. Each service reports its
version, capability and current propagation state in a registry hash, which is what ``tars_apply``
checks before turning the flag on, and it records the trace ids it saw for entries carrying a
``tars_probe`` field, which is how ``tars_verify`` checks the running behaviour end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge, start_http_server

from tars_1003_jaeger import __version__
from tars_1003_jaeger.export import configure_tracing
from tars_1003_jaeger.streams import StreamMessage, StreamTracing
from tars_core.flags import FlagReader, is_on

log = logging.getLogger("tars_1003_jaeger.services")

#: What a service advertises in the registry when it runs code that can propagate trace context.
CAPABILITY = "w3c-trace-context/redis-streams"
PROBE_FIELD = "tars_probe"

MESSAGES = Counter(
    "tars_trace_stream_messages",
    "Stream entries handled, by stage and whether their trace context was usable",
    ["service", "stage", "context"],
)
PROPAGATING = Gauge("tars_trace_propagation_enabled", "1 when the service propagates trace context", ["service"])


class Service:
    """Shared plumbing: flag polling, registry heartbeat, graceful stop, tracing setup."""

    def __init__(self, args: argparse.Namespace, role: str) -> None:
        self.args = args
        self.role = role
        self.name: str = args.name
        self.client = aioredis.from_url(args.redis, decode_responses=True)
        # no cache of its own: housekeeping already reads once per --flag-poll, a cache would only add delay
        self.flags = FlagReader(args.redis, args.flags_key, ttl=0.0)
        self.provider = configure_tracing(
            f"tars-{self.name}",
            endpoint=args.otlp_endpoint or None,
            protocol=args.otlp_protocol,
            sample_ratio=args.sample_ratio,
        )
        self.tracer = trace.get_tracer("tars.evaluation")
        self.tracing = StreamTracing()
        self.propagate = False
        #: the mode each consumer loop's current iteration runs in (a blocking read started before a flag
        #: change finishes in the old mode); the registry reports a mode only once every loop is in it
        self.loop_modes: dict[str, bool] = {}
        self.stop = asyncio.Event()

    @property
    def reported(self) -> str:
        modes = {self.propagate, *self.loop_modes.values()}
        return "switching" if len(modes) > 1 else ("on" if self.propagate else "off")

    async def enter_mode(self, loop: str) -> bool:
        """Called at the top of a consumer iteration: the flag state this iteration will honour."""
        mode = self.propagate
        if self.loop_modes.get(loop) != mode:
            before = self.reported
            self.loop_modes[loop] = mode
            if self.reported != before:
                await self.heartbeat()
        return mode

    async def refresh_flag(self) -> None:
        # a thread, so a Redis outage (the reader then keeps the last value) never stalls the consumer loops
        value = await asyncio.to_thread(self.flags.value, self.args.flag)
        on = is_on(value)
        if on != self.propagate:
            log.info(
                "%s: trace propagation %s (flag %s=%r)",
                self.name,
                "on" if on else "off",
                self.args.flag,
                value,
            )
            self.propagate = on
            PROPAGATING.labels(self.name).set(int(on))
            await self.heartbeat()

    async def heartbeat(self) -> None:
        record = {
            "service": self.role,
            "version": __version__,
            "capabilities": [CAPABILITY],
            "propagation": self.reported,
            "pid": os.getpid(),
            "heartbeat": time.time(),
        }
        await self.client.hset(self.args.registry_key, self.name, json.dumps(record))

    async def housekeeping(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(redis.RedisError):
                await self.refresh_flag()
                await self.heartbeat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.args.flag_poll)

    async def run(self, *loops: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        await self.refresh_flag()
        await self.heartbeat()
        # the port opens once the service is registered: "port answers" (the sandbox's and the tests'
        # readiness check) then means an apply right after it finds this service in the registry
        start_http_server(self.args.metrics_port, addr="127.0.0.1")
        try:
            await asyncio.gather(self.housekeeping(), *(fn() for fn in loops))
        finally:
            with contextlib.suppress(redis.RedisError):
                await self.client.hdel(self.args.registry_key, self.name)
            await self.client.aclose()
            self.flags.close()
            self.provider.shutdown()  # graceful stop: flush what the batch processor still holds
            log.info("%s stopped", self.name)


async def producer(args: argparse.Namespace) -> None:
    svc = Service(args, "producer")
    interval = 1.0 / args.rate if args.rate > 0 else None

    async def submit() -> None:
        n = 0
        while not svc.stop.is_set():
            if interval is not None:
                n += 1
                job = {"job_id": f"{svc.name}-{os.getpid()}-{n}", "agent": "ppo-v1", "env": "CartPole-v1"}
                try:
                    with svc.tracer.start_as_current_span("submit evaluation"):
                        await _send(svc, args.stream, job)
                except redis.RedisError as exc:
                    log.warning("XADD failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(svc.stop.wait(), interval or 3600)

    await svc.run(submit)


async def _send(svc: Service, stream: str, fields: dict[Any, Any]) -> None:
    if svc.propagate:
        await svc.tracing.xadd(svc.client, stream, fields, maxlen=svc.args.maxlen, approximate=True)
        return
    # v1.0.0: the redis instrumentation's CLIENT span, nothing carried in the entry
    with svc.tracer.start_as_current_span("XADD", kind=SpanKind.CLIENT, attributes={"db.system": "redis"}):
        await svc.client.xadd(stream, fields, maxlen=svc.args.maxlen, approximate=True)


async def _record_probe(svc: Service, fields: dict[str, str], hop: int, producer_span: int) -> None:
    """Note which trace this hop's process span is in, for ``tars_verify``'s end-to-end probe."""
    span = trace.get_current_span()
    parent = getattr(span, "parent", None)
    record = {
        "trace_id": f"{span.get_span_context().trace_id:032x}",
        "span_id": f"{span.get_span_context().span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent else "",
        "producer_span_id": f"{producer_span:016x}" if producer_span else "",
        "propagation": "on" if svc.propagate else "off",
        "service": svc.name,
    }
    key = svc.args.probe_key
    await svc.client.hset(key, f"{fields[PROBE_FIELD]}:{hop}", json.dumps(record))
    await svc.client.expire(key, 3600)


async def consumer(args: argparse.Namespace) -> None:
    svc = Service(args, "consumer")
    for stream, group in ((args.stream, args.group), (args.result_stream, args.result_group)):
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: already there
            await svc.client.xgroup_create(stream, group, id="0", mkstream=True)

    async def evaluate(fields: dict[str, str], producer_span: int) -> None:
        result = {"job_id": fields.get("job_id", ""), "score": "0.0" if PROBE_FIELD in fields else "195.0"}
        if PROBE_FIELD in fields:
            await _record_probe(svc, fields, 1, producer_span)
            result[PROBE_FIELD] = fields[PROBE_FIELD]
        await _send(svc, args.result_stream, result)

    async def publish(fields: dict[str, str], producer_span: int) -> None:
        if PROBE_FIELD in fields:
            await _record_probe(svc, fields, 2, producer_span)

    await svc.run(
        lambda: _consume(svc, args.stream, args.group, evaluate),
        lambda: _consume(svc, args.result_stream, args.result_group, publish),
    )


Handler = Callable[[dict[str, str], int], Awaitable[None]]


async def _consume(svc: Service, stream: str, group: str, handler: Handler) -> None:
    """Read, process and ack entries; every ``claim_interval`` take over entries of dead consumers."""
    consumer = f"{svc.name}-{os.getpid()}"
    next_claim = 0.0
    while not svc.stop.is_set():
        try:
            propagate = await svc.enter_mode(stream)
            if time.monotonic() >= next_claim:
                next_claim = time.monotonic() + svc.args.claim_interval
                await _claim(svc, stream, group, consumer, handler, propagate)
            if propagate:
                batch = await svc.tracing.xreadgroup(svc.client, group, consumer, {stream: ">"}, count=16, block=1000)
                await _process(svc, stream, batch, handler)
            else:
                reply = await svc.client.xreadgroup(group, consumer, {stream: ">"}, count=16, block=1000)
                for _, entries in _entries(reply):
                    await _process_legacy(svc, stream, group, entries, handler)
        except redis.RedisError as exc:
            if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
                # Redis lost its data (a restart without persistence): the stream and the group are gone,
                # and the consumer would wait for them forever. Make them again (what was in them is lost).
                log.warning(
                    "%s: group %s on %s is gone (Redis lost its data?); creating it again", svc.name, group, stream
                )
                with contextlib.suppress(redis.RedisError):  # BUSYGROUP: another consumer was first
                    await svc.client.xgroup_create(stream, group, id="0", mkstream=True)
                continue
            log.warning("%s: %s on %s; retrying", svc.name, exc, stream)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(svc.stop.wait(), 1.0)


async def _claim(svc: Service, stream: str, group: str, consumer: str, handler: Handler, propagate: bool) -> None:
    cursor = "0-0"
    while True:
        if propagate:
            claimed = await svc.tracing.xautoclaim(
                svc.client, stream, group, consumer, svc.args.claim_idle_ms, cursor, count=16
            )
            await _process(svc, stream, claimed.messages, handler)
            cursor = claimed.next_start_id
        else:
            reply = await svc.client.xautoclaim(stream, group, consumer, svc.args.claim_idle_ms, cursor, count=16)
            await _process_legacy(svc, stream, group, [e for e in reply[1] if e and e[1] is not None], handler)
            cursor = reply[0]
        if cursor == "0-0":
            return


async def _process(svc: Service, stream: str, batch: list[StreamMessage], handler: Handler) -> None:
    for msg in batch:
        MESSAGES.labels(svc.name, stream, msg.trace_status).inc()
        try:
            async with msg.process():
                await handler(dict(msg.payload), msg.producer_span_context.span_id)
        except redis.RedisError:
            raise
        except Exception:
            log.exception("%s: handler failed on %s %s (left pending for redelivery)", svc.name, stream, msg.id)


async def _process_legacy(svc: Service, stream: str, group: str, entries: list[Any], handler: Handler) -> None:
    for entry_id, fields in entries:
        MESSAGES.labels(svc.name, stream, "ignored").inc()
        with svc.tracer.start_as_current_span(f"process {stream}", kind=SpanKind.CONSUMER):
            await handler(dict(fields), 0)
            await svc.client.xack(stream, group, entry_id)


def _entries(reply: Any) -> list[tuple[Any, list[Any]]]:
    if isinstance(reply, dict):
        return [(s, v[0] if v and isinstance(v[0], list) else v) for s, v in reply.items()]
    return list(reply or [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tars_1003_jaeger.services", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=["producer", "consumer"])
    parser.add_argument("--redis", required=True, help="redis:// URL of the T.A.R.S. Redis")
    parser.add_argument("--name", help="service name in the registry (default eval-<role>)")
    parser.add_argument("--metrics-port", type=int, required=True, help="Prometheus metrics on 127.0.0.1:PORT")
    parser.add_argument("--stream", default="tars:evaluations:jobs")
    parser.add_argument("--result-stream", default="tars:evaluations:results")
    parser.add_argument("--group", default="tars-evaluators")
    parser.add_argument("--result-group", default="tars-dashboard")
    parser.add_argument("--flags-key", default="tars:feature_flags")
    parser.add_argument("--flag", default="tars-1003-trace-propagation")
    parser.add_argument("--registry-key", default="tars:services:tracing")
    parser.add_argument("--probe-key", default="tars:trace:probes")
    parser.add_argument("--flag-poll", type=float, default=1.0, help="seconds between flag reads")
    parser.add_argument("--rate", type=float, default=1.0, help="producer: jobs per second (0: none)")
    parser.add_argument("--maxlen", type=int, default=10_000, help="approximate MAXLEN of the streams")
    parser.add_argument("--claim-idle-ms", type=int, default=30_000, help="consumer: XAUTOCLAIM min idle")
    parser.add_argument("--claim-interval", type=float, default=5.0, help="consumer: seconds between claims")
    parser.add_argument("--otlp-endpoint", default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    parser.add_argument("--otlp-protocol", default="http/protobuf", choices=["http/protobuf", "grpc"])
    parser.add_argument("--sample-ratio", type=float, default=1.0, help="root sampling ratio (ParentBased)")
    args = parser.parse_args(argv)
    args.name = args.name or f"eval-{args.role}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(producer(args) if args.role == "producer" else consumer(args))


if __name__ == "__main__":
    main()
