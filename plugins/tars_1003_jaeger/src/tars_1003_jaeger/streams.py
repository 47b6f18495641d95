"""W3C trace context carried through Redis Streams entries (the TARS-1003 fix).

``opentelemetry-instrumentation-redis`` makes one CLIENT span per command and never touches the payload,
so a trace ends at XADD and the consumer starts a new one. Here the producer injects ``traceparent``,
``tracestate`` (and ``baggage``) into the entry's fields through the globally configured propagator, and
the consumer extracts them and processes each entry inside a CONSUMER span whose parent is the producer
span (or, with ``links=True``, which links to it), following the OpenTelemetry messaging conventions.

One implementation serves ``redis.Redis`` and ``redis.asyncio.Redis``: each operation is written once as
a generator that yields the Redis calls it needs and receives their results, and a tiny sync or async
driver performs the calls. That keeps span handling identical for both clients instead of maintaining
two copies that drift apart.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Literal, NamedTuple

import attrs
import redis.asyncio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

__all__ = [
    "CONTEXT_FIELDS",
    "DELIVERY_COUNT_ATTRIBUTE",
    "ClaimResult",
    "PropagationStats",
    "StreamMessage",
    "StreamTracing",
    "stats",
    "traced_xadd",
    "traced_xautoclaim",
    "traced_xreadgroup",
]

#: Entry fields the W3C propagators write; removed from a forwarded payload before injecting anew.
CONTEXT_FIELDS = ("traceparent", "tracestate", "baggage")
_CONTEXT_FIELDS_ANY: tuple[str | bytes, ...] = (*CONTEXT_FIELDS, *(f.encode() for f in CONTEXT_FIELDS))
#: Redis Streams have no semantic-convention attribute for the delivery counter; we follow the
#: ``messaging.{system}.*`` pattern the conventions use for system-specific attributes.
DELIVERY_COUNT_ATTRIBUTE = "messaging.redis.message.delivery_count"
#: Set on a process span whose entry carried no usable context ("missing" or "malformed").
CONTEXT_STATUS_ATTRIBUTE = "tars.trace_context.status"

TraceStatus = Literal["ok", "missing", "malformed"]
_Call = Callable[[], Any]
_Op = Generator[_Call, Any, Any]


class PropagationStats:
    """Counts of what propagation did, so entries without context are visible rather than silent.

    An entry without context (or with a malformed ``traceparent``) is still processed, in a new trace;
    these counters are how an operator notices a producer that was not upgraded.
    """

    __slots__ = ("_counts", "_lock")

    FIELDS = ("injected", "extracted", "missing", "malformed", "processed", "failed", "acked")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self.FIELDS, 0)


#: Process-wide counters used by the module-level functions.
stats = PropagationStats()
_global_stats = stats


def _text(value: str | bytes | int) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _FieldsGetter(Getter[Mapping[Any, Any]]):
    """Reads context fields whether the client decodes responses (str) or returns bytes."""

    _BYTES: ClassVar[dict[str, bytes]] = {name: name.encode() for name in CONTEXT_FIELDS}

    def get(self, carrier: Mapping[Any, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            value = carrier.get(self._BYTES.get(key) or key.encode())
            if value is None:
                return None
        return [value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)]

    def keys(self, carrier: Mapping[Any, Any]) -> list[str]:
        return [_text(k) for k in carrier]


_GETTER = _FieldsGetter()


def _server_attributes(client: Any) -> dict[str, Any]:
    try:
        kwargs = client.connection_pool.connection_kwargs
    except AttributeError:
        return {}
    if "path" in kwargs:
        return {"server.address": str(kwargs["path"])}
    return {
        "server.address": str(kwargs.get("host", "localhost")),
        "server.port": int(kwargs.get("port", 6379)),
    }


_ASYNC_BY_TYPE: dict[type, bool] = {}


def _is_async(client: Any) -> bool:
    """Whether ``client`` is a redis.asyncio client; cached per type because redis' client classes are
    typing Protocols, whose ``isinstance`` costs microseconds on every message otherwise."""
    kind = type(client)
    found = _ASYNC_BY_TYPE.get(kind)
    if found is None:
        found = _ASYNC_BY_TYPE[kind] = isinstance(client, (redis.asyncio.Redis, redis.asyncio.RedisCluster))
    return found


class _Finished(NamedTuple):
    value: Any


def _resume(op: _Op, result: Any, error: BaseException | None) -> _Call | _Finished:
    """The operation's next call, given what its previous call returned or raised (the drivers' shared part)."""
    try:
        return op.send(result) if error is None else op.throw(error)
    except StopIteration as stop:
        return _Finished(stop.value)


def _run_sync(op: _Op) -> Any:
    """Drive an operation generator with a synchronous client."""
    result: Any = None
    error: BaseException | None = None
    while not isinstance(call := _resume(op, result, error), _Finished):
        try:
            result, error = call(), None
        except BaseException as exc:
            result, error = None, exc
    return call.value


async def _run_async(op: _Op) -> Any:
    """Drive an operation generator with ``redis.asyncio``: each yielded call returns an awaitable."""
    result: Any = None
    error: BaseException | None = None
    while not isinstance(call := _resume(op, result, error), _Finished):
        try:
            result = call()
            if inspect.isawaitable(result):  # an asyncio pipeline queues and returns itself
                result = await result
            error = None
        except BaseException as exc:
            result, error = None, exc
    return call.value


def _drive(client: Any, op: _Op) -> Any:
    return _run_async(op) if _is_async(client) else _run_sync(op)


@attrs.define(kw_only=True, eq=False)
class StreamMessage:
    """One stream entry as a consumer received it, with the trace context its producer injected.

    ``fields`` is the entry exactly as Redis returned it (bytes or str); ``payload`` is the same without
    the propagation fields. Process it with ``with msg.process(): ...`` (``async with`` for
    ``redis.asyncio``): the CONSUMER span is current inside the block, stays open across the XACK that
    follows a successful block, and records the exception (without acking) when the block raises.
    """

    stream: str
    id: str
    fields: Mapping[Any, Any]
    context: Context
    trace_status: TraceStatus
    group: str
    consumer: str
    delivery_count: int | None
    _client: Any  # keyword ``client``
    _tracing: StreamTracing  # keyword ``tracing``

    def __repr__(self) -> str:
        return (
            f"StreamMessage(stream={self.stream!r}, id={self.id!r}, trace_status={self.trace_status!r}, "
            f"delivery_count={self.delivery_count!r})"
        )

    @property
    def payload(self) -> dict[Any, Any]:
        return {k: v for k, v in self.fields.items() if k not in _CONTEXT_FIELDS_ANY}

    @property
    def producer_span_context(self) -> trace.SpanContext:
        """The producer's span context (``is_valid`` is false when the entry carried none)."""
        return trace.get_current_span(self.context).get_span_context()

    def process(self, *, ack: bool = True) -> ProcessScope:
        """A CONSUMER span ``process {stream}`` around the handler and, when ``ack``, the XACK."""
        return ProcessScope(self, ack)

    def ack(self) -> Any:
        """XACK this entry (returns an awaitable with ``redis.asyncio``)."""
        return self._client.xack(self.stream, self.group, self.id)


