"""ReconnectingWebSocketClient: the client side of TARS-1001, and its thread-safe synchronous facade.

`websockets` retries only a failed handshake, randomises only its first retry, and forgets
subscriptions and position when an established connection drops; that is how v1.0.0 dashboards went
stale until someone pressed refresh. This client owns the whole life of the connection instead:

* liveness: any inbound frame counts; otherwise a ping every ``heartbeat_interval``; after
  ``max_missed_heartbeats`` unanswered pings the transport is aborted at once (a close handshake on a
  dead network would wait for a peer that is gone);
* reconnect delays: exponential with full jitter on *every* attempt (so a hub restart does not bring all
  clients back in the same instant), capped, reset only after a connection stayed healthy; close codes
  1012/1013 and HTTP 503 ``Retry-After`` from the hub are honoured;
* the desired subscriptions are the source of truth: after a reconnect they are restored in one frame,
  each resuming after the last sequence number received, so handlers see each message exactly once and in
  order; what the hub can no longer replay is reported as ``RESYNC_REQUIRED``, never skipped silently;
* publishes wait in a bounded outbox until the hub acknowledges them; resends carry the same idempotency
  key, so a publish whose ack was lost is not duplicated;
* it offers both ``tars.ws.v1.0.1`` and ``tars.ws.v1.0.0`` and speaks whichever the hub selects (v1.0.0
  while the hub's flag is off), like the browser client ``tars-ws.js``: a rollback degrades it (no
  replay: every reconnect is reported as a resync) instead of locking it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import itertools
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tars_1001_ws.protocol import (
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    MAX_CHANNEL_NAME,
    SUBPROTOCOL,
    SUBPROTOCOL_V100,
    SUBPROTOCOLS,
    decode,
    encode,
    retry_after_hint,
)

log = logging.getLogger("tars_1001_ws.client")


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECOVERING = "recovering"
    RECOVERED = "recovered"
    RESYNC_REQUIRED = "resync_required"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass(frozen=True)
class Message:
    """One delivered message: ``seq`` counts 1, 2, 3... per channel within ``epoch``
    (``0`` and ``""`` when the hub speaks v1.0.0, which numbers nothing)."""

    channel: str
    seq: int
    data: Any
    epoch: str


@dataclass(frozen=True)
class ResyncRequired:
    """A gap the hub could not replay: everything after (last_epoch, last_seq) up to (epoch, first_seq - 1).

    ``reason`` is ``epoch_changed`` (the hub restarted or forgot the channel: the end of the old epoch is
    unknown), ``evicted`` (the gap outlived the replay buffer) or ``no_replay`` (this connection or the one
    before it spoke v1.0.0, the hub's flag being off: what was published while disconnected is unknown;
    ``epoch`` is ``""`` and ``first_seq`` 0 on a v1.0.0 connection). Delivery continues from ``first_seq``;
    the application should reload the channel's state from its source of truth.
    """

    channel: str
    last_epoch: str | None
    last_seq: int
    epoch: str
    first_seq: int
    reason: str

    @property
    def missing(self) -> str:
        if self.reason == "no_replay":
            return f"{self.channel}: whatever was published while disconnected (v1.0.0 has no replay)"
        if self.reason == "evicted":
            return f"{self.channel}: seq {self.last_seq + 1}..{self.first_seq - 1} of epoch {self.epoch}"
        tail = f" and seq 1..{self.first_seq - 1} of epoch {self.epoch}" if self.first_seq > 1 else ""
        return f"{self.channel}: everything after seq {self.last_seq} of epoch {self.last_epoch}{tail}"


@dataclass(frozen=True)
class StateEvent:
    """What state listeners receive.

    ``reason`` and ``delay`` (seconds until the next attempt) are set for DISCONNECTED; ``complete``
    for RECOVERED (false when any channel needed a resync); ``resync`` for RESYNC_REQUIRED; ``protocol``
    (the subprotocol the hub selected) for CONNECTED.
    """

    state: ConnectionState
    attempt: int = 0
    reason: str | None = None
    delay: float | None = None
    complete: bool | None = None
    resync: ResyncRequired | None = None
    protocol: str | None = None


class ClientError(Exception):
    """Base class of this client's errors."""


