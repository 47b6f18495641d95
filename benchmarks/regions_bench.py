"""Regions benchmark: the regions of one release proceed in parallel on one shared PostgreSQL ledger.

Each region is its own working folder with three test fixes (tests/plugin_factory.py) whose apply sleeps
``--sleep`` seconds; the regions apply at once (each holds its own region's lock), then the same work runs
one region after the other (fresh region names, so every fix is applied again). With N regions the
parallel wall time should stay near one region's, the sequential one grow N times. The database is made
for the run on ``--server`` and dropped after it.

    python benchmarks/regions_bench.py [--regions 2] [--sleep 2] [--server postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import Project

from tars_core.testing import create_database, drop_database

FIXES = {"fix-a": [], "fix-b": ["fix-a"], "fix-c": ["fix-b"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds each fix's apply takes")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    url = create_database(args.server)
    root = Path(tempfile.mkdtemp(prefix="tars-regions-bench-"))
    try:
        regions: dict[str, Project] = {}
        for i in range(args.regions):
            project = Project(root / f"region-{i}")
            project.dist("acme-fixes", FIXES)
            project.config({name: {"sleep_apply": args.sleep} for name in FIXES})
            regions[f"region-{i}"] = project
        start = time.monotonic()
        procs = [
            subprocess.Popen(
                p.cmd("--state", url, "--region", name, "apply"),
                cwd=p.work,
                env=p.env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, p in regions.items()
        ]
        parallel_codes = [proc.wait() for proc in procs]
        parallel = time.monotonic() - start
        start = time.monotonic()
        sequential_codes = [
            p.run("--state", url, "--region", f"{name}-seq", "apply").returncode for name, p in regions.items()
        ]
        sequential = time.monotonic() - start
        print(f"{args.regions} regions x {len(FIXES)} fixes x {args.sleep:g} s apply on one PostgreSQL ledger")
        print(f"  in parallel:        {parallel:6.1f} s  exit codes {parallel_codes}")
        print(f"  one after another:  {sequential:6.1f} s  exit codes {sequential_codes}")
        if any(parallel_codes + sequential_codes):
            sys.exit(1)
    finally:
        drop_database(url)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
