"""``tars-slo watch``: each SLO's budget remaining, burn rate per window and the tiers firing, live.

    tars-slo watch --monitor http://127.0.0.1:9464        # the streaming daemon (tars_telemetry.stream)
    tars-slo watch --prometheus http://127.0.0.1:9090     # the query API directly, no daemon needed
    tars-slo watch --monitor URL --once --format json     # one snapshot, one JSON object per SLO and line

A terminal gets a table redrawn in place; a pipe or a file gets plain lines (one per SLO and snapshot),
so ``tars-slo watch ... | grep page`` works; ``--format json`` is for machines. Both sources give the same
state object (:class:`tars_telemetry.live.MonitorState`'s view), so the output does not depend on which
one was used. A source that cannot be read at start is one line on stderr and exit 2; once watching, a
failed read is reported and retried (a blip should not end a watch). Ctrl-C ends it (exit 130).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from tars_core.redact import safe_url

PROG = "tars-slo"
STATUS_COLOUR = {"page": "31;1", "budget-exhausted": "31", "ticket": "33", "ok": "32", "insufficient-data": "2"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class SourceError(Exception):
    """The source cannot be read; the message is the one line the user sees."""


def _window_seconds(text: str) -> int:
    total, number = 0, ""
    for ch in text:
        if ch.isdigit():
            number += ch
        else:
            total += int(number or 0) * _UNITS.get(ch, 0)
            number = ""
    return total


def read_monitor(url: str, timeout: float = 10.0) -> Callable[[], dict[str, Any]]:
    """A reader of the daemon's ``/api/slos``."""
    import httpx

    client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
    shown = safe_url(url)

    def read() -> dict[str, Any]:
        try:
            resp = client.get("/api/slos")
        except httpx.HTTPError as exc:
            raise SourceError(
                f"cannot reach the SLO monitor at {shown} ({type(exc).__name__}: {exc}); "
                "start it (python -m tars_telemetry.stream --port P) or fix --monitor"
            ) from None
        if resp.status_code != 200:
            raise SourceError(
                f"the SLO monitor at {shown} answered HTTP {resp.status_code} to /api/slos; fix --monitor"
            )
        try:
            view = resp.json()
        except ValueError:
            raise SourceError(f"{shown}/api/slos is not JSON: is --monitor the SLO monitor's URL?") from None
        if not isinstance(view, dict) or "slos" not in view:
            raise SourceError(f"{shown}/api/slos has no SLO list: is --monitor the SLO monitor's URL?")
        return view

    return read


def read_prometheus(url: str, slo_files: Sequence[Path] | None) -> Callable[[], dict[str, Any]]:
    """A reader that polls Prometheus' query API into a :class:`MonitorState` of its own."""
    from tars_core.errors import ConfigError, PrometheusError
    from tars_core.prometheus import Prometheus
    from tars_telemetry.live import MonitorState, poll
    from tars_telemetry.spec import load_files, tars_slos

    try:
        slos = load_files(slo_files) if slo_files else tars_slos()
        prom = Prometheus(url, timeout=10.0)
    except (ConfigError, PrometheusError, OSError) as exc:
        raise SourceError(str(exc)) from None
    state = MonitorState(slos)

    def read() -> dict[str, Any]:
        try:
            state.replace(poll(prom))
        except PrometheusError as exc:
            raise SourceError(f"{exc}; start it or fix --prometheus") from None
        return state.view()

    return read


# -- rendering ------------------------------------------------------------------------------------