class ConnectError(ClientError):
    """The first connection could not be made (bad URL, refused, rejected handshake, wrong protocol)."""


class ClientClosed(ClientError):
    """The client was closed; pending publications fail with this."""


class OutboxFull(ClientError):
    """The outbox is at its bound and the overflow policy is ``reject``."""


class _ConnectionLost(Exception):
    """Internal: why a session ended (becomes the DISCONNECTED reason)."""

    def __init__(self, reason: str, retry_after: float | None = None, restart: bool = False) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.restart = restart


Handler = Callable[[Message], Any]
Listener = Callable[[StateEvent], Any]


@dataclass
class _Subscription:
    handler: Handler
    epoch: str | None = None
    received: int = 0  # last seq put in the delivery queue: where a resubscribe resumes
    delivered: tuple[str | None, int] = (None, 0)  # (epoch, seq) a handler last returned from
    resync: Callable[[ResyncRequired], Any] | None = None
    confirmed: bool = False  # the hub confirmed it on some connection: a reconnect must account for the gap


class Publication:
    """A publish in the outbox; ``await pub.wait()`` gives the sequence number the hub assigned (``None``
    from a hub speaking v1.0.0)."""

    __slots__ = ("channel", "data", "future", "key", "sent_on", "size", "text")

    def __init__(self, channel: str, data: Any, key: str, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.data = data
        self.key = key
        try:  # what the hub would refuse is refused here, before it can sit in the outbox
            self.text = encode({"type": "publish", "id": key, "channel": channel, "data": data, "key": key})
            self.size = len(self.text.encode())
        except UnicodeEncodeError:
            raise ValueError("data holds a string with a lone UTF-16 surrogate: not valid Unicode") from None
        except ValueError as exc:
            raise ValueError(f"data is not standard JSON: {exc}") from None
        self.future: asyncio.Future[int | None] = loop.create_future()
        self.sent_on = -1  # connection number it was last sent on

    async def wait(self, timeout: float | None = None) -> int | None:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self.future)


