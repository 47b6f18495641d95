"""The propagation library against real Redis with the real OpenTelemetry SDK (in-memory exporter)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from tars_1003_jaeger import PropagationStats, StreamTracing, configure_tracing
from tars_1003_jaeger.scenarios import continuity, pipeline_check
from tars_1003_jaeger.streams import CONTEXT_STATUS_ATTRIBUTE, DELIVERY_COUNT_ATTRIBUTE

pytestmark = pytest.mark.timeout(120)


def _group(client: redis.Redis, stream: str, group: str = "g") -> None:
    client.xgroup_create(stream, group, id="0", mkstream=True)


def _traced_entries(tracing: StreamTracing, client: redis.Redis, stream: str, n: int) -> None:
    """``stream`` with group ``g`` and ``n`` entries ``{"n": i}`` sent through ``tracing``."""
    _group(client, stream)
    for i in range(n):
        tracing.xadd(client, stream, {"n": str(i)})


def _by_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


@pytest.mark.parametrize("decode", [True, False], ids=["decoded", "bytes"])
def test_one_hop_sync_continuity_and_conventions(tars_redis_url: str, prefix: str, memory: Any, decode: bool) -> None:
    provider, exporter = memory
    tracing = StreamTracing(provider, stats=PropagationStats())
    client = redis.Redis.from_url(tars_redis_url, decode_responses=decode)
    stream = f"{prefix}:jobs"
    _group(client, stream)
    fields = {"job": "1"}
    entry_id = tracing.xadd(client, stream, fields, maxlen=1000)
    assert fields == {"job": "1"}, "the caller's dict is not modified"
    raw = client.xrange(stream)[0][1]
    names = {k.decode() if isinstance(k, bytes) else k for k in raw}
    assert {"job", "traceparent"} <= names

    [msg] = tracing.xreadgroup(client, "g", "c1", {stream: ">"}, count=10)
    assert msg.trace_status == "ok" and msg.id == (entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
    assert set(msg.payload) == {b"job"} if not decode else {"job"}
    with msg.process() as span:
        assert trace.get_current_span() is span
    assert client.xpending(stream, "g")["pending"] == 0, "acked inside the span"

    [send] = _by_kind(exporter, SpanKind.PRODUCER)
    [process] = _by_kind(exporter, SpanKind.CONSUMER)
    [receive] = _by_kind(exporter, SpanKind.CLIENT)
    assert send.name == f"send {stream}" and process.name == f"process {stream}"
    assert process.context.trace_id == send.context.trace_id and process.parent.span_id == send.context.span_id
    assert send.attributes["messaging.system"] == "redis"
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.destination.name"] == stream
    assert send.attributes["messaging.message.id"] == msg.id
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.consumer.group.name"] == "g"
    assert process.attributes["messaging.message.id"] == msg.id
    assert receive.attributes["messaging.batch.message_count"] == 1
    assert receive.links[0].context.span_id == send.context.span_id
    assert tracing.stats.snapshot() == {
        "injected": 1, "extracted": 1, "missing": 0, "malformed": 0, "processed": 1, "failed": 0, "acked": 1,
    }  # fmt: skip
    client.close()


@pytest.mark.parametrize("links", [False, True], ids=["parent", "links"])
def test_two_hops_dead_consumer_and_xautoclaim_async(tars_redis_url: str, prefix: str, links: bool) -> None:
    """The verify pipeline: bytes and str clients, batches, a dead consumer, XAUTOCLAIM, a second hop."""
    result = anyio.run(
        lambda: pipeline_check(tars_redis_url, prefix=prefix, messages=30, links=links, claim_idle_ms=20)
    )
    assert result["hop1"].complete and result["hop1"].total == 30, result
    assert result["hop1"].redelivered == 7
    assert result["hop2"].complete and result["hop2"].total == 30, result


def test_batch_read_links_every_producer(tars_redis_url: str, prefix: str, memory: Any, sync_client: Any) -> None:
    provider, exporter = memory
    tracing = StreamTracing(provider)
    stream = f"{prefix}:batch"
    _traced_entries(tracing, sync_client, stream, 5)
    batch = tracing.xreadgroup(sync_client, "g", "c", {stream: ">"}, count=5)
    assert len(batch) == 5
    for msg in batch:
        with msg.process():
            pass
    sends = {s.context.span_id: s for s in _by_kind(exporter, SpanKind.PRODUCER)}
    [receive] = _by_kind(exporter, SpanKind.CLIENT)
    assert receive.attributes["messaging.batch.message_count"] == 5
    assert {link.context.span_id for link in receive.links} == set(sends)
    report = continuity(exporter.get_finished_spans())
    assert report.complete and report.total == 5
    assert len({s.context.trace_id for s in _by_kind(exporter, SpanKind.CONSUMER)}) == 5, "one trace per entry"


def test_killed_consumer_entries_taken_over_with_xautoclaim(
    tars_redis_url: str, prefix: str, memory: Any, sync_client: Any
) -> None:
    provider, exporter = memory
    tracing = StreamTracing(provider)
    stream = f"{prefix}:claim"
    _traced_entries(tracing, sync_client, stream, 6)
    # a real consumer process reads four entries and is killed before it acks any of them
    doomed = textwrap.dedent(f"""
        import os, signal, redis
        from tars_1003_jaeger import traced_xreadgroup
        client = redis.Redis.from_url({tars_redis_url!r})
        got = traced_xreadgroup(client, "g", "doomed", {{{stream!r}: ">"}}, count=4)
        assert len(got) == 4
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", doomed], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    rest = tracing.xreadgroup(sync_client, "g", "worker", {stream: ">"}, count=10)
    assert len(rest) == 2
    for msg in rest:
        with msg.process():
            pass
    claimed = tracing.xautoclaim(sync_client, stream, "g", "worker", 0, "0-0", count=10)
    assert claimed.next_start_id == "0-0" and claimed.deleted_ids == []
    assert [m.delivery_count for m in claimed.messages] == [2, 2, 2, 2]
    for msg in claimed.messages:
        with msg.process():
            pass
    assert sync_client.xpending(stream, "g")["pending"] == 0
    report = continuity(exporter.get_finished_spans())
    assert (report.continued, report.total, report.redelivered) == (6, 6, 4)
    [claim_span] = [s for s in _by_kind(exporter, SpanKind.CLIENT) if s.name.startswith("claim")]
    assert claim_span.attributes["messaging.batch.message_count"] == 4
    assert all(
        s.attributes[DELIVERY_COUNT_ATTRIBUTE] == 2
        for s in _by_kind(exporter, SpanKind.CONSUMER)
        if DELIVERY_COUNT_ATTRIBUTE in s.attributes
    )


