"""The sandbox's T.A.R.S. metrics exporter: every family of the catalogue, with realistic traffic.

``python -m tars_1002_grafana.exporter --port 9464 --agents 20 --regions 3`` serves ``/metrics`` on
127.0.0.1 with prometheus-client. Values come from :class:`~tars_1002_grafana.catalogue.Simulator` at
the current wall-clock time, so counters only grow, histograms fill bucket by bucket, and a restart
starts counters again from zero as a real process would. Database, Redis and host series carry the
names postgres_exporter, redis_exporter and node_exporter use; their ``instance`` label is the
exporter's own scrape target, as it would be for one host.

``--incidents PATH`` (the sandbox passes ``.tars/sandbox/incidents.json``) applies the incidents that
``tars-run sandbox incident`` writes there: the file is re-read when it changes (one ``stat`` per scrape),
and values stay a pure function of (time, incidents), so counters stay monotonic and continuous when an
incident starts and ends.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from tars_1002_grafana.catalogue import FAMILIES, Hist, Simulator, Topology, Window, ignored_families, windows
from tars_core.sandbox.incidents import Incident, IncidentFile


def _log(line: str) -> None:
    print(f"tars-1002 exporter: {line}", file=sys.stderr, flush=True)


class SimulatedTars(Collector):
    """A prometheus-client collector that computes every series at scrape time.

    ``incidents``: the incidents file to apply (re-read when it changes); ``clock``: the wall clock
    (tests step it to scrape chosen instants).
    """

    def __init__(
        self,
        sim: Simulator,
        start: float | None = None,
        *,
        incidents: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sim = sim
        self.clock = clock
        self.start = clock() if start is None else start
        self.incidents = IncidentFile(incidents, on_error=_log) if incidents is not None else None
        self._seen: tuple[Incident, ...] = ()

    def _windows(self) -> tuple[Window, ...]:
        if self.incidents is None:
            return ()
        current = self.incidents.current()
        if current != self._seen:
            self._seen = current
            now = self.clock()
            _log(f"{len(current)} incident(s) from {self.incidents.path}")
            for inc in current:
                ignored = ignored_families(inc)
                note = f" (ignored here: {', '.join(ignored)})" if ignored else ""
                _log(f"  {inc.describe(now)}{note}")
        return windows(current, self.start)

    def collect(self) -> Iterator[Metric]:
        # the time first, then the file: an incident written after this instant starts after it
        # (the command starts incidents in the future), so a value reported now never changes later
        t = self.clock() - self.start
        wins = self._windows()
        for fam in FAMILIES:
            labels = [k for k in fam.labels if k != "instance"]
            family: Any
            if fam.type == "histogram":
                family = HistogramMetricFamily(fam.name, fam.help, labels=labels)
            elif fam.type == "counter" and fam.name.endswith("_total"):
                family = CounterMetricFamily(fam.name[: -len("_total")], fam.help, labels=labels)
            elif fam.type == "counter":
                # postgres_exporter exposes these counters without _total, which the Python client
                # cannot print as a counter; "untyped" keeps the production series name.
                family = UnknownMetricFamily(fam.name, fam.help, labels=labels)
            else:
                family = GaugeMetricFamily(fam.name, fam.help, labels=labels)
            for pairs, value in self.sim.samples(fam, t, wins):
                values = [v for k, v in pairs if k != "instance"]
                if isinstance(value, Hist):
                    family.add_metric(values, buckets=list(value.buckets), sum_value=value.sum)
                else:
                    family.add_metric(values, float(value))  # type: ignore[arg-type]
            yield family


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tars_1002_grafana.exporter", description=__doc__)
    ap.add_argument("--port", type=int, default=9464)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--regions", type=int, default=3)
    ap.add_argument(
        "--warm-start",
        type=float,
        default=3600.0,
        help="seconds of simulated history before the first scrape (counters start non-zero)",
    )
    ap.add_argument(
        "--incidents",
        type=Path,
        default=None,
        help="incidents file to apply (tars-run sandbox incident writes .tars/sandbox/incidents.json)",
    )
    ns = ap.parse_args(argv)
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    sim = Simulator(Topology(agents=ns.agents, regions=ns.regions, hosts=1), with_instance=False)
    registry.register(SimulatedTars(sim, start=time.time() - ns.warm_start, incidents=ns.incidents))
    server, thread = start_http_server(ns.port, addr=ns.host, registry=registry)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"tars-1002 exporter: {sim.series_count()} series on http://{ns.host}:{ns.port}/metrics", flush=True)
    stop.wait()
    server.shutdown()
    thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
