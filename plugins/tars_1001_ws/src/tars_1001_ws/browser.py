"""Headless Chromium against the hub: the browser half of the tests and of the benchmark.

A page served by a small HTTP server of its own on loopback (another origin than the hub) imports
``tars-ws.js`` from the hub itself, over the documented path, cross-origin, as a dashboard on its own
host would. (A page fulfilled by Playwright's router would count as a public origin, which Chromium's
local network access rules forbid to reach a loopback hub.) Everything runs in Debian's ``chromium``
through Playwright's ``executable_path``: Playwright never downloads a browser. Playwright is imported
here only, inside functions, so neither the plugin's entry point nor the hub needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import importlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from tars_1001_ws.client import ReconnectingWebSocketClient
from tars_1001_ws.protocol import CLIENT_JS_PATH
from tars_1001_ws.proxy import FaultProxy
from tars_core.model import Metric
from tars_core.waiting import await_until

# Playwright is an optional dependency (the [test] extra, or installed for the benchmark): its objects are
# typed as Any so the package type-checks without it.
Browser = Any
BrowserContext = Any
Page = Any

CHROMIUM_ENV = "TARS_CHROMIUM"


class BrowserUnavailable(RuntimeError):
    """No Chromium or no Playwright on this machine (the message is one line saying what to install)."""


def chromium_executable() -> str:
    """``$TARS_CHROMIUM``, else ``chromium`` (Debian) or ``chromium-browser`` on the PATH."""
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not os.access(path, os.X_OK):
        raise BrowserUnavailable(
            "headless Chromium not found: install Debian's chromium (apt-get install chromium) "
            f"or point {CHROMIUM_ENV} at a Chromium binary"
        )
    return path


@contextlib.asynccontextmanager
async def launch() -> AsyncIterator[Browser]:
    """The system Chromium, headless, driven by Playwright (which downloads nothing)."""
    executable = chromium_executable()
    try:
        async_playwright = importlib.import_module("playwright.async_api").async_playwright
    except ImportError:
        raise BrowserUnavailable(
            'Playwright is not installed: pip install "tars-1001-ws[test]" (or the playwright package)'
        ) from None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


# The page: tars-ws.js imported from the hub, plus a small recorder per client, reachable as window.T.
_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>TARS dashboard (test page)</title></head>
<body><p id="status">loading</p>
<script type="module">
import { TarsWebSocket, State } from %(client)s;
const all = [];
function recorder(kind) {
  const rec = { kind, events: [], got: {}, frames: [], closeCode: null, client: null, ws: null };
  return [all.push(rec) - 1, rec];
}
function plainDetail(d) {
  const out = { ...d, t: Date.now() };
  if (d.resync) out.resync = { ...d.resync, missing: d.resync.missing };
  return out;
}
window.T = {
  // a dashboard on tars-ws.js; resolves with its index once its subscriptions are confirmed
  async start(url, options, channels) {
    const [i, rec] = recorder("tars");
    const client = new TarsWebSocket(url, options);
    rec.client = client;
    client.addEventListener("state", (e) => {
      rec.events.push(plainDetail(e.detail));
      document.getElementById("status").textContent = e.detail.state;
    });
    for (const ch of channels) {
      client.subscribe(ch, (m) => { (rec.got[ch] ??= []).push([m.seq, m.data, Date.now()]); });
    }
    await client.start();
    return i;
  },
  // the v1.0.0 dashboard: one WebSocket, no subprotocol, no reconnect logic
  plain(url, channels) {
    const [i, rec] = recorder("plain");
    const ws = new WebSocket(url);
    rec.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "subscribe", id: 1, channels }));
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.type === "msg") (rec.got[f.channel] ??= []).push([null, f.data, Date.now()]);
      if (f.type === "subscribed") rec.events.push({ state: "recovered", t: Date.now() });
    };
    ws.onclose = (e) => { rec.closeCode = e.code; rec.events.push({ state: "closed", code: e.code, t: Date.now() }); };
    return i;
  },
  // a hand-written page: raw text frames, every reply kept as text
  raw(url, protocols) {
    const [i, rec] = recorder("raw");
    const ws = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    rec.ws = ws;
    ws.onopen = () => rec.events.push({ state: "open", protocol: ws.protocol, t: Date.now() });
    ws.onmessage = (e) => rec.frames.push(e.data);
    ws.onclose = (e) => { rec.closeCode = e.code; rec.events.push({ state: "closed", code: e.code, t: Date.now() }); };
    return i;
  },
  send(i, text) { all[i].ws.send(text); },
  subscribe(i, channel) {
    const rec = all[i];
    rec.client.subscribe(channel, (m) => { (rec.got[channel] ??= []).push([m.seq, m.data, Date.now()]); });
  },
  publish(i, channel, data, key) {
    return all[i].client.publish(channel, data, key ? { key } : {}).then(
      (seq) => ({ seq }), (err) => ({ error: `${err.name}: ${err.message}` }));
  },
  tryPublish(i, channel, data) {
    try { all[i].client.publish(channel, data); return null; } catch (err) { return `${err.name}: ${err.message}`; }
  },
  view(i) {
    const rec = all[i];
    const c = rec.client;
    return {
      kind: rec.kind, events: rec.events, got: rec.got, frames: rec.frames, closeCode: rec.closeCode,
      state: c ? c.state : null, protocol: c ? c.protocol : (rec.ws ? rec.ws.protocol : null),
      connected: c ? c.connected : rec.ws.readyState === 1, stats: c ? c.stats : null,
      outbox: c ? c.outboxSize : 0, subscriptions: c ? c.subscriptions : null,
    };
  },
  close(i) { const rec = all[i]; return rec.client ? rec.client.close() : rec.ws.close(); },
  State,
};
window.ready = true;
</script></body></html>
"""


