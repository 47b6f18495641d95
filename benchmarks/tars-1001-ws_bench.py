"""TARS-1001 benchmark: reconnection, silent-drop detection, idle heartbeat CPU, memory, message loss, and
the same in headless Chromium with tars-ws.js, plus the share of page sessions needing a manual refresh.

Full size (about 15 minutes on a shared 2-core machine; ``--skip-browser`` leaves out the browser part):

    python benchmarks/tars-1001-ws_bench.py

Every figure is measured against a hub in its own process (``python -m tars_1001_ws.hub``), through a
fault-injecting TCP proxy where drops are needed, on loopback:

* reconnect time: seconds from a TCP reset to the client being resubscribed (RECOVERED), default backoff
  (1 s initial, full jitter), over ``--drops`` resets; before = the idiomatic `websockets` loop
  (``async for ws in connect(...)``), which reconnects at once after a drop but restores nothing;
* silent-disconnect detection: seconds from blackholing a quiet connection (sockets stay open, nothing
  forwarded) to the client declaring it dead; bound = interval + 3 x timeout (defaults 30 s, 10 s);
* heartbeat CPU: % of one core used by this process with ``--clients`` idle connected clients over
  ``--window`` s at the default heartbeat (30 s); before = as many plain clients at websockets' default
  keepalive (20 s);
* memory: RSS growth of this process per connected, subscribed client;
* loss: ``--messages`` published at ``--rate``/s while the subscriber's link is dropped ``--loss-drops``
  times (resets and blackholes alternating); before = plain websockets client on the v1.0.0 protocol with
  keepalive scaled to the same detection budget (0.2 s interval).

In the browser (Debian's ``chromium`` through Playwright, ``tars_1001_ws.browser``): the page imports
tars-ws.js from the hub and reaches it through a fault proxy; before = the v1.0.0 page (one WebSocket, no
reconnect logic), after = tars-ws.js at its defaults:

* browser reconnect time: seconds from a reset to the page's ``recovered`` event, ``--browser-drops`` times;
* browser loss: the loss run above with the page as the subscriber;
* manual-refresh share: ``--browser-sessions`` page sessions (a v1.0.0 page and a tars-ws.js page side by
  side, each behind its own proxy, the same faults at the same instants: Poisson with mean -ln(0.85), each a
  reset, a silent drop or a 10 s outage). A session needs a refresh when a message is never shown, or shown
  more than 30 s after it was published. Sessions are 5 minutes with an update every 2 s, run at
  ``--browser-scale`` (0.1: every duration, the client's heartbeat and backoff included, times 0.1).

The figures come from the same code as ``tars-run benchmark`` (``tars_1001_ws.check.measure``) and are
printed as the release report shows them (the core's metrics table, met / MISSED per target).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs
from tars_1001_ws import browser, check
from tars_1001_ws.plugin import BenchmarkConfig

from tars_core.report import metrics_table


async def run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "websockets": __import__("websockets").__version__,
        "args": vars(args),
    }
    size = BenchmarkConfig(**{a.name: getattr(args, a.name) for a in attrs.fields(BenchmarkConfig)})
    python_sizes = {k: v for k, v in attrs.asdict(size).items() if not k.startswith("browser_")}
    progress = lambda line: print(line, file=sys.stderr)  # noqa: E731
    async with check.HubProcess(log_dir / "hub.log") as hub:
        if not args.skip_python:
            results |= await check.measure(
                hub.url, **python_sizes, plain_idle=not args.skip_plain_idle, progress=progress
            )
        if not args.skip_browser:
            results["browser"] = await browser.measure(
                hub.url,
                drops=size.browser_drops,
                messages=size.messages,
                message_drops=size.message_drops,
                rate=size.rate,
                sessions=size.browser_sessions,
                scale=size.browser_time_scale,
                progress=progress,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, default=50, help="resets for the reconnect-time figures")
    parser.add_argument("--detection-samples", type=int, default=3)
    parser.add_argument("--detection-interval", type=float, default=30.0, help="heartbeat interval (s)")
    parser.add_argument("--detection-timeout", type=float, default=10.0, help="heartbeat timeout (s)")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--loss-drops", dest="message_drops", type=int, default=20)
    parser.add_argument("--rate", type=float, default=250.0, help="messages per second")
    parser.add_argument("--clients", dest="idle_clients", type=int, default=1000)
    parser.add_argument(
        "--window", dest="idle_window", type=float, default=120.0, help="seconds of idle CPU measurement"
    )
    parser.add_argument("--skip-plain-idle", action="store_true", help="skip the plain-websockets idle run")
    parser.add_argument("--browser-drops", dest="browser_drops", type=int, default=50, help="resets in Chromium")
    parser.add_argument("--browser-sessions", dest="browser_sessions", type=int, default=400, help="page sessions")
    parser.add_argument(
        "--browser-scale", dest="browser_time_scale", type=float, default=0.1, help="time scale of the sessions"
    )
    parser.add_argument("--skip-browser", action="store_true", help="leave out the headless Chromium figures")
    parser.add_argument("--skip-python", action="store_true", help="only the headless Chromium figures")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tars-1001-bench-") as log_dir:
        results = asyncio.run(run(args, Path(log_dir)))
    metrics = [] if args.skip_python else check.metrics(results)
    if "browser" in results:
        metrics += browser.metrics(results["browser"])
    print(metrics_table(metrics))
    if not args.skip_python:
        in_order = {
            k: "yes" if results[f"loss_{k}"]["in_order"] else "no" for k in ("before_plain_websockets", "after")
        }
        print(f"\nDelivered in order: before {in_order['before_plain_websockets']}, after {in_order['after']}.")
        print("Subscriptions restored after a reconnect: before only by hand (the loop resubscribes), after by itself.")
    if "browser" in results:
        r = results["browser"]["refresh"]
        print(
            f"Page sessions: {r['sessions']} ({r['faulted_sessions']} hit by a fault); sessions needing a refresh "
            f"before {r['before_percent']:.1f} %, after {r['after_percent']:.1f} %; longest staleness after "
            f"{r['after_max_stale_s_real']:.1f} s (threshold 30 s); Chromium {results['browser']['version']}."
        )
        for reason in r["after_refresh_reasons"]:
            print(f"  after, needed a refresh: {reason} (scaled seconds)")
    if args.json:
        print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
