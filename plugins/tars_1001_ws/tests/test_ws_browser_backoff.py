"""tars-ws.js's reconnect delays in headless Chromium (issue 19: "full-jitter backoff capped at 30 s
honouring 1012/1013"): the schedule itself, and the delays the page really waits against a real hub behind
the fault proxy, with the client's ``random`` fixed so that every delay is a known share of its ceiling.

The other browser tests run the client at test speed and check what it delivers; these check when it
tries again: the ceilings double from ``backoffInitial`` up to ``backoffMax`` while connections are
refused, a connection that did not stay up ``stableAfter`` does not reset them, and a 1012 close (the hub
restarting) does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from tars_1001_ws.browser import BrowserUnavailable, Dashboard, launch, page_server
from tars_1001_ws.check import http_url
from tars_1001_ws.hub import serve
from tars_1001_ws.protocol import CLIENT_JS_PATH
from tars_1001_ws.proxy import FaultProxy

from tars_core.waiting import await_until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

R = 0.75  # the page's random draw: each delay is R times its ceiling

# Imports the module the hub serves, returns the schedule for three fixed draws, then starts one client
# whose DISCONNECTED events (delay, reason) are kept in window.B.
_SETUP = """async ([js, url, r, options]) => {
  const { TarsWebSocket } = await import(js);
  const draws = (x) => {
    const c = new TarsWebSocket(url, { backoffInitial: 1, backoffMax: 30, random: () => x });
    return [...Array(10).keys()].map((n) => c.backoffDelay(n));
  };
  const schedule = { top: draws(1 - 1e-9), half: draws(0.5), zero: draws(0) };
  const client = new TarsWebSocket(url, { ...options, random: () => r });
  window.B = { client, delays: [] };
  client.addEventListener("state", ({ detail }) => {
    if (detail.state === "disconnected") window.B.delays.push([detail.delay, detail.reason]);
  });
  client.start();
  return schedule;
}"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Any]:
    try:
        async with launch() as b:
            yield b
    except BrowserUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


async def _delays(page: Dashboard, at_least: int, what: str) -> list[tuple[float, str]]:
    """The page's (delay, reason) list once it holds ``at_least`` entries (a hang guard, not a timing check)."""

    async def enough() -> bool:
        return int(await page.page.evaluate("() => window.B.delays.length")) >= at_least

    await await_until(enough, timeout=20.0, interval=0.05, what=what)
    return [(float(d), str(r)) for d, r in await page.page.evaluate("() => window.B.delays")]


async def _connected(page: Dashboard) -> None:
    async def up() -> bool:
        return bool(await page.page.evaluate("() => window.B.client.connected"))

    await await_until(up, timeout=20.0, interval=0.05, what="the page connected")


async def test_full_jitter_ceilings_double_to_the_cap_and_reset_only_on_a_healthy_connection_or_1012(
    browser: Any,
) -> None:
    context = await browser.new_context()
    try:
        async with serve(port=0) as hub, FaultProxy("127.0.0.1", hub.port) as proxy:
            with page_server(hub.url) as page_url:
                page = await Dashboard.open(context, page_url)
                await proxy.refuse()  # the hub is unreachable when the page starts
                options = {"backoffInitial": 0.05, "backoffMax": 0.2, "stableAfter": 1000, "heartbeatInterval": 5}
                js = http_url(hub.url, CLIENT_JS_PATH)
                schedule = await page.page.evaluate(_SETUP, [js, proxy.url(), R, options])

                # the schedule: uniform(0, min(cap, initial x 2^attempt)), so a draw near 1 gives the ceilings
                ceilings = [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
                assert schedule["top"] == pytest.approx(ceilings)
                assert schedule["half"] == pytest.approx([c / 2 for c in ceilings])
                assert schedule["zero"] == [0] * 10  # full jitter: a retry may come at once

                # refused again and again: the ceilings double up to the cap and stay there
                refused = await _delays(page, 5, "five refused attempts")
                assert [d for d, _ in refused[:5]] == pytest.approx([R * c for c in (0.05, 0.1, 0.2, 0.2, 0.2)])

                # a connection that did not stay up stableAfter seconds keeps the escalated delay ...
                await proxy.accept()
                await _connected(page)
                seen = len(await _delays(page, 0, "delays so far"))
                proxy.reset()
                after_reset = (await _delays(page, seen + 1, "a disconnect after the reset"))[seen]
                assert after_reset[0] == pytest.approx(R * 0.2), after_reset

                # ... and a 1012 close (the hub restarting) starts the backoff again from backoffInitial
                await _connected(page)
                seen = len(await _delays(page, 0, "delays so far"))
                await hub.close()
                after_restart = (await _delays(page, seen + 1, "a disconnect after the hub closed"))[seen]
                assert "1012" in after_restart[1] and after_restart[0] == pytest.approx(R * 0.05), after_restart
                with contextlib.suppress(Exception):
                    await page.page.evaluate("() => window.B.client.close()")
    finally:
        await context.close()
