"""TARS-1001 benchmark: reconnection, silent-drop detection, idle heartbeat CPU, memory, message loss.

Full size (about 10 minutes on a shared 2-core machine):

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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time

from tars_1001_ws import check


async def run(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {
        "python": platform.python_version(),
        "websockets": __import__("websockets").__version__,
        "args": vars(args),
    }
    hub = await check.HubProcess.start()
    try:
        t0 = time.monotonic()
        results["reconnect_after"] = check.summary(await check.reconnect_times(hub.url, args.drops))
        results["reconnect_before_plain_websockets"] = check.summary(
            await check.plain_reconnect_times(hub.url, args.drops)
        )
        print(f"reconnect done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        detect = await check.silent_detection_times(
            hub.url, args.detection_samples, interval=args.detection_interval, timeout=args.detection_timeout
        )
        results["silent_detection"] = {
            **check.summary(detect),
            "bound": args.detection_interval + 3 * args.detection_timeout,
            "interval": args.detection_interval,
            "timeout": args.detection_timeout,
        }
        print(f"detection done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        for label, plain in (("loss_before_plain_websockets", True), ("loss_after", False)):
            results[label] = await check.loss_over_drops(
                hub.url, messages=args.messages, drops=args.loss_drops, rate=args.rate, plain=plain
            )
        print(f"loss done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        results["idle_after"] = await check.idle_clients_isolated(hub.url, args.clients, args.window)
        if not args.skip_plain_idle:
            results["idle_before_plain_websockets"] = await check.idle_clients_isolated(
                hub.url, args.clients, args.window, plain=True
            )
        print(f"idle done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    finally:
        hub.stop()
    return results


def table(r: dict) -> str:
    ra, rb = r["reconnect_after"], r["reconnect_before_plain_websockets"]
    sd = r["silent_detection"]
    la, lb = r["loss_after"], r["loss_before_plain_websockets"]
    ia, ib = r["idle_after"], r.get("idle_before_plain_websockets")
    rows = [
        ("reconnect p50 (s)", f"{rb['p50']:.3f}", f"{ra['p50']:.3f}", "< 5 s typical"),
        ("reconnect p95 (s)", f"{rb['p95']:.3f}", f"{ra['p95']:.3f}", "< 1.5 s, hub reachable at once"),
        ("reconnect max (s)", f"{rb['max']:.3f}", f"{ra['max']:.3f}", "< 30 s"),
        ("resubscribed after reconnect", "by hand", "yes", "automatic"),
        (
            f"silent drop detected, max of {sd['n']} (s)",
            "-",
            f"{sd['max']:.2f}",
            f"<= {sd['bound']:g} s (interval {sd['interval']:g} + 3 x {sd['timeout']:g})",
        ),
        (f"messages lost of {la['messages']} ({la['drops']} drops)", lb["lost"], la["lost"], "0"),
        ("messages duplicated", lb["duplicated"], la["duplicated"], "0"),
        ("delivered in order", lb["in_order"], la["in_order"], "yes"),
        (
            f"CPU, {ia['clients']} idle clients (% of a core)",
            f"{ib['cpu_percent']:.3f}" if ib else "-",
            f"{ia['cpu_percent']:.3f}",
            "< 1%",
        ),
        (
            "memory per client (KB)",
            f"{ib['kb_per_client']:.0f}" if ib else "-",
            f"{ia['kb_per_client']:.0f}",
            "< 200 KB (seed: 10 MB)",
        ),
    ]
    width = max(len(str(row[0])) for row in rows)
    lines = [f"{'metric':<{width}}  {'before':>10}  {'after':>10}  target"]
    lines += [f"{a:<{width}}  {b!s:>10}  {c!s:>10}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, default=50, help="resets for the reconnect-time figures")
    parser.add_argument("--detection-samples", type=int, default=3)
    parser.add_argument("--detection-interval", type=float, default=30.0, help="heartbeat interval (s)")
    parser.add_argument("--detection-timeout", type=float, default=10.0, help="heartbeat timeout (s)")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--loss-drops", type=int, default=20)
    parser.add_argument("--rate", type=float, default=250.0, help="messages per second")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--window", type=float, default=120.0, help="seconds of idle CPU measurement")
    parser.add_argument("--skip-plain-idle", action="store_true", help="skip the plain-websockets idle run")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(table(results))
    if args.json:
        print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
