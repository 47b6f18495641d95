"""TARS-1004 benchmark at full size: p50/p95 of the three hot queries before and after the fix.

Seeds a scratch database (created and dropped on the server of --dsn; the database named in --dsn is
never touched) with 1,000,000 evaluations, measures the v1.0.0 queries (no index, OFFSET) on first and
deep pages, builds the three indexes CONCURRENTLY with the plugin's own code, and measures the v1.0.1
queries (index + keyset) on the same pages. Same code path as ``tars-run benchmark``.

    python benchmarks/tars-1004-db_bench.py --dsn postgresql://postgres@127.0.0.1:5432/postgres \
        --rows 1000000 --runs 200 --json .tars/bench/tars-1004-db.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

import attrs
from tars_1004_db.bench import run_benchmark
from tars_1004_db.config import BenchmarkConfig

from tars_core.report import metric_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per query and page kind")
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1004, help="random seed of data and parameters")
    parser.add_argument("--json", type=Path, help="also write metrics and raw percentiles here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    size = BenchmarkConfig(rows=args.rows, runs=args.runs, page_size=args.page_size, random_seed=args.seed)
    report = asyncio.run(run_benchmark(args.dsn, size))
    print(report.markdown())
    print()
    for m in report.metrics():
        print(metric_line(m))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"report": attrs.asdict(report), "metrics": [attrs.asdict(m) for m in report.metrics()]},
                indent=2,
                default=str,
            )
        )
    return 0 if all(m.met is not False for m in report.metrics()) else 1


if __name__ == "__main__":
    sys.exit(main())