class ReconnectingWebSocketClient:
    """A WebSocket client that keeps its subscriptions and loses no message across disconnects.

    Use ``async with ReconnectingWebSocketClient(url) as client:``; entering waits for the first connection
    (at most ``connect_timeout`` seconds, retrying with backoff) and raises :class:`ConnectError` with the
    cause if it never comes. After that the client reconnects on its own until :meth:`close`.
    ``stable_after`` (default: one heartbeat interval) is how long a connection must stay up before the
    backoff resets, so a hub that accepts and drops at once is not hammered. ``connect_kwargs`` go to
    ``websockets.asyncio.client.connect`` (``ssl``, ``additional_headers``, or ``host``/``port`` to dial
    somewhere else than the URL says).
    """

    def __init__(
        self,
        url: str,
        *,
        heartbeat_interval: float = 30.0,
        heartbeat_timeout: float = 10.0,
        max_missed_heartbeats: int = 3,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        stable_after: float | None = None,
        connect_timeout: float | None = 30.0,
        open_timeout: float = 10.0,
        request_timeout: float = 10.0,
        close_timeout: float = 2.0,
        outbox_max_messages: int = 1000,
        outbox_max_bytes: int = 1 << 20,
        outbox_overflow: Literal["reject", "drop_oldest"] = "reject",
        inbox_max: int = 10_000,
        client_id: str | None = None,
        rng: random.Random | None = None,
        protocols: Iterable[str] = SUBPROTOCOLS,
        **connect_kwargs: Any,
    ) -> None:
        try:
            parse_uri(url)
        except InvalidURI as exc:
            raise ValueError(f"invalid WebSocket URL {url!r}: {exc}") from None
        if heartbeat_interval <= 0 or heartbeat_timeout <= 0 or max_missed_heartbeats < 1:
            raise ValueError("heartbeat_interval and heartbeat_timeout must be > 0, max_missed_heartbeats >= 1")
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if outbox_overflow not in ("reject", "drop_oldest"):
            raise ValueError("outbox_overflow is 'reject' or 'drop_oldest'")
        self.protocols = tuple(protocols)
        if not self.protocols or not set(self.protocols) <= set(SUBPROTOCOLS):
            raise ValueError(f"protocols must be a non-empty selection of {', '.join(SUBPROTOCOLS)}")
        self.url = url
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.max_missed_heartbeats = max_missed_heartbeats
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = heartbeat_interval if stable_after is None else stable_after
        self.connect_timeout = connect_timeout
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.close_timeout = close_timeout
        self.outbox_max_messages = outbox_max_messages
        self.outbox_max_bytes = outbox_max_bytes
        self.outbox_overflow = outbox_overflow
        self.client_id = client_id or uuid.uuid4().hex[:12]
        self._rng = rng or random.Random()
        self._connect_kwargs = {"proxy": None, **connect_kwargs}
        self._inbox_max = inbox_max

        self.state = ConnectionState.CLOSED
        self.protocol: str | None = None  # what the hub selected for the current (or last) connection
        self.resyncs: list[ResyncRequired] = []
        self.stats = {
            "connections": 0,
            "duplicates_dropped": 0,
            "gaps_detected": 0,
            "pings_sent": 0,
            "heartbeats_missed": 0,
        }
        self._subs: dict[str, _Subscription] = {}
        self._outbox: deque[Publication] = deque()
        self._outbox_bytes = 0
        self._listeners: list[Listener] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._keys = itertools.count(1)
        self._req_ids = itertools.count(1)
        self._requests: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ws: ClientConnection | None = None
        self._conn_no = 0
        self._runner: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[tuple[_Subscription, Message]] | None = None
        self._outbox_changed: asyncio.Event | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closing = False
        self._closed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public API -----------------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` (sync or async) on every state change; exceptions are logged."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    @property
    def connected(self) -> bool:
        return self._ws is not None and self.state in (ConnectionState.CONNECTED, ConnectionState.RECOVERED)

    async def start(self) -> None:
        """Start the connection loop and wait for the first connection (see ``connect_timeout``)."""
        if self._runner is not None:
            raise RuntimeError("client already started")
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._inbox = asyncio.Queue(self._inbox_max)
        self._outbox_changed = asyncio.Event()
        self._ready = self._loop.create_future()
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name=f"ws-dispatch-{self.client_id}")
        self._runner = asyncio.create_task(self._run(), name=f"ws-run-{self.client_id}")
        try:
            async with asyncio.timeout(self.connect_timeout):
                await asyncio.shield(self._ready)
        except TimeoutError:
            await self.close()
            raise ConnectError(
                f"could not connect to {self.url} within {self.connect_timeout:g} s: {self._last_error or 'no answer'}"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def __aenter__(self) -> ReconnectingWebSocketClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def subscribe(
        self,
        channel: str,
        handler: Handler,
        *,
        on_resync: Callable[[ResyncRequired], Any] | None = None,
    ) -> None:
        """Deliver every message of ``channel`` from now on to ``handler`` (sync or async), in order.

        If connected, waits for the hub to confirm; otherwise the subscription is made on reconnect.
        ``on_resync`` is called (besides the RESYNC_REQUIRED state event) when a gap cannot be replayed.
        """
        if not isinstance(channel, str) or not 0 < len(channel) <= MAX_CHANNEL_NAME:
            raise ValueError(f"channel must be a non-empty string of at most {MAX_CHANNEL_NAME} characters")
        sub = self._subs.get(channel)
        if sub is not None:
            sub.handler, sub.resync = handler, on_resync
            return
        self._subs[channel] = _Subscription(handler, resync=on_resync)
        if self._ws is not None:  # also during recovery: a second subscribe frame is harmless
            with contextlib.suppress(_ConnectionLost, TimeoutError):
                await self._request(
                    {"type": "subscribe", "channels": [{"channel": channel, "epoch": None, "seq": None}]}
                )

    async def unsubscribe(self, channel: str) -> None:
        if self._subs.pop(channel, None) is not None and self._ws is not None:
            with contextlib.suppress(_ConnectionLost, TimeoutError):
                await self._request({"type": "unsubscribe", "channels": [channel]})

    @property
    def subscriptions(self) -> dict[str, tuple[str | None, int]]:
        """Channel -> (epoch, last sequence number a handler has returned from)."""
        return {name: sub.delivered for name, sub in self._subs.items()}

    async def publish(self, channel: str, data: Any, *, key: str | None = None) -> Publication:
        """Queue ``data`` for ``channel``; sent now if connected, else right after the next reconnect.

        The outbox holds at most ``outbox_max_messages`` / ``outbox_max_bytes`` unacknowledged
        publications. When full, ``reject`` raises :class:`OutboxFull` (the caller decides), and
        ``drop_oldest`` fails the oldest publication's future with :class:`OutboxFull` to make room.
        """
        if self._closing or self._loop is None:
            raise ClientClosed("client is not running")
        pub = Publication(channel, data, key or f"{self.client_id}-{next(self._keys)}", self._loop)
        if pub.size > self.outbox_max_bytes:
            raise OutboxFull(f"publication of {pub.size} bytes exceeds outbox_max_bytes={self.outbox_max_bytes}")
        while len(self._outbox) >= self.outbox_max_messages or self._outbox_bytes + pub.size > self.outbox_max_bytes:
            if self.outbox_overflow == "reject":
                raise OutboxFull(f"outbox full ({len(self._outbox)} messages, {self._outbox_bytes} bytes)")
            dropped = self._outbox.popleft()
            self._outbox_bytes -= dropped.size
            _fail(dropped.future, OutboxFull("dropped from a full outbox (drop_oldest)"))
        self._outbox.append(pub)
        self._outbox_bytes += pub.size
        assert self._outbox_changed is not None
        self._outbox_changed.set()
        return pub

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop reconnecting, close the connection politely if it answers, abort it if not.

        Idempotent, callable from any state (also during a backoff or a hanging handshake), and returns
        within ``timeout`` seconds. Unacknowledged publications fail with :class:`ClientClosed`.
        """
        if self._closing:
            if self._closed is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._closed.wait()
            return
        self._closing = True
        deadline = time.monotonic() + timeout
        ws = self._ws
        if ws is not None:
            try:
                async with asyncio.timeout(min(self.close_timeout, timeout / 2)):
                    await ws.close()
            except Exception:  # TimeoutError or a connection already broken: abort below either way
                pass
            ws.transport.abort()
        # close() may be called from a handler, i.e. from the dispatcher itself: that task is stopped
        # once this call returns, not cancelled under our own feet
        current = asyncio.current_task()
        tasks = [t for t in (self._runner, self._dispatcher) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        if current is not None and current in (self._runner, self._dispatcher):
            asyncio.get_running_loop().call_soon(current.cancel)
        while self._outbox:
            _fail(self._outbox.popleft().future, ClientClosed("client closed before the hub acknowledged"))
        self._outbox_bytes = 0
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ClientClosed("closed before connecting"))
            self._ready.exception()  # mark retrieved
        self._emit(StateEvent(ConnectionState.CLOSED))
        if self._closed is not None:
            self._closed.set()

    # -- connection loop ------------------------------------------------------------------------------
    _last_error: str | None = None

    def backoff_delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, initial * 2**attempt)] (AWS architecture blog, 2015)."""
        return self._rng.uniform(0.0, min(self.backoff_max, self.backoff_initial * (2 ** min(attempt, 30))))

    async def _run(self) -> None:
        attempt = 0
        ever_connected = False
        while not self._closing:
            self._emit(StateEvent(ConnectionState.CONNECTING, attempt=attempt))
            retry_after: float | None = None
            try:
                ws = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = reason = _describe(exc)
                fatal = _fatal(exc)
                if fatal is not None and not ever_connected:
                    self._fail_ready(ConnectError(f"{self.url}: {fatal}"))
                    return
                if isinstance(exc, InvalidStatus):
                    retry_after = _retry_after_header(exc)
            else:
                ever_connected = True
                connected_at = time.monotonic()
                reason = "connection lost"
                try:
                    await self._session(ws)
                except _ConnectionLost as lost:
                    reason, retry_after = str(lost), lost.retry_after
                    if lost.restart:
                        attempt = 0
                except Exception as exc:  # e.g. the hub never answered the resubscribe: start over
                    reason = f"session failed: {_describe(exc)}"
                    log.warning("%s: %s", self.url, reason)
                finally:
                    self._ws = None
                    ws.transport.abort()
                    for fut in self._requests.values():
                        if not fut.done():
                            fut.set_exception(_ConnectionLost(reason))
                    self._requests.clear()
                if time.monotonic() - connected_at >= self.stable_after:
                    attempt = 0
            if self._closing:
                return
            delay = self.backoff_delay(attempt)
            if retry_after is not None:
                delay += retry_after
            attempt += 1
            self._emit(StateEvent(ConnectionState.DISCONNECTED, attempt=attempt, reason=reason, delay=delay))
            log.info("%s: %s; reconnecting in %.2f s", self.url, reason, delay)
            await asyncio.sleep(delay)

    async def _open(self) -> _LivenessConnection:
        ws = await connect(
            self.url,
            subprotocols=[Subprotocol(p) for p in self.protocols],
            ping_interval=None,  # liveness is ours: counts any frame, aborts on death
            open_timeout=self.open_timeout,
            close_timeout=self.close_timeout,
            compression=None,
            create_connection=_LivenessConnection,
            **self._connect_kwargs,
        )
        assert isinstance(ws, _LivenessConnection)
        if ws.subprotocol not in self.protocols:
            ws.transport.abort()
            raise _ProtocolMismatch(
                f"the hub did not negotiate {' or '.join(self.protocols)}: it is a v1.0.0 build (which knows no "
                f"subprotocol){'' if SUBPROTOCOL_V100 in self.protocols else ' or the TARS-1001 flag is off'}"
            )
        return ws

    def _fail_ready(self, exc: Exception) -> None:
        self._last_error = str(exc)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(exc)

    async def _session(self, ws: _LivenessConnection) -> None:
        """Run one connection: recover subscriptions, flush the outbox, then read until it dies."""
        self._ws = ws
        self._conn_no += 1
        self.stats["connections"] += 1
        self.protocol = ws.subprotocol
        self._emit(StateEvent(ConnectionState.CONNECTED, protocol=self.protocol))
        reader = asyncio.create_task(self._read_loop(ws))
        heartbeat = asyncio.create_task(self._heartbeat(ws), name="heartbeat")
        tasks: list[asyncio.Future[Any]] = [reader, heartbeat]
        try:
            if self._subs:
                self._emit(StateEvent(ConnectionState.RECOVERING))
                specs = [
                    {"channel": name, "epoch": sub.epoch, "seq": sub.received if sub.epoch else None}
                    for name, sub in self._subs.items()
                ]
                resyncs_before = len(self.resyncs)
                recovering = asyncio.ensure_future(self._request({"type": "subscribe", "channels": specs}))
                tasks.append(recovering)
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if recovering not in done:
                    _raise_from(done)
                recovering.result()
                self._emit(StateEvent(ConnectionState.RECOVERED, complete=len(self.resyncs) == resyncs_before))
            else:
                self._emit(StateEvent(ConnectionState.RECOVERED, complete=True))
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            sender = asyncio.create_task(self._send_loop(ws))
            tasks.append(sender)
            done, _ = await asyncio.wait([reader, heartbeat, sender], return_when=asyncio.FIRST_COMPLETED)
            _raise_from(done)
        finally:
            # every task of this connection ends with it, and its outcome is collected (no stray warnings)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        ws = self._ws
        if ws is None:
            raise _ConnectionLost("not connected")
        assert self._loop is not None
        req_id = next(self._req_ids)
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._requests[req_id] = fut
        try:
            await ws.send(encode({**frame, "id": req_id}))
            async with asyncio.timeout(self.request_timeout):
                return await fut
        except ConnectionClosed as exc:
            raise _ConnectionLost(f"connection closed: {exc}") from None
        finally:
            self._requests.pop(req_id, None)

    async def _send_loop(self, ws: ClientConnection) -> None:
        """Send every publication not yet sent on this connection, in order; acks remove them."""
        assert self._outbox_changed is not None
        conn_no = self._conn_no
        try:
            while True:
                self._outbox_changed.clear()
                for pub in list(self._outbox):
                    if pub.sent_on != conn_no and not pub.future.done():
                        pub.sent_on = conn_no
                        await ws.send(pub.text)
                await self._outbox_changed.wait()
        except ConnectionClosed as exc:
            raise _ConnectionLost(_closed_reason(exc), *_close_hints(exc)) from None

    async def _read_loop(self, ws: ClientConnection) -> None:
        try:
            while True:
                raw = await ws.recv()
                try:
                    frame = decode(raw)
                except ValueError as exc:
                    log.warning("%s: ignoring malformed frame: %s", self.url, exc)
                    continue
                await self._on_frame(frame)
        except ConnectionClosed as exc:
            raise _ConnectionLost(_closed_reason(exc), *_close_hints(exc)) from None

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "msg":
            await self._on_msg(frame)
        elif kind == "subscribed":
            self._on_subscribed(frame)  # before any replayed msg behind it is read
            self._resolve(frame)
        elif kind == "ack":
            self._on_ack(frame)
        elif kind in ("unsubscribed", "error"):
            if kind == "error":
                log.warning("%s: hub error %s: %s", self.url, frame.get("code"), frame.get("message"))
            if not self._resolve(frame) and kind == "error" and isinstance(frame.get("id"), str):
                self._fail_publication(frame)

    def _resolve(self, frame: dict[str, Any]) -> bool:
        fut = self._requests.get(frame.get("id"))  # type: ignore[arg-type]
        if fut is None or fut.done():
            return False
        if frame["type"] == "error":
            fut.set_exception(ClientError(f"hub refused: {frame.get('code')}: {frame.get('message')}"))
        else:
            fut.set_result(frame)
        return True

    def _on_subscribed(self, frame: dict[str, Any]) -> None:
        for entry in frame.get("channels", []):
            sub = self._subs.get(entry.get("channel"))
            if sub is None:
                continue
            if self.protocol != SUBPROTOCOL:  # v1.0.0: no position, so no resume after this connection
                epoch, first, reason = "", 0, "no_replay" if sub.confirmed else None
            else:
                epoch, first = entry["epoch"], int(entry["first"])
                if sub.epoch is None:  # a fresh subscription, or one last held on a v1.0.0 connection
                    reason = "no_replay" if sub.confirmed else None
                else:
                    reason = None if entry.get("recovered", False) else entry.get("reason") or "unknown"
            if reason is not None:
                event = ResyncRequired(entry["channel"], sub.epoch, sub.received, epoch, first, reason)
                self.resyncs.append(event)
                log.warning("%s: resync required, missing %s", self.url, event.missing)
                self._emit(StateEvent(ConnectionState.RESYNC_REQUIRED, resync=event))
                if sub.resync is not None:
                    self._invoke(sub.resync, event)
            sub.epoch = epoch or None
            sub.received = max(0, first - 1)
            sub.confirmed = True

    async def _on_msg(self, frame: dict[str, Any]) -> None:
        sub = self._subs.get(frame.get("channel"))  # type: ignore[arg-type]
        if sub is None:
            return  # unsubscribed meanwhile
        assert self._inbox is not None
        if self.protocol != SUBPROTOCOL:  # v1.0.0: nothing to order or deduplicate by
            await self._inbox.put((sub, Message(frame["channel"], 0, frame.get("data"), "")))
            return
        if frame.get("epoch") != sub.epoch:
            return  # a frame from before a resync
        seq = frame["seq"]
        if seq <= sub.received:
            self.stats["duplicates_dropped"] += 1
            return
        if seq != sub.received + 1:
            self.stats["gaps_detected"] += 1  # cannot happen with a correct hub; reconnect to replay it
            raise _ConnectionLost(f"gap on {frame['channel']}: expected seq {sub.received + 1}, got {seq}")
        sub.received = seq
        await self._inbox.put((sub, Message(frame["channel"], seq, frame.get("data"), sub.epoch or "")))

    def _on_ack(self, frame: dict[str, Any]) -> None:
        key = frame.get("key") or frame.get("id")  # a v1.0.0 ack echoes only the id (= the key)
        for pub in self._outbox:
            if pub.key == key:
                self._outbox.remove(pub)
                self._outbox_bytes -= pub.size
                if not pub.future.done():
                    seq = frame.get("seq")
                    pub.future.set_result(int(seq) if seq is not None else None)
                return

    def _fail_publication(self, frame: dict[str, Any]) -> None:
        for pub in self._outbox:
            if pub.key == frame.get("id"):
                self._outbox.remove(pub)
                self._outbox_bytes -= pub.size
                _fail(pub.future, ClientError(f"hub refused publish: {frame.get('message')}"))
                return

    async def _heartbeat(self, ws: _LivenessConnection) -> None:
        """Declare the connection dead after ``max_missed_heartbeats`` pings with no answer and no frame.

        Sleeps until ``interval`` after the last inbound bytes (a message, the hub's own ping, a pong),
        then pings back to back, so a silent drop is detected within interval + missed x timeout.
        """
        missed = 0
        while True:
            if self._inbox is not None and self._inbox.full():
                ws.last_rx = time.monotonic()  # we stopped reading (slow handlers), the peer did not
            idle_for = time.monotonic() - ws.last_rx
            if idle_for < self.heartbeat_interval:
                await asyncio.sleep(self.heartbeat_interval - idle_for)
                continue
            sent_at = time.monotonic()
            self.stats["pings_sent"] += 1
            try:
                async with asyncio.timeout(self.heartbeat_timeout):
                    pong = await ws.ping()
                    await pong
                missed = 0
            except TimeoutError:
                if ws.last_rx > sent_at:
                    missed = 0
                    continue
                missed += 1
                self.stats["heartbeats_missed"] += 1
                if missed >= self.max_missed_heartbeats:
                    ws.transport.abort()  # no close handshake with a peer that is gone
                    raise _ConnectionLost(f"{missed} heartbeats unanswered: connection is dead") from None
            except ConnectionClosed as exc:
                raise _ConnectionLost(_closed_reason(exc), *_close_hints(exc)) from None

    async def _dispatch_loop(self) -> None:
        """Call handlers one message at a time, outside the reader, so a slow handler delays only itself."""
        assert self._inbox is not None
        while True:
            # The reader already enforced exactly-once, in-order; here only drop what was unsubscribed.
            sub, msg = await self._inbox.get()
            if self._subs.get(msg.channel) is not sub:
                continue
            try:
                result = sub.handler(msg)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: handler for %s failed on seq %d", self.url, msg.channel, msg.seq)
            sub.delivered = (msg.epoch, msg.seq)

    def _emit(self, event: StateEvent) -> None:
        self.state = event.state
        for listener in list(self._listeners):
            self._invoke(listener, event)

    def _invoke(self, fn: Callable[[Any], Any], arg: Any) -> None:
        try:
            result = fn(arg)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._background.add(task)  # keep a reference until done (the loop holds only weak ones)
                task.add_done_callback(self._background.discard)
        except Exception:
            log.exception("%s: listener %r failed", self.url, fn)


class _ProtocolMismatch(Exception):
    pass


class _LivenessConnection(ClientConnection):
    """Remembers when bytes last arrived: data, the hub's pings, pongs, all prove the peer is alive.

    Hooked at ``asyncio.Protocol.data_received`` (a stable interface), so frames websockets handles
    internally (pings) count too, and a busy or hub-pinged connection never needs our own ping.
    """

    last_rx = 0.0

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        super().data_received(data)


def _fail(future: asyncio.Future[Any], exc: Exception) -> None:
    """Fail a publication; nobody may be awaiting it, so mark the exception retrieved (no loop warning)."""
    if not future.done():
        future.set_exception(exc)
        future.exception()


def _raise_from(done: Iterable[asyncio.Future[Any]]) -> None:
    """Re-raise why the session ended; the heartbeat's verdict wins over the reader's closed socket."""
    for task in sorted(done, key=lambda t: not (isinstance(t, asyncio.Task) and t.get_name() == "heartbeat")):
        exc = task.exception()
        if exc is not None:
            raise exc
    raise _ConnectionLost("connection task ended")


def _closed_reason(exc: ConnectionClosed) -> str:
    frame = exc.rcvd
    if frame is None:
        return "connection lost (no close frame)"
    return f"closed by hub: {frame.code} {frame.reason}".rstrip()


def _close_hints(exc: ConnectionClosed) -> tuple[float | None, bool]:
    """(retry_after, restart) from a 1012/1013 close frame."""
    frame = exc.rcvd
    if frame is None or frame.code not in (CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER):
        return None, False
    return retry_after_hint(frame.reason), frame.code == CLOSE_SERVICE_RESTART


def _retry_after_header(exc: InvalidStatus) -> float | None:
    if exc.response.status_code not in (429, 503):
        return None
    value = exc.response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _fatal(exc: Exception) -> str | None:
    """Why retrying the *first* connection is pointless, or None when it is worth retrying."""
    if isinstance(exc, _ProtocolMismatch):
        return str(exc)
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if 400 <= status < 500 and status not in (408, 429):
            return f"the hub rejected the handshake with HTTP {status}"
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there, or a firewall rejects it)"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({type(exc).__name__})"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (InvalidStatus, _ProtocolMismatch)) else f"{type(exc).__name__}: {text}"


class SyncReconnectingWebSocketClient:
    """The same client for threaded code: one event-loop thread owns the connection.

    Every method may be called from any thread; calls are marshalled into the client's loop with
    ``run_coroutine_threadsafe``. Handlers and listeners run on that loop's thread, so they must not block
    for long (hand work to a queue). ``close()`` is idempotent and returns within its timeout.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._client = ReconnectingWebSocketClient(url, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tars-ws-{self._client.client_id}", daemon=True
        )
        self._lock = threading.Lock()
        self._closed = False
        self._thread.start()

    @property
    def client(self) -> ReconnectingWebSocketClient:
        return self._client

    @property
    def state(self) -> ConnectionState:
        return self._client.state

    def _run(self, coro: Awaitable[Any], timeout: float | None) -> Any:
        if self._closed:
            if inspect.iscoroutine(coro):
                coro.close()
            raise ClientClosed("client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def connect(self, timeout: float | None = None) -> None:
        self._run(self._client.start(), timeout)

    def add_listener(self, listener: Listener) -> None:
        self._loop.call_soon_threadsafe(self._client.add_listener, listener)

    def subscribe(
        self,
        channel: str,
        handler: Handler,
        *,
        timeout: float | None = 30.0,
        on_resync: Callable[[ResyncRequired], Any] | None = None,
    ) -> None:
        self._run(self._client.subscribe(channel, handler, on_resync=on_resync), timeout)

    def unsubscribe(self, channel: str, *, timeout: float | None = 30.0) -> None:
        self._run(self._client.unsubscribe(channel), timeout)

    def publish(self, channel: str, data: Any, *, key: str | None = None, wait: float | None = None) -> str:
        """Queue a publication and return its idempotency key; with ``wait`` also wait for the ack."""
        pub: Publication = self._run(self._client.publish(channel, data, key=key), 30.0)
        if wait is not None:
            self._run(pub.wait(wait), wait + 1.0)
        return pub.key

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._client.close(timeout * 0.8), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SyncReconnectingWebSocketClient:
        self.connect(self._client.connect_timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
