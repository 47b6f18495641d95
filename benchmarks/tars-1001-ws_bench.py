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
from tars_1001_ws import check
from tars_1001_ws.plugin import BenchmarkConfig

from tars_core.report import metrics_table


async def run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "websockets": __import__("websockets").__version__,
        "args": vars(args),
    }
    size = BenchmarkConfig(**{a.name: getattr(args, a.name) for a in attrs.fields(BenchmarkConfig)})
    async with check.HubProcess(log_dir / "hub.log") as hub:
        results |= await check.measure(
            hub.url,
            **attrs.asdict(size),
            plain_idle=not args.skip_plain_idle,
            progress=lambda line: print(line, file=sys.stderr),
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
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tars-1001-bench-") as log_dir:
        results = asyncio.run(run(args, Path(log_dir)))
    print(metrics_table(check.metrics(results)))
    in_order = {k: "yes" if results[f"loss_{k}"]["in_order"] else "no" for k in ("before_plain_websockets", "after")}
    print(f"\nDelivered in order: before {in_order['before_plain_websockets']}, after {in_order['after']}.")
    print("Subscriptions restored after a reconnect: before only by hand (the loop resubscribes), after automatically.")
    if args.json:
        print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
