"""TARS-1002 benchmark at full size: the T.A.R.S. dashboards' queries, raw (v1.0.0) versus recorded (v1.0.1).

A throwaway Prometheus (the Debian ``prometheus`` binary) is loaded with 24 h of simulated T.A.R.S.
traffic for 200 agents x 5 regions (12-bucket histograms, one sample every 30 s) through
``promtool tsdb create-blocks-from openmetrics``; the recording rules the patched dashboards read are
backfilled with ``promtool tsdb create-blocks-from rules``. Each panel query is then issued as Grafana
issues it (POST /api/v1/query_range over 24 h, step 60 s, variables at "All"), 20 times after a warm-up,
and the whole dashboard is loaded with every panel query in flight at once.

    python benchmarks/tars-1002-grafana_bench.py                  # full size (about 10-15 min on 2 cores)
    python benchmarks/tars-1002-grafana_bench.py --agents 50 --hours 6 --calls 5   # quick look

Writes benchmarks/tars-1002-grafana_bench_results.{md,json} (or --out PREFIX).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import attrs
from tars_1002_grafana import bench

from tars_core.report import metrics_table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--regions", type=int, default=5)
    ap.add_argument("--hours", type=float, default=24.0, help="history backfilled and dashboard time range")
    ap.add_argument("--resolution", type=int, default=30, help="seconds between backfilled samples")
    ap.add_argument(
        "--step",
        type=int,
        default=60,
        help="rule evaluation interval of the backfill, and the query_range step unless --query-step",
    )
    ap.add_argument("--range-hours", type=float, help="dashboard time range (default: all of --hours)")
    ap.add_argument("--query-step", type=int, help="query_range step for the dashboard range")
    ap.add_argument(
        "--seed-calls",
        type=int,
        default=0,
        help="also time the seed's example panel over all of --hours this many times",
    )
    ap.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="VAR=V1,V2",
        help="dashboard variable selection instead of All, e.g. agent=agent-000,agent-001",
    )
    ap.add_argument(
        "--panel",
        action="append",
        default=[],
        metavar="TITLE",
        help="time only these panels (the whole-dashboard load then means these panels)",
    )
    ap.add_argument("--calls", type=int, default=20, help="timed query_range calls per panel query")
    ap.add_argument("--loads", type=int, default=5, help="whole-dashboard loads, raw and patched")
    ap.add_argument("--workdir", type=Path, help="keep the TSDB here instead of a temp dir")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("tars-1002-grafana_bench_results"))
    ap.add_argument("--render", type=Path, help="only re-render the Markdown from a results JSON of an earlier run")
    ns = ap.parse_args()
    t0 = time.time()
    if ns.render:
        saved = json.loads(ns.render.read_text())
        report = bench.BenchReport.from_json(saved["report"])
        for k, v in saved["args"].items():
            if k in ("agents", "regions", "resolution", "step", "calls", "loads", "query_step", "seed_calls"):
                setattr(ns, k, None if v == "None" else int(v))
            elif k in ("hours", "range_hours"):
                setattr(ns, k, None if v == "None" else float(v))
        t0 = saved.get("started", t0)
    else:
        report = bench.run(
            agents=ns.agents,
            regions=ns.regions,
            hours=ns.hours,
            resolution=ns.resolution,
            step=ns.step,
            range_hours=ns.range_hours,
            query_step=ns.query_step,
            seed_calls=ns.seed_calls,
            calls=ns.calls,
            loads=ns.loads,
            workdir=ns.workdir,
            selected={k: v.split(",") for k, v in (x.split("=", 1) for x in ns.select)},
            panels_only=ns.panel,
            log=lambda s: print(s, flush=True),
        )
    metrics = bench.summary_metrics(report)
    header = [
        "# TARS-1002 benchmark: dashboard queries raw vs recorded",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))} on {platform.node()} "
        f"({platform.machine()}, {os.cpu_count()} CPUs shared with other jobs), prometheus "
        f"from the Debian package; setup (backfill) {report.setup_s:.0f} s.",
        "",
        f"Command: `python benchmarks/tars-1002-grafana_bench.py --agents {ns.agents} --regions {ns.regions} "
        f"--hours {ns.hours:g} --resolution {ns.resolution} --step {ns.step} "
        + (f"--range-hours {ns.range_hours:g} " if ns.range_hours else "")
        + (f"--query-step {ns.query_step} " if ns.query_step else "")
        + (f"--seed-calls {ns.seed_calls} " if ns.seed_calls else "")
        + "".join(f"--select {x} " for x in ns.select)
        + "".join(f"--panel '{x}' " for x in ns.panel)
        + f"--calls {ns.calls} --loads {ns.loads}`",
        "",
        "Before is raw (v1.0.0 dashboards), after is recorded (v1.0.1).",
        "",
        metrics_table(metrics),
    ]
    text = "\n".join([*header, "", bench.markdown(report), ""])
    ns.out.with_suffix(".md").write_text(text, encoding="utf-8")
    ns.out.with_suffix(".json").write_text(
        json.dumps(
            {
                "started": t0,
                "args": {k: str(v) for k, v in vars(ns).items()},
                "metrics": [attrs.asdict(m) for m in metrics],
                "report": report.to_json(),
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
