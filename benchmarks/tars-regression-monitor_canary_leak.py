"""The TARS-1005 canary-leak case of issue 13, on a real sandbox: v1.0.0 put back on one trainer is judged a
regression on RSS by ``tars-regression-monitor`` (canary against baseline), within the bake.

Too slow for the CI test budget (the trainers must run the fixed code for a while, then a memory slope needs
30 samples a side: about 6-8 minutes in all), so it lives here, not in tests/together.

Steps: ``tars-run sandbox up`` in a fresh folder; the TARS-1005 flag ``on`` (both trainers run the fixed
trainer) and a minute to settle; then the flag back to 0.25, which keeps the fixed trainer on the trainer
whose canary bucket is under 0.25 and puts the leaky v1.0.0 trainer back on the other. That partial rollback
is the change: the monitor is told the flag was ``on`` before (as its preflight would have recorded) and
the canary is the trainer the change touched, judged against the other over the bake, paired by time.

    .venv/bin/python benchmarks/tars-regression-monitor_canary_leak.py [--bake 600] [--out benchmarks/]

Writes ``tars-regression-monitor_canary_leak_results.{json,md}`` (and the chart) and prints the verdict,
the time to it and the RSS statistics.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import yaml

TARS_RUN = str(Path(sys.executable).with_name("tars-run"))
FLAG = "tars-1005-ppo-fixed"
FRACTION = "0.25"


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TARS_RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


async def _switch(targets: Any, value: str, timeout: float = 240.0) -> dict[str, str]:
    """Set the flag and wait until every trainer reports having read it; returns trainer -> implementation."""
    import redis.asyncio as redis

    from tars_core.flags import FeatureFlags

    flags = FeatureFlags(targets.redis, targets.flags_key)
    try:
        await flags.set(FLAG, value)
    finally:
        await flags.aclose()
    client = redis.from_url(targets.redis, decode_responses=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            ids = sorted(await client.smembers("tars:ppo:trainers"))
            status = {t: await client.hgetall(f"tars:ppo:trainer:{t}") for t in ids}
            if ids and all(s.get("flag_value") == value for s in status.values()):
                return {t: s.get("implementation", "?") for t, s in status.items()}
            if time.monotonic() > deadline:
                raise SystemExit(f"trainers did not switch to {value!r} in {timeout:g}s: {status}")
            await anyio.sleep(1.0)
    finally:
        await client.aclose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bake", type=float, default=600.0, help="bake time, seconds (the gate stops at a fail)")
    ap.add_argument("--settle", type=float, default=60.0, help="seconds on the fixed code before the rollback")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--keep", action="store_true", help="leave the sandbox folder (and running sandbox) behind")
    args = ap.parse_args()

    from tars_telemetry import regression_gate, regression_plugin

    from tars_core.model import Change, Targets
    from tars_core.testing import make_context

    root = Path(tempfile.mkdtemp(prefix="tars-canary-leak-"))
    up = _run(root, "sandbox", "up")
    if up.returncode != 0:
        print(up.stderr, file=sys.stderr)
        return 1
    try:
        doc = yaml.safe_load((root / ".tars" / "sandbox" / "tars.yaml").read_text())
        targets = Targets(**{k: v for k, v in doc["targets"].items() if v is not None})
        print("flag on: ", anyio.run(_switch, targets, "on"))
        time.sleep(args.settle)
        impl = anyio.run(_switch, targets, FRACTION)
        print(f"flag {FRACTION}:", impl)
        applied = time.time()
        section = dict(doc["plugins"].get("tars-regression-monitor", {}))
        ctx = make_context(regression_plugin, targets=targets, config=section, state_dir=root / "monitor")
        regression_gate.record_flags(ctx.state, {FLAG: "on"})  # what the preflight records before the change
        change = Change(
            "tars-1005-ppo (partial rollback)",
            "TARS-1005",
            regression_gate.iso(applied),
            {FLAG: FRACTION},
            f"{FLAG}={FRACTION}",
            args.bake,
        )
        judgement = anyio.run(regression_plugin.tars_observe, ctx, change)
        took = time.time() - applied
        rss = [e for e in judgement.evidence if e.detail.startswith("trainer_rss_bytes")]
        chart = next((e.detail.split(": ", 1)[1] for e in judgement.evidence if e.detail.startswith("chart: ")), None)
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / "tars-regression-monitor_canary_leak_results"
        if chart:
            shutil.copyfile(chart, f"{stem}.png")
        result = {
            "verdict": judgement.verdict,
            "seconds_to_verdict": round(took, 1),
            "bake_s": args.bake,
            "trainers_after_rollback": impl,
            "reasons": list(judgement.reasons),
            "rss": [{"query": e.query, "effect": e.value, "detail": e.detail} for e in rss],
        }
        Path(f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        lines = [
            "# TARS-1005 canary leak judged by tars-regression-monitor (sandbox)",
            "",
            f"`.venv/bin/python benchmarks/tars-regression-monitor_canary_leak.py --bake {args.bake:g}`",
            "",
            f"Trainers after the partial rollback (flag {FLAG}={FRACTION}): "
            + ", ".join(f"{t}: {i}" for t, i in impl.items()),
            "",
            f"**Verdict: {judgement.verdict}** after {took:.0f} s of a {args.bake:g} s bake.",
            "",
            *[f"- {r}" for r in judgement.reasons],
            "",
            "RSS statistics:",
            "",
            *[f"- `{e.query}`: {e.detail}" for e in rss],
            "",
            "![chart](tars-regression-monitor_canary_leak_results.png)" if chart else "",
        ]
        Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
        print(f"{judgement.verdict} after {took:.0f} s")
        for r in judgement.reasons:
            print(" -", r)
        return 0 if judgement.verdict == "fail" else 1
    finally:
        if not args.keep:
            _run(root, "sandbox", "down")
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