def test_handler_failure_keeps_entry_pending_then_history_redelivery(
    tars_redis_url: str, prefix: str, memory: Any, sync_client: Any
) -> None:
    provider, exporter = memory
    tracing = StreamTracing(provider, stats=PropagationStats())
    stream = f"{prefix}:fail"
    _group(sync_client, stream)
    tracing.xadd(sync_client, stream, {"n": "1"})
    [msg] = tracing.xreadgroup(sync_client, "g", "c", {stream: ">"})
    with pytest.raises(RuntimeError, match="evaluation crashed"), msg.process():
        raise RuntimeError("evaluation crashed")
    assert sync_client.xpending(stream, "g")["pending"] == 1, "a failed entry is not acked"
    [failed] = _by_kind(exporter, SpanKind.CONSUMER)
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "RuntimeError"
    assert failed.events[0].name == "exception"

    [again] = tracing.xreadgroup(sync_client, "g", "c", {stream: "0"})
    assert again.delivery_count == 2
    with again.process():
        pass
    report = continuity(exporter.get_finished_spans())
    assert (report.continued, report.total, report.redelivered) == (2, 2, 1)
    assert tracing.stats.snapshot()["failed"] == 1


def test_missing_and_malformed_context_processed_in_new_trace_and_counted(
    tars_redis_url: str, prefix: str, memory: Any
) -> None:
    provider, exporter = memory
    stats = PropagationStats()
    tracing = StreamTracing(provider, stats=stats)
    client = redis.Redis.from_url(tars_redis_url)  # bytes
    stream = f"{prefix}:legacy"
    _group(client, stream)
    client.xadd(stream, {"job": "from a v1.0.0 producer"})
    client.xadd(stream, {"job": "garbled", "traceparent": "00-not-a-trace-context-01"})
    client.xadd(stream, {"job": "zero ids", "traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"})
    tracing.xadd(client, stream, {"job": "fixed producer"})
    batch = tracing.xreadgroup(client, "g", "c", {stream: ">"}, count=10)
    assert [m.trace_status for m in batch] == ["missing", "malformed", "malformed", "ok"]
    for msg in batch:
        with msg.process():
            pass
    assert client.xpending(stream, "g")["pending"] == 0, "nothing dropped: every entry processed and acked"
    snap = stats.snapshot()
    assert (snap["missing"], snap["malformed"], snap["extracted"], snap["acked"]) == (1, 2, 1, 4)
    processes = _by_kind(exporter, SpanKind.CONSUMER)
    assert len(processes) == 4
    orphans = [s for s in processes if CONTEXT_STATUS_ATTRIBUTE in s.attributes]
    assert sorted(s.attributes[CONTEXT_STATUS_ATTRIBUTE] for s in orphans) == [
        "malformed",
        "malformed",
        "missing",
    ]
    assert all(s.parent is None for s in orphans), "each starts a new trace"
    assert len({s.context.trace_id for s in orphans}) == 3
    client.close()


