"""tars-slo-monitor benchmark: our multiwindow multi-burn-rate rules against Sloth v0.16's, on labelled incidents.

28 scenarios (22 incidents from 0.5x to 1000x and 2 minutes to 2 days, 4 low-traffic periods, 2 clean ones) run
side by side after a 3-day lead-in, and two 31-day histories of uneven traffic. All of it goes into a throwaway
Prometheus through ``promtool tsdb create-blocks-from openmetrics``. Every tier's alert expression, ours and
Sloth's, is evaluated there by range queries, with ``for`` applied. The scores are precision, recall, detection
and reset time against the Workbook's theory, and the 30-day remaining budget against the exact one. See
``tars_telemetry.alertbench`` for the labels and the method.

    python benchmarks/tars-slo-monitor_bench.py              # full set; also times backfilled recording rules
    python benchmarks/tars-slo-monitor_bench.py --quick      # 5 scenarios (what `tars-run benchmark` runs)
    python benchmarks/tars-slo-monitor_bench.py --no-compare # full set, inlined rules only (not timed against
                                                             # backfilled ones)

Writes benchmarks/tars-slo-monitor_bench_results.{json,md} (or --out PREFIX). Before = Sloth, after = ours.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tars_telemetry import alertbench

from tars_core.report import metrics_table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="five scenarios only (the plugin's benchmark hook)")
    ap.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="do not also backfill the recording rules with promtool to time them against inlining",
    )
    ap.add_argument("--workdir", type=Path, help="keep the TSDB and rule files here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("tars-slo-monitor_bench_results"))
    ns = ap.parse_args()
    workdir = ns.workdir or Path(tempfile.mkdtemp(prefix="tars-slo-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/tars-slo-monitor_bench.py" + (" --quick" if ns.quick else "")
    command += "" if ns.compare else " --no-compare"
    try:
        result = alertbench.bench(
            workdir,
            ns.quick,
            compare=ns.compare,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    finally:
        if ns.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    js, md = alertbench.write_results(result, ns.out, command)
    print(metrics_table(result.metrics))
    print()
    for line in result.findings:
        print(f"- {line}")
    print(f"\nwrote {md} and {js} ({result.timings['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