def _stamp(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _burn(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _windows(view: dict[str, Any]) -> list[str]:
    found = {w for slo in view["slos"] for w in slo.get("burn_rate", {})}
    return sorted(found, key=_window_seconds)


def _firing(slo: dict[str, Any]) -> str:
    firing = ",".join(slo.get("firing") or [])
    pending = ",".join(f"{t}?" for t in slo.get("pending") or [])
    return ",".join(x for x in (firing, pending) if x) or "-"


def plain_lines(view: dict[str, Any]) -> list[str]:
    """One line per SLO: ``TIME SLO status=... budget=... burn=5m:..,1h:.. firing=... pending=...``."""
    at = _stamp(view.get("generated_at") or time.time())
    lines = []
    for slo in view["slos"]:
        burn = ",".join(
            f"{w}:{_burn(v)}" for w, v in sorted(slo["burn_rate"].items(), key=lambda i: _window_seconds(i[0]))
        )
        lines.append(
            f"{at} {slo['slo']} status={slo['status']} budget={_pct(slo['budget_remaining'])} "
            f"burn={burn or '-'} firing={','.join(slo.get('firing') or []) or '-'} "
            f"pending={','.join(slo.get('pending') or []) or '-'}"
        )
    return lines


def json_lines(view: dict[str, Any]) -> list[str]:
    """One JSON object per SLO, each carrying the snapshot's time and source."""
    meta = {"at": view.get("generated_at"), "source": view.get("source")}
    return [json.dumps({**meta, **slo}, sort_keys=True) for slo in view["slos"]]


def table(view: dict[str, Any], source: str, colour: bool, error: str | None = None) -> str:
    """The terminal screen: a header, one row per SLO, and the read error if the last read failed."""
    windows = _windows(view)
    head = ["SLO", "status", "budget left", *[f"burn {w}" for w in windows], "firing (pending?)"]
    rows = [
        [
            slo["slo"],
            slo["status"],
            _pct(slo["budget_remaining"]),
            *[_burn(slo["burn_rate"].get(w)) for w in windows],
            _firing(slo),
        ]
        for slo in view["slos"]
    ]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str], status: str | None = None) -> str:
        out = []
        for i, cell in enumerate(cells):
            text = cell.ljust(widths[i]) if i < 2 or i == len(cells) - 1 else cell.rjust(widths[i])
            if colour and i == 1 and status in STATUS_COLOUR:
                text = f"\x1b[{STATUS_COLOUR[status]}m{text}\x1b[0m"
            out.append(text)
        return "  ".join(out).rstrip()

    at = _stamp(view.get("generated_at") or time.time())
    title = f"tars-slo watch  {source}  ({view.get('source', '?')})  {at}  Ctrl-C to quit"
    body = [title, "", line(head), *[line(r, r[1]) for r in rows]]
    if error:
        body += ["", f"last read failed: {error}"]
    return "\n".join(body) + "\n"


# -- the command ----------------------------------------------------------------------------------


def watch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.monitor:
        source = safe_url(args.monitor)
        read = read_monitor(args.monitor)
    else:
        source = safe_url(args.prometheus)
        read = read_prometheus(args.prometheus, args.slo)
    view = read()  # SourceError here: the caller prints one line, exit 2
    live = args.format == "text" and out.isatty()  # a terminal: the table (redrawn in place unless --once)
    colour = live and not os.environ.get("NO_COLOR")
    error: str | None = None
    while True:
        if live:
            out.write(("" if args.once else "\x1b[H\x1b[2J") + table(view, source, colour, error))
        elif error is None:
            lines = json_lines(view) if args.format == "json" else plain_lines(view)
            out.write("".join(f"{x}\n" for x in lines))
        out.flush()
        if args.once:
            return 0
        time.sleep(args.interval)
        try:
            view, error = read(), None
        except SourceError as exc:
            error = str(exc)
            if not live:
                print(f"{PROG}: {error} (retrying)", file=err, flush=True)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description="T.A.R.S. SLO monitor tools")
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch", help="show each SLO's budget, burn rates and firing tiers, live")
    src = w.add_mutually_exclusive_group(required=True)
    src.add_argument("--monitor", metavar="URL", help="the streaming monitor (python -m tars_telemetry.stream)")
    src.add_argument("--prometheus", metavar="URL", help="read Prometheus' query API directly")
    w.add_argument("--slo", type=Path, action="append", help="with --prometheus: SLO files (default: T.A.R.S.)")
    w.add_argument("--interval", type=float, default=2.0, help="seconds between reads (default 2)")
    w.add_argument("--format", choices=("text", "json"), default="text", help="json: one object per SLO and line")
    w.add_argument("--once", action="store_true", help="print one snapshot and exit")
    w.add_argument("--debug", action="store_true", help="show tracebacks")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return watch(args, sys.stdout, sys.stderr)
    except SourceError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tars-slo watch ... | head`: the reader left
        sys.stderr.close()
        return 0
    except Exception as exc:
        if args.debug:
            raise
        print(f"{PROG}: {type(exc).__name__}: {exc}; rerun with --debug for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
