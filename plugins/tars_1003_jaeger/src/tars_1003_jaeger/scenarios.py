"""End-to-end continuity checks and the throughput benchmark, shared by the hooks, tests and benchmarks/.

Continuity is judged from finished spans, the way a tracing backend would see them: every ``process``
span must be in its producer's trace with the producer's ``send`` span as parent (or, in links mode, a
link to it). Producer and process spans are matched through ``messaging.destination.name`` and
``messaging.message.id``, so nothing here trusts the library's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import redis
import redis.asyncio as aioredis
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from tars_1003_jaeger.streams import DELIVERY_COUNT_ATTRIBUTE, StreamMessage, StreamTracing, _reply_items
from tars_core.report import percentile


@attrs.frozen
class Continuity:
    """How many process spans continued their producer's trace, out of how many."""

    continued: int
    total: int
    redelivered: int = 0
    failures: Sequence[str] = ()

    @property
    def percent(self) -> float:
        return 100.0 * self.continued / self.total if self.total else 0.0

    @property
    def complete(self) -> bool:
        return self.total > 0 and self.continued == self.total

    def __str__(self) -> str:
        text = f"{self.continued}/{self.total} ({self.percent:.2f}%)"
        if self.redelivered:
            text += f", {self.redelivered} redelivered"
        return text


def memory_provider(
    *, batch: bool = False, queue: int = 2048, sample_ratio: float = 1.0
) -> tuple[TracerProvider, InMemorySpanExporter]:
    """A private provider (never the global one) that keeps its spans in memory, ParentBased sampling."""
    exporter = InMemorySpanExporter()
    root = ALWAYS_ON if sample_ratio >= 1.0 else TraceIdRatioBased(sample_ratio)
    provider = TracerProvider(sampler=ParentBased(root))
    if batch:
        processor: Any = BatchSpanProcessor(exporter, max_queue_size=queue, max_export_batch_size=512)
    else:
        processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return provider, exporter


def continuity(spans: Iterable[ReadableSpan], *, links: bool = False) -> Continuity:
    """Match every CONSUMER span to the PRODUCER span of the same entry and check the relation."""
    spans = list(spans)
    producers = {
        (s.attributes.get("messaging.destination.name"), s.attributes.get("messaging.message.id")): s
        for s in spans
        if s.kind is SpanKind.PRODUCER and s.attributes
    }
    ok = total = redelivered = 0
    failures: list[str] = []
    for span in spans:
        if span.kind is not SpanKind.CONSUMER or not span.attributes:
            continue
        total += 1
        key = (span.attributes.get("messaging.destination.name"), span.attributes.get("messaging.message.id"))
        if int(span.attributes.get(DELIVERY_COUNT_ATTRIBUTE, 1) or 1) > 1:  # type: ignore[arg-type]
            redelivered += 1
        producer = producers.get(key)
        if producer is None:
            failures.append(f"{key[0]} {key[1]}: no producer span")
            continue
        want = producer.context
        if links:
            good = any(link.context.span_id == want.span_id for link in span.links)
        else:
            good = (
                span.context.trace_id == want.trace_id
                and span.parent is not None
                and (span.parent.span_id == want.span_id)
            )
        if good:
            ok += 1
        elif len(failures) < 5:
            failures.append(
                f"{key[0]} {key[1]}: trace {span.context.trace_id:032x} parent "
                f"{span.parent.span_id if span.parent else 0:016x}, "
                f"producer {want.trace_id:032x}/{want.span_id:016x}"
            )
    return Continuity(ok, total, redelivered, tuple(failures))


