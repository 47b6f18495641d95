"""Headless Chromium against the hub: the browser half of the tests and of the benchmark.

A page served by a small HTTP server of its own on loopback (another origin than the hub) imports
``tars-ws.js`` from the hub itself, over the documented path, cross-origin, as a dashboard on its own
host would. (A page fulfilled by Playwright's router would count as a public origin, which Chromium's
local network access rules forbid to reach a loopback hub.) Everything runs in Debian's ``chromium``
through Playwright's ``executable_path``: Playwright never downloads a browser. Playwright is imported
here only, inside functions, so neither the plugin's entry point nor the hub needs it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from tars_1001_ws.protocol import CLIENT_JS_PATH

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

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
        from playwright.async_api import async_playwright
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