def test_sampling_decision_carries_over(tars_redis_url: str, prefix: str, sync_client: Any) -> None:
    stream = f"{prefix}:sampling"
    _group(sync_client, stream)
    dropped_exporter, kept_exporter, consumer_exporter = (InMemorySpanExporter() for _ in range(3))
    dropping = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    dropping.add_span_processor(SimpleSpanProcessor(dropped_exporter))
    keeping = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    keeping.add_span_processor(SimpleSpanProcessor(kept_exporter))
    # the consumer samples no new root trace at all: whatever it records came from the producer's flag
    consumer = configure_tracing("consumer", sample_ratio=0.0, exporter=consumer_exporter, set_global=False)
    StreamTracing(dropping).xadd(sync_client, stream, {"n": "unsampled"})
    StreamTracing(keeping).xadd(sync_client, stream, {"n": "sampled"})
    tracing = StreamTracing(consumer)
    unsampled, sampled = tracing.xreadgroup(sync_client, "g", "c", {stream: ">"})
    assert not unsampled.producer_span_context.trace_flags.sampled
    assert sampled.producer_span_context.trace_flags.sampled
    for msg in (unsampled, sampled):
        with msg.process() as span:
            assert span.get_span_context().trace_id == msg.producer_span_context.trace_id
            assert span.is_recording() is msg.producer_span_context.trace_flags.sampled
    consumer.force_flush()
    processes = _by_kind(consumer_exporter, SpanKind.CONSUMER)
    assert [s.attributes["messaging.message.id"] for s in processes] == [sampled.id]
    assert processes[0].parent.span_id == kept_exporter.get_finished_spans()[0].context.span_id
    assert dropped_exporter.get_finished_spans() == ()
    for p in (dropping, keeping, consumer):
        p.shutdown()


def test_baggage_and_resp3_and_forwarding(tars_redis_url: str, prefix: str, memory: Any) -> None:
    provider, exporter = memory
    tracing = StreamTracing(provider)
    client = redis.Redis.from_url(tars_redis_url, protocol=3)
    first, second = f"{prefix}:one", f"{prefix}:two"
    _group(client, first)
    _group(client, second)
    token = context.attach(baggage.set_baggage("tenant", "eval-team"))
    try:
        tracing.xadd(client, first, {"job": "1"})
    finally:
        context.detach(token)
    [msg] = tracing.xreadgroup(client, "g", "c", {first: ">"})
    assert baggage.get_baggage("tenant", msg.context) == "eval-team"
    with msg.process():
        assert baggage.get_baggage("tenant") == "eval-team"
        # forwarding the received (bytes) fields as they are: the old context must be replaced, not doubled
        tracing.xadd(client, second, msg.fields)
    raw = client.xrange(second)[0][1]
    assert sum(1 for k in raw if k == b"traceparent") == 1
    [hop2] = tracing.xreadgroup(client, "g", "c", {second: ">"})
    with hop2.process():
        pass
    report = continuity(exporter.get_finished_spans())
    assert report.complete and report.total == 2
    [process1] = [
        s for s in _by_kind(exporter, SpanKind.CONSUMER) if s.attributes["messaging.destination.name"] == first
    ]
    send2 = [s for s in _by_kind(exporter, SpanKind.PRODUCER) if s.attributes["messaging.destination.name"] == second]
    assert send2[0].parent.span_id == process1.context.span_id, "hop 2 is sent from inside hop 1's process span"
    client.close()