class ProcessScope:
    """Sync and async context manager for one entry's CONSUMER span; see :meth:`StreamMessage.process`."""

    __slots__ = ("_ack", "_msg", "_span", "_token")

    def __init__(self, msg: StreamMessage, ack: bool) -> None:
        self._msg = msg
        self._ack = ack
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: object = None

    @property
    def span(self) -> trace.Span:
        return self._span

    def _start(self) -> trace.Span:
        msg = self._msg
        tracing = msg._tracing
        attributes: dict[str, Any] = {
            "messaging.system": "redis",
            "messaging.destination.name": msg.stream,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.message.id": msg.id,
            "messaging.consumer.group.name": msg.group,
            "messaging.client.id": msg.consumer,
        }
        if msg.delivery_count is not None:
            attributes[DELIVERY_COUNT_ATTRIBUTE] = msg.delivery_count
        if msg.trace_status != "ok":
            attributes[CONTEXT_STATUS_ATTRIBUTE] = msg.trace_status
        if tracing.links:
            parent = otel_context.get_current()
            producer = msg.producer_span_context
            links = [Link(producer)] if producer.is_valid else None
        else:
            parent, links = msg.context, None
        span = tracing.tracer.start_span(
            f"process {msg.stream}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span

    def _fail(self, exc: BaseException) -> None:
        self._span.record_exception(exc)
        self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self._span.set_attribute("error.type", type(exc).__qualname__)
        self._msg._tracing.stats.add("failed")

    def _finish(self) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        self._span.end()
        self._msg._tracing.stats.add("processed")

    def __enter__(self) -> trace.Span:
        if _is_async(self._msg._client):
            raise TypeError("this entry came from redis.asyncio: use 'async with msg.process()'")
        return self._start()

    def _settle(self, exc: BaseException | None) -> bool:
        """After the handler: True when the XACK follows; otherwise end the span here, recording ``exc``."""
        if exc is None and self._ack:
            return True
        try:
            if exc is not None:
                self._fail(exc)
        finally:
            self._finish()
        return False

    def _acked(self, error: BaseException | None) -> None:
        """After the XACK (``error``: what it raised): count it or record the failure, then end the span."""
        try:
            if error is None:
                self._msg._tracing.stats.add("acked")
            elif isinstance(error, Exception):
                self._fail(error)
        finally:
            self._finish()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._settle(exc):
            try:
                self._msg.ack()
            except BaseException as ack_error:
                self._acked(ack_error)
                raise
            self._acked(None)

    async def __aenter__(self) -> trace.Span:
        if not _is_async(self._msg._client):
            raise TypeError("this entry came from a synchronous client: use 'with msg.process()'")
        return self._start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._settle(exc):
            try:
                await self._msg.ack()
            except BaseException as ack_error:
                self._acked(ack_error)
                raise
            self._acked(None)


class ClaimResult(NamedTuple):
    """What :func:`traced_xautoclaim` returns: Redis' cursor, the claimed entries, and deleted ids."""

    next_start_id: str
    messages: list[StreamMessage]
    deleted_ids: list[str]


class StreamTracing:
    """Tracing for Redis Streams producers and consumers.

    The module-level ``traced_*`` functions use a default instance bound to the global tracer provider;
    build your own to pick a provider (tests, a second pipeline), process spans that *link* to the
    producer instead of being its children (``links=True``, the conventions' choice for batch
    processing), or to turn off the per-batch ``receive`` CLIENT spans.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        links: bool = False,
        receive_spans: bool = True,
        delivery_counts: bool = True,
        stats: PropagationStats | None = None,
    ) -> None:
        from tars_1003_jaeger import __version__

        self.tracer = trace.get_tracer("tars_1003_jaeger", __version__, tracer_provider)
        self.links = links
        self.receive_spans = receive_spans
        self.delivery_counts = delivery_counts
        self.stats = stats if stats is not None else _global_stats

    # -- producer ---------------------------------------------------------------------------------

    def xadd(self, client: Any, stream: str | bytes, fields: Mapping[Any, Any], **xadd_kwargs: Any) -> Any:
        """XADD inside a PRODUCER span ``send {stream}`` with its context injected into the entry.

        Returns the entry id as Redis returned it (an awaitable with ``redis.asyncio``). ``fields`` is
        not modified; context fields already present (a forwarded entry) are replaced. On a pipeline the
        entry is only queued: the span covers the queuing and has no ``messaging.message.id``.
        """
        return _drive(client, self._xadd_op(client, _text(stream), stream, fields, xadd_kwargs))

    def _xadd_op(
        self, client: Any, name: str, stream: str | bytes, fields: Mapping[Any, Any], kwargs: dict[str, Any]
    ) -> _Op:
        attributes = {
            "messaging.system": "redis",
            "messaging.destination.name": name,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            **_server_attributes(client),
        }
        span = self.tracer.start_span(f"send {name}", kind=SpanKind.PRODUCER, attributes=attributes)
        ctx = trace.set_span_in_context(span)
        carrier = dict(fields)
        for key in _CONTEXT_FIELDS_ANY:
            carrier.pop(key, None)
        propagate.inject(carrier, context=ctx)
        self.stats.add("injected")
        token = otel_context.attach(ctx)
        try:
            entry_id = yield lambda: client.xadd(stream, carrier, **kwargs)
            if entry_id is not None and entry_id is not client:  # a pipeline returns itself: id unknown
                span.set_attribute("messaging.message.id", _text(entry_id))
            return entry_id
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.set_attribute("error.type", type(exc).__qualname__)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    # -- consumer ---------------------------------------------------------------------------------

    def xreadgroup(self, client: Any, group: str, consumer: str, streams: Mapping[Any, Any], **kwargs: Any) -> Any:
        """XREADGROUP returning a flat list of :class:`StreamMessage` (awaitable with ``redis.asyncio``).

        Reading pending history (an id other than ``">"``) is a redelivery: those entries get their
        delivery count from XPENDING.
        """
        return _drive(client, self._read_op(client, group, consumer, streams, kwargs))

    def _read_op(
        self, client: Any, group: str, consumer: str, streams: Mapping[Any, Any], kwargs: dict[str, Any]
    ) -> _Op:
        started = time.time_ns()
        reply = yield lambda: client.xreadgroup(group, consumer, dict(streams), **kwargs)
        history = {_text(s) for s, position in streams.items() if _text(position) != ">"}
        messages: list[StreamMessage] = []
        for stream_key, entries in _reply_items(reply):
            name = _text(stream_key)
            counts = None
            if name in history and self.delivery_counts and entries:
                ids = [_text(e[0]) for e in entries]
                counts = yield from self._delivery_counts_op(client, stream_key, group, consumer, ids)
            batch = self._messages(client, name, group, consumer, entries, counts)
            self._receive_span(client, name, group, consumer, batch, started)
            messages.extend(batch)
        return messages

    def xautoclaim(
        self,
        client: Any,
        stream: str | bytes,
        group: str,
        consumer: str,
        min_idle_time: int,
        start_id: str | bytes = "0-0",
        count: int | None = None,
    ) -> Any:
        """XAUTOCLAIM idle pending entries into this consumer, as :class:`ClaimResult`.

        Claimed entries are redeliveries; their delivery count (incremented by the claim) is read with
        XPENDING so the process span shows it.
        """
        claim = functools.partial(client.xautoclaim, stream, group, consumer, min_idle_time, start_id, count=count)
        return _drive(client, self._claim_op(client, stream, group, consumer, claim))

    def _claim_op(self, client: Any, stream: str | bytes, group: str, consumer: str, claim: _Call) -> _Op:
        started = time.time_ns()
        reply = yield claim
        name = _text(stream)
        next_id, entries = _text(reply[0]), reply[1]
        deleted = [_text(i) for i in (reply[2] if len(reply) > 2 else [])]
        live = []
        for entry in entries:
            if entry is None or entry[1] is None:  # Redis 6.2 reports deleted entries inline
                if entry is not None:
                    deleted.append(_text(entry[0]))
                continue
            live.append(entry)
        counts = None
        if self.delivery_counts and live:
            counts = yield from self._delivery_counts_op(client, stream, group, consumer, [_text(e[0]) for e in live])
        batch = self._messages(client, name, group, consumer, live, counts)
        self._receive_span(client, name, group, consumer, batch, started, operation="claim")
        return ClaimResult(next_id, batch, deleted)

    def _delivery_counts_op(
        self, client: Any, stream: str | bytes, group: str, consumer: str, ids: list[str]
    ) -> Generator[_Call, Any, dict[str, int]]:
        wanted = set(ids)
        counts: dict[str, int] = {}
        low = ids[0]
        page = max(len(ids), 10)
        while wanted - counts.keys():
            rows = yield functools.partial(
                client.xpending_range, stream, group, min=low, max=ids[-1], count=page, consumername=consumer
            )
            for row in rows:
                mid = _text(row["message_id"])
                if mid in wanted:
                    counts[mid] = int(row["times_delivered"])
            if len(rows) < page:
                break
            low = "(" + _text(rows[-1]["message_id"])
        return counts

    def _messages(
        self,
        client: Any,
        stream: str,
        group: str,
        consumer: str,
        entries: Iterable[Any],
        counts: dict[str, int] | None,
    ) -> list[StreamMessage]:
        out = []
        missing = malformed = 0
        # what every entry of this read shares
        message = functools.partial(
            StreamMessage, stream=stream, group=group, consumer=consumer, client=client, tracing=self
        )
        for entry_id, fields in entries:
            fields = fields or {}
            mid = _text(entry_id)
            ctx = propagate.extract(fields, getter=_GETTER)
            status: TraceStatus = "ok"
            if not trace.get_current_span(ctx).get_span_context().is_valid:
                if fields.get("traceparent", fields.get(b"traceparent")) is None:
                    status, missing = "missing", missing + 1
                else:
                    status, malformed = "malformed", malformed + 1
            delivery_count = None if counts is None else counts.get(mid)
            out.append(message(id=mid, fields=fields, context=ctx, trace_status=status, delivery_count=delivery_count))
        self.stats.add("extracted", len(out) - missing - malformed)
        if missing:
            self.stats.add("missing", missing)
        if malformed:
            self.stats.add("malformed", malformed)
        return out

    def _receive_span(
        self,
        client: Any,
        stream: str,
        group: str,
        consumer: str,
        batch: list[StreamMessage],
        started: int,
        operation: str = "receive",
    ) -> None:
        """A CLIENT span for the read that returned ``batch``, linked to every producer it carried.

        Only reads that returned entries get one: an idle consumer blocking on XREADGROUP would otherwise
        flood the backend with empty polls.
        """
        if not self.receive_spans or not batch:
            return
        links = [Link(sc) for m in batch if (sc := m.producer_span_context).is_valid]
        attributes = {
            "messaging.system": "redis",
            "messaging.destination.name": stream,
            "messaging.operation.type": "receive",
            "messaging.operation.name": operation,
            "messaging.consumer.group.name": group,
            "messaging.client.id": consumer,
            "messaging.batch.message_count": len(batch),
            **_server_attributes(client),
        }
        span = self.tracer.start_span(
            f"{operation} {stream}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            links=links,
            start_time=started,
        )
        span.end()


def _reply_items(reply: Any) -> list[tuple[Any, list[Any]]]:
    """XREADGROUP's reply as (stream, entries) pairs for RESP2 (list) and RESP3 (dict) clients."""
    if not reply:
        return []
    if isinstance(reply, dict):
        items = []
        for stream, value in reply.items():
            # RESP3 wraps the entry list in one more list
            entries = value[0] if value and isinstance(value[0], list) else value
            items.append((stream, entries))
        return items
    return [(stream, entries) for stream, entries in reply]


_default = StreamTracing()

#: ``traced_xadd(client, stream, fields, **xadd_kwargs)`` with the global tracer provider.
traced_xadd = _default.xadd
#: ``traced_xreadgroup(client, group, consumer, streams, **kwargs)`` with the global tracer provider.
traced_xreadgroup = _default.xreadgroup
#: ``traced_xautoclaim(client, stream, group, consumer, min_idle_time, start_id, count)``.
traced_xautoclaim = _default.xautoclaim
