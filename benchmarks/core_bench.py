"""Core benchmark: ``tars-run list`` start-up and the runner's overhead per plugin phase.

Targets (issue 2): ``tars-run list`` with every plugin of the repo installed starts in under 0.5 s without
importing TensorFlow, asyncpg, websockets or opentelemetry; the runner adds under 5 ms per plugin phase
beyond the hook's own time (ledger rows, context, progress, timeouts included).

    python benchmarks/core_bench.py [--runs 15] [--plugins 50]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from tars_core import ApplyResult, PluginInfo, VerifyResult, hookimpl
from tars_core.config import TarsConfig
from tars_core.ledger import Holder, SQLiteLedger
from tars_core.plugins import PluginHost
from tars_core.redact import Redactor
from tars_core.runner import Runner


def startup(runs: int) -> None:
    exe = shutil.which("tars-run") or "tars-run"
    subprocess.run([exe, "list"], capture_output=True)  # warm the page cache
    times, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        res = subprocess.run([exe, "list"], capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    installed = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    probe = (
        "import sys; from tars_core.plugins import PluginHost; h=PluginHost(); h.load_entry_points();"
        "print(','.join(m for m in ('tensorflow','asyncpg','websockets','opentelemetry') if m in sys.modules))"
    )
    heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    med = statistics.median(times)
    print(
        f"tars-run list start-up: median {med * 1000:.0f} ms wall ({statistics.median(cpu) * 1000:.0f} ms CPU; "
        f"wall is inflated when the machine is loaded: load average {os.getloadavg()[0]:.1f}), "
        f"max {max(times) * 1000:.0f} ms over {runs} runs "
        f"with {len(installed)} plugins installed ({', '.join(installed)}); target < 500 ms: "
        f"{'met' if med < 0.5 else 'MISSED'}"
    )
    print(f"heavy modules imported by discovery: {heavy or 'none'}")


class Noop:
    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def tars_plugin_info(self) -> PluginInfo:
        return PluginInfo(name=self.name, title=self.name)

    @hookimpl
    async def tars_apply(self, ctx: Any) -> ApplyResult:
        return ApplyResult()

    @hookimpl
    async def tars_verify(self, ctx: Any) -> VerifyResult:
        return VerifyResult(ok=True)


def overhead(n: int) -> None:
    host = PluginHost(trace=False)
    for i in range(n):
        host.register(Noop(f"noop-{i:03d}"), f"noop-{i:03d}")
    plugins = host.select("all")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ledger = SQLiteLedger(root / ".tars" / "state.db")

        async def run() -> float:
            await ledger.open()
            await ledger.acquire(Holder.me("bench"))
            runner = Runner(host, TarsConfig(), ledger, Redactor(), root=root)
            await ledger.start_run(runner.run_id, runner.release, "apply")
            t = time.perf_counter()
            out = await runner.apply(plugins)
            elapsed = time.perf_counter() - t
            assert out.exit_code == 0
            hook_time = sum(s.seconds for s in out.steps)
            await ledger.close()
            return (elapsed - hook_time) / len(out.steps), hook_time / len(out.steps), len(out.steps)

        per_phase, hook, steps = anyio.run(run)
    print(
        f"runner overhead: {per_phase * 1000:.2f} ms per plugin phase beyond the hook's own "
        f"{hook * 1000:.2f} ms ({steps} phases, {n} plugins, SQLite ledger); target < 5 ms: "
        f"{'met' if per_phase < 0.005 else 'MISSED'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--plugins", type=int, default=50)
    args = ap.parse_args()
    startup(args.runs)
    overhead(args.plugins)


if __name__ == "__main__":
    main()
