"""tars-ws.js in headless Chromium (Debian's ``chromium`` through Playwright, no browser download) against
the real hub, through the plugin's fault proxy: resets, a silent drop, a hub restart, the flag flipped
both ways, and the malformed frames and payloads of issue 19, beside the project's Python client.

The page imports the client from the hub's documented path, from another origin, as a dashboard would.
Without Chromium every test here fails with one line saying what to install (never skipped).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from tars_1001_ws.browser import BrowserUnavailable, Dashboard, launch, page_server
from tars_1001_ws.check import Recorder, judge
from tars_1001_ws.client import ConnectionState, ReconnectingWebSocketClient
from tars_1001_ws.hub import HubServer, serve
from tars_1001_ws.protocol import SUBPROTOCOL, SUBPROTOCOL_V100
from tars_1001_ws.proxy import FaultProxy
from ws_testlib import FAST

from tars_core.waiting import await_until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

# the page's client at test speed (the Python client's FAST): heartbeat 0.2 s, backoff 0.1..0.5 s
JS_FAST: dict[str, Any] = {"heartbeatInterval": 0.2, "heartbeatTimeout": 0.2, "backoffInitial": 0.1, "backoffMax": 0.5}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Any]:
    try:
        async with launch() as b:
            yield b
    except BrowserUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest_asyncio.fixture(loop_scope="module")
async def bhub() -> AsyncIterator[HubServer]:
    async with serve(port=0, ping_interval=1.0, ping_timeout=1.0) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def bproxy(bhub: HubServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", bhub.port) as p:
        yield p


async def open_page(browser: Any, hub_url: str) -> tuple[Dashboard, Any]:
    context = await browser.new_context()
    server = page_server(hub_url)
    url = server.__enter__()
    try:
        return await Dashboard.open(context, url), (context, server)
    except BaseException:
        server.__exit__(None, None, None)
        await context.close()
        raise


async def close_page(handle: Any) -> None:
    context, server = handle
    await context.close()
    server.__exit__(None, None, None)


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any, bhub: HubServer) -> AsyncIterator[Dashboard]:
    dashboard, handle = await open_page(browser, bhub.url)
    yield dashboard
    await close_page(handle)


async def until(dashboard: Dashboard, i: int, predicate: Callable[[dict[str, Any]], Any], what: str) -> dict[str, Any]:
    """Poll the page's view of client ``i`` until ``predicate(view)`` (a hang guard, not a timing check)."""
    view: dict[str, Any] = {}

    async def check() -> bool:
        view.clear()
        view.update(await dashboard.view(i))
        return bool(predicate(view))

    try:
        await await_until(check, timeout=20.0, interval=0.05, what=what)
    except Exception:
        raise AssertionError(f"{what}: page saw {view} / console {dashboard.console[-10:]}") from None
    return view


def states(view: dict[str, Any]) -> list[str]:
    return [e["state"] for e in view["events"]]


def count(view: dict[str, Any], state: str) -> int:
    return states(view).count(state)


def data(view: dict[str, Any], channel: str) -> list[Any]:
    return [d for _, d, _ in view["got"].get(channel, [])]


def seqs(view: dict[str, Any], channel: str) -> list[Any]:
    return [s for s, _, _ in view["got"].get(channel, [])]


async def test_resets_and_a_silent_drop_lose_and_duplicate_nothing(page, bhub, bproxy):
    i = await page.start(bproxy.url(), ["ticks", "other"], **JS_FAST)
    total, drops = 240, 0
    async with ReconnectingWebSocketClient(bhub.url, **FAST) as pub:
        for n in range(total):
            await pub.publish("ticks", n)
            if n % 2 == 0:
                await pub.publish("other", n)
            if n % 40 == 19:
                # each drop hits a page that had reconnected: reset, blackhole (silent), reset...
                await until(page, i, lambda v, d=drops: v["connected"] and v["stats"]["connections"] > d, "reconnected")
                (bproxy.blackhole if drops % 2 else bproxy.reset)()
                drops += 1
            await asyncio.sleep(0.004)
        view = await until(page, i, lambda v: data(v, "ticks")[-1:] == [total - 1], "last message on the page")
    assert drops == 6
    assert seqs(view, "ticks") == list(range(1, total + 1))
    assert judge(data(view, "ticks"), list(range(total))) == (0, 0, True)
    assert judge(data(view, "other"), list(range(0, total, 2))) == (0, 0, True)
    reasons = [e.get("reason") or "" for e in view["events"] if e["state"] == "disconnected"]
    assert len(reasons) >= drops and any("3 heartbeats unanswered" in r for r in reasons), reasons
    assert count(view, "resync_required") == 0
    # the page can show "reconnecting..." then "recovered": every drop gave the page both state events
    assert count(view, "recovered") >= drops + 1 and view["protocol"] == SUBPROTOCOL


