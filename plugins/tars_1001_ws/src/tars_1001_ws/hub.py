"""The hub: the server side of TARS-1001 (``python -m tars_1001_ws.hub --host H --port P``).

Every channel numbers its messages 1, 2, 3... within an *epoch* (a random id minted when the channel is
created, so a restarted hub, which has lost its buffers, can never be mistaken for the old one) and keeps
the last messages in a replay buffer bounded by count and age. A subscriber that comes back with the last
(epoch, seq) it saw gets the gap replayed before live traffic, or is told exactly what cannot be replayed.
Publishes carry an idempotency key so a client may resend after a reconnect without duplicating.

No frame a client sends can cost another client its connection: frames are parsed strictly (standard
JSON, bounded nesting, no lone surrogates: :func:`~tars_1001_ws.protocol.decode`), a request is checked
whole before anything changes, every frame is encoded to UTF-8 once, before it is stored or queued, and
a send that fails for any reason ends only that one connection.

All channel state is mutated synchronously inside one event loop, between awaits: a subscribe computes
its replay and registers the subscriber in one step, so no live message can slip between the replay and
the live stream, and no lock is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from tars_1001_ws.protocol import (
    CLIENT_JS_PATH,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    DEFAULT_FLAG,
    INFO_PATH,
    MAX_CHANNEL_NAME,
    METRICS_PATH,
    SUBPROTOCOL,
    SUBPROTOCOL_V100,
    FrameError,
    decode,
    encode,
)
from tars_core.errors import TargetError
from tars_core.flags import FeatureFlags, is_on

log = logging.getLogger("tars_1001_ws.hub")

HUB_VERSION = "1.0.1"


class _Channel:
    """One channel's sequence, replay buffer and idempotency keys."""

    __slots__ = ("buffer", "epoch", "head", "keys", "name", "subscribers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch = secrets.token_hex(8)
        self.head = 0
        self.buffer: deque[tuple[int, float, bytes]] = deque()  # (seq, monotonic time, UTF-8 msg frame)
        self.keys: OrderedDict[str, int] = OrderedDict()
        self.subscribers: set[_Session] = set()

    def oldest(self) -> int:
        """The first sequence number still replayable (``head + 1`` when the buffer is empty)."""
        return self.buffer[0][0] if self.buffer else self.head + 1

    def evict(self, now: float, max_messages: int, max_age: float) -> None:
        while self.buffer and (len(self.buffer) > max_messages or self.buffer[0][1] < now - max_age):
            self.buffer.popleft()


class _Session:
    """One connected client: its outbound queue is drained by its own writer task.

    Fan-out only enqueues, so one slow client never delays the others; a client whose queue grows past
    ``max_pending`` is disconnected (it will reconnect and replay) instead of growing the hub's memory.
    """

    __slots__ = ("channels", "conn", "queue", "v101")

    def __init__(self, conn: ServerConnection, v101: bool) -> None:
        self.conn = conn
        self.v101 = v101
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()  # UTF-8 text frames, encoded once for everyone
        self.channels: set[str] = set()

    async def write_loop(self) -> None:
        """Send queued frames; a send that fails for any other reason than a closed connection closes
        this connection with 1011 (it would otherwise stop receiving without knowing) and no other."""
        try:
            while True:
                frame = await self.queue.get()
                await self.conn.send(frame, text=True)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("sending to %s failed: closing that connection only", self.conn.remote_address)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(1011, "hub could not send a frame"), 5.0)
            self.conn.transport.abort()


