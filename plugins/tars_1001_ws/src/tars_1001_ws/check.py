"""Behaviour checks and measurements against a hub: what apply, verify and the benchmark run.

Kept apart from ``plugin.py`` so the entry point imports nothing heavy, and shared by the hooks and
``benchmarks/tars-1001-ws_bench.py`` so the figures in a report and in the script come from one code path.
Everything here works on the real hub at ``targets.websocket_url``, over real sockets; faults are made by
a :class:`FaultProxy` this process puts in front of the hub, so nothing outside the probe channels is
touched.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidURI
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI, parse_uri

from tars_1001_ws.client import ConnectionState, Message, ReconnectingWebSocketClient, StateEvent
from tars_1001_ws.protocol import INFO_PATH, SUBPROTOCOL, decode, encode
from tars_1001_ws.proxy import FaultProxy
from tars_core.model import Metric
from tars_core.processes import Service, free_port, http_ready
from tars_core.redact import safe_url
from tars_core.report import percentile
from tars_core.waiting import await_until


class HubError(Exception):
    """The hub is unreachable or does not behave as the fixed protocol says (message is one line)."""


class HubUnreachable(HubError):
    """The hub cannot be used as configured (bad URL, connection refused, unreachable): bad input, not a
    failed fix, so the hooks report it as ``TargetError`` (``tars-run`` exits 2)."""


def _uri(ws_url: str) -> WebSocketURI:
    try:
        return parse_uri(ws_url)
    except InvalidURI:
        raise HubUnreachable(f"targets.websocket_url must be ws:// or wss://, got {safe_url(ws_url)}") from None


def address(ws_url: str) -> tuple[str, int]:
    """Host and port a ``ws://``/``wss://`` URL dials (80/443 unless given): where a FaultProxy forwards to."""
    uri = _uri(ws_url)
    return uri.host, uri.port


def http_url(ws_url: str, path: str) -> str:
    """The hub's plain-HTTP endpoint ``path`` on the port of its WebSocket URL (never its credentials)."""
    uri = _uri(ws_url)
    host = f"[{uri.host}]" if ":" in uri.host else uri.host
    return f"{'https' if uri.secure else 'http'}://{host}:{uri.port}{path}"


async def hub_info(ws_url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET the hub's info document (what build runs, whether v1.0.1 is offered right now)."""
    url = http_url(ws_url, INFO_PATH)

    def fetch() -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return dict(json.loads(response.read()))

    try:
        return await asyncio.to_thread(fetch)
    except urllib.error.HTTPError as exc:
        raise HubError(
            f"{safe_url(ws_url)} answered HTTP {exc.code} on {INFO_PATH}: it is not a TARS-1001 hub "
            f"(v1.0.0 hubs have no info endpoint); deploy the v1.0.1 hub first"
        ) from None
    except OSError as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, ConnectionRefusedError):
            reason = "connection refused (is the hub running there?)"
        raise HubUnreachable(f"cannot reach the hub at {safe_url(ws_url)}: {reason}") from None
    except ValueError as exc:  # it answered, but not with the info document: something else listens there
        raise HubError(
            f"{safe_url(ws_url)} answered {INFO_PATH} with no JSON document ({exc}): it is not a TARS-1001 hub"
        ) from None


