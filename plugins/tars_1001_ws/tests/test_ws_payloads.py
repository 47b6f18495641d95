"""No payload a client can send takes down another client's connection (issue 19, defects 1-5).

Raw frames on real sockets, exactly as a browser's ``JSON.stringify`` or a hand-written client would send
them, with the project's own client and a plain ``websockets`` client subscribed to the same channel. Every
frame the hub sends is parsed with a strict JSON parser (no NaN, no lone surrogates), as a browser would.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from tars_1001_ws.check import Recorder
from tars_1001_ws.client import ConnectionState, ReconnectingWebSocketClient
from tars_1001_ws.hub import HubServer, serve
from tars_1001_ws.protocol import SUBPROTOCOL, SUBPROTOCOL_V100
from websockets.asyncio.client import ClientConnection, connect
from ws_testlib import FAST, eventually, metric

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]
S = ConnectionState
BOTH = [SUBPROTOCOL, SUBPROTOCOL_V100]


def strict(text: str | bytes) -> dict[str, Any]:
    """What a browser's JSON.parse accepts: standard JSON only, and text that is valid UTF-8."""
    if isinstance(text, str):
        text.encode("utf-8")  # a lone surrogate cannot be encoded: it could never have been sent
    frame = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert isinstance(frame, dict)
    return frame