class Dashboard:
    """One browser page that can hold several dashboards (``tars-ws.js`` clients, plain v1.0.0 pages and
    raw sockets), each with its own connection and recorder, addressed by index."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))

    @classmethod
    async def open(cls, context: BrowserContext, page_url: str) -> Dashboard:
        """A new page at ``page_url`` (from :func:`page_server`)."""
        page = await context.new_page()
        dashboard = cls(page)
        await page.goto(page_url)
        try:
            await page.wait_for_function("window.ready === true", timeout=20_000)
        except Exception:
            raise RuntimeError(f"the test page did not load tars-ws.js: {dashboard.console}") from None
        return dashboard

    async def start(self, url: str, channels: list[str], **options: Any) -> int:
        """A ``TarsWebSocket(url, options)`` subscribed to ``channels`` (options use the JS names)."""
        return int(await self.page.evaluate("([u, o, c]) => T.start(u, o, c)", [url, options, channels]))

    async def plain(self, url: str, channels: list[str]) -> int:
        return int(await self.page.evaluate("([u, c]) => T.plain(u, c)", [url, channels]))

    async def raw(self, url: str, protocols: list[str] | None = None) -> int:
        return int(await self.page.evaluate("([u, p]) => T.raw(u, p)", [url, protocols]))

    async def subscribe(self, i: int, channel: str) -> None:
        """Subscribe dashboard ``i`` to one more channel (recorded like the others), without waiting."""
        await self.page.evaluate("([i, c]) => T.subscribe(i, c)", [i, channel])

    async def send(self, i: int, text: str) -> None:
        """Send ``text`` as written (a ``\\ud83d`` escape stays six characters, as JSON.stringify writes it)."""
        await self.page.evaluate("([i, t]) => T.send(i, t)", [i, text])

    async def publish(self, i: int, channel: str, data: Any, key: str | None = None) -> dict[str, Any]:
        return dict(await self.page.evaluate("([i, c, d, k]) => T.publish(i, c, d, k)", [i, channel, data, key]))

    async def view(self, i: int) -> dict[str, Any]:
        return dict(await self.page.evaluate("(i) => T.view(i)", i))

    async def close(self, i: int) -> None:
        await self.page.evaluate("(i) => T.close(i)", i)


@contextlib.contextmanager
def page_server(hub_ws_url: str) -> Iterator[str]:
    """Serve the test page, importing the client from the hub at ``hub_ws_url``; yields the page's URL."""
    from tars_1001_ws.check import http_url

    body = (_PAGE % {"client": json.dumps(http_url(hub_ws_url, CLIENT_JS_PATH))}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="tars-ws-test-page", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def hub_http(ws_url: str) -> str:
    """``http://host:port`` of a hub from its ``ws://`` URL (where the page imports tars-ws.js from)."""
    from tars_1001_ws.check import http_url

    return http_url(ws_url, "")


# -- benchmark measurements in the browser ---------------------------------------------------------------
async def _view_until(
    dashboard: Dashboard, i: int, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> dict[str, Any]:
    view: dict[str, Any] = {}

    async def check() -> bool:
        view.clear()
        view.update(await dashboard.view(i))
        return predicate(view)

    await await_until(check, timeout=timeout, interval=0.05, what=what)
    return view


def _count(view: dict[str, Any], state: str) -> int:
    return sum(1 for e in view["events"] if e["state"] == state)


def _at_least(state: str, n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda view: _count(view, state) >= n


async def reconnect_times(browser: Browser, ws_url: str, drops: int, *, spacing: float = 0.6) -> list[float]:
    """Seconds from a TCP reset to the page's RECOVERED event (resubscribed), default backoff (1 s
    initial, full jitter), ``drops`` times; as the Python figure, ``stableAfter`` is below ``spacing`` so
    every drop hits a healthy connection. Clock: the page's ``Date.now()`` against ``time.time()``."""
    from tars_1001_ws.check import address

    host, port = address(ws_url)
    times: list[float] = []
    context = await browser.new_context()
    try:
        with page_server(ws_url) as url:
            dashboard = await Dashboard.open(context, url)
            async with FaultProxy(host, port) as proxy:
                i = await dashboard.start(
                    proxy.url(), [f"tars-1001-bench:{uuid.uuid4().hex[:8]}"], stableAfter=spacing * 0.8
                )
                for n in range(drops):
                    await asyncio.sleep(spacing)
                    start = time.time()
                    proxy.reset()
                    # the first connection's recovered event, then one per drop
                    view = await _view_until(dashboard, i, _at_least("recovered", n + 2), 60.0, "page recovered")
                    recovered = [e["t"] for e in view["events"] if e["state"] == "recovered"][-1]
                    times.append(max(0.0, recovered / 1000 - start))
    finally:
        await context.close()
    return times


async def loss_over_drops(
    browser: Browser, ws_url: str, *, messages: int, drops: int, rate: float, plain: bool, heartbeat: float = 0.2
) -> dict[str, Any]:
    """``messages`` published at ``rate``/s to a page whose link is dropped ``drops`` times (resets and
    silent drops alternating), the same run as the Python figure. ``plain``: the v1.0.0 page (one
    WebSocket, no reconnect logic); otherwise tars-ws.js at a ``heartbeat`` s heartbeat."""
    from tars_1001_ws.check import _settled, address, judge

    host, port = address(ws_url)
    channel = f"tars-1001-loss:{uuid.uuid4().hex[:8]}"
    got: list[Any] = []
    context = await browser.new_context()
    try:
        with page_server(ws_url) as url:
            dashboard = await Dashboard.open(context, url)
            async with FaultProxy(host, port) as proxy:
                if plain:
                    i = await dashboard.plain(proxy.url(), [channel])
                    await _view_until(
                        dashboard, i, lambda v: _count(v, "recovered") == 1, 30.0, "plain page subscribed"
                    )
                else:
                    options = {"heartbeatInterval": heartbeat, "heartbeatTimeout": heartbeat, "stableAfter": 0.5}
                    i = await dashboard.start(proxy.url(), [channel], **options)
                poller = asyncio.create_task(_mirror(dashboard, i, channel, got))
                try:
                    async with ReconnectingWebSocketClient(ws_url) as pub:
                        drop_every = max(1, messages // (drops + 1))
                        done = 0
                        start = time.monotonic()
                        for n in range(messages):
                            if n and n % drop_every == 0 and done < drops:
                                (proxy.reset if done % 2 == 0 else proxy.blackhole)()
                                done += 1
                            pending = await pub.publish(channel, n)
                            lag = start + (n + 1) / rate - time.monotonic()
                            if lag > 0:
                                await asyncio.sleep(lag)
                        await pending.wait(60)
                        await _settled(got, messages - 1, quiet=3 * heartbeat + 2.0)
                finally:
                    poller.cancel()
                    await asyncio.gather(poller, return_exceptions=True)
                got[:] = [d for _, d, _ in (await dashboard.view(i))["got"].get(channel, [])]
    finally:
        await context.close()
    lost, dup, in_order = judge(got, list(range(messages)))
    return {"messages": messages, "drops": done, "lost": lost, "duplicated": dup, "in_order": in_order}


async def _mirror(dashboard: Dashboard, i: int, channel: str, got: list[Any]) -> None:
    """Keep ``got`` equal to what the page has received (for the quiet-period wait)."""
    while True:
        got[:] = [d for _, d, _ in (await dashboard.view(i))["got"].get(channel, [])]
        await asyncio.sleep(0.2)


# Page sessions (seed: "manual refresh rate 15 % -> < 1 %"). A session needs a manual refresh when its
# page shows stale data for more than 30 s (a message published more than 30 s ago is still not shown)
# or misses a message. Run at a time scale: every duration below is the real one times `scale`.
STALE_AFTER = 30.0  # s, real time
REAL_SESSION = 300.0  # s, real time: a five-minute look at the dashboard
REAL_PERIOD = 2.0  # s between two updates of a session's channel, real time
REAL_OUTAGE = 10.0  # s a link stays refused in an "outage" fault, real time
SEED_BEFORE = 0.15  # the seed's share of v1.0.0 sessions that needed a refresh


async def refresh_share(
    browser: Browser,
    ws_url: str,
    *,
    sessions: int,
    scale: float = 0.1,
    per_page: int = 10,
    pages: int = 4,
    fault_rate: float | None = None,
    seed: int = 1001,
) -> dict[str, Any]:
    """The share of page sessions that would need a manual refresh, before (the v1.0.0 page) and after
    (tars-ws.js at its defaults), under the same faults.

    Each session is a pair of dashboards, one of each kind, subscribed to a channel of their own and each
    behind a FaultProxy of its own; both proxies get the session's faults at the same instants. Faults
    per session are Poisson with mean ``fault_rate`` (default: -ln(0.85) = 0.1625, the rate at which 15 %
    of sessions see at least one fault, so the v1.0.0 page meets the seed's field figure if every fault
    costs it a refresh: the measured "before" checks that), each a reset, a silent drop or a 10 s outage
    (refused, then back), at a uniform instant in the first 80 % of the session. Sessions run
    ``per_page`` to a tab in ``pages`` tabs at once; every duration (session, staleness threshold,
    heartbeat and backoff of the client) is scaled by ``scale`` so hundreds of sessions take minutes.
    """
    import math
    import random

    from tars_1001_ws.check import address

    rng = random.Random(seed)
    rate = -math.log(1 - SEED_BEFORE) if fault_rate is None else fault_rate
    host, port = address(ws_url)
    length, stale, period = REAL_SESSION * scale, STALE_AFTER * scale, REAL_PERIOD * scale
    js = {k: v * scale for k, v in (("heartbeatInterval", 10.0), ("heartbeatTimeout", 5.0), ("backoffInitial", 1.0))}
    js["backoffMax"] = 30.0 * scale
    plans = [_faults(rng, rate, length) for _ in range(sessions)]
    verdicts: list[dict[str, Any]] = []
    slot = per_page * pages
    async with ReconnectingWebSocketClient(ws_url) as pub:
        for first in range(0, sessions, slot):
            batch = plans[first : first + slot]
            groups = [batch[k : k + per_page] for k in range(0, len(batch), per_page)]
            results = await asyncio.gather(
                *(
                    _page_sessions(browser, ws_url, host, port, pub, group, js, length, stale, period)
                    for group in groups
                )
            )
            verdicts.extend(v for group in results for v in group)
    faulted = [v for v in verdicts if v["faults"]]

    def share(kind: str, among: list[dict[str, Any]]) -> float:
        return 100.0 * sum(1 for v in among if v[kind]["refresh"]) / len(among) if among else 0.0

    return {
        "sessions": sessions,
        "faulted_sessions": len(faulted),
        "fault_rate": rate,
        "scale": scale,
        "before_percent": share("before", verdicts),
        "after_percent": share("after", verdicts),
        "before_percent_of_faulted": share("before", faulted),
        "after_percent_of_faulted": share("after", faulted),
        "after_refresh_reasons": [
            f"{v['after']['why']} (faults: {', '.join(v['faults'])})" for v in verdicts if v["after"]["refresh"]
        ],
        "after_max_stale_s_real": max(v["after"]["max_stale"] for v in verdicts) / scale,
    }


def _faults(rng: Any, rate: float, length: float) -> list[tuple[float, str]]:
    """Poisson(rate) faults at uniform instants in the first 80 % of a session."""
    import math

    n, p, threshold = 0, 1.0, math.exp(-rate)
    while True:  # Knuth's method: small rates, so few iterations
        p *= rng.random()
        if p <= threshold:
            break
        n += 1
    return sorted((rng.uniform(0.05, 0.8) * length, rng.choice(("reset", "silent", "outage"))) for _ in range(n))


async def _page_sessions(
    browser: Browser,
    ws_url: str,
    host: str,
    port: int,
    pub: ReconnectingWebSocketClient,
    plans: list[list[tuple[float, str]]],
    js: dict[str, float],
    length: float,
    stale: float,
    period: float,
) -> list[dict[str, Any]]:
    """One tab running ``len(plans)`` sessions side by side; returns a verdict per session."""
    context = await browser.new_context()
    proxies: list[FaultProxy] = []
    try:
        with page_server(ws_url) as url:
            dashboard = await Dashboard.open(context, url)
            sessions = []
            for plan in plans:
                channel = f"tars-1001-session:{uuid.uuid4().hex[:10]}"
                before, after = FaultProxy(host, port), FaultProxy(host, port)
                proxies += [await before.start(), await after.start()]
                plain = await dashboard.plain(before.url(), [channel])
                tars = await dashboard.start(after.url(), [channel], **js)
                sessions.append((channel, plan, (before, plain), (after, tars)))
            for _, _, (_, plain), _ in sessions:
                await _view_until(
                    dashboard, plain, lambda v: _count(v, "recovered") == 1, 30.0, "plain page subscribed"
                )
            published: dict[str, list[tuple[int, float]]] = {s[0]: [] for s in sessions}
            start = time.monotonic()

            async def produce() -> None:
                n = 0
                while time.monotonic() - start < length:
                    for channel in published:
                        published[channel].append((n, time.time()))
                        await pub.publish(channel, n)
                    n += 1
                    await asyncio.sleep(max(0.0, start + n * period - time.monotonic()))

            async def inject(plan: list[tuple[float, str]], proxy_pair: tuple[FaultProxy, FaultProxy]) -> None:
                for at, kind in plan:
                    await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                    for proxy in proxy_pair:
                        if kind == "silent":
                            proxy.blackhole()
                        else:
                            if kind == "outage":
                                await proxy.refuse()
                            proxy.reset()
                    if kind == "outage":
                        await asyncio.sleep(REAL_OUTAGE * stale / STALE_AFTER)
                        for proxy in proxy_pair:
                            await proxy.accept()

            await asyncio.gather(produce(), *(inject(plan, (b[0], a[0])) for _, plan, b, a in sessions))
            await asyncio.sleep(stale)  # the last updates get the whole threshold to arrive
            verdicts = []
            for channel, plan, (_, plain), (_, tars) in sessions:
                sent = published[channel]
                verdicts.append(
                    {
                        "faults": [kind for _, kind in plan],
                        "before": _judge_session(await dashboard.view(plain), channel, sent, stale),
                        "after": _judge_session(await dashboard.view(tars), channel, sent, stale),
                    }
                )
            return verdicts
    finally:
        for proxy in proxies:
            await proxy.close()
        await context.close()


def _judge_session(view: dict[str, Any], channel: str, sent: list[tuple[int, float]], stale: float) -> dict[str, Any]:
    """Needs a refresh: a message never shown, or one shown more than ``stale`` s after it was published."""
    shown = {d: t / 1000 for _, d, t in view["got"].get(channel, [])}
    end = time.time()
    missing = [n for n, _ in sent if n not in shown]
    lags = [shown.get(n, end) - t for n, t in sent]
    max_stale = max(lags, default=0.0)
    why = (
        f"missed {len(missing)} of {len(sent)}"
        if missing
        else (f"stale {max_stale:.2f} s" if max_stale > stale else "")
    )
    return {"refresh": bool(why), "why": why, "max_stale": max_stale, "missing": len(missing)}


async def measure(
    ws_url: str,
    *,
    drops: int,
    messages: int,
    message_drops: int,
    rate: float,
    sessions: int,
    scale: float,
    progress: Callable[[str], object] = lambda line: None,
) -> dict[str, Any]:
    """Every browser figure against the hub at ``ws_url`` (one code path for the hook and the script):
    reconnect times over ``drops`` resets, loss over ``message_drops`` drops for the v1.0.0 page and for
    tars-ws.js, and the manual-refresh share over ``sessions`` page sessions. Raises
    :class:`BrowserUnavailable` when Chromium or Playwright is missing."""
    from tars_1001_ws.check import summary

    t0 = time.monotonic()
    results: dict[str, Any] = {}
    async with launch() as browser:
        results["version"] = browser.version
        results["reconnect_after"] = summary(await reconnect_times(browser, ws_url, drops))
        progress(f"browser reconnect done in {time.monotonic() - t0:.0f} s")
        for label, plain in (("loss_before_v100_page", True), ("loss_after", False)):
            results[label] = await loss_over_drops(
                browser, ws_url, messages=messages, drops=message_drops, rate=rate, plain=plain
            )
        progress(f"browser loss done in {time.monotonic() - t0:.0f} s")
        results["refresh"] = await refresh_share(browser, ws_url, sessions=sessions, scale=scale)
        progress(f"browser sessions done in {time.monotonic() - t0:.0f} s")
    return results


def metrics(results: dict[str, Any]) -> list[Metric]:
    """The browser figures as judged metrics (before = the v1.0.0 page: one WebSocket, no reconnect)."""
    ra, la, lb, rs = (
        results["reconnect_after"],
        results["loss_after"],
        results["loss_before_v100_page"],
        results["refresh"],
    )
    scope = f"{rs['sessions']} sessions, {rs['faulted_sessions']} with faults"
    return [
        Metric("browser_reconnect_p50", None, ra["p50"], "s", "< 5 s typical; before: never", ra["p50"] < 5),
        Metric("browser_reconnect_p95", None, ra["p95"], "s", "< 1.5 s with the hub reachable", ra["p95"] < 1.5),
        Metric("browser_reconnect_max", None, ra["max"], "s", "< 30 s", ra["max"] < 30),
        Metric(
            "browser_messages_lost",
            lb["lost"],
            la["lost"],
            "messages",
            f"0 of {la['messages']} over {la['drops']} drops",
            la["lost"] == 0,
        ),
        Metric(
            "browser_messages_duplicated", lb["duplicated"], la["duplicated"], "messages", "0", la["duplicated"] == 0
        ),
        Metric(
            "manual_refresh_share",
            rs["before_percent"],
            rs["after_percent"],
            "% of sessions",
            f"< 1 % (seed: 15 % before; {scope})",
            rs["after_percent"] < 1,
        ),
        Metric(
            "manual_refresh_share_of_faulted",
            rs["before_percent_of_faulted"],
            rs["after_percent_of_faulted"],
            "% of sessions",
            f"0 % of the sessions hit by a reset, silent drop or 10 s outage ({rs['faulted_sessions']})",
            rs["after_percent_of_faulted"] == 0,
        ),
    ]