class Hub:
    """Channel state, the WebSocket handler and the HTTP side endpoints (info, metrics).

    ``flags_redis``/``flags_key``/``flag`` make the hub obey the TARS-1001 feature flag: while the flag
    is off it refuses to negotiate v1.0.1 and behaves like the v1.0.0 hub, so ``tars-run rollback`` really
    turns the fixed behaviour off. Without ``flags_redis`` v1.0.1 is always offered (``legacy`` forces
    v1.0.0, which the benchmark uses as its "before").
    """

    def __init__(
        self,
        *,
        replay_max_messages: int = 1000,
        replay_max_age: float = 120.0,
        dedup_max_keys: int = 10_000,
        max_pending: int = 10_000,
        max_clients: int | None = None,
        retry_after: int = 2,
        flags_redis: str | None = None,
        flags_key: str = "tars:feature_flags",
        flag: str = DEFAULT_FLAG,
        flag_refresh: float = 0.5,
        legacy: bool = False,
    ) -> None:
        self.replay_max_messages = replay_max_messages
        self.replay_max_age = replay_max_age
        self.dedup_max_keys = dedup_max_keys
        self.max_pending = max_pending
        self.max_clients = max_clients
        self.retry_after = retry_after
        self.flags_redis = flags_redis
        self.flags_key = flags_key
        self.flag = flag
        self.flag_refresh = flag_refresh
        self.legacy = legacy
        self.hub_id = secrets.token_hex(6)
        self.enabled = not legacy and flags_redis is None
        self.draining = False
        self.stopping = asyncio.Event()
        self.channels: dict[str, _Channel] = {}
        self.sessions: set[_Session] = set()
        # handshakes accepted only to be closed at once with a code and reason a browser can read
        self._refused: weakref.WeakKeyDictionary[ServerConnection, tuple[int, str]] = weakref.WeakKeyDictionary()
        self.registry = CollectorRegistry()
        self._connections = Gauge("tars_ws_hub_connections", "Connected clients", ["protocol"], registry=self.registry)
        self._published = Counter("tars_ws_hub_published", "Messages published", registry=self.registry)
        self._duplicates = Counter(
            "tars_ws_hub_duplicate_publishes", "Publishes dropped by idempotency key", registry=self.registry
        )
        self._subscribes = Counter(
            "tars_ws_hub_subscribe_requests", "Subscribe frames received", registry=self.registry
        )
        self._replayed = Counter("tars_ws_hub_replayed", "Messages replayed on resubscribe", registry=self.registry)
        self._resyncs = Counter(
            "tars_ws_hub_resync_required",
            "Resubscribes whose gap could not be replayed",
            ["reason"],
            registry=self.registry,
        )
        self._slow = Counter(
            "tars_ws_hub_slow_consumer_disconnects", "Clients dropped for not reading", registry=self.registry
        )
        self._enabled_gauge = Gauge(
            "tars_ws_hub_v101_enabled", "1 when the v1.0.1 protocol is offered", registry=self.registry
        )
        self._enabled_gauge.set(1 if self.enabled else 0)

    # -- feature flag -------------------------------------------------------------------------------
    async def watch_flag(self) -> None:
        """Poll the flag hash; keep the last known value while Redis is unreachable (log once per outage).

        Reads through the core's async :class:`FeatureFlags` (timeouts, failures as ``TargetError``) so a
        slow Redis delays only this task, never the event loop that serves the clients. Stops on
        :attr:`stopping` rather than on cancellation alone: redis-py can turn a cancellation that lands
        inside a command into a connection error, which the loop would then survive.
        """
        if self.flags_redis is None or self.legacy:
            return
        # no retrying inside a read (the core's default rides out 30 s of outage): this loop polls every
        # flag_refresh seconds anyway and must notice the outage at once to keep serving the last value
        flags = FeatureFlags(self.flags_redis, self.flags_key, connect_timeout=1.0, read_timeout=1.0, reconnect_for=0.0)
        failing = False
        try:
            while not self.stopping.is_set():
                try:
                    value = await flags.get(self.flag)
                    enabled = is_on(value)
                    if enabled != self.enabled:
                        log.info(
                            "flag %s is now %s: v1.0.1 %s", self.flag, value, "offered" if enabled else "withdrawn"
                        )
                    self.enabled = enabled
                    self._enabled_gauge.set(1 if enabled else 0)
                    failing = False
                except TargetError as exc:  # redis down: keep serving with the last known value
                    if not failing:
                        state = "on" if self.enabled else "off"
                        log.warning("flag %s unreadable, keeping v1.0.1 %s: %s", self.flag, state, exc)
                    failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.flag_refresh)
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flags.aclose(), 2.0)

    def info(self) -> dict[str, Any]:
        return {
            "server": "tars-1001-ws-hub",
            "version": HUB_VERSION,
            "hub_id": self.hub_id,
            "supported": [] if self.legacy else [SUBPROTOCOL, SUBPROTOCOL_V100],
            "enabled": self.enabled,
            "client": None if self.legacy else CLIENT_JS_PATH,
            "flag": None if self.flags_redis is None else self.flag,
            "replay": {"max_messages": self.replay_max_messages, "max_age": self.replay_max_age},
            "connections": len(self.sessions),
            "channels": len(self.channels),
        }

    # -- handshake hooks ------------------------------------------------------------------------------
    def select_subprotocol(self, connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        """v1.0.1 while enabled, else v1.0.0, whichever the client offers: a browser fails the handshake
        when none of the protocols it offered is selected, so a client offering both always gets one.
        A client that offers neither gets none (a v1.0.0 client); the legacy hub, like the v1.0.0 build,
        knows no subprotocol at all."""
        if self.legacy:
            return None
        if self.enabled and SUBPROTOCOL in offered:
            return Subprotocol(SUBPROTOCOL)
        return Subprotocol(SUBPROTOCOL_V100) if SUBPROTOCOL_V100 in offered else None

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == INFO_PATH:
            return _respond(connection, HTTPStatus.OK, json.dumps(self.info()), "application/json")
        if path == METRICS_PATH:
            return _respond(
                connection, HTTPStatus.OK, generate_latest(self.registry).decode(), "text/plain; version=0.0.4"
            )
        if path == CLIENT_JS_PATH and not self.legacy:
            response = _respond(connection, HTTPStatus.OK, client_js(), "text/javascript; charset=utf-8")
            response.headers["Access-Control-Allow-Origin"] = "*"
            response.headers["Cache-Control"] = "no-cache"
            return response
        full = self.max_clients is not None and len(self.sessions) >= self.max_clients
        if self.draining or full:
            code, reason = (
                (CLOSE_SERVICE_RESTART, "hub restarting")
                if self.draining
                else (CLOSE_TRY_AGAIN_LATER, "hub at capacity")
            )
            if "Origin" in request.headers and "Upgrade" in request.headers:
                # A browser sees nothing of an HTTP 503 (its socket just closes with 1006), so it is let in
                # and closed at once with a code and a retry-after hint it can read.
                self._refused[connection] = (code, f"{reason}; retry-after={self.retry_after}")
                return None
            response = _respond(connection, HTTPStatus.SERVICE_UNAVAILABLE, reason + "\n", "text/plain")
            response.headers["Retry-After"] = str(self.retry_after)
            return response
        return None

    # -- connections --------------------------------------------------------------------------------
    async def handler(self, conn: ServerConnection) -> None:
        refused = self._refused.pop(conn, None)
        if refused is not None:
            await conn.close(*refused)
            return
        session = _Session(conn, conn.subprotocol == SUBPROTOCOL)
        proto = "v1.0.1" if session.v101 else "v1.0.0"
        self.sessions.add(session)
        self._connections.labels(proto).inc()
        writer = asyncio.create_task(session.write_loop())
        if session.v101:
            session.queue.put_nowait(
                _utf8(
                    {
                        "type": "welcome",
                        "protocol": SUBPROTOCOL,
                        "hub": self.hub_id,
                        "replay": {"max_messages": self.replay_max_messages, "max_age": self.replay_max_age},
                    }
                )
            )
        try:
            async for raw in conn:
                try:
                    frame = decode(raw)
                except FrameError as exc:
                    session.queue.put_nowait(_error(exc.req_id, exc.code, str(exc)))
                    continue
                try:
                    self.dispatch(session, frame)
                except Exception:  # a bug of ours: this request fails, the connection and the others live on
                    log.exception("request %.200r failed", frame)
                    req_id = frame.get("id")
                    session.queue.put_nowait(
                        _error(req_id if isinstance(req_id, (str, int)) else None, "internal_error", "hub error")
                    )
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(session)
            self._connections.labels(proto).dec()
            for name in session.channels:
                channel = self.channels.get(name)
                if channel is not None:
                    channel.subscribers.discard(session)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def dispatch(self, session: _Session, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        req_id = frame.get("id")
        try:
            if kind == "subscribe":
                self._subscribe(session, req_id, frame.get("channels"))
            elif kind == "unsubscribe":
                self._unsubscribe(session, req_id, frame.get("channels"))
            elif kind == "publish":
                self._publish(session, req_id, frame)
            elif kind == "ping":
                session.queue.put_nowait(_utf8({"type": "pong", "id": req_id}))
            else:
                session.queue.put_nowait(_error(req_id, "unknown_type", f"unknown frame type {kind!r}"))
        except _BadRequest as exc:
            session.queue.put_nowait(_error(req_id, "bad_request", str(exc)))

    def _channel(self, name: Any) -> _Channel:
        _check_name(name)
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = _Channel(name)
        channel.evict(time.monotonic(), self.replay_max_messages, self.replay_max_age)
        return channel

    def _subscribe(self, session: _Session, req_id: Any, specs: Any) -> None:
        """All or nothing: every entry is checked before any channel is created or subscribed."""
        if not isinstance(specs, list) or not specs:
            raise _BadRequest("subscribe needs a non-empty 'channels' list")
        wanted: list[tuple[str, str | None, int | None]] = []
        for spec in specs:
            spec = {"channel": spec} if isinstance(spec, str) else spec
            if not isinstance(spec, dict):
                raise _BadRequest("each subscribe entry is a channel name or {channel, epoch, seq}")
            name, epoch, seq = _check_name(spec.get("channel")), spec.get("epoch"), spec.get("seq")
            if epoch is not None and not isinstance(epoch, str):
                raise _BadRequest(f"{name}: epoch must be a string or null")
            if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 0):
                raise _BadRequest(f"{name}: seq must be a non-negative integer or null")
            if any(name == w[0] for w in wanted):
                raise _BadRequest(f"{name}: listed twice in one subscribe")
            wanted.append((name, epoch, seq))
        self._subscribes.inc()
        results: list[dict[str, Any]] = []
        replay: list[bytes] = []
        for name, epoch, seq in wanted:
            channel = self._channel(name)
            if not session.v101:
                results.append({"channel": channel.name})
            else:
                result, frames = self._resume(channel, epoch, seq)
                results.append(result)
                replay.extend(frames)
            channel.subscribers.add(session)
            session.channels.add(channel.name)
        session.queue.put_nowait(_utf8({"type": "subscribed", "id": req_id, "channels": results}))
        for data in replay:
            session.queue.put_nowait(data)
        self._replayed.inc(len(replay))

    def _resume(self, channel: _Channel, epoch: str | None, seq: int | None) -> tuple[dict[str, Any], list[bytes]]:
        """What a subscriber resuming after (epoch, seq) gets: the result entry and the frames to replay."""
        oldest = channel.oldest()
        result: dict[str, Any] = {"channel": channel.name, "epoch": channel.epoch, "head": channel.head}
        if seq is None:  # a fresh subscription starts live
            result.update(recovered=True, reason=None, first=channel.head + 1)
            return result, []
        if epoch == channel.epoch and seq <= channel.head:
            if seq + 1 >= oldest:
                result.update(recovered=True, reason=None, first=seq + 1)
                return result, [text for s, _, text in channel.buffer if s > seq]
            reason = "evicted"
        else:
            reason = "epoch_changed" if epoch != channel.epoch else "unknown_position"
        self._resyncs.labels(reason).inc()
        result.update(recovered=False, reason=reason, first=oldest)
        return result, [text for _, _, text in channel.buffer]

    def _unsubscribe(self, session: _Session, req_id: Any, names: Any) -> None:
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise _BadRequest("unsubscribe needs a 'channels' list of channel names")
        for name in names:
            channel = self.channels.get(name)
            if channel is not None:
                channel.subscribers.discard(session)
            session.channels.discard(name)
        session.queue.put_nowait(_utf8({"type": "unsubscribed", "id": req_id, "channels": names}))

    def _publish(self, session: _Session, req_id: Any, frame: dict[str, Any]) -> None:
        if "data" not in frame:
            raise _BadRequest("publish needs 'data'")
        channel = self._channel(frame.get("channel"))
        key = frame.get("key") if session.v101 else None
        if key is not None and not isinstance(key, str):
            raise _BadRequest("key must be a string")
        ack: dict[str, Any] = {"type": "ack", "id": req_id, "channel": channel.name}
        if key is not None and key in channel.keys:
            self._duplicates.inc()
            if session.v101:
                ack.update(key=key, epoch=channel.epoch, seq=channel.keys[key], duplicate=True)
            session.queue.put_nowait(_utf8(ack))
            return
        # encoded (and so proven sendable) before the sequence number is taken or anything is stored
        try:
            text = _utf8(
                {
                    "type": "msg",
                    "channel": channel.name,
                    "epoch": channel.epoch,
                    "seq": channel.head + 1,
                    "data": frame["data"],
                }
            )
        except ValueError as exc:  # decode() already refuses these (UnicodeEncodeError too); never store one
            raise _BadRequest(f"data cannot be sent as standard JSON text: {exc}") from None
        channel.head += 1
        seq = channel.head
        now = time.monotonic()
        channel.buffer.append((seq, now, text))
        channel.evict(now, self.replay_max_messages, self.replay_max_age)
        if key is not None:
            channel.keys[key] = seq
            while len(channel.keys) > self.dedup_max_keys:
                channel.keys.popitem(last=False)
        self._published.inc()
        if session.v101:
            ack.update(key=key, epoch=channel.epoch, seq=seq, duplicate=False)
        session.queue.put_nowait(_utf8(ack))
        legacy_text: bytes | None = None
        for sub in list(channel.subscribers):
            if sub.queue.qsize() >= self.max_pending:
                self._drop_slow(sub)
                continue
            if sub.v101:
                sub.queue.put_nowait(text)
            else:
                if legacy_text is None:
                    legacy_text = _utf8({"type": "msg", "channel": channel.name, "data": frame["data"]})
                sub.queue.put_nowait(legacy_text)

    def _drop_slow(self, session: _Session) -> None:
        self._slow.inc()
        for name in session.channels:
            channel = self.channels.get(name)
            if channel is not None:
                channel.subscribers.discard(session)
        session.channels.clear()
        asyncio.get_running_loop().create_task(session.conn.close(CLOSE_TRY_AGAIN_LATER, "slow consumer"))

    async def collect_garbage(self) -> None:
        """Forget channels nobody listens to once their buffer has aged out (bounded hub memory)."""
        while True:
            await asyncio.sleep(max(1.0, self.replay_max_age / 2))
            now = time.monotonic()
            for name, channel in list(self.channels.items()):
                channel.evict(now, self.replay_max_messages, self.replay_max_age)
                if not channel.subscribers and not channel.buffer:
                    del self.channels[name]


class _BadRequest(Exception):
    pass


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_CHANNEL_NAME:
        raise _BadRequest(f"channel must be a non-empty string of at most {MAX_CHANNEL_NAME} characters")
    return name


def _utf8(frame: dict[str, Any]) -> bytes:
    """A frame as the UTF-8 bytes of its text frame: encoded once, sent as is to every subscriber."""
    return encode(frame).encode("utf-8")


def _error(req_id: Any, code: str, message: str) -> bytes:
    return _utf8({"type": "error", "id": req_id, "code": code, "message": message})


_CLIENT_JS: str | None = None


def client_js() -> str:
    """The browser client shipped in this package (``static/tars-ws.js``), read once."""
    global _CLIENT_JS
    if _CLIENT_JS is None:
        from importlib.resources import files

        _CLIENT_JS = files("tars_1001_ws").joinpath("static", "tars-ws.js").read_text(encoding="utf-8")
    return _CLIENT_JS


def _respond(connection: ServerConnection, status: HTTPStatus, body: str, content_type: str) -> Response:
    response = connection.respond(status, body)
    headers = Headers((k, v) for k, v in response.headers.raw_items() if k.lower() != "content-type")
    headers["Content-Type"] = content_type
    response.headers = headers
    return response


class HubServer:
    """A running hub: ``async with serve(port=0) as hub: hub.url``; ``close()`` tells clients 1012."""

    def __init__(self, host: str, port: int, hub: Hub, ping_interval: float | None, ping_timeout: float) -> None:
        self.host = host
        self.port = port
        self.hub = hub
        self._ping = (ping_interval, ping_timeout)
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    async def start(self) -> HubServer:
        self._server = await ws_serve(
            self.hub.handler,
            self.host,
            self.port,
            select_subprotocol=self.hub.select_subprotocol,
            process_request=self.hub.process_request,
            ping_interval=self._ping[0],
            ping_timeout=self._ping[1],
            close_timeout=2,
            compression=None,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        self._tasks = [asyncio.create_task(self.hub.watch_flag()), asyncio.create_task(self.hub.collect_garbage())]
        return self

    async def close(self, timeout: float = 5.0) -> None:
        """Refuse new clients (503 Retry-After), tell connected ones 1012 "service restart", then stop."""
        if self._server is None:
            return
        self.hub.draining = True
        sessions = list(self.hub.sessions)
        if sessions:
            await asyncio.wait(
                [asyncio.create_task(s.conn.close(CLOSE_SERVICE_RESTART, "hub restarting")) for s in sessions],
                timeout=timeout,
            )
        self._server.close(close_connections=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout)
        self.hub.stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=timeout)
        self._server = None

    async def __aenter__(self) -> HubServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ping_interval: float | None = 30.0,
    ping_timeout: float = 30.0,
    **hub_options: Any,
) -> HubServer:
    """Build a hub server (start it with ``async with`` or ``await server.start()``).

    ``ping_interval``/``ping_timeout`` are the hub's own keepalive (it frees the slots of clients that
    vanished); ``hub_options`` go to :class:`Hub` (replay size and age, flag source, capacity).
    """
    return HubServer(host, port, Hub(**hub_options), ping_interval, ping_timeout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tars_1001_ws.hub", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--replay-size", type=int, default=1000, help="messages kept per channel")
    parser.add_argument("--replay-age", type=float, default=120.0, help="seconds a message stays replayable")
    parser.add_argument("--max-clients", type=int, default=None, help="beyond this, 503 with Retry-After")
    parser.add_argument("--ping-interval", type=float, default=30.0)
    parser.add_argument("--flags-redis", default=None, help="Redis URL holding the feature flags")
    parser.add_argument("--flags-key", default="tars:feature_flags")
    parser.add_argument("--flag", default=DEFAULT_FLAG)
    parser.add_argument("--legacy", action="store_true", help="behave as the v1.0.0 hub (no replay)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )

    async def run() -> None:
        server = serve(
            args.host,
            args.port,
            ping_interval=args.ping_interval,
            replay_max_messages=args.replay_size,
            replay_max_age=args.replay_age,
            max_clients=args.max_clients,
            flags_redis=args.flags_redis,
            flags_key=args.flags_key,
            flag=args.flag,
            legacy=args.legacy,
        )
        await server.start()
        log.info(
            "hub %s listening on %s (v1.0.1 %s)",
            server.hub.hub_id,
            server.url,
            "flag-controlled" if args.flags_redis else ("off" if args.legacy else "on"),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.close()
        log.info("hub %s stopped", server.hub.hub_id)

    asyncio.run(run())


if __name__ == "__main__":
    main()
