"""``tars-regression judge``: the regression monitor's judges from the command line.

    tars-regression judge --baseline base.csv --canary canary.csv
    tars-regression judge --prometheus http://127.0.0.1:9090 --window 10m --kind latency --name api \\
        --baseline 'sum(rate(t_seconds_sum{track="stable"}[1m])) / sum(rate(t_seconds_count{track="stable"}[1m]))' \\
        --canary   'sum(rate(t_seconds_sum{track="canary"}[1m])) / sum(rate(t_seconds_count{track="canary"}[1m]))'
    tars-regression judge ... --judge kayenta          # Kayenta's NetflixACAJudge on the same data
    tars-regression judge ... --format json            # one JSON document (Result.as_dict())

CSV files have a header row; ``value`` is required, and ``metric``, ``kind``, ``bad``, ``timestamp`` and
``exposure`` (requests behind an error count) are optional (``--name``, ``--kind``, ``--bad`` fill in what
a file lacks). Rows are grouped by metric, so one pair of files can hold many metrics. With
``--prometheus`` the two sources are PromQL expressions read with a range query (``--start``/``--end`` or
``--window`` up to now, ``--step``); each must return one series (aggregate it), and errors/counts take
per-step counts (``increase(...[step])``) with ``--baseline-exposure``/``--canary-exposure`` for requests.

Exit codes: 0 pass, 1 fail (a regression), 3 inconclusive (no data, too few samples, too little power),
2 bad input (unreadable file, unknown kind, empty selector, unreachable Prometheus), as one line on stderr.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tars_core.errors import ConfigError, FixError, UsageError

PROG = "tars-regression"
EXIT = {"pass": 0, "fail": 1, "inconclusive": 3}
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> float:
    """``90s``, ``10m``, ``1h30m``, ``250ms`` or plain seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", text)
    if not parts or "".join(a + u for a, u in parts) != text:
        raise ConfigError(f"{text!r} is not a duration: use e.g. 90s, 10m, 1h30m")
    return sum(float(a) * _UNITS[u] for a, u in parts)


