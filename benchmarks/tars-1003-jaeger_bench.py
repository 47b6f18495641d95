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

``--rtt-ms 0.5`` puts a TCP proxy in a separate process between the client and Redis that holds every
chunk for half the given time in each direction: the round trip of a Redis across a network instead of
loopback, where the same absolute tracing cost is a smaller share of each message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import attrs
from tars_1003_jaeger.scenarios import BenchSettings, benchmark

from tars_core.processes import Service, free_port, tcp_ready

PROXY_COMMAND = "delay-proxy"  # ``bench.py delay-proxy PORT HOST UPSTREAM_PORT DELAY_S``: the proxy's own process


def _serve_delay_proxy(port: int, upstream: tuple[str, int], delay_s: float) -> None:
    """Forward 127.0.0.1:port to upstream, holding each chunk ``delay_s`` (per direction).

    Threads and ``time.sleep`` rather than asyncio: the event loop's timer granularity turns a 0.25 ms
    sleep into a millisecond or more.
    """

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                time.sleep(delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    listener = socket.create_server(("127.0.0.1", port))
    while True:
        client, _ = listener.accept()
        server = socket.create_connection(upstream)
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pipe, args=(client, server), daemon=True).start()
        threading.Thread(target=pipe, args=(server, client), daemon=True).start()


@contextlib.contextmanager
def _with_rtt(redis_url: str, rtt_ms: float) -> Iterator[str]:
    """``redis_url`` redirected through a delay proxy that runs (and is stopped) for the ``with`` block."""
    parts = urllib.parse.urlsplit(redis_url)
    port = free_port()
    argv = [sys.executable, __file__, PROXY_COMMAND, str(port), parts.hostname or "127.0.0.1"]
    argv += [str(parts.port or 6379), str(rtt_ms / 2000)]
    with tempfile.TemporaryDirectory(prefix="tars-1003-bench-") as tmp:
        with Service("delay proxy", argv, log=Path(tmp) / "proxy.log", ready=tcp_ready(port), start_timeout=10):
            userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
            yield urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{port}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="passes per mode; throughput is the median")
    parser.add_argument(
        "--redeliver", dest="redeliver_fraction", type=float, default=0.1, help="fraction taken over with XAUTOCLAIM"
    )
    parser.add_argument("--batch", type=int, default=100, help="XREADGROUP/XAUTOCLAIM COUNT")
    parser.add_argument("--sample-ratio", type=float, default=0.1, help="root sampling of the 'sampled' mode")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="add this round trip through a TCP proxy")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(_with_rtt(args.redis, args.rtt_ms)) if args.rtt_ms else args.redis
        size = BenchSettings(**{a.name: getattr(args, a.name) for a in attrs.fields(BenchSettings)})
        f = benchmark(url, prefix="tars:bench:tars1003", settings=size)
    tp = f.throughput
    doc = {
        "messages": size.messages,
        "redelivered": f.redelivered,
        "rounds": size.rounds,
        "throughput_msg_per_s": tp,
        "ratio_propagated_vs_plain": f.ratio,
        "ratio_propagated_vs_unpropagated": tp["propagated"] / tp["unpropagated"],
        "ratio_sampled_vs_plain": tp["sampled"] / tp["plain"],
        "sample_ratio": size.sample_ratio,
        "client_cpu_us_per_msg": f.cpu_us,
        "cpu_ratio_propagated_vs_plain": f.cpu_ratio,
        "overhead_us_vs_plain": f.overhead_us,
        "overhead_us_vs_unpropagated": f.propagation_overhead_us,
        "inject_us": f.inject_us,
        "extract_us": f.extract_us,
        "continuity_before_pct": f.continuity_before.percent,
        "continuity_after_pct": f.continuity_after.percent,
        "continuity_after": str(f.continuity_after),
        "added_rtt_ms": args.rtt_ms,
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"TARS-1003 benchmark: {size.messages} messages per pass, {size.rounds} round(s), ", end="")
        print(f"{f.redelivered} redelivered through XAUTOCLAIM, added RTT {args.rtt_ms:g} ms")
        for mode in ("plain", "unpropagated", "propagated", "sampled"):
            print(f"  {mode:<13} {tp[mode]:>10,.0f} msg/s   client CPU {f.cpu_us[mode]:>7.1f} µs/msg")
        print(f"  propagated / plain          {f.ratio:>10.1%}   (target >= 75%, aim 90%)")
        print(f"  propagated / unpropagated   {doc['ratio_propagated_vs_unpropagated']:>10.1%}")
        print(f"  sampled ({size.sample_ratio:g}) / plain       {doc['ratio_sampled_vs_plain']:>10.1%}")
        print(f"  CPU-bound ratio vs plain    {f.cpu_ratio:>10.1%}   (plain CPU/msg over propagated CPU/msg)")
        print(f"  overhead vs plain           {f.overhead_us:>10.1f} µs/msg")
        print(f"  overhead vs unpropagated    {f.propagation_overhead_us:>10.1f} µs/msg")
        print(f"  inject                      {f.inject_us:>10.2f} µs/msg")
        print(f"  extract                     {f.extract_us:>10.2f} µs/msg")
        print(f"  continuity before (v1.0.0)  {f.continuity_before}")
        print(f"  continuity after            {f.continuity_after}   (target 100.00%)")
    return 0 if f.continuity_after.complete else 1


if __name__ == "__main__":
    if sys.argv[1:2] == [PROXY_COMMAND]:
        port, host, upstream_port, delay = sys.argv[2:6]
        _serve_delay_proxy(int(port), (host, int(upstream_port)), float(delay))
    sys.exit(main())
