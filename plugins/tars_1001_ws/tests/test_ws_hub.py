"""The hub on the wire: raw WebSocket frames, so the protocol (README) is tested, not our client's reading."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import urllib.request

import pytest
import redis.asyncio as aioredis
from tars_1001_ws.check import HubError, HubProcess, hub_info, probe_protocol
from tars_1001_ws.hub import serve
from tars_1001_ws.protocol import CLIENT_JS_PATH, SUBPROTOCOL, SUBPROTOCOL_V100, decode, encode
from websockets.asyncio.client import connect
from ws_testlib import eventually

from tars_core.processes import Service, free_port, redis_ready

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def frames_until(ws, kind: str) -> dict:
    while True:
        frame = decode(await asyncio.wait_for(ws.recv(), 10))
        if frame["type"] == kind:
            return frame


async def test_probe_passes_on_the_fixed_hub(hub):
    assert "replay after seq" in await probe_protocol(hub.url)


async def test_welcome_publish_ack_and_live_messages(hub):
    async with connect(hub.url, subprotocols=[SUBPROTOCOL]) as a, connect(hub.url, subprotocols=[SUBPROTOCOL]) as b:
        welcome = await frames_until(a, "welcome")
        assert welcome["protocol"] == SUBPROTOCOL and welcome["replay"]["max_messages"] == 1000
        await a.send(encode({"type": "subscribe", "id": 1, "channels": [{"channel": "x", "epoch": None, "seq": None}]}))
        sub = await frames_until(a, "subscribed")
        assert sub["id"] == 1 and sub["channels"][0]["head"] == 0 and sub["channels"][0]["first"] == 1
        await b.send(encode({"type": "publish", "id": "p1", "channel": "x", "data": {"n": 1}, "key": "k"}))
        ack = await frames_until(b, "ack")
        assert (ack["id"], ack["seq"], ack["duplicate"], ack["epoch"]) == ("p1", 1, False, sub["channels"][0]["epoch"])
        msg = await frames_until(a, "msg")
        assert (msg["channel"], msg["seq"], msg["data"]) == ("x", 1, {"n": 1})


async def test_bad_frames_get_error_frames_and_the_connection_lives_on(hub):
    async with connect(hub.url, subprotocols=[SUBPROTOCOL]) as ws:
        await ws.send("not json")
        assert (await frames_until(ws, "error"))["code"] == "bad_frame"
        await ws.send(encode({"type": "publish", "id": 3, "channel": "", "data": 1}))
        err = await frames_until(ws, "error")
        assert err["id"] == 3 and err["code"] == "bad_request"
        await ws.send(encode({"type": "launch", "id": 4}))
        assert (await frames_until(ws, "error"))["code"] == "unknown_type"
        await ws.send(encode({"type": "publish", "id": 5, "channel": "ok", "data": 1}))
        assert (await frames_until(ws, "ack"))["seq"] == 1


async def test_v100_clients_get_the_old_frames_without_replay(hub):
    """A client that does not offer the subprotocol is served v1.0.0: no seq, no epoch, no replay."""
    async with connect(hub.url) as old, connect(hub.url, subprotocols=[SUBPROTOCOL]) as new:
        assert old.subprotocol is None
        await old.send(encode({"type": "subscribe", "id": 1, "channels": ["x"]}))
        assert (await frames_until(old, "subscribed"))["channels"] == [{"channel": "x"}]
        await new.send(encode({"type": "publish", "id": 1, "channel": "x", "data": "hi", "key": "a"}))
        msg = await frames_until(old, "msg")
        assert msg == {"type": "msg", "channel": "x", "data": "hi"}


async def test_replay_is_bounded_by_age():
    async with serve(port=0, replay_max_age=0.3) as hub:
        async with connect(hub.url, subprotocols=[SUBPROTOCOL]) as ws:
            await ws.send(encode({"type": "publish", "id": 1, "channel": "c", "data": 1, "key": "a"}))
            epoch = (await frames_until(ws, "ack"))["epoch"]
            await asyncio.sleep(0.5)
            await ws.send(encode({"type": "publish", "id": 2, "channel": "c", "data": 2, "key": "b"}))
            await frames_until(ws, "ack")
            await ws.send(
                encode({"type": "subscribe", "id": 3, "channels": [{"channel": "c", "epoch": epoch, "seq": 0}]})
            )
            result = (await frames_until(ws, "subscribed"))["channels"][0]
            assert (result["recovered"], result["reason"], result["first"]) == (False, "evicted", 2)
            assert (await frames_until(ws, "msg"))["seq"] == 2


async def test_info_and_metrics_endpoints(hub):
    info = await hub_info(hub.url)
    assert info["supported"] == [SUBPROTOCOL, SUBPROTOCOL_V100] and info["enabled"] is True and info["flag"] is None
    assert info["client"] == CLIENT_JS_PATH
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{hub.port}/metrics").read())
    assert b"tars_ws_hub_v101_enabled 1.0" in body and b"tars_ws_hub_published_total" in body


async def test_the_hub_serves_the_browser_client_it_ships(hub):
    """GET /tars-ws/tars-ws.js is the package's static/tars-ws.js, as a module any origin may import."""
    from importlib.resources import files

    def get() -> tuple[bytes, dict[str, str]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{hub.port}{CLIENT_JS_PATH}") as response:
            return response.read(), dict(response.headers)

    body, headers = await asyncio.to_thread(get)
    assert body == files("tars_1001_ws").joinpath("static", "tars-ws.js").read_bytes()
    assert headers["Content-Type"].startswith("text/javascript") and headers["Access-Control-Allow-Origin"] == "*"
    assert b"export class TarsWebSocket" in body


async def test_info_on_something_that_is_not_a_hub_is_a_clear_error():
    with pytest.raises(HubError, match="cannot reach the hub"):
        await hub_info("ws://127.0.0.1:1/")
    with pytest.raises(HubError, match="must be ws:// or wss://"):
        await hub_info("http://127.0.0.1:1/")


async def test_flag_in_redis_switches_v101_on_and_off(tars_redis_url, flags_key):
    redis = aioredis.from_url(tars_redis_url, decode_responses=True)
    try:
        async with serve(port=0, flags_redis=tars_redis_url, flags_key=flags_key, flag_refresh=0.05) as hub:
            assert (await hub_info(hub.url))["enabled"] is False  # no flag yet: v1.0.0 behaviour
            async with connect(hub.url, subprotocols=[SUBPROTOCOL]) as ws:
                assert ws.subprotocol is None
            with pytest.raises(HubError, match="does not negotiate"):
                await probe_protocol(hub.url)
            await redis.hset(flags_key, "tars-1001-ws-reconnect", "on")
            await eventually(lambda: hub.hub.enabled, what="hub picked up the flag")
            await probe_protocol(hub.url)
            await redis.hset(flags_key, "tars-1001-ws-reconnect", "off")
            await eventually(lambda: not hub.hub.enabled, what="hub dropped the flag")
    finally:
        await redis.aclose()


async def test_a_redis_outage_keeps_the_hub_serving_with_the_last_flag_value(tmp_path, caplog):
    """Redis going away must neither take the hub down nor flip its behaviour; when Redis is back, the
    hub follows the flag again (here: a fresh Redis, so the flag is gone and v1.0.1 is withdrawn)."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def redis_server() -> Service:
        return Service("redis-server", argv, tmp_path / "redis.log", ready=redis_ready(port))

    flags = aioredis.from_url(url, decode_responses=True)
    server = await asyncio.to_thread(redis_server().start)
    try:
        await flags.hset("tars:feature_flags", "tars-1001-ws-reconnect", "on")
        async with serve(port=0, flags_redis=url, flag_refresh=0.05) as hub:
            await eventually(lambda: hub.hub.enabled, what="hub picked up the flag")
            with caplog.at_level(logging.WARNING, logger="tars_1001_ws.hub"):
                await asyncio.to_thread(server.stop)
                await eventually(lambda: "unreadable, keeping v1.0.1 on" in caplog.text, what="hub saw the outage")
            assert hub.hub.enabled is True
            assert "replay after seq" in await probe_protocol(hub.url)  # still serving v1.0.1
            server = await asyncio.to_thread(redis_server().start)
            await eventually(lambda: not hub.hub.enabled, what="hub read the flag again after the outage")
    finally:
        await flags.aclose()
        await asyncio.to_thread(server.stop)


async def test_hub_process_cli_serves_and_stops_on_sigterm(tmp_path):
    async with HubProcess(tmp_path / "hub.log", "--replay-size", "10", "--log-level", "INFO") as hub:
        info = await hub_info(hub.url)
        assert info["replay"]["max_messages"] == 10
    assert f"hub {info['hub_id']} stopped" in hub.service.tail()  # SIGTERM closed it, no SIGKILL needed
    out = subprocess.run(
        [sys.executable, "-m", "tars_1001_ws.hub", "--help"], capture_output=True, text=True, check=True
    )
    assert "--replay-age" in out.stdout


async def test_graceful_hub_close_sends_1012_and_refuses_with_retry_after(hub):
    async with connect(hub.url, subprotocols=[SUBPROTOCOL]) as ws:
        closing = asyncio.create_task(hub.close())
        with pytest.raises(Exception):  # noqa: B017 - ConnectionClosedOK or Error depending on timing
            while True:
                await ws.recv()
        await closing
        assert ws.close_code == 1012


async def test_slow_consumer_is_disconnected_not_buffered_forever():
    async with serve(port=0, max_pending=20) as hub:
        slow = await connect(hub.url, subprotocols=[SUBPROTOCOL], max_queue=1, close_timeout=0.5)
        fast = await connect(hub.url, subprotocols=[SUBPROTOCOL], close_timeout=0.5)
        try:
            await slow.send(encode({"type": "subscribe", "id": 1, "channels": ["s"]}))
            await frames_until(slow, "subscribed")
            big = "x" * 65536
            for i in range(200):  # ~13 MB the slow client never reads: more than the socket buffers hold
                await fast.send(encode({"type": "publish", "id": i, "channel": "s", "data": big}))
                await frames_until(fast, "ack")
            await eventually(
                lambda: hub.hub.registry.get_sample_value("tars_ws_hub_slow_consumer_disconnects_total") == 1,
                what="slow consumer dropped",
            )
            assert hub.hub.channels["s"].subscribers == set()
        finally:
            slow.transport.abort()
            await fast.close()
