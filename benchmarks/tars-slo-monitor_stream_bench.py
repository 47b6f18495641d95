"""tars-slo-monitor benchmark: remote-write ingestion of the streaming SLO monitor (``tars_telemetry.stream``).

Three parts, all on this machine (loopback only, bounded in time):

1. **Decode**, in process, on remote-write bodies of ``--batch`` samples (Prometheus' default
   ``max_samples_per_send`` is 500): snappy with cramjam and with python-snappy (when installed), and
   decode + filter with the shipped decoder (protobuf upb) and with a hand-written varint decoder kept
   here as the reference. Two payloads: what the sandbox sends (``slo:*`` and ``ALERTS`` only, after
   ``write_relabel_configs``) and an unfiltered push (half the samples are other series, dropped).
2. **Target rate**: the daemon as its own process (``python -m tars_telemetry.stream``), pushed at
   ``--rate`` samples/s (default 10,000) in batches over ``--connections`` keep-alive connections, open
   loop (requests are sent on schedule whether or not the previous ones answered), once with the filtered
   payload (every sample kept: the costlier case per sample) and once unfiltered: samples/s ingested
   (the daemon's own counters: received, and kept into the state), request latency p50/p99/max, the
   daemon's CPU %.
3. **Saturation**: the filtered payload sent back to back for ``--seconds``: the most it ingests.

Target: 10,000 samples/s ingested with p99 request latency under 100 ms (Prometheus waits up to
``remote_timeout`` = 30 s and batches for up to 5 s, so this is a wide margin), on the 2 cores here
(the load generator runs on the same machine and is measured too).

    python benchmarks/tars-slo-monitor_stream_bench.py                 # about 1 minute
    python benchmarks/tars-slo-monitor_stream_bench.py --rate 20000 --seconds 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import platform
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
from tars_telemetry.rules import windows
from tars_telemetry.spec import tars_slos
from tars_telemetry.stream import WRITE_PATH, decode, encode, write_request_class

from tars_core.processes import Service, free_port, http_ready
from tars_core.report import percentile

TARGET_RATE = 10_000
TARGET_P99_MS = 100.0
HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


# -- payloads -------------------------------------------------------------------------------------


def slo_series() -> list[dict[str, str]]:
    """The series the T.A.R.S. SLO rules record and alert on, labelled as Prometheus pushes them."""
    out: list[dict[str, str]] = []
    for slo in tars_slos():
        base = {"slo": slo.name, "service": slo.service}
        for w in windows(slo):
            for prefix in ("slo:sli_error:ratio_rate", "slo:sli_events:increase", "slo:burn_rate:ratio_rate"):
                out.append({"__name__": f"{prefix}{w}", **base})
        for name in ("slo:period_error_budget_remaining:ratio", "slo:insufficient_data:bool", "slo:error_budget:ratio"):
            out.append({"__name__": name, **base})
        out.append(
            {"__name__": "ALERTS", "alertname": "SLOErrorBudgetBurn", "alertstate": "pending", **base}
            | {"tier": "page-1h", "severity": "page"}
        )
    return out


def other_series(n: int) -> list[dict[str, str]]:
    """Application series an unfiltered push also carries (the daemon drops them)."""
    return [
        {
            "__name__": "tars_http_requests_total",
            "code": str(200 + i % 5 * 100),
            "endpoint": f"/api/v1/endpoint{i % 40}",
            "instance": f"10.0.0.{i % 8}:9101",
            "job": "tars-api",
            "method": "GET",
            "service": "tars-api",
        }
        for i in range(n)
    ]


def bodies(batch: int, other_share: float, count: int) -> list[bytes]:
    """``count`` bodies of ``batch`` samples (one sample per series, as a rule evaluation pushes), each a
    second later than the one before."""
    kept = slo_series()
    n_other = int(batch * other_share)
    pool = other_series(n_other)
    start = int(time.time() * 1000)
    out = []
    for b in range(count):
        stamp = start + b * 1000
        series = [(kept[i % len(kept)], [(0.001 * i, stamp)]) for i in range(batch - n_other)]
        series += [(labels, [(float(b), stamp)]) for labels in pool]
        out.append(encode(series))
    return out


# -- part 1: decode -------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def hand_decode(raw: bytes) -> tuple[int, int]:
    """The reference: a hand-written protobuf walk of WriteRequest (kept, dropped)."""
    unpack = struct.Struct("<d").unpack_from
    pos, end, kept, dropped = 0, len(raw), 0, 0
    while pos < end:
        key, pos = _varint(raw, pos)
        size, pos = _varint(raw, pos)
        stop = pos + size
        if key != 0x0A:
            pos = stop
            continue
        labels: dict[str, str] = {}
        samples = 0
        while pos < stop:
            k, pos = _varint(raw, pos)
            n, pos = _varint(raw, pos)
            inner = pos + n
            if k == 0x0A:
                name = value = ""
                while pos < inner:
                    kk, pos = _varint(raw, pos)
                    ll, pos = _varint(raw, pos)
                    text = raw[pos : pos + ll].decode()
                    pos += ll
                    if kk == 0x0A:
                        name = text
                    else:
                        value = text
                labels[name] = value
            elif k == 0x12:
                while pos < inner:
                    kk, pos = _varint(raw, pos)
                    if kk == 0x09:
                        unpack(raw, pos)
                        pos += 8
                    else:
                        _, pos = _varint(raw, pos)
                samples += 1
            pos = inner
        name = labels.get("__name__", "")
        if (name.startswith("slo:") or name == "ALERTS") and labels.get("slo"):
            kept += samples
        else:
            dropped += samples
    return kept, dropped


def _rate(fn: Callable[[], object], samples: int, seconds: float = 1.5) -> dict[str, float]:
    fn()
    calls, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        fn()
        calls += 1
    return {"us_per_request": elapsed / calls * 1e6, "samples_per_s": calls * samples / elapsed}


def decode_bench(batch: int) -> dict[str, Any]:
    import cramjam

    try:
        snappy: Any = importlib.import_module("snappy")  # python-snappy, optional: only to compare
    except ImportError:
        snappy = None
    results: dict[str, Any] = {}
    for label, share in (("filtered", 0.0), ("unfiltered", 0.5)):
        body = bodies(batch, share, 1)[0]
        raw = bytes(cramjam.snappy.decompress_raw(body))
        kept, dropped = decode(body)
        assert hand_decode(raw) == (len(kept), dropped)

        def by_hand(body: bytes = body) -> tuple[int, int]:
            return hand_decode(bytes(cramjam.snappy.decompress_raw(body)))

        part: dict[str, Any] = {"body_bytes": len(body), "protobuf_bytes": len(raw), "dropped_share": share}
        part["snappy_cramjam"] = _rate(functools.partial(cramjam.snappy.decompress_raw, body), batch)
        if snappy is not None:
            part["snappy_python_snappy"] = _rate(functools.partial(snappy.uncompress, body), batch)
        part["parse_upb_only"] = _rate(functools.partial(write_request_class()().ParseFromString, raw), batch)
        part["decode_filter_shipped"] = _rate(functools.partial(decode, body), batch)
        part["decode_filter_hand_varint"] = _rate(by_hand, batch)
        results[label] = part
    return results


# -- parts 2 and 3: the daemon --------------------------------------------------------------------


async def _send(
    url: str, payloads: list[bytes], batch: int, rate: float | None, seconds: float, connections: int
) -> dict[str, Any]:
    """Push for ``seconds``: on a schedule of ``rate`` samples/s (open loop), or back to back (None)."""
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes) -> None:
            nonlocal sent
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=HEADERS) as resp:
                    await resp.read()
                    if resp.status != 204:
                        errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
                        return
            except aiohttp.ClientError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - t0)
            sent += batch

        start = time.perf_counter()
        if rate is None:

            async def worker(k: int) -> None:
                i = k
                while time.perf_counter() - start < seconds:
                    await one(payloads[i % len(payloads)])
                    i += connections

            await asyncio.gather(*(worker(k) for k in range(connections)))
        else:
            interval = batch / rate
            tasks = []
            i = 0
            while (due := start + i * interval) < start + seconds:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(one(payloads[i % len(payloads)])))
                i += 1
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "sent": sent, "elapsed": elapsed}


def _counters(base: str) -> tuple[int, int]:
    view = httpx.get(f"{base}/api/slos", timeout=10).json()
    return int(view["samples_received"]), int(view["samples_dropped"])


def daemon_run(
    base: str, proc: psutil.Process, payloads: list[bytes], batch: int, rate: float | None, seconds: float, conns: int
) -> dict[str, Any]:
    me = psutil.Process()
    received0, dropped0 = _counters(base)
    cpu0, own0, t0 = proc.cpu_times(), me.cpu_times(), time.perf_counter()
    run = asyncio.run(_send(f"{base}{WRITE_PATH}", payloads, batch, rate, seconds, conns))
    wall = time.perf_counter() - t0
    cpu1, own1 = proc.cpu_times(), me.cpu_times()
    received1, dropped1 = _counters(base)
    ingested = received1 - received0
    kept = ingested - (dropped1 - dropped0)
    lat = [x * 1000 for x in run["latencies"]]
    return {
        "offered_samples_per_s": rate,
        "seconds": round(run["elapsed"], 2),
        "requests": len(lat),
        "errors": run["errors"],
        "ingested_samples": ingested,
        "ingested_samples_per_s": ingested / run["elapsed"],
        "kept_samples_per_s": kept / run["elapsed"],
        "latency_ms_p50": percentile(lat, 50) if lat else None,
        "latency_ms_p99": percentile(lat, 99) if lat else None,
        "latency_ms_max": max(lat) if lat else None,
        "daemon_cpu_percent": 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / wall,
        "loadgen_cpu_percent": 100 * ((own1.user + own1.system) - (own0.user + own0.system)) / wall,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=TARGET_RATE, help="offered samples/s for part 2")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each daemon run")
    ap.add_argument("--batch", type=int, default=500, help="samples per request (Prometheus' default: 500)")
    ap.add_argument("--connections", type=int, default=2, help="keep-alive connections (Prometheus' shards)")
    ap.add_argument("--unfiltered", type=float, default=0.5, help="share of other series in the unfiltered run")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-saturation", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)

    doc: dict[str, Any] = {
        "batch": args.batch,
        "connections": args.connections,
        "unfiltered_share": args.unfiltered,
        "target": f">= {TARGET_RATE} samples/s ingested, p99 < {TARGET_P99_MS:g} ms",
        "cpus": psutil.cpu_count(),
        "python": platform.python_version(),
    }
    if not args.skip_decode:
        doc["decode"] = decode_bench(args.batch)
    filtered, unfiltered = bodies(args.batch, 0.0, 60), bodies(args.batch, args.unfiltered, 60)
    with tempfile.TemporaryDirectory(prefix="tars-slo-bench-") as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        argv_ = [sys.executable, "-m", "tars_telemetry.stream", "--port", str(port)]
        with Service("slo-stream", argv_, log=Path(tmp) / "daemon.log", ready=http_ready(f"{base}/-/ready")) as svc:
            assert svc.pid is not None
            proc = psutil.Process(svc.pid)
            run = (base, proc)
            doc["target_rate"] = daemon_run(*run, filtered, args.batch, args.rate, args.seconds, args.connections)
            doc["target_rate_unfiltered"] = daemon_run(
                *run, unfiltered, args.batch, args.rate, args.seconds, args.connections
            )
            if not args.skip_saturation:
                doc["saturation"] = daemon_run(*run, filtered, args.batch, None, args.seconds, args.connections)
    checked = (doc["target_rate"], doc["target_rate_unfiltered"])
    doc["target_met"] = all(
        not r["errors"]
        and r["ingested_samples_per_s"] >= TARGET_RATE * 0.99
        and (r["latency_ms_p99"] or float("inf")) < TARGET_P99_MS
        for r in checked
    )
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0 if doc["target_met"] else 1
    print(f"tars-slo-monitor stream benchmark: {args.batch} samples/request, {args.connections} connections, ", end="")
    print(f"{psutil.cpu_count()} CPUs, Python {platform.python_version()}")
    for label, part in doc.get("decode", {}).items():
        print(f"  decode, {label} ({part['body_bytes']} B snappy, {part['protobuf_bytes']} B protobuf):")
        for key, r in part.items():
            if isinstance(r, dict):
                print(f"    {key:<28} {r['us_per_request']:>9.0f} µs/request {r['samples_per_s']:>12,.0f} samples/s")
    for label in ("target_rate", "target_rate_unfiltered", "saturation"):
        r = doc.get(label)
        if r is None:
            continue
        offered = f"{r['offered_samples_per_s']:,.0f}/s offered" if r["offered_samples_per_s"] else "back to back"
        print(
            f"  daemon, {label} ({offered}): {r['ingested_samples_per_s']:,.0f} samples/s ingested "
            f"({r['kept_samples_per_s']:,.0f} kept), "
            f"p50 {r['latency_ms_p50']:.1f} ms, p99 {r['latency_ms_p99']:.1f} ms, max {r['latency_ms_max']:.1f} ms, "
            f"daemon CPU {r['daemon_cpu_percent']:.0f} %, load generator CPU {r['loadgen_cpu_percent']:.0f} %, "
            f"errors {r['errors'] or 'none'}"
        )
    verdict = "met" if doc["target_met"] else "MISSED"
    print(f"  target {doc['target']}: {verdict}")
    return 0 if doc["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