def test_failed_xadd_marks_the_producer_span(tars_redis_url: str, prefix: str, memory: Any, sync_client: Any) -> None:
    provider, exporter = memory
    key = f"{prefix}:not-a-stream"
    sync_client.set(key, "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        StreamTracing(provider).xadd(sync_client, key, {"a": "1"})
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR and span.attributes["error.type"] == "ResponseError"
    assert "messaging.message.id" not in span.attributes


def test_async_client_requires_async_with(tars_redis_url: str, prefix: str, memory: Any) -> None:
    provider, exporter = memory
    tracing = StreamTracing(provider)

    async def scenario() -> None:
        client = aioredis.from_url(tars_redis_url)
        stream = f"{prefix}:async"
        await client.xgroup_create(stream, "g", id="0", mkstream=True)
        await tracing.xadd(client, stream, {"a": "1"})
        [msg] = await tracing.xreadgroup(client, "g", "c", {stream: ">"}, block=100)
        with pytest.raises(TypeError, match="async with"), msg.process():
            pass
        async with msg.process():
            pass
        assert (await client.xpending(stream, "g"))["pending"] == 0
        await client.aclose()

    anyio.run(scenario)
    assert continuity(exporter.get_finished_spans()).complete


def test_module_functions_use_the_global_provider(tars_redis_url: str, prefix: str) -> None:
    """The one-line API: what a T.A.R.S. service calls after configure_tracing()."""
    code = textwrap.dedent(f"""
        import redis
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from tars_1003_jaeger import configure_tracing, stats, traced_xadd, traced_xreadgroup
        from tars_1003_jaeger.scenarios import continuity
        exporter = InMemorySpanExporter()
        provider = configure_tracing("svc", exporter=exporter)
        client = redis.Redis.from_url({tars_redis_url!r}, decode_responses=True)
        stream = {prefix + ":global"!r}
        client.xgroup_create(stream, "g", id="0", mkstream=True)
        traced_xadd(client, stream, {{"a": "1"}})
        for msg in traced_xreadgroup(client, "g", "c", {{stream: ">"}}):
            with msg.process():
                pass
        provider.shutdown()
        print(continuity(exporter.get_finished_spans()), stats.snapshot()["acked"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1/1 (100.00%) 1"


def test_pipelined_producer_sync_and_async(tars_redis_url: str, prefix: str, memory: Any, sync_client: Any) -> None:
    """A batch submitted through a pipeline: ids are unknown when the span ends, context still travels."""
    provider, exporter = memory
    tracing = StreamTracing(provider)
    stream = f"{prefix}:pipe"
    _group(sync_client, stream)
    with sync_client.pipeline(transaction=False) as pipe:
        for i in range(3):
            assert tracing.xadd(pipe, stream, {"n": str(i)}) is pipe
        ids = pipe.execute()

    async def queue_async() -> list[Any]:
        client = aioredis.from_url(tars_redis_url)
        async with client.pipeline(transaction=False) as apipe:
            await tracing.xadd(apipe, stream, {"n": "async"})
            result = await apipe.execute()
        await client.aclose()
        return list(result)

    ids += anyio.run(queue_async)
    batch = tracing.xreadgroup(sync_client, "g", "c", {stream: ">"})
    assert [m.id for m in batch] == [i.decode() if isinstance(i, bytes) else i for i in ids]
    assert all(m.trace_status == "ok" for m in batch)
    sends = _by_kind(exporter, SpanKind.PRODUCER)
    assert len(sends) == 4 and all("messaging.message.id" not in s.attributes for s in sends)
    for msg in batch:
        with msg.process() as span:
            assert span.get_span_context().trace_id == msg.producer_span_context.trace_id
            assert span.parent.span_id == msg.producer_span_context.span_id
