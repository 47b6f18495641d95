"""ReconnectingWebSocketClient against a real hub, with faults injected on the real TCP path."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
from tars_1001_ws.check import HubProcess, Recorder, judge
from tars_1001_ws.client import (
    ClientClosed,
    ConnectError,
    ConnectionState,
    Message,
    OutboxFull,
    ReconnectingWebSocketClient,
    StateEvent,
    SyncReconnectingWebSocketClient,
)
from tars_1001_ws.hub import HubServer, serve
from tars_1001_ws.protocol import SUBPROTOCOL
from tars_1001_ws.proxy import FaultProxy
from websockets.asyncio.server import serve as ws_serve
from ws_testlib import FAST, eventually, metric

from tars_core.processes import free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
S = ConnectionState


def via(proxy: FaultProxy, hub: HubServer, **options: object) -> ReconnectingWebSocketClient:
    """A client whose URL names the hub but whose TCP goes through the fault proxy."""
    return ReconnectingWebSocketClient(hub.url, host=proxy.host, port=proxy.port, **{**FAST, **options})


def states(rec: Recorder) -> list[S]:
    return [e.state for e in rec.events]


async def test_reconnect_after_reset_delivers_everything_once(hub, proxy, recorder):
    sub = via(proxy, hub)
    sub.add_listener(recorder.listener)
    async with sub, ReconnectingWebSocketClient(hub.url, **FAST) as pub:
        await sub.subscribe("ticks", recorder.handler)
        for i in range(20):
            await pub.publish("ticks", i)
        await eventually(lambda: len(recorder.seqs.get("ticks", [])) == 20, what="first 20 delivered")
        assert proxy.reset() == 1
        for i in range(20, 40):  # published while the subscriber is down: must be replayed
            await pub.publish("ticks", i)
        await eventually(lambda: recorder.count(S.RECOVERED) >= 2, what="recovered after reset")
        await eventually(lambda: len(recorder.seqs["ticks"]) == 40, what="all 40 delivered")
    assert recorder.seqs["ticks"] == list(range(1, 41))
    assert recorder.data["ticks"] == list(range(40))
    seen = states(recorder)
    assert S.DISCONNECTED in seen and S.RECOVERING in seen
    recovered = [e for e in recorder.events if e.state is S.RECOVERED]
    assert all(e.complete for e in recovered)
    disconnected = next(e for e in recorder.events if e.state is S.DISCONNECTED)
    assert disconnected.reason and disconnected.delay is not None and disconnected.delay >= 0
    assert seen[-1] is S.CLOSED


async def test_silent_disconnect_is_detected_by_missed_heartbeats(hub, proxy, recorder):
    sub = via(proxy, hub)
    sub.add_listener(recorder.listener)
    async with sub, ReconnectingWebSocketClient(hub.url, **FAST) as pub:
        await sub.subscribe("quiet", recorder.handler)
        await pub.publish("quiet", "before")
        await eventually(lambda: recorder.data.get("quiet") == ["before"])
        assert proxy.blackhole() == 1  # both sockets stay open; nothing is forwarded, nothing is closed
        await pub.publish("quiet", "during")
        await eventually(lambda: recorder.count(S.DISCONNECTED) >= 1, what="dead connection declared")
        dead = next(e for e in recorder.events if e.state is S.DISCONNECTED)
        assert "3 heartbeats unanswered" in (dead.reason or "")
        assert sub.stats["heartbeats_missed"] >= 3
        await pub.publish("quiet", "after")
        await eventually(lambda: recorder.data["quiet"][-1:] == ["after"], what="delivery after recovery")
    assert recorder.data["quiet"] == ["before", "during", "after"]


async def test_any_inbound_frame_counts_as_liveness(hub, proxy, recorder):
    """A busy connection needs no ping: data frames keep it alive, so the client never pings it."""
    sub = via(proxy, hub, heartbeat_interval=0.3)
    sub.add_listener(recorder.listener)
    async with sub, ReconnectingWebSocketClient(hub.url, **FAST) as pub:
        await sub.subscribe("busy", recorder.handler)
        for i in range(60):
            await pub.publish("busy", i)
            await asyncio.sleep(0.02)
        await eventually(lambda: len(recorder.seqs.get("busy", [])) == 60)
    assert recorder.count(S.DISCONNECTED) == 0
    assert sub.stats["pings_sent"] == 0


async def test_the_hubs_own_pings_count_as_liveness(recorder):
    """An idle connection the hub keeps pinging needs no client ping either (inbound bytes are liveness)."""
    async with serve(port=0, ping_interval=0.05, ping_timeout=5.0) as chatty:
        client = ReconnectingWebSocketClient(chatty.url, **{**FAST, "heartbeat_interval": 0.3})
        client.add_listener(recorder.listener)
        async with client:
            await client.subscribe("idle", recorder.handler)
            await asyncio.sleep(1.5)  # five heartbeat intervals without a single message
        assert client.stats["pings_sent"] == 0
        assert recorder.count(S.DISCONNECTED) == 0

    async with serve(port=0, ping_interval=None) as silent:  # control: a silent hub does get pinged
        client = ReconnectingWebSocketClient(silent.url, **{**FAST, "heartbeat_interval": 0.3})
        async with client:
            await eventually(lambda: client.stats["pings_sent"] >= 2)
        assert client.stats["heartbeats_missed"] == 0


async def test_hub_killed_and_restarted_reports_resync_required(recorder, tmp_path):
    hub = await HubProcess(tmp_path / "hub.log").start()
    port = hub.port
    try:
        sub = ReconnectingWebSocketClient(hub.url, **FAST)
        sub.add_listener(recorder.listener)
        resyncs = []
        async with sub, ReconnectingWebSocketClient(hub.url, **FAST) as pub:
            await sub.subscribe("orders", recorder.handler, on_resync=resyncs.append)
            for i in range(5):
                await pub.publish("orders", i)
            await eventually(lambda: len(recorder.seqs.get("orders", [])) == 5)
            old_epoch = sub.subscriptions["orders"][0]
            await hub.kill()  # SIGKILL: buffers gone, no close frame
            await eventually(lambda: recorder.count(S.DISCONNECTED) >= 1)
            hub = await HubProcess(tmp_path / "hub.log", port=port).start()
            await eventually(lambda: recorder.count(S.RECOVERED) >= 2, what="recovered on the new hub")
            recovered = [e for e in recorder.events if e.state is S.RECOVERED][-1]
            assert recovered.complete is False
            event = next(e.resync for e in recorder.events if e.state is S.RESYNC_REQUIRED)
            assert event is not None and resyncs == [event] and sub.resyncs == [event]
            assert event.channel == "orders" and event.reason == "epoch_changed"
            assert event.last_epoch == old_epoch and event.last_seq == 5 and event.epoch != old_epoch
            assert "after seq 5" in event.missing
            await eventually(lambda: pub.connected, what="publisher back")
            await pub.publish("orders", "new-epoch")
            await eventually(lambda: recorder.data["orders"][-1:] == ["new-epoch"])
        assert recorder.data["orders"] == [0, 1, 2, 3, 4, "new-epoch"]
        assert recorder.seqs["orders"] == [1, 2, 3, 4, 5, 1]  # numbering restarts in the new epoch
    finally:
        await hub.stop()


async def test_gap_older_than_replay_buffer_is_reported_not_skipped(proxy, recorder):
    async with serve(port=0, replay_max_messages=5) as small, FaultProxy("127.0.0.1", small.port) as p:
        sub = via(p, small)
        sub.add_listener(recorder.listener)
        async with sub, ReconnectingWebSocketClient(small.url, **FAST) as pub:
            await sub.subscribe("c", recorder.handler)
            await (await pub.publish("c", 0)).wait(5)
            await eventually(lambda: recorder.seqs.get("c") == [1])
            await p.refuse()
            p.reset()
            for i in range(1, 13):  # 12 more: only the last 5 (seq 9..13) stay replayable
                await (await pub.publish("c", i)).wait(5)
            await p.accept()
            await eventually(lambda: recorder.count(S.RESYNC_REQUIRED) == 1)
            await eventually(lambda: recorder.seqs["c"][-1:] == [13])
    event = sub.resyncs[0]
    assert (event.reason, event.last_seq, event.first_seq) == ("evicted", 1, 9)
    assert "seq 2..8" in event.missing
    assert recorder.seqs["c"] == [1, 9, 10, 11, 12, 13]


async def test_many_channels_are_restored_in_one_subscribe(hub, proxy, recorder):
    names = [f"ch-{i}" for i in range(60)]
    sub = via(proxy, hub)
    sub.add_listener(recorder.listener)
    async with sub, ReconnectingWebSocketClient(hub.url, **FAST) as pub:
        for name in names:
            await sub.subscribe(name, recorder.handler)
        before = metric(hub, "tars_ws_hub_subscribe_requests_total")
        proxy.reset()
        for name in names:
            await pub.publish(name, "while-down")
        await eventually(lambda: recorder.count(S.RECOVERED) >= 2)
        assert metric(hub, "tars_ws_hub_subscribe_requests_total") - before == 1
        for name in names:
            await pub.publish(name, "after")
        await eventually(
            lambda: all(recorder.data.get(n) == ["while-down", "after"] for n in names), what="every channel delivering"
        )


async def test_exactly_once_in_order_across_20_drops(hub, proxy, recorder):
    sub = via(proxy, hub, stable_after=0.3)
    sub.add_listener(recorder.listener)
    total = 1200
    async with sub, ReconnectingWebSocketClient(hub.url, **FAST) as pub:
        await sub.subscribe("stream", recorder.handler)
        await sub.subscribe("other", recorder.handler)
        drops = 0
        for i in range(total):
            await pub.publish("stream", i)
            if i % 3 == 0:
                await pub.publish("other", i)
            if i % 57 == 56 and drops < 20:
                # each drop hits a fresh connection, not the one the previous drop already broke
                await eventually(
                    lambda d=drops: sub.connected and sub.stats["connections"] > d,
                    what="subscriber reconnected before the next drop",
                )
                (proxy.reset if drops % 2 == 0 else proxy.blackhole)()
                drops += 1
            await asyncio.sleep(0.003)
        await eventually(
            lambda: recorder.data.get("stream", [])[-1:] == [total - 1], timeout=60, what="last message delivered"
        )
    assert drops == 20
    assert recorder.count(S.DISCONNECTED) >= 20
    assert recorder.seqs["stream"] == list(range(1, total + 1))
    assert judge(recorder.data["stream"], list(range(total))) == (0, 0, True)
    assert judge(recorder.data["other"], list(range(0, total, 3))) == (0, 0, True)
    assert sub.resyncs == []


async def test_outbox_flushes_once_after_reconnect(hub, proxy, recorder):
    pub = via(proxy, hub)
    pub.add_listener(recorder.listener)
    async with pub, ReconnectingWebSocketClient(hub.url, **FAST) as sub:
        await sub.subscribe("out", recorder.handler)
        await proxy.refuse()
        proxy.reset()
        await eventually(lambda: recorder.count(S.DISCONNECTED) >= 1)
        pending = [await pub.publish("out", i) for i in range(10)]
        assert pub.outbox_size == 10 and not any(p.future.done() for p in pending)
        await proxy.accept()
        seqs = [await p.wait(10) for p in pending]
        assert seqs == list(range(1, 11))
        assert pub.outbox_size == 0
        await eventually(lambda: len(recorder.data.get("out", [])) == 10)
    assert recorder.data["out"] == list(range(10))


async def test_resend_after_lost_ack_is_deduplicated_by_idempotency_key(hub, proxy, recorder):
    pub = via(proxy, hub)
    async with pub, ReconnectingWebSocketClient(hub.url, **FAST) as sub:
        await sub.subscribe("idem", recorder.handler)
        proxy.delay = 0.5  # the ack will sit in the proxy...
        p = await pub.publish("idem", "once", key="order-42")
        await eventually(lambda: metric(hub, "tars_ws_hub_published_total") == 1, what="hub got the publish")
        proxy.reset()  # ...and die there: the client must resend
        proxy.heal()
        assert await p.wait(10) == 1
        await eventually(lambda: metric(hub, "tars_ws_hub_duplicate_publishes_total") == 1, what="resend deduplicated")
        await pub.publish("idem", "next")
        await eventually(lambda: recorder.data.get("idem", [])[-1:] == ["next"])
    assert recorder.data["idem"] == ["once", "next"]


async def test_outbox_bounds_and_overflow_policies(hub, proxy):
    async with via(proxy, hub, outbox_max_messages=3) as pub:
        await proxy.refuse()
        proxy.reset()
        await eventually(lambda: not pub.connected)
        for i in range(3):
            await pub.publish("o", i)
        with pytest.raises(OutboxFull, match="outbox full"):
            await pub.publish("o", 3)
    await proxy.accept()
    async with via(proxy, hub, outbox_max_messages=2, outbox_overflow="drop_oldest") as pub:
        await proxy.refuse()
        proxy.reset()
        await eventually(lambda: not pub.connected)
        first = await pub.publish("o", "a")
        await pub.publish("o", "b")
        await pub.publish("o", "c")
        with pytest.raises(OutboxFull, match="drop_oldest"):
            await first.wait(1)
        assert pub.outbox_size == 2
    await proxy.accept()
    async with via(proxy, hub, outbox_max_bytes=200) as pub:
        with pytest.raises(OutboxFull, match="exceeds outbox_max_bytes"):
            await pub.publish("o", "x" * 500)


async def test_hundred_clients_after_hub_restart_spread_by_jitter_and_lose_nothing():
    server = await serve(port=0, ping_interval=None).start()
    port = server.port
    url = server.url
    clients = [
        ReconnectingWebSocketClient(url, **{**FAST, "backoff_initial": 1.0, "backoff_max": 2.0}) for _ in range(100)
    ]
    recs = [Recorder() for _ in clients]
    for client, rec in zip(clients, recs, strict=True):
        client.add_listener(rec.listener)
    try:
        await asyncio.gather(*(c.start() for c in clients))
        await asyncio.gather(*(c.subscribe("fanout", rec.handler) for c, rec in zip(clients, recs, strict=True)))
        await server.close()  # every client is told 1012 (service restart)
        await eventually(lambda: all(r.count(S.DISCONNECTED) >= 1 for r in recs))
        server = await serve(port=port, ping_interval=None).start()
        await eventually(lambda: all(r.count(S.RECOVERED) >= 2 for r in recs), timeout=30, what="all 100 clients back")
        delays = [next(e.delay for e in r.events if e.state is S.DISCONNECTED) for r in recs]
        reasons = {next(e.reason for e in r.events if e.state is S.DISCONNECTED) for r in recs}
        assert all(reason and "1012" in reason for reason in reasons)
        # full jitter: every client drew its own delay in [0, 1.0], on both halves of the range
        assert len(set(delays)) == 100
        assert all(0.0 <= d <= 1.0 for d in delays)
        assert any(d < 0.5 for d in delays) and any(d >= 0.5 for d in delays)
        async with ReconnectingWebSocketClient(url, **FAST) as pub:
            for i in range(30):
                await pub.publish("fanout", i)
            await eventually(
                lambda: all(r.data.get("fanout") == list(range(30)) for r in recs),
                timeout=30,
                what="every client got all 30 messages exactly once",
            )
    finally:
        for i in range(0, 100, 25):
            await asyncio.gather(*(c.close() for c in clients[i : i + 25]))
        await server.close()


async def test_close_during_backoff_and_during_hanging_handshake(hub, proxy, recorder):
    client = via(proxy, hub, backoff_initial=5.0, backoff_max=10.0, stable_after=100.0)
    client.add_listener(recorder.listener)
    await client.start()
    await proxy.refuse()
    proxy.reset()
    await eventually(lambda: recorder.count(S.DISCONNECTED) >= 1)
    pending = await client.publish("x", 1)
    await asyncio.wait_for(client.close(timeout=2.0), 5.0)  # hang guard around the documented deadline
    assert client.state is S.CLOSED
    with pytest.raises(ClientClosed):
        await pending.wait(1)
    await client.close()  # idempotent
    await proxy.accept()

    proxy.blackhole(new_connections=True)  # TCP accepts, the WebSocket handshake never answers
    hanging = via(proxy, hub, connect_timeout=None, open_timeout=30.0)
    rec2 = Recorder()
    hanging.add_listener(rec2.listener)
    starter = asyncio.create_task(hanging.start())
    await eventually(lambda: proxy.accepted >= 2 and rec2.count(S.CONNECTING) >= 1)
    await asyncio.wait_for(hanging.close(timeout=2.0), 5.0)
    with pytest.raises(ClientClosed):
        await starter
    assert states(rec2)[-1] is S.CLOSED


async def test_bad_url_and_refused_connections_give_clear_errors():
    with pytest.raises(ValueError, match="invalid WebSocket URL 'http://x'"):
        ReconnectingWebSocketClient("http://x")
    dead_port = free_port()  # nobody listens there
    client = ReconnectingWebSocketClient(f"ws://127.0.0.1:{dead_port}/", **{**FAST, "connect_timeout": 1.0})
    with pytest.raises(ConnectError, match=rf"could not connect to ws://127.0.0.1:{dead_port}/ .*refused"):
        await client.start()
    assert client.state is S.CLOSED


async def test_rejected_handshake_and_v100_hub_fail_fast():
    async with serve(port=0, legacy=True) as old:
        with pytest.raises(ConnectError, match=f"did not negotiate {SUBPROTOCOL}"):
            await ReconnectingWebSocketClient(old.url, **{**FAST, "connect_timeout": 30}).start()

    def not_found(connection, request):
        from http import HTTPStatus

        return connection.respond(HTTPStatus.NOT_FOUND, "no such hub\n")

    async with ws_serve(lambda ws: None, "127.0.0.1", 0, process_request=not_found) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        with pytest.raises(ConnectError, match="HTTP 404"):
            await ReconnectingWebSocketClient(f"ws://127.0.0.1:{port}/", **{**FAST, "connect_timeout": 30}).start()


async def test_retry_after_from_a_full_hub_is_honoured(recorder):
    async with serve(port=0, max_clients=1, retry_after=1) as full:
        async with ReconnectingWebSocketClient(full.url, **FAST):
            late = ReconnectingWebSocketClient(full.url, **{**FAST, "connect_timeout": None})
            late.add_listener(recorder.listener)
            task = asyncio.create_task(late.start())
            await eventually(lambda: recorder.count(S.DISCONNECTED) >= 1)
            event = next(e for e in recorder.events if e.state is S.DISCONNECTED)
            assert "HTTP 503" in (event.reason or "")
            assert event.delay is not None and event.delay >= 1.0  # Retry-After: 1, plus jitter
        await asyncio.wait_for(task, 30)  # the slot is free now: the late client gets in
        assert late.connected
        await late.close()


async def test_backoff_is_full_jitter_capped_and_resets_only_when_healthy():
    client = ReconnectingWebSocketClient(
        "ws://127.0.0.1:1/", backoff_initial=1.0, backoff_max=30.0, rng=random.Random(7)
    )
    for attempt in range(12):
        draws = [client.backoff_delay(attempt) for _ in range(200)]
        ceiling = min(30.0, 2.0**attempt)
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling and min(draws) < 0.2 * ceiling  # jitter on every attempt

    # a hub that accepts and drops at once: the connection never becomes healthy, so backoff keeps growing
    async def drop_at_once(ws):
        await ws.close()

    attempts = [e.attempt for e in await _disconnects(drop_at_once, 5, backoff_max=10.0)]
    assert attempts[:5] == [1, 2, 3, 4, 5]


async def _disconnects(handler, n: int, *, backoff_max: float) -> list[StateEvent]:
    """A client's DISCONNECTED events against a v1.0.1 server running ``handler``, once there are ``n``."""
    async with ws_serve(handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        rec = Recorder()
        client = ReconnectingWebSocketClient(
            f"ws://127.0.0.1:{port}/", heartbeat_interval=5.0, backoff_initial=0.01, backoff_max=backoff_max
        )
        client.add_listener(rec.listener)
        async with client:
            await eventually(lambda: rec.count(S.DISCONNECTED) >= n)
    return [e for e in rec.events if e.state is S.DISCONNECTED]


async def test_state_listeners_may_be_async_and_failures_are_contained(hub):
    seen: list[S] = []

    async def async_listener(event):
        seen.append(event.state)

    def broken_listener(event):
        raise RuntimeError("listener bug")

    client = ReconnectingWebSocketClient(hub.url, **FAST)
    client.add_listener(broken_listener)
    client.add_listener(async_listener)
    got: list[Message] = []

    async def slow_async_handler(msg: Message) -> None:
        await asyncio.sleep(0.01)
        got.append(msg)

    async with client:
        await client.subscribe("a", slow_async_handler)
        for i in range(5):
            await client.publish("a", i)
        await eventually(lambda: len(got) == 5)
    await asyncio.sleep(0)
    assert [m.data for m in got] == list(range(5))
    assert seen[:3] == [S.CONNECTING, S.CONNECTED, S.RECOVERED] and seen[-1] is S.CLOSED


async def test_sync_facade_from_many_threads(hub):
    got: list[int] = []
    lock = threading.Lock()

    def handler(msg: Message) -> None:
        with lock:
            got.append(msg.data)

    def threaded() -> None:
        client = SyncReconnectingWebSocketClient(hub.url, **FAST)
        with client:
            client.subscribe("sync", handler)
            workers = [
                threading.Thread(target=lambda k=k: [client.publish("sync", k * 100 + i, wait=10) for i in range(25)])
                for k in range(4)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            deadline = threading.Event()
            for _ in range(500):
                with lock:
                    if len(got) == 100:
                        break
                deadline.wait(0.02)
            closers = [threading.Thread(target=client.close) for _ in range(3)]
            for c in closers:
                c.start()
            for c in closers:
                c.join()
        assert client.state is S.CLOSED
        with pytest.raises(ClientClosed):
            client.publish("sync", "late")

    await asyncio.to_thread(threaded)
    assert sorted(got) == sorted(k * 100 + i for k in range(4) for i in range(25))
    for k in range(4):  # each publishing thread's messages arrive in its own order
        mine = [x for x in got if x // 100 == k]
        assert mine == sorted(mine)


async def test_close_1013_with_retry_after_hint_is_honoured_and_keeps_escalating():
    async def busy(ws):
        await ws.close(1013, "hub overloaded; retry-after=0.3")

    events = await _disconnects(busy, 3, backoff_max=0.05)
    assert all("1013" in (e.reason or "") for e in events)
    assert all(e.delay is not None and e.delay >= 0.3 for e in events)  # the hint, plus jitter
    assert [e.attempt for e in events[:3]] == [1, 2, 3]  # 1013 is a failure: no reset


async def test_a_hub_that_never_confirms_the_resubscribe_is_left_and_retried():
    async def mute(ws):  # negotiates v1.0.1, then ignores every frame
        async for _ in ws:
            pass

    async with ws_serve(mute, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with FaultProxy("127.0.0.1", port) as p:
            rec = Recorder()
            client = ReconnectingWebSocketClient(
                f"ws://127.0.0.1:{port}/", host=p.host, port=p.port, **{**FAST, "request_timeout": 0.3}
            )
            client.add_listener(rec.listener)
            async with client:
                await client.subscribe("never", rec.handler)  # unconfirmed: stays desired
                p.reset()
                await eventually(lambda: rec.count(S.DISCONNECTED) >= 2, what="second disconnect")
                reasons = [e.reason or "" for e in rec.events if e.state is S.DISCONNECTED]
                assert any("session failed" in r and "Timeout" in r for r in reasons[1:])
                await eventually(lambda: rec.count(S.CONNECTING) >= 3, what="still retrying")
            assert "never" in client.subscriptions


async def test_overlong_channel_names_are_refused_before_sending(hub):
    async with ReconnectingWebSocketClient(hub.url, **FAST) as client:
        with pytest.raises(ValueError, match="at most 200 characters"):
            await client.subscribe("x" * 201, lambda m: None)


async def test_close_from_inside_a_handler(hub):
    client = ReconnectingWebSocketClient(hub.url, **FAST)
    closed = asyncio.Event()

    async def handler(msg: Message) -> None:
        await client.close(timeout=2.0)
        closed.set()

    async with client:
        await client.subscribe("bye", handler)
        await client.publish("bye", 1)
        await asyncio.wait_for(closed.wait(), 10)  # hang guard
    assert client.state is S.CLOSED
    mine = f"-{client.client_id}"
    await eventually(
        lambda: not [t for t in asyncio.all_tasks() if t.get_name().endswith(mine)],
        what="no task of the closed client left",
    )
