"""TARS-1003 benchmark: trace continuity and throughput through Redis Streams with and without propagation.

Three modes run interleaved, round by round, against the same Redis in the same process:

* ``plain``: no tracing at all (XADD, XREADGROUP, per-entry XACK);
* ``unpropagated``: v1.0.0 behaviour, spans on both sides but nothing carried in the entry;
* ``propagated``: the fix (``tars_1003_jaeger.StreamTracing``).

Each pass sends N entries; a consumer reads 10% of them and "dies" (never acks), the worker drains the
rest and then takes the dead consumer's entries over with XAUTOCLAIM, so continuity is measured
including redeliveries. Spans go to the SDK's in-memory exporter behind a BatchSpanProcessor.

    python benchmarks/tars-1003-jaeger_bench.py                       # 10,000 messages, 3 rounds
    python benchmarks/tars-1003-jaeger_bench.py --redis redis://host:6379/0 --messages 2000 --json

Keys live under ``tars:bench:tars1003:<random>`` and are deleted after each pass.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

from tars_1003_jaeger.scenarios import benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="passes per mode; throughput is the median")
    parser.add_argument("--redeliver", type=float, default=0.1, help="fraction taken over with XAUTOCLAIM")
    parser.add_argument("--batch", type=int, default=100, help="XREADGROUP/XAUTOCLAIM COUNT")
    parser.add_argument("--sample-ratio", type=float, default=0.1, help="root sampling of the 'sampled' mode")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    f = benchmark(
        args.redis,
        prefix="tars:bench:tars1003",
        messages=args.messages,
        redeliver_fraction=args.redeliver,
        rounds=args.rounds,
        batch=args.batch,
        sample_ratio=args.sample_ratio,
    )
    tp = f.throughput
    doc = {
        "messages": f.messages,
        "redelivered": f.redelivered,
        "rounds": f.rounds,
        "throughput_msg_per_s": tp,
        "ratio_propagated_vs_plain": f.ratio,
        "ratio_propagated_vs_unpropagated": tp["propagated"] / tp["unpropagated"],
        "ratio_sampled_vs_plain": tp["sampled"] / tp["plain"],
        "sample_ratio": f.sample_ratio,
        "client_cpu_us_per_msg": f.cpu_us,
        "cpu_ratio_propagated_vs_plain": f.cpu_ratio,
        "overhead_us_vs_plain": f.overhead_us,
        "overhead_us_vs_unpropagated": f.propagation_overhead_us,
        "inject_us": f.inject_us,
        "extract_us": f.extract_us,
        "continuity_before_pct": f.continuity_before.percent,
        "continuity_after_pct": f.continuity_after.percent,
        "continuity_after": str(f.continuity_after),
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"TARS-1003 benchmark: {f.messages} messages per pass, {f.rounds} round(s), ", end="")
        print(f"{f.redelivered} redelivered through XAUTOCLAIM")
        for mode in ("plain", "unpropagated", "propagated", "sampled"):
            print(f"  {mode:<13} {tp[mode]:>10,.0f} msg/s   client CPU {f.cpu_us[mode]:>7.1f} µs/msg")
        print(f"  propagated / plain          {f.ratio:>10.1%}   (target >= 75%, aim 90%)")
        print(f"  propagated / unpropagated   {doc['ratio_propagated_vs_unpropagated']:>10.1%}")
        print(f"  sampled ({f.sample_ratio:g}) / plain       {doc['ratio_sampled_vs_plain']:>10.1%}")
        print(f"  CPU-bound ratio vs plain    {f.cpu_ratio:>10.1%}   (plain CPU/msg over propagated CPU/msg)")
        print(f"  overhead vs plain           {f.overhead_us:>10.1f} µs/msg")
        print(f"  overhead vs unpropagated    {f.propagation_overhead_us:>10.1f} µs/msg")
        print(f"  inject                      {f.inject_us:>10.2f} µs/msg")
        print(f"  extract                     {f.extract_us:>10.2f} µs/msg")
        print(f"  continuity before (v1.0.0)  {f.continuity_before}")
        print(f"  continuity after            {f.continuity_after}   (target 100.00%)")
    return 0 if f.continuity_after.complete else 1


if __name__ == "__main__":
    sys.exit(main())