async def probe_protocol(ws_url: str, timeout: float = 5.0) -> str:
    """Speak v1.0.1 on the wire: sequence numbers, idempotent publish and replay after a given seq.

    Written against raw frames, not through our client, so it checks the hub and not our own reading
    of it. Raises :class:`HubError` naming the first property that does not hold.
    """
    channel = f"tars-1001-probe:{uuid.uuid4().hex[:12]}"
    try:
        async with asyncio.timeout(timeout):
            async with connect(
                ws_url,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                ping_interval=None,
                proxy=None,
                open_timeout=timeout,
                close_timeout=1,
            ) as ws:
                if ws.subprotocol != SUBPROTOCOL:
                    raise HubError(
                        f"the hub at {safe_url(ws_url)} does not negotiate {SUBPROTOCOL} (flag off or v1.0.0 hub)"
                    )
                frames = _Frames(ws)
                acks = []
                for i, key in enumerate(["k1", "k2", "k3", "k2"]):
                    await ws.send(encode({"type": "publish", "id": i, "channel": channel, "data": i, "key": key}))
                    acks.append(await frames.next("ack"))
                seqs = [a.get("seq") for a in acks]
                if seqs != [1, 2, 3, 2] or not acks[3].get("duplicate"):
                    raise HubError(
                        f"publish acks carry seqs {seqs}: expected 1,2,3 and the repeated key deduplicated to 2"
                    )
                epoch = acks[0]["epoch"]
                await ws.send(
                    encode({"type": "subscribe", "id": 9, "channels": [{"channel": channel, "epoch": epoch, "seq": 1}]})
                )
                sub = (await frames.next("subscribed"))["channels"][0]
                if not sub.get("recovered") or sub.get("first") != 2:
                    raise HubError(f"resubscribe after seq 1 was not recovered from seq 2: {sub}")
                replay = [(await frames.next("msg"))["seq"] for _ in range(2)]
                if replay != [2, 3]:
                    raise HubError(f"replay after seq 1 gave seqs {replay}, expected [2, 3]")
                await ws.send(
                    encode(
                        {
                            "type": "subscribe",
                            "id": 10,
                            "channels": [{"channel": channel, "epoch": "not-" + epoch, "seq": 3}],
                        }
                    )
                )
                sub = (await frames.next("subscribed"))["channels"][0]
                if sub.get("recovered") is not False or sub.get("reason") != "epoch_changed":
                    raise HubError(f"a stale epoch was not reported as a resync: {sub}")
    except TimeoutError:
        raise HubError(
            f"the hub at {safe_url(ws_url)} did not answer the protocol probe within {timeout:g} s"
        ) from None
    except (OSError, ConnectionClosed) as exc:
        raise HubError(f"protocol probe against {safe_url(ws_url)} failed: {exc}") from None
    except Exception as exc:
        if isinstance(exc, HubError):
            raise
        raise HubError(f"protocol probe against {safe_url(ws_url)} failed: {type(exc).__name__}: {exc}") from None
    return "seq, idempotent publish, replay after seq and epoch resync all hold"