async def _ensure_group(client: Any, stream: str, group: str) -> None:
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def pipeline_check(
    redis_url: str, *, prefix: str, messages: int = 40, links: bool = False, claim_idle_ms: int = 50
) -> dict[str, Continuity]:
    """Send ``messages`` through two hops on the target Redis and judge continuity per hop.

    Hop 1: producer → stream ``jobs`` → group ``workers``, where consumer ``doomed`` reads a quarter
    of the entries and dies (its connection is closed with the entries pending) and consumer ``w1``
    processes the rest, then takes the dead consumer's entries over with XAUTOCLAIM. Each processed
    job is forwarded to stream ``results`` (hop 2), read by a second consumer in group ``dashboard``.
    The streams live under ``prefix`` + a random id and are deleted afterwards.
    """
    provider, exporter = memory_provider()
    tracing = StreamTracing(provider, links=links)
    base = f"{prefix}:{uuid.uuid4().hex[:12]}"
    jobs, results = f"{base}:jobs", f"{base}:results"
    client = aioredis.from_url(redis_url, decode_responses=True)
    doomed = aioredis.from_url(redis_url)  # bytes client: the check covers both decodings
    try:
        await _ensure_group(client, jobs, "workers")
        await _ensure_group(client, results, "dashboard")
        for i in range(messages):
            await tracing.xadd(client, jobs, {"job": str(i), "agent": "ppo-v1"})
        await tracing.xreadgroup(doomed, "workers", "doomed", {jobs: ">"}, count=max(1, messages // 4))
        await doomed.aclose()

        async def work(batch: Sequence[StreamMessage]) -> None:
            for msg in batch:
                async with msg.process():
                    await tracing.xadd(client, results, {"job": msg.payload["job"], "score": "1.0"})

        while batch := await tracing.xreadgroup(client, "workers", "w1", {jobs: ">"}, count=16):
            await work(batch)
        await asyncio.sleep(claim_idle_ms / 1000 * 1.5)
        cursor = "0-0"
        while True:
            claimed = await tracing.xautoclaim(client, jobs, "workers", "w1", claim_idle_ms, cursor, count=16)
            await work(claimed.messages)
            cursor = claimed.next_start_id
            if cursor == "0-0":
                break
        while batch := await tracing.xreadgroup(client, "dashboard", "d1", {results: ">"}, count=16):
            for msg in batch:
                async with msg.process():
                    pass
    finally:
        await doomed.aclose()  # idempotent: already closed on the normal path
        await client.delete(jobs, results)
        await client.aclose()
    spans = exporter.get_finished_spans()
    provider.shutdown()
    by_hop = {
        "hop1": continuity([s for s in spans if _dest(s) == jobs], links=links),
        "hop2": continuity([s for s in spans if _dest(s) == results], links=links),
    }
    return by_hop


def _dest(span: ReadableSpan) -> Any:
    return span.attributes.get("messaging.destination.name") if span.attributes else None


# -- benchmark ---------------------------------------------------------------------------------------

#: ``sampled`` is ``propagated`` with a ParentBased(TraceIdRatioBased) root sampler, as production runs:
#: context (and so continuity of trace ids) still travels in every entry, unsampled spans cost little.
MODES = ("plain", "unpropagated", "propagated", "sampled")


def _handler(fields: Any) -> int:
    """Stands in for the evaluation work: touch every field so decoding costs are paid as in reality."""
    return sum(len(k) + len(v) for k, v in fields.items())


def _flow(
    client: Any, mode: str, stream: str, n: int, redeliver: int, batch: int, provider: TracerProvider
) -> tuple[float, float]:
    """One full pass: XADD n entries, a consumer dies holding ``redeliver`` of them, the worker drains
    the rest with XREADGROUP + per-entry XACK and takes the dead consumer's entries over with
    XAUTOCLAIM. Returns the elapsed wall and CPU seconds of this process (all threads, so the span
    processor's export thread is included; Redis' own CPU is not)."""
    client.xgroup_create(stream, "bench", id="0", mkstream=True)
    tracing = StreamTracing(provider)
    tracer = provider.get_tracer("tars-1003-bench-v1.0.0")
    payload = {"agent": "ppo-v1", "env": "CartPole-v1", "episodes": "100", "seed": "0"}
    start, cpu = time.perf_counter(), time.process_time()
    if mode in ("propagated", "sampled"):
        for i in range(n):
            tracing.xadd(client, stream, {**payload, "job": str(i)})
        tracing.xreadgroup(client, "bench", "doomed", {stream: ">"}, count=redeliver)

        def drain(messages: Sequence[StreamMessage]) -> None:
            for msg in messages:
                with msg.process():
                    _handler(msg.fields)

        while messages := tracing.xreadgroup(client, "bench", "worker", {stream: ">"}, count=batch):
            drain(messages)
        cursor = "0-0"
        while True:
            claimed = tracing.xautoclaim(client, stream, "bench", "worker", 0, cursor, count=batch)
            drain(claimed.messages)
            cursor = claimed.next_start_id
            if cursor == "0-0":
                break
        return time.perf_counter() - start, time.process_time() - cpu

    # v1.0.0 behaviour ("unpropagated": spans on both sides, no context in the entry) or no tracing.
    traced = mode == "unpropagated"
    for i in range(n):
        if traced:
            with tracer.start_as_current_span(f"send {stream}", kind=SpanKind.PRODUCER) as span:
                entry_id = client.xadd(stream, {**payload, "job": str(i)})
                span.set_attributes({"messaging.destination.name": stream, "messaging.message.id": _s(entry_id)})
        else:
            client.xadd(stream, {**payload, "job": str(i)})
    client.xreadgroup("bench", "doomed", {stream: ">"}, count=redeliver)

    def drain_raw(entries: Sequence[Any]) -> None:
        for entry_id, fields in entries:
            if traced:
                attributes = {"messaging.destination.name": stream, "messaging.message.id": _s(entry_id)}
                with tracer.start_as_current_span(f"process {stream}", kind=SpanKind.CONSUMER, attributes=attributes):
                    _handler(fields)
                    client.xack(stream, "bench", entry_id)
            else:
                _handler(fields)
                client.xack(stream, "bench", entry_id)

    while reply := client.xreadgroup("bench", "worker", {stream: ">"}, count=batch):
        for _, entries in _reply_items(reply):
            drain_raw(entries)
    raw_cursor: Any = "0-0"
    while True:
        raw_claim = client.xautoclaim(stream, "bench", "worker", 0, raw_cursor, count=batch)
        drain_raw(raw_claim[1])
        raw_cursor = raw_claim[0]
        if _s(raw_cursor) == "0-0":
            break
    return time.perf_counter() - start, time.process_time() - cpu


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def codec_overhead_us(iterations: int = 10_000) -> tuple[float, float]:
    """Microseconds per inject and per extract through the global propagator (no Redis involved)."""
    provider, _ = memory_provider()
    tracer = provider.get_tracer("tars-1003-codec")
    from tars_1003_jaeger.streams import _GETTER

    with tracer.start_as_current_span("send"):
        start = time.perf_counter()
        for _ in range(iterations):
            carrier: dict[str, str] = {"job": "1"}
            propagate.inject(carrier)
        inject = (time.perf_counter() - start) / iterations * 1e6
    encoded = {k.encode(): v.encode() for k, v in carrier.items()}
    start = time.perf_counter()
    for _ in range(iterations):
        ctx = propagate.extract(encoded, getter=_GETTER)
        trace.get_current_span(ctx).get_span_context()
    extract = (time.perf_counter() - start) / iterations * 1e6
    provider.shutdown()
    return inject, extract


@attrs.frozen
class BenchSettings:
    """What one benchmark run does: messages per pass, share redelivered, passes per mode, read size, sampling."""

    messages: int = 10_000
    redeliver_fraction: float = 0.1
    rounds: int = 3
    batch: int = 100  # XREADGROUP/XAUTOCLAIM COUNT
    sample_ratio: float = 0.1  # root sampling of the 'sampled' mode


@attrs.frozen
class BenchFigures:
    settings: BenchSettings
    redelivered: int
    throughput: dict[str, float]  # mode -> messages per second (median of rounds)
    cpu_us: dict[str, float]  # mode -> client CPU microseconds per message (median of rounds)
    continuity_before: Continuity
    continuity_after: Continuity
    inject_us: float
    extract_us: float

    @property
    def ratio(self) -> float:
        return self.throughput["propagated"] / self.throughput["plain"]

    @property
    def overhead_us(self) -> float:
        """Extra wall time per message of propagated tracing over no tracing at all."""
        return (1 / self.throughput["propagated"] - 1 / self.throughput["plain"]) * 1e6

    @property
    def cpu_ratio(self) -> float:
        """Throughput ratio the client's CPU allows: plain CPU per message over propagated CPU per message.

        On a shared machine wall-clock throughput mostly measures the neighbours; this does not."""
        return self.cpu_us["plain"] / self.cpu_us["propagated"]

    @property
    def propagation_overhead_us(self) -> float:
        """Extra wall time per message of propagated tracing over v1.0.0's unpropagated spans."""
        return (1 / self.throughput["propagated"] - 1 / self.throughput["unpropagated"]) * 1e6


def benchmark(redis_url: str, *, prefix: str, settings: BenchSettings) -> BenchFigures:
    """Throughput of the four modes on the same Redis, interleaved round by round, plus continuity.

    Spans go to an in-memory exporter behind a BatchSpanProcessor (queue sized to hold them all), so the
    figures include span creation and enqueueing but not OTLP serialisation, which happens off the
    request path in the exporter thread.
    """
    client = redis.Redis.from_url(redis_url)
    messages = settings.messages
    redeliver = max(1, int(messages * settings.redeliver_fraction))
    base = f"{prefix}:{uuid.uuid4().hex[:12]}"
    times: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    spans: dict[str, list[ReadableSpan]] = {}
    try:
        for r in range(settings.rounds):
            for mode in MODES:
                ratio = settings.sample_ratio if mode == "sampled" else 1.0
                provider, exporter = memory_provider(batch=True, queue=messages * 4 + 1024, sample_ratio=ratio)
                stream = f"{base}:{mode}:{r}"
                try:
                    wall, used = _flow(client, mode, stream, messages, redeliver, settings.batch, provider)
                    times[mode].append(wall)
                    cpu[mode].append(used)
                finally:
                    client.delete(stream)
                provider.force_flush()
                if r == 0:
                    spans[mode] = list(exporter.get_finished_spans())
                provider.shutdown()
    finally:
        client.close()
    throughput = {m: messages / percentile(t, 50) for m, t in times.items()}
    cpu_us = {m: percentile(t, 50) / messages * 1e6 for m, t in cpu.items()}
    inject, extract = codec_overhead_us()
    return BenchFigures(
        settings=settings,
        redelivered=redeliver,
        throughput=throughput,
        cpu_us=cpu_us,
        continuity_before=continuity(spans["unpropagated"]),
        continuity_after=continuity(spans["propagated"]),
        inject_us=inject,
        extract_us=extract,
    )