async def test_a_hub_restart_is_a_resync_the_page_is_told_about(browser):
    async with serve(port=0) as first:
        port = first.port
        async with FaultProxy("127.0.0.1", port) as proxy:
            page, handle = await open_page(browser, first.url)
            try:
                i = await page.start(proxy.url(), ["orders"], **JS_FAST)
                async with ReconnectingWebSocketClient(first.url, **FAST) as pub:
                    for n in range(5):
                        await (await pub.publish("orders", n)).wait(5)
                await until(page, i, lambda v: len(data(v, "orders")) == 5, "first five delivered")
                old_epoch = (await page.view(i))["subscriptions"]["orders"][0]
                await first.close()  # every client is told 1012 (service restart); the buffers are gone
                async with serve(port=port) as second:
                    view = await until(page, i, lambda v: count(v, "recovered") >= 2, "recovered on the new hub")
                    async with ReconnectingWebSocketClient(second.url, **FAST) as pub:
                        await (await pub.publish("orders", "new-epoch")).wait(5)
                    view = await until(page, i, lambda v: data(v, "orders")[-1:] == ["new-epoch"], "new epoch live")
            finally:
                await close_page(handle)
    disconnected = next(e for e in view["events"] if e["state"] == "disconnected")
    assert "1012" in disconnected["reason"]
    resync = next(e["resync"] for e in view["events"] if e["state"] == "resync_required")
    assert (resync["channel"], resync["reason"], resync["lastEpoch"], resync["lastSeq"]) == (
        "orders",
        "epoch_changed",
        old_epoch,
        5,
    )
    assert "after seq 5" in resync["missing"]
    assert [e for e in view["events"] if e["state"] == "recovered"][-1]["complete"] is False
    assert seqs(view, "orders") == [1, 2, 3, 4, 5, 1]  # numbering restarts in the new epoch


async def test_the_page_connects_in_both_flag_states_and_follows_a_flip_both_ways(browser, tars_redis_url, flags_key):
    """Flag off (v1.0.0, and after every rollback): the page still connects, over tars.ws.v1.0.0. Each flip
    takes effect at the page's next reconnect; a reconnect without replay is a no_replay resync; every
    message published while the page was connected arrives exactly once."""
    redis = aioredis.from_url(tars_redis_url, decode_responses=True)
    published: list[str] = []
    try:
        async with (
            serve(port=0, flags_redis=tars_redis_url, flags_key=flags_key, flag_refresh=0.05) as hub,
            FaultProxy("127.0.0.1", hub.port) as proxy,
        ):
            page, handle = await open_page(browser, hub.url)
            try:
                i = await page.start(proxy.url(), ["evals"], **JS_FAST)
                view = await page.view(i)
                assert view["protocol"] == SUBPROTOCOL_V100 and view["connected"]

                async with ReconnectingWebSocketClient(hub.url, **FAST) as pub:

                    async def burst(label: str, n: int) -> None:
                        for k in range(n):
                            await (await pub.publish("evals", f"{label}-{k}")).wait(5)
                            published.append(f"{label}-{k}")
                        await until(page, i, lambda v: data(v, "evals")[-1:] == published[-1:], f"{label} delivered")

                    async def flip(value: str, protocol: str) -> None:
                        await redis.hset(flags_key, "tars-1001-ws-reconnect", value)
                        await await_until(lambda: hub.hub.enabled is (value == "on"), timeout=10, what="hub flag")
                        before = (await page.view(i))["stats"]["connections"]
                        proxy.reset()
                        await until(
                            page,
                            i,
                            lambda v: (
                                v["connected"] and v["stats"]["connections"] > before and v["protocol"] == protocol
                            ),
                            f"reconnected over {protocol}",
                        )

                    await burst("off", 20)
                    await flip("on", SUBPROTOCOL)
                    await burst("on", 20)
                    for r in range(2):  # under v1.0.1 a drop while publishing loses nothing
                        proxy.reset()
                        await burst(f"on-drop{r}", 20)
                    await flip("off", SUBPROTOCOL_V100)
                    await burst("off-again", 20)
                view = await page.view(i)
            finally:
                await close_page(handle)
    finally:
        await redis.aclose()
    assert judge(data(view, "evals"), published) == (0, 0, True)
    assert data(view, "evals") == published
    protocols = [e["protocol"] for e in view["events"] if e["state"] == "connected"]
    assert protocols[0] == SUBPROTOCOL_V100 and protocols[-1] == SUBPROTOCOL_V100 and SUBPROTOCOL in protocols
    reasons = {e["resync"]["reason"] for e in view["events"] if e["state"] == "resync_required"}
    assert reasons == {"no_replay"}  # only the reconnects that crossed a v1.0.0 connection