class _Frames:
    """Read frames, skipping the ones a probe is not waiting for (welcome, other types)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def next(self, kind: str) -> dict[str, Any]:
        while True:
            frame = decode(await self.ws.recv())
            if frame["type"] == "error":
                raise HubError(f"hub error: {frame.get('code')}: {frame.get('message')}")
            if frame["type"] == kind:
                return frame


@dataclass
class Recorder:
    """Collects deliveries and state events of one client, for exactly-once/in-order judgements."""

    seqs: dict[str, list[int]] = field(default_factory=dict)
    data: dict[str, list[Any]] = field(default_factory=dict)
    events: list[StateEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def handler(self, msg: Message) -> None:
        self.seqs.setdefault(msg.channel, []).append(msg.seq)
        self.data.setdefault(msg.channel, []).append(msg.data)
        self.changed.set()

    def listener(self, event: StateEvent) -> None:
        self.events.append(event)
        self.changed.set()

    def count(self, state: ConnectionState) -> int:
        return sum(1 for e in self.events if e.state is state)

    async def wait_count(self, state: ConnectionState, above: int, timeout: float) -> None:
        """Wait until more than ``above`` events of ``state`` were seen."""
        await self.wait_for(lambda: self.count(state) > above, timeout)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()
        return True


def judge(received: list[Any], expected: list[Any]) -> tuple[int, int, bool]:
    """(lost, duplicated, in_order) of what a subscriber got against what was published."""
    want = set(expected)
    got = [x for x in received if x in want]
    lost = len(want - set(got))
    duplicated = len(got) - len(set(got))
    order = {x: i for i, x in enumerate(expected)}
    in_order = all(order[a] < order[b] for a, b in itertools.pairwise(got))
    return lost, duplicated, in_order


async def conformance(
    ws_url: str, *, heartbeat_interval: float = 0.2, channels: int = 3, messages: int = 150, timeout: float = 60.0
) -> dict[str, tuple[bool, str]]:
    """Run the TARS-1001 behaviour against the hub: subscribe, publish, forced drop, silent drop.

    A subscriber reaches the hub through a FaultProxy; a publisher goes direct. The proxy resets the
    subscriber's connection, later blackholes it; the publisher keeps publishing, and a publish is made
    through the subscriber while it is cut off. Every channel must then hold each message exactly once,
    in order. Returns check name -> (ok, detail).
    """
    host, port = address(ws_url)
    prefix = f"tars-1001-verify:{uuid.uuid4().hex[:10]}"
    names = [f"{prefix}:{i}" for i in range(channels)]
    checks: dict[str, tuple[bool, str]] = {}
    rec = Recorder()

    def client(**connect_kwargs: Any) -> ReconnectingWebSocketClient:
        return ReconnectingWebSocketClient(
            ws_url,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_interval,
            backoff_initial=heartbeat_interval,
            backoff_max=heartbeat_interval * 5,
            connect_timeout=10.0,
            **connect_kwargs,
        )

    async with FaultProxy(host, port) as proxy:
        sub = client(host=proxy.host, port=proxy.port)
        pub = client()
        sub.add_listener(rec.listener)
        async with sub, pub:
            checks["handshake"] = (True, f"negotiated {SUBPROTOCOL}")
            for name in names:
                await sub.subscribe(name, rec.handler)
            sent: dict[str, list[Any]] = {name: [] for name in names}

            async def produce(start: int, stop: int) -> None:
                for i in range(start, stop):
                    for name in names:
                        await pub.publish(name, i)
                        sent[name].append(i)
                    await asyncio.sleep(0.002)

            third = messages // 3
            await produce(0, third)
            recovered_before = rec.count(ConnectionState.RECOVERED)
            proxy.reset()
            await produce(third, 2 * third)
            try:
                await rec.wait_count(ConnectionState.RECOVERED, recovered_before, timeout / 4)
                checks["forced_drop"] = (True, "connection reset: reconnected and resubscribed")
            except TimeoutError:
                checks["forced_drop"] = (False, "no recovery after a connection reset")
            recovered_before = rec.count(ConnectionState.RECOVERED)
            proxy.blackhole()
            outbox_pub = await sub.publish(names[0], "sent-while-cut-off")
            await produce(2 * third, messages)
            try:
                await rec.wait_count(ConnectionState.RECOVERED, recovered_before, timeout / 4)
                dead = [e.reason for e in rec.events if e.state is ConnectionState.DISCONNECTED][-1] or ""
                checks["silent_drop"] = (
                    "heartbeats unanswered" in dead,
                    f"half-open connection ended by: {dead}; recovered",
                )
            except TimeoutError:
                checks["silent_drop"] = (False, "a blackholed connection was never declared dead")
            try:
                seq = await outbox_pub.wait(timeout / 4)
                sent[names[0]].append("sent-while-cut-off")
                checks["outbox"] = (True, f"publish made while cut off was sent after reconnect (seq {seq})")
            except Exception as exc:
                checks["outbox"] = (False, f"publish made while cut off never acknowledged: {exc}")
            for name in names:
                await pub.publish(name, "end")
                sent[name].append("end")
            try:
                await rec.wait_for(lambda: all(rec.data.get(n, [None])[-1:] == ["end"] for n in names), timeout / 4)
            except TimeoutError:
                pass
            restored = [n for n in names if n in rec.seqs and rec.seqs[n][-1:] and rec.data[n][-1] == "end"]
            checks["resubscribe"] = (
                len(restored) == len(names),
                f"{len(restored)}/{len(names)} channels delivering after two reconnects",
            )
            problems = []
            total = 0
            for name in names:
                got = rec.data.get(name, [])
                total += len(got)
                lost, dup, in_order = judge(got, sent[name])
                seqs = rec.seqs.get(name, [])
                contiguous = seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False
                if lost or dup or not in_order or not contiguous:
                    problems.append(
                        f"{name}: lost {lost}, duplicated {dup}, in order {in_order}, contiguous seqs {contiguous}"
                    )
            checks["exactly_once_in_order"] = (
                not problems,
                "; ".join(problems) or f"{total} messages on {len(names)} channels: 0 lost, 0 duplicated, in order",
            )
            resyncs = rec.count(ConnectionState.RESYNC_REQUIRED)
            checks["no_resync"] = (resyncs == 0, f"{resyncs} resync-required events (hub replay buffer held)")
    return checks


# -- benchmark measurements ---------------------------------------------------------------------------
def _through(proxy: FaultProxy, ws_url: str, **options: Any) -> ReconnectingWebSocketClient:
    """A client of the hub at ``ws_url`` whose TCP connection goes through ``proxy`` (so faults can be injected)."""
    return ReconnectingWebSocketClient(ws_url, host=proxy.host, port=proxy.port, **options)


async def reconnect_times(ws_url: str, drops: int, *, spacing: float = 0.6) -> list[float]:
    """Seconds from a connection reset to RECOVERED (resubscribed), default backoff, ``drops`` times.

    ``stable_after`` is set below ``spacing`` so each drop hits a connection that had become healthy:
    this measures the first retry after a drop, what a user sees, not a flapping link's backoff.
    """
    host, port = address(ws_url)
    rec = Recorder()
    times: list[float] = []
    async with FaultProxy(host, port) as proxy:
        client = _through(proxy, ws_url, stable_after=spacing * 0.8)
        client.add_listener(rec.listener)
        async with client:
            await client.subscribe(f"tars-1001-bench:{uuid.uuid4().hex[:8]}", lambda m: None)
            for _ in range(drops):
                before = rec.count(ConnectionState.RECOVERED)
                await asyncio.sleep(spacing)
                start = time.monotonic()
                proxy.reset()
                await rec.wait_count(ConnectionState.RECOVERED, before, 60)
                times.append(time.monotonic() - start)
    return times


async def plain_subscriber(
    ws_url: str,
    channel: str,
    *,
    on_subscribed: Callable[[], Any] = lambda: None,
    on_data: Callable[[Any], Any] = lambda data: None,
    **connect_kwargs: Any,
) -> None:
    """The "before" of every figure: the idiomatic `websockets` reconnect loop on the v1.0.0 protocol,
    resubscribing by hand after each reconnect (websockets itself restores nothing). Runs until cancelled."""
    async for ws in connect(ws_url, proxy=None, **connect_kwargs):
        try:
            await ws.send(encode({"type": "subscribe", "channels": [channel]}))
            async for raw in ws:
                frame = decode(raw)
                if frame["type"] == "subscribed":
                    on_subscribed()
                elif frame["type"] == "msg":
                    on_data(frame.get("data"))
        except ConnectionClosed:
            continue


async def plain_reconnect_times(ws_url: str, drops: int, *, spacing: float = 0.6) -> list[float]:
    """The same for the plain loop: seconds from a reset to the hub's reply to the new subscribe."""
    host, port = address(ws_url)
    times: list[float] = []
    subscribed = asyncio.Event()
    channel = f"tars-1001-bench:{uuid.uuid4().hex[:8]}"
    async with FaultProxy(host, port) as proxy:
        task = asyncio.create_task(
            plain_subscriber(ws_url, channel, on_subscribed=subscribed.set, host=proxy.host, port=proxy.port)
        )
        await subscribed.wait()
        try:
            for _ in range(drops):
                await asyncio.sleep(spacing)
                subscribed.clear()
                start = time.monotonic()
                proxy.reset()
                async with asyncio.timeout(120):
                    await subscribed.wait()
                times.append(time.monotonic() - start)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return times