async def until(ws: ClientConnection, kind: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame of ``kind`` (skipping others), parsed strictly."""
    async with asyncio.timeout(timeout):
        while True:
            frame = strict(await ws.recv())
            if frame["type"] == kind:
                return frame


async def frames_until_ack(ws: ClientConnection, ack_id: Any) -> list[dict[str, Any]]:
    """Every frame up to and including the ack with ``ack_id``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while True:
            frame = strict(await ws.recv())
            seen.append(frame)
            if frame["type"] == "ack" and frame.get("id") == ack_id:
                return seen


class Bystanders:
    """A plain websockets subscriber and the project's client on one channel: neither may lose its
    connection or a message because of what another client sent."""

    def __init__(self, hub: HubServer, channel: str) -> None:
        self.hub, self.channel = hub, channel
        self.rec = Recorder()
        self.client = ReconnectingWebSocketClient(hub.url, **FAST)
        self.client.add_listener(self.rec.listener)
        self.raw: ClientConnection | None = None

    async def __aenter__(self) -> Bystanders:
        await self.client.start()
        await self.client.subscribe(self.channel, self.rec.handler)
        self.raw = await connect(self.hub.url, subprotocols=[SUBPROTOCOL])
        await self.raw.send(json.dumps({"type": "subscribe", "id": "b", "channels": [self.channel]}))
        await until(self.raw, "subscribed")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        if self.raw is not None:
            await self.raw.close()

    async def still_served(self, publisher: ClientConnection, value: Any) -> None:
        """A good publish after the bad one reaches both, on the connections they had all along."""
        await publisher.send(json.dumps({"type": "publish", "id": "good", "channel": self.channel, "data": value}))
        ack = await until(publisher, "ack")
        assert ack["id"] == "good"
        assert self.raw is not None
        msg = await until(self.raw, "msg")
        assert msg["data"] == value and msg["seq"] == ack["seq"]
        await eventually(lambda: self.rec.data.get(self.channel, [])[-1:] == [value], what="client got the good one")
        assert self.rec.count(S.DISCONNECTED) == 0, [e.reason for e in self.rec.events]


# What JSON.stringify produces for {"title": "abc" + "\ud83d"} (an emoji cut in half): valid ASCII text,
# a lone surrogate once parsed.
POISON = r'{"type":"publish","id":"p1","key":"p1","channel":"c","data":{"title":"abc\ud83d"}}'


async def test_a_lone_surrogate_is_refused_at_publish_and_never_stored(hub):
    async with Bystanders(hub, "c") as bystanders, connect(hub.url, subprotocols=[SUBPROTOCOL]) as page:
        await page.send(POISON)
        err = await until(page, "error")
        assert (err["id"], err["code"]) == ("p1", "bad_request") and "surrogate" in err["message"]
        assert metric(hub, "tars_ws_hub_published_total") == 0  # refused, not stored
        await bystanders.still_served(page, {"title": "abc\U0001f600"})  # a whole emoji is fine
        # a later subscriber replaying from the start gets nothing poisonous either
        epoch = hub.hub.channels["c"].epoch
        await page.send(
            json.dumps({"type": "subscribe", "id": 2, "channels": [{"channel": "c", "epoch": epoch, "seq": 0}]})
        )
        assert (await until(page, "subscribed"))["channels"][0]["first"] == 1
        assert (await until(page, "msg"))["data"] == {"title": "abc\U0001f600"}


async def test_a_lone_surrogate_anywhere_in_a_frame_gets_an_error_frame(hub):
    async with Bystanders(hub, "c") as bystanders, connect(hub.url, subprotocols=[SUBPROTOCOL]) as page:
        for text in (
            r'{"type":"publish","id":"p2","channel":"c\ud83d","data":1}',  # in the channel name
            r'{"type":"publish","id":"p3","channel":"c","data":{"\udc00":1}}',  # in an object key
            r'{"type":"publish","id":"\ud83d","channel":"c","data":1}',  # in the id: no id to echo
            r'{"type":"subscribe","id":"s","channels":["c\udfff"]}',
            r'{"type":"\ud83d"}',
        ):
            await page.send(text)
            err = await until(page, "error")
            assert err["code"] in ("bad_frame", "bad_request") and "surrogate" in err["message"]
        assert metric(hub, "tars_ws_hub_published_total") == 0
        await bystanders.still_served(page, "after")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_only_standard_json_is_accepted_so_only_standard_json_leaves_the_hub(hub, literal):
    async with Bystanders(hub, "c") as bystanders, connect(hub.url, subprotocols=[SUBPROTOCOL]) as page:
        await page.send('{"type":"publish","id":"n","key":"n","channel":"c","data":{"v":' + literal + "}}")
        err = await until(page, "error")
        assert err["code"] == "bad_frame" and "standard JSON" in err["message"]
        assert metric(hub, "tars_ws_hub_published_total") == 0
        await bystanders.still_served(page, {"v": 1.5})


async def test_a_subscribe_with_one_bad_entry_subscribes_nothing(hub):
    async with connect(hub.url, subprotocols=[SUBPROTOCOL]) as ws:
        bad_requests = [
            ["c", 5],
            ["c", {"channel": "d", "epoch": None, "seq": "x"}],
            [{"channel": "c", "epoch": "e", "seq": True}],
            [{"channel": "c", "epoch": 7, "seq": 1}],
            ["c", "c"],
            ["c", ""],
        ]
        for i, channels in enumerate(bad_requests):
            await ws.send(json.dumps({"type": "subscribe", "id": i, "channels": channels}))
            err = await until(ws, "error")
            assert (err["id"], err["code"]) == (i, "bad_request")
        assert all(not ch.subscribers for ch in hub.hub.channels.values())
        await ws.send(json.dumps({"type": "publish", "id": "x", "channel": "c", "data": 1}))
        frames = await frames_until_ack(ws, "x")
        assert [f["type"] for f in frames] == ["ack"]  # not subscribed to c, so no msg came back


async def test_deep_nesting_and_unhashable_names_get_error_frames_not_a_crash(hub):
    async with Bystanders(hub, "c") as bystanders, connect(hub.url, subprotocols=[SUBPROTOCOL]) as page:
        deep = "[" * 100_000 + "]" * 100_000
        await page.send('{"type":"publish","id":"d","channel":"c","data":' + deep + "}")
        assert (await until(page, "error"))["code"] == "bad_frame"
        await page.send('{"type":"publish","id":"d2","channel":"c","data":' + "[" * 70 + "]" * 70 + "}")
        assert "nested deeper" in (await until(page, "error"))["message"]
        for channels in ([[1]], [{"a": 1}], "c", None):
            await page.send(json.dumps({"type": "unsubscribe", "id": "u", "channels": channels}))
            assert (await until(page, "error"))["code"] == "bad_request"
        await page.send(b'{"type":"publish","id":"bin","channel":"c","data":"\xff"}')  # binary, not UTF-8
        assert (await until(page, "error"))["code"] == "bad_frame"
        await page.send(json.dumps({"type": "ping", "id": 7}))
        assert (await until(page, "pong"))["id"] == 7
        await bystanders.still_served(page, "still here")
        assert page.close_code is None


async def test_a_failing_send_costs_only_its_own_connection(hub, monkeypatch):
    """Belt and braces behind the publish checks: if sending to one subscriber raises something other
    than a closed connection, only that subscriber is closed (1011) and the others keep theirs."""
    async with Bystanders(hub, "c") as bystanders, connect(hub.url, subprotocols=[SUBPROTOCOL]) as victim:
        await victim.send(json.dumps({"type": "subscribe", "id": 1, "channels": ["c"]}))
        await until(victim, "subscribed")
        session = next(s for s in hub.hub.sessions if s.conn.remote_address == victim.local_address)

        async def broken(message: Any, text: bool | None = None) -> None:
            raise RuntimeError("simulated encoder bug")

        monkeypatch.setattr(session.conn, "send", broken)
        async with connect(hub.url, subprotocols=[SUBPROTOCOL]) as page:
            await bystanders.still_served(page, "one")
            await eventually(lambda: victim.close_code == 1011, what="the broken subscriber closed with 1011")
            await bystanders.still_served(page, "two")


async def test_both_flag_states_select_a_protocol_for_a_client_that_offers_both(tars_redis_url, flags_key):
    redis = aioredis.from_url(tars_redis_url, decode_responses=True)
    try:
        async with serve(port=0, flags_redis=tars_redis_url, flags_key=flags_key, flag_refresh=0.05) as hub:
            async with connect(hub.url, subprotocols=BOTH) as ws:
                assert ws.subprotocol == SUBPROTOCOL_V100  # flag absent: the v1.0.0 behaviour, negotiated
                await ws.send(json.dumps({"type": "subscribe", "id": 1, "channels": ["x"]}))
                assert (await until(ws, "subscribed"))["channels"] == [{"channel": "x"}]
            await redis.hset(flags_key, "tars-1001-ws-reconnect", "on")
            await eventually(lambda: hub.hub.enabled, what="hub picked up the flag")
            async with connect(hub.url, subprotocols=BOTH) as ws:
                assert ws.subprotocol == SUBPROTOCOL
            async with connect(hub.url, subprotocols=list(reversed(BOTH))) as ws:
                assert ws.subprotocol == SUBPROTOCOL  # the hub's preference, not the offer's order
            async with connect(hub.url) as ws:
                assert ws.subprotocol is None  # a v1.0.0 client that offers nothing is still served
    finally:
        await redis.aclose()


async def test_the_python_client_connects_in_both_flag_states(tars_redis_url, flags_key):
    """Flag off: the client negotiates v1.0.0 and delivers live messages; after a flip and a reconnect it
    is on v1.0.1; a reconnect it cannot resume from is reported as a resync, never passed over silently."""
    redis = aioredis.from_url(tars_redis_url, decode_responses=True)
    rec = Recorder()
    try:
        async with serve(port=0, flags_redis=tars_redis_url, flags_key=flags_key, flag_refresh=0.05) as hub:
            client = ReconnectingWebSocketClient(hub.url, **FAST)
            client.add_listener(rec.listener)
            async with client, connect(hub.url, subprotocols=BOTH) as pub:
                assert client.protocol == SUBPROTOCOL_V100
                await client.subscribe("x", rec.handler)
                await pub.send(json.dumps({"type": "publish", "id": 1, "channel": "x", "data": "off"}))
                await eventually(lambda: rec.data.get("x") == ["off"], what="delivery under v1.0.0")
                seq = await (await client.publish("x", "from-client")).wait(5)
                assert seq is None  # v1.0.0 numbers nothing
                await eventually(lambda: rec.data["x"] == ["off", "from-client"])
                await redis.hset(flags_key, "tars-1001-ws-reconnect", "on")
                await eventually(lambda: hub.hub.enabled, what="hub picked up the flag")
                for session in list(hub.hub.sessions):  # a drop makes the client reconnect
                    session.conn.transport.abort()
                await eventually(lambda: client.protocol == SUBPROTOCOL and client.connected, what="on v1.0.1")
                resync = next(e.resync for e in rec.events if e.state is S.RESYNC_REQUIRED)
                assert resync is not None and (resync.channel, resync.reason) == ("x", "no_replay")
                connected = [e.protocol for e in rec.events if e.state is S.CONNECTED]
                assert connected == [SUBPROTOCOL_V100, SUBPROTOCOL]
                assert await (await client.publish("x", "on")).wait(5) == hub.hub.channels["x"].head
                await eventually(lambda: rec.data["x"][-1:] == ["on"])
    finally:
        await redis.aclose()