# What a page can put on the wire by hand (JSON.stringify output, or text written by hand).
MALFORMED = [
    r'{"type":"publish","id":"p1","key":"p1","channel":"c","data":{"title":"abc\ud83d"}}',
    '{"type":"publish","id":"n1","key":"n1","channel":"c","data":{"v":NaN}}',
    '{"type":"subscribe","id":"s1","channels":["c",5]}',
    '{"type":"publish","id":"d1","channel":"c","data":' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"type":"unsubscribe","id":"u1","channels":[[1]]}',
    "not json at all",
    '{"type":"subscribe","id":"s2","channels":[{"channel":"c","epoch":"e","seq":-1}]}',
]


async def test_malformed_frames_from_a_page_cost_no_other_client_its_connection(browser, page, bhub):
    rec = Recorder()
    python_client = ReconnectingWebSocketClient(bhub.url, **FAST)
    python_client.add_listener(rec.listener)
    other_page, handle = await open_page(browser, bhub.url)
    try:
        async with python_client:
            await python_client.subscribe("c", rec.handler)
            bystander = await other_page.start(bhub.url, ["c"], **JS_FAST)
            attacker = await page.raw(bhub.url, [SUBPROTOCOL, SUBPROTOCOL_V100])
            await until(page, attacker, lambda v: v["events"], "raw socket open")
            for n, text in enumerate(MALFORMED, 1):
                await page.send(attacker, text)
                await until(page, attacker, lambda v, n=n: len(_errors(v)) >= n, f"error frame for payload {n}")
            errors = _errors(await page.view(attacker))
            assert [e["id"] for e in errors] == ["p1", None, "s1", None, "u1", None, "s2"]
            assert bhub.hub.channels["c"].head == 0 and not bhub.hub.channels["c"].buffer  # nothing stored
            # the page's own client refuses what the hub would refuse, before it reaches the outbox...
            j = await page.start(bhub.url, [], **JS_FAST)
            assert "lone UTF-16 surrogate" in await page.page.evaluate(
                "(j) => T.tryPublish(j, 'c', {title: 'abc' + '\\ud83d'})", j
            )
            assert "not standard JSON" in await page.page.evaluate("(j) => T.tryPublish(j, 'c', {v: NaN})", j)
            # ...and what the hub refuses anyway fails that publication alone (not resent forever)
            refused = await page.publish(j, "c", json.loads("[" * 40 + "]" * 40))
            assert "HubRefused" in refused["error"] and "nested deeper" in refused["error"]
            assert (await page.view(j))["outbox"] == 0
            ok = await page.publish(j, "c", {"title": "abc\U0001f600"})
            assert ok == {"seq": 1}
            view = await until(other_page, bystander, lambda v: len(data(v, "c")) == 1, "bystander page got it")
            await await_until(lambda: rec.data.get("c") == [{"title": "abc\U0001f600"}], timeout=10, what="python")
            assert view["stats"]["connections"] == 1 and count(view, "disconnected") == 0
            assert rec.count(ConnectionState.DISCONNECTED) == 0
            assert (await page.view(attacker))["closeCode"] is None  # the sender itself is still connected
    finally:
        await close_page(handle)


def _errors(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in map(json.loads, view["frames"]) if f["type"] == "error"]


async def test_retry_after_from_a_full_hub_reaches_the_page(browser):
    """A page cannot read an HTTP 503: the full hub lets it in and closes at once with 1013 and a
    retry-after hint, which the page adds to its jittered delay."""
    async with serve(port=0, max_clients=1, retry_after=1) as full:
        page, handle = await open_page(browser, full.url)
        try:
            async with ReconnectingWebSocketClient(full.url, **FAST):
                await page.page.evaluate("([u, o]) => { window.late = T.start(u, o, ['x']); }", [full.url, JS_FAST])
                view = await until(page, 0, lambda v: count(v, "disconnected") >= 1, "told to come back later")
                event = next(e for e in view["events"] if e["state"] == "disconnected")
                assert "1013" in event["reason"] and "retry-after=1" in event["reason"]
                assert event["delay"] >= 1.0
            view = await until(page, 0, lambda v: v["connected"], "in once the slot is free")
        finally:
            await close_page(handle)