def instant(text: str) -> float:
    """Unix seconds or RFC 3339 (``2024-06-13T10:00:00Z``)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{text!r} is not a time: use unix seconds or RFC 3339 (2024-06-13T10:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


# -- sources -----------------------------------------------------------------------------------------------------------


def _number(text: str, where: str) -> float:
    try:
        return float(text) if text.strip() != "" else math.nan
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None


def read_csv(path: str) -> dict[str, dict[str, Any]]:
    """{metric: {"values": [...], "times": [...]|None, "exposure": [...]|None, "kind": str|None, "bad": ...}}."""
    p = Path(path)
    if not path.strip():
        raise ConfigError("empty source: give a CSV file (or a PromQL expression with --prometheus)")
    if not p.is_file():
        raise ConfigError(f"{path}: no such file (without --prometheus, --baseline and --canary are CSV files)")
    try:
        with p.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            if "value" not in fields:
                raise ConfigError(f"{path}: no 'value' column in the header (found: {', '.join(fields) or 'none'})")
            out: dict[str, dict[str, Any]] = {}
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                name = row.get("metric") or ""
                entry = out.setdefault(name, {"values": [], "times": [], "exposure": [], "kind": None, "bad": None})
                entry["values"].append(_number(row["value"], f"{path}:{line}"))
                for col, key in (("timestamp", "times"), ("exposure", "exposure")):
                    if col in fields:
                        entry[key].append(_number(row.get(col, ""), f"{path}:{line} {col}"))
                for col in ("kind", "bad"):
                    if row.get(col):
                        entry[col] = row[col]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot read it as CSV ({exc})") from None
    for entry in out.values():
        for key in ("times", "exposure"):
            if all(math.isnan(v) for v in entry[key]):  # no column, or a column this metric leaves blank
                entry[key] = None
    return out


def read_prometheus(url: str, expr: str, start: float, end: float, step: float, what: str) -> dict[str, Any]:
    """One series from a range query: {"values", "times"}; no series at all is no data (not an error)."""
    from tars_core.errors import PrometheusUnreachable, TargetError
    from tars_core.prometheus import Prometheus

    if not expr.strip():
        raise ConfigError(f"--{what} is empty: give a PromQL expression that returns one series")
    try:
        with Prometheus(url, timeout=30.0) as prom:
            result = prom.query_range(expr, start, end, step)
    except PrometheusUnreachable as exc:
        raise TargetError(f"{exc}: start it or fix --prometheus") from None
    if len(result) > 1:
        labels = ", ".join(json.dumps(r.get("metric", {}), sort_keys=True) for r in result[:3])
        raise ConfigError(
            f"--{what} returned {len(result)} series ({labels}{', ...' if len(result) > 3 else ''}): "
            "aggregate it to one (sum(...), avg(...))"
        )
    pairs = result[0]["values"] if result else []
    return {"times": [float(t) for t, _ in pairs], "values": [float(v) for _, v in pairs]}


# -- building metrics --------------------------------------------------------------------------------------------------


def _csv_metrics(ns: argparse.Namespace) -> list[Any]:
    from tars_telemetry.judges import MetricInput

    base, canary = read_csv(ns.baseline), read_csv(ns.canary)
    names = list(dict.fromkeys([*base, *canary]))
    metrics = []
    for key in names:
        b = base.get(key, {"values": [], "times": None, "exposure": None, "kind": None, "bad": None})
        c = canary.get(key, {"values": [], "times": None, "exposure": None, "kind": None, "bad": None})
        name = key or ns.name or Path(ns.canary).stem
        kind = c["kind"] or b["kind"] or ns.kind
        if not kind:
            raise ConfigError(f"metric {name!r} has no kind: add a 'kind' column or pass --kind")
        bad = c["bad"] or b["bad"] or ns.bad
        kw: dict[str, Any] = {} if bad is None else {"bad": bad}
        metrics.append(
            MetricInput(
                name,
                kind,
                b["values"],
                c["values"],
                baseline_times=b["times"],
                canary_times=c["times"],
                baseline_exposure=b["exposure"],
                canary_exposure=c["exposure"],
                mde=ns.mde,
                **kw,
            )
        )
    if not metrics:
        raise ConfigError(f"{ns.baseline} and {ns.canary} have no rows: nothing to judge")
    return metrics


def _prometheus_metrics(ns: argparse.Namespace) -> list[Any]:
    from tars_telemetry.judges import MetricInput

    if not ns.kind:
        raise ConfigError("--kind is required with --prometheus (latency, errors, throughput, memory, counts, gauge)")
    if ns.start is not None or ns.end is not None:
        if ns.start is None:
            raise ConfigError("--end needs --start (or use --window)")
        start = instant(ns.start)
        end = instant(ns.end) if ns.end is not None else time.time()
    else:
        end = time.time()
        start = end - duration(ns.window)
    if end <= start:
        raise ConfigError("the time range is empty: --start must be before --end")
    step = duration(ns.step)
    if step <= 0:
        raise ConfigError("--step must be positive")
    if (end - start) / step > 11000:
        raise ConfigError(f"{(end - start) / step:.0f} points per series: Prometheus allows 11,000; raise --step")
    b = read_prometheus(ns.prometheus, ns.baseline, start, end, step, "baseline")
    c = read_prometheus(ns.prometheus, ns.canary, start, end, step, "canary")
    kw: dict[str, Any] = {} if ns.bad is None else {"bad": ns.bad}
    for side, expr, data in (("baseline", ns.baseline_exposure, b), ("canary", ns.canary_exposure, c)):
        if expr is not None:
            e = read_prometheus(ns.prometheus, expr, start, end, step, f"{side}-exposure")
            by_time = dict(zip(e["times"], e["values"], strict=True))
            kw[f"{side}_exposure"] = [by_time.get(t, math.nan) for t in data["times"]]
            keep = [i for i, x in enumerate(kw[f"{side}_exposure"]) if not math.isnan(x)]
            for key in ("times", "values"):
                data[key] = [data[key][i] for i in keep]
            kw[f"{side}_exposure"] = [kw[f"{side}_exposure"][i] for i in keep]
    return [
        MetricInput(
            ns.name or "metric",
            ns.kind,
            b["values"],
            c["values"],
            baseline_times=b["times"],
            canary_times=c["times"],
            mde=ns.mde,
            **kw,
        )
    ]


# -- output ------------------------------------------------------------------------------------------------------------


def render_text(result: Any) -> str:
    from tars_telemetry.judges import TABLE_HEADERS, table_rows

    rows = [TABLE_HEADERS, *table_rows(result)]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(TABLE_HEADERS))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if result.judge == "tars":
        how = f"tars judge, {result.mode}, alpha {result.alpha:g}, {result.correction}"
    else:
        how = "kayenta judge: NetflixACAJudge rules; CI is its Hodges-Lehmann shift over the baseline mean"
    head = f"verdict: {result.verdict.upper()} ({how})"
    return "\n".join([head, *[f"  - {r}" for r in result.reasons], "", *lines])


# -- main --------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    j = sub.add_parser("judge", help="judge canary (or after) against baseline (or before)")
    j.add_argument("--baseline", required=True, help="CSV file, or PromQL with --prometheus")
    j.add_argument("--canary", required=True, help="CSV file, or PromQL with --prometheus")
    j.add_argument("--prometheus", help="Prometheus URL: read --baseline/--canary as PromQL range queries")
    j.add_argument("--start", help="range start (unix seconds or RFC 3339)")
    j.add_argument("--end", help="range end (default: now)")
    j.add_argument("--window", default="10m", help="range up to now when --start is not given (default 10m)")
    j.add_argument("--step", default="15s", help="range query step (default 15s)")
    j.add_argument("--baseline-exposure", help="PromQL: requests per step behind a baseline error count")
    j.add_argument("--canary-exposure", help="PromQL: requests per step behind a canary error count")
    j.add_argument("--name", help="metric name (Prometheus mode, or CSV files without a metric column)")
    j.add_argument("--kind", help="latency, errors, throughput, memory, counts or gauge")
    j.add_argument("--bad", choices=("increase", "decrease", "either"), help="the direction that hurts")
    j.add_argument("--judge", choices=("tars", "kayenta"), default="tars", dest="judge_name")
    j.add_argument("--mode", choices=("fixed", "sequential"), default="fixed")
    j.add_argument("--alpha", type=float, default=0.01)
    j.add_argument("--mde", type=float, help="relative change a pass must be able to see (default per kind)")
    j.add_argument("--correction", choices=("holm", "bh", "none"), default="holm")
    j.add_argument("--format", choices=("text", "json"), default="text")
    return ap


def run(ns: argparse.Namespace) -> int:
    from tars_telemetry.judges import JudgeConfig, judge, judge_kayenta

    metrics = _prometheus_metrics(ns) if ns.prometheus else _csv_metrics(ns)
    if ns.judge_name == "kayenta":
        result = judge_kayenta(metrics)
    else:
        result = judge(metrics, JudgeConfig(alpha=ns.alpha, mode=ns.mode, correction=ns.correction))
    if ns.format == "json":
        print(json.dumps(result.as_dict(), indent=2, allow_nan=False))
    else:
        print(render_text(result))
    return EXIT[result.verdict]


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return run(ns)
    except (UsageError, FixError) as exc:  # ConfigError, TargetError, PrometheusError, PrometheusUnreachable
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