async def silent_detection_times(
    ws_url: str, samples: int, *, interval: float, timeout: float, missed: int = 3
) -> list[float]:
    """Seconds from blackholing a quiet connection to the client declaring it dead."""
    host, port = address(ws_url)
    rec = Recorder()
    times: list[float] = []
    async with FaultProxy(host, port) as proxy:
        client = _through(
            proxy,
            ws_url,
            heartbeat_interval=interval,
            heartbeat_timeout=timeout,
            max_missed_heartbeats=missed,
            backoff_initial=0.05,
            backoff_max=0.1,
        )
        client.add_listener(rec.listener)
        async with client:
            for _ in range(samples):
                before = rec.count(ConnectionState.DISCONNECTED)
                recovered = rec.count(ConnectionState.RECOVERED)
                await asyncio.sleep(interval * 0.5)
                start = time.monotonic()
                proxy.blackhole()
                await rec.wait_count(ConnectionState.DISCONNECTED, before, interval + missed * timeout + 30)
                times.append(time.monotonic() - start)
                await rec.wait_count(ConnectionState.RECOVERED, recovered, 30)
    return times


async def loss_over_drops(
    ws_url: str, *, messages: int, drops: int, rate: float, plain: bool, heartbeat: float = 0.2
) -> dict[str, Any]:
    """Publish ``messages`` at ``rate``/s while the subscriber's link is dropped ``drops`` times.

    Drops alternate between a reset and a blackhole (silent). ``plain`` subscribes with the idiomatic
    `websockets` loop on the v1.0.0 protocol (keepalive scaled to the same detection budget,
    interval + 3 x timeout); otherwise with ReconnectingWebSocketClient. Returns lost/duplicated/in order.
    """
    host, port = address(ws_url)
    channel = f"tars-1001-loss:{uuid.uuid4().hex[:8]}"
    got: list[int] = []
    ready = asyncio.Event()
    async with FaultProxy(host, port) as proxy:
        if plain:
            sub_task = asyncio.create_task(
                plain_subscriber(
                    ws_url,
                    channel,
                    on_subscribed=ready.set,
                    on_data=got.append,
                    host=proxy.host,
                    port=proxy.port,
                    ping_interval=heartbeat,
                    ping_timeout=3 * heartbeat,
                    close_timeout=0.5,
                )
            )
            sub_client = None
        else:
            sub_client = _through(
                proxy, ws_url, heartbeat_interval=heartbeat, heartbeat_timeout=heartbeat, stable_after=0.5
            )
            await sub_client.start()
            await sub_client.subscribe(channel, lambda m: got.append(m.data))
            ready.set()
            sub_task = None
        await ready.wait()
        async with ReconnectingWebSocketClient(ws_url) as pub:
            drop_every = max(1, messages // (drops + 1))
            done_drops = 0
            start = time.monotonic()
            for i in range(messages):
                if i and i % drop_every == 0 and done_drops < drops:
                    (proxy.reset if done_drops % 2 == 0 else proxy.blackhole)()
                    done_drops += 1
                pending = await pub.publish(channel, i)
                lag = start + (i + 1) / rate - time.monotonic()
                if lag > 0:
                    await asyncio.sleep(lag)
            await pending.wait(60)
            await _settled(got, messages - 1, quiet=3 * heartbeat + 2.0)
            if got and got[-1] == messages - 1:
                await asyncio.sleep(0.3)
        if sub_client is not None:
            await sub_client.close()
        if sub_task is not None:
            sub_task.cancel()
            await asyncio.gather(sub_task, return_exceptions=True)
    lost, dup, in_order = judge(got, list(range(messages)))
    return {"messages": messages, "drops": done_drops, "lost": lost, "duplicated": dup, "in_order": in_order}


async def _settled(got: list[int], last: int, *, quiet: float) -> None:
    """Wait until the subscriber has received ``last`` or clearly stopped receiving (nothing new for
    ``quiet`` seconds): a lossy subscriber never gets everything, and its loss is the figure."""
    progress = [-1, time.monotonic()]  # how many it had, since when

    def settled() -> bool:
        if got and got[-1] == last:
            return True
        if len(got) != progress[0]:
            progress[:] = [len(got), time.monotonic()]
        return time.monotonic() - progress[1] >= quiet

    # the deadline only guards against a hang: each new message restarts the quiet period
    await await_until(settled, timeout=quiet + 600.0, interval=0.1, what="subscriber caught up or went quiet")


class HubProcess:
    """A hub in its own process (``python -m tars_1001_ws.hub``), so the client-side CPU and memory figures
    exclude the hub, and a test can kill it like a crash: a :class:`~tars_core.processes.Service` (ready
    when its info endpoint answers, output in ``log``, stopped with everything it started).

    ``async with HubProcess(log) as hub: hub.url``; starting and stopping run in a thread, so clients on
    this event loop keep answering the hub's close handshake meanwhile.
    """

    def __init__(self, log: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        argv = [sys.executable, "-m", "tars_1001_ws.hub", "--port", str(self.port), "--log-level", "WARNING", *extra]
        ready = http_ready(http_url(self.url, INFO_PATH))
        self.service = Service("tars-1001-ws hub", argv, log, ready=ready, start_timeout=20.0, stop_timeout=10.0)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> HubProcess:
        await asyncio.to_thread(self.service.start)
        return self

    async def stop(self) -> bool:
        """SIGTERM (the hub closes its clients with 1012), SIGKILL if it lingers; whether it was running."""
        return await asyncio.to_thread(self.service.stop)

    async def kill(self) -> None:
        """SIGKILL: the hub dies without closing anything (what a crash or an OOM kill looks like)."""
        self.service.stop_signal = signal.SIGKILL
        await self.stop()

    async def __aenter__(self) -> HubProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def idle_clients(ws_url: str, clients: int, window: float, *, plain: bool = False) -> dict[str, float]:
    """CPU (% of one core) of this process over ``window`` s with ``clients`` idle connected clients at the
    default heartbeat, and resident memory per client (RSS growth / clients)."""
    import gc

    import psutil

    proc = psutil.Process(os.getpid())
    gc.collect()
    rss_before = proc.memory_info().rss
    holders: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    if plain:
        subscribed = [0]

        def count() -> None:
            subscribed[0] += 1

        for i in range(clients):
            tasks.append(asyncio.create_task(plain_subscriber(ws_url, f"idle:{i % 50}", on_subscribed=count)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        await await_until(lambda: subscribed[0] >= clients, timeout=120.0, what=f"{clients} plain clients subscribed")
    else:
        for i in range(0, clients, 50):
            batch = [ReconnectingWebSocketClient(ws_url, connect_timeout=60) for _ in range(min(50, clients - i))]
            await asyncio.gather(*(c.start() for c in batch))
            await asyncio.gather(*(c.subscribe(f"idle:{i % 50}", lambda m: None) for c in batch))
            holders.extend(batch)
    await asyncio.sleep(1.0)
    gc.collect()
    rss_after = proc.memory_info().rss
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(window)
    cpu1, t1 = time.process_time(), time.monotonic()
    for i in range(0, len(holders), 100):
        await asyncio.gather(*(c.close() for c in holders[i : i + 100]))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "cpu_percent": 100.0 * (cpu1 - cpu0) / (t1 - t0),
        "kb_per_client": (rss_after - rss_before) / 1024 / clients,
        "clients": clients,
        "window_s": t1 - t0,
    }


async def idle_clients_isolated(ws_url: str, clients: int, window: float, *, plain: bool = False) -> dict[str, float]:
    """:func:`idle_clients` in a fresh interpreter, so RSS growth is not hidden by memory freed earlier."""
    argv = [sys.executable, "-m", "tars_1001_ws.check", "idle", ws_url, str(clients), str(window)]
    proc = await asyncio.create_subprocess_exec(*argv, *(["--plain"] if plain else []), stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise HubError(f"idle-clients measurement exited with {proc.returncode}")
    return dict(json.loads(out))


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values), "n": len(values)}


async def measure(
    ws_url: str,
    *,
    drops: int,
    detection_samples: int,
    detection_interval: float,
    detection_timeout: float,
    idle_clients: int,
    idle_window: float,
    messages: int,
    message_drops: int,
    rate: float,
    plain_drops: int | None = None,
    plain_idle: bool = False,
    progress: Callable[[str], object] = lambda line: None,
) -> dict[str, Any]:
    """Every benchmark figure against the hub at ``ws_url``: one code path for ``tars_benchmark`` and
    ``benchmarks/tars-1001-ws_bench.py``. ``plain_drops`` (default ``drops``) sizes the plain-websockets
    reconnect run; ``plain_idle`` adds the plain clients' idle CPU and memory. Returns JSON-ready figures."""
    t0 = time.monotonic()
    results: dict[str, Any] = {"reconnect_after": summary(await reconnect_times(ws_url, drops))}
    plain = await plain_reconnect_times(ws_url, drops if plain_drops is None else plain_drops)
    results["reconnect_before_plain_websockets"] = summary(plain)
    progress(f"reconnect done in {time.monotonic() - t0:.0f} s")
    detect = await silent_detection_times(
        ws_url, detection_samples, interval=detection_interval, timeout=detection_timeout
    )
    results["silent_detection"] = {
        **summary(detect),
        "bound": detection_interval + 3 * detection_timeout,
        "interval": detection_interval,
        "timeout": detection_timeout,
    }
    progress(f"detection done in {time.monotonic() - t0:.0f} s")
    for label, plain_loss in (("loss_before_plain_websockets", True), ("loss_after", False)):
        results[label] = await loss_over_drops(
            ws_url, messages=messages, drops=message_drops, rate=rate, plain=plain_loss
        )
    progress(f"loss done in {time.monotonic() - t0:.0f} s")
    results["idle_after"] = await idle_clients_isolated(ws_url, idle_clients, idle_window)
    if plain_idle:
        results["idle_before_plain_websockets"] = await idle_clients_isolated(
            ws_url, idle_clients, idle_window, plain=True
        )
    progress(f"idle done in {time.monotonic() - t0:.0f} s")
    return results


def metrics(results: dict[str, Any]) -> list[Metric]:
    """The figures of :func:`measure` as judged metrics (before = the plain websockets loop)."""
    ra, rb = results["reconnect_after"], results["reconnect_before_plain_websockets"]
    sd = results["silent_detection"]
    la, lb = results["loss_after"], results["loss_before_plain_websockets"]
    ia, ib = results["idle_after"], results.get("idle_before_plain_websockets") or {}
    return [
        Metric("reconnect_p50", rb["p50"], ra["p50"], "s", "< 5 s typical (seed)", ra["p50"] < 5),
        Metric("reconnect_p95", rb["p95"], ra["p95"], "s", "< 1.5 s with the hub reachable", ra["p95"] < 1.5),
        Metric("reconnect_max", rb["max"], ra["max"], "s", "< 30 s (seed)", ra["max"] < 30),
        Metric(
            "silent_disconnect_detection_max",
            None,
            sd["max"],
            "s",
            f"<= interval + 3 x timeout = {sd['bound']:g} s (at interval {sd['interval']:g} s)",
            sd["max"] <= sd["bound"] + 0.25,
        ),
        Metric(
            "messages_lost",
            lb["lost"],
            la["lost"],
            "messages",
            f"0 of {la['messages']} over {la['drops']} drops",
            la["lost"] == 0,
        ),
        Metric("messages_duplicated", lb["duplicated"], la["duplicated"], "messages", "0", la["duplicated"] == 0),
        Metric(
            "heartbeat_cpu",
            ib.get("cpu_percent"),
            ia["cpu_percent"],
            "% of a core",
            f"< 1% ({ia['clients']} idle clients, 30 s heartbeat)",
            ia["cpu_percent"] < 1,
        ),
        Metric(
            "memory_per_client",
            ib.get("kb_per_client"),
            ia["kb_per_client"],
            "KB",
            "< 200 KB (seed: 10 MB)",
            ia["kb_per_client"] < 200,
        ),
    ]


if __name__ == "__main__":  # python -m tars_1001_ws.check idle URL CLIENTS WINDOW [--plain]
    _, what, url, n, secs, *flags = sys.argv
    if what != "idle":
        raise SystemExit(f"unknown measurement {what!r}")
    print(json.dumps(asyncio.run(idle_clients(url, int(n), float(secs), plain="--plain" in flags))))