async def test_publishes_from_a_cut_off_page_arrive_once_after_reconnect(page, bhub, bproxy):
    rec = Recorder()
    async with ReconnectingWebSocketClient(bhub.url, **FAST) as sub:
        await sub.subscribe("out", rec.handler)
        i = await page.start(bproxy.url(), [], **JS_FAST)
        await bproxy.refuse()
        bproxy.reset()
        await until(page, i, lambda v: not v["connected"], "page cut off")
        await page.page.evaluate("(i) => { window.pending = [0,1,2,3,4].map((n) => T.publish(i, 'out', n)); }", i)
        assert (await page.view(i))["outbox"] == 5
        await bproxy.accept()
        results = await page.page.evaluate("() => Promise.all(window.pending)")
        assert [r["seq"] for r in results] == [1, 2, 3, 4, 5]
        await await_until(lambda: rec.data.get("out") == [0, 1, 2, 3, 4], timeout=10, what="delivered once")


async def test_the_v100_page_without_reconnect_logic_stays_dead_after_one_drop(page, bhub, bproxy):
    """The "before" of the benchmark: a v1.0.0 dashboard shows stale data until someone refreshes."""
    i = await page.plain(bproxy.url(), ["news"])
    await until(page, i, lambda v: count(v, "recovered") == 1, "plain page subscribed")
    async with ReconnectingWebSocketClient(bhub.url, **FAST) as pub:
        await (await pub.publish("news", 1)).wait(5)
        await until(page, i, lambda v: data(v, "news") == [1], "first message")
        bproxy.reset()
        await until(page, i, lambda v: v["closeCode"] == 1006, "closed without a close frame")
        await (await pub.publish("news", 2)).wait(5)
        await asyncio.sleep(0.5)
    view = await page.view(i)
    assert data(view, "news") == [1] and not view["connected"]


async def test_the_readme_example_page_works_as_documented(browser, bhub, bproxy):
    """The README's example page, as written (hub addresses swapped for the test hub and its proxy)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    html = re.search(r"```html\n(.*?)```", readme, re.S)
    assert html is not None, "README lost its example page"
    body = (
        html.group(1)
        .replace("https://hub.example:8765", f"http://127.0.0.1:{bhub.port}")
        .replace("wss://hub.example:8765/", bproxy.url())
        .encode()
    )
    rows = json.dumps([{"title": "from-rest"}]).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            out = rows if self.path.startswith("/api/evaluations") else body
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        status = "document.getElementById('status').textContent"
        await page.wait_for_function(f"{status} === 'live'", timeout=20_000)
        commands: list[Any] = []
        async with ReconnectingWebSocketClient(bhub.url, **FAST) as pub:
            await pub.subscribe("commands", lambda m: commands.append(m.data))
            await (await pub.publish("evaluations", {"title": "eval-1"})).wait(5)
            bproxy.reset()
            await page.wait_for_function(f"{status}.startsWith('reconnecting…')", timeout=20_000)
            await (await pub.publish("evaluations", {"title": "eval-2"})).wait(5)  # while the page is away
            await page.wait_for_function(f"{status} === 'live'", timeout=20_000)
            await page.click("#pause")
            await await_until(lambda: commands == [{"op": "pause"}], timeout=10, what="pause published")
        await page.wait_for_function("document.getElementById('evals').children.length === 3", timeout=20_000)
        assert (await page.inner_text("#evals")).split("\n") == ["eval-2", "eval-1", "from-rest"]
    finally:
        await context.close()
        server.shutdown()
        server.server_close()


async def test_a_channel_subscribed_while_the_page_recovers_is_not_left_for_the_next_reconnect(page, bhub, bproxy):
    i = await page.start(bproxy.url(), ["a"], **JS_FAST)
    bproxy.delay = 0.3  # every chunk through the proxy waits: the resubscribe's reply is slow to come
    bproxy.reset()
    await until(page, i, lambda v: v["state"] == "recovering", "recovering")
    await page.subscribe(i, "b")  # the recovery's subscribe frame was made without it
    bproxy.heal()
    async with ReconnectingWebSocketClient(bhub.url, **FAST) as pub:
        await until(page, i, lambda v: v["connected"], "recovered")
        await (await pub.publish("b", "late")).wait(5)
        view = await until(page, i, lambda v: data(v, "b") == ["late"], "the late channel delivering")
    assert view["stats"]["connections"] == 2  # on the connection it was made on, not a later one
