"""TARS-1005 benchmark: the v1.0.0 leak reproduction versus the fixed PPO trainer, same iterations, one run.

    python benchmarks/tars-1005-ppo_bench.py                      # 100,000 CartPole steps each (~10 min)
    python benchmarks/tars-1005-ppo_bench.py --steps 20000 --out /tmp/ppo-bench

Each trainer runs in its own process (``python -m tars_1005_ppo.soak``), so each RSS is that trainer's
alone, with the same PPOConfig (rl-zoo CartPole settings unless ``--config``), seed and iteration count.
Reported per trainer: RSS slope per iteration after warm-up with its 95% interval, peak RSS, environment
steps per second (time inside training iterations), tf.function retraces after warm-up, the CartPole mean
return (last 100 episodes) at the end and the first step at which it reached 195. Targets (issue 8):
fixed slope upper bound < 50 KB/iteration while the leaky one grows, peak < 1 GB, steps/s no worse than
leaky, mean return >= 195 within 100,000 steps. Writes ``summary.json`` and ``rss-compare.png`` in --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import cattrs
from tars_1005_ppo.config import PPOConfig, PPOFixConfig
from tars_1005_ppo.soak import Verdict, plot_comparison, read_samples, soak_subprocess

from tars_core.report import format_number, markdown_table, verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="environment steps per trainer")
    parser.add_argument("--out", type=Path, default=Path(".tars/bench/tars-1005-ppo"))
    parser.add_argument("--config", type=Path, help="JSON with PPOConfig fields (default: rl-zoo CartPole)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", default="0.1", help="discarded start (fraction, iterations or time)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per-trainer limit in seconds")
    args = parser.parse_args()

    data = json.loads(args.config.read_text()) if args.config else {}
    config = cattrs.structure({**data, "seed": args.seed}, PPOConfig)
    fix = PPOFixConfig(trainer=config, soak_timeout_s=args.timeout)  # the default budgets: 50 KB/iteration, 1 GB
    iterations = math.ceil(args.steps / config.batch_size)
    print(
        f"{iterations} iterations x {config.batch_size} steps ({config.env_id}, seed {config.seed}) per trainer",
        file=sys.stderr,
    )
    verdicts = {}
    wall = {}
    for impl in ("legacy", "fixed"):
        started = time.monotonic()
        verdicts[impl] = asyncio.run(
            soak_subprocess(args.out / impl, impl=impl, fix=fix, iterations=iterations, warmup=args.warmup)
        )
        wall[impl] = time.monotonic() - started
        print(f"  {impl}: done in {wall[impl]:.0f} s", file=sys.stderr)
    runs = {k: (read_samples(args.out / k / "samples.csv"), v) for k, v in verdicts.items()}
    plot_comparison(runs, args.out / "rss-compare.png")

    kb = 1024.0
    rows: list[tuple[str, Callable[[Verdict], str]]] = [
        ("RSS slope, KB/iteration", lambda v: format_number(v.slope_bytes_per_iter / kb)),
        ("  95% interval", lambda v: f"[{format_number(v.slope_lower / kb)}, {format_number(v.slope_upper / kb)}]"),
        ("peak RSS, MB", lambda v: format_number(v.peak_rss_bytes / 2**20)),
        ("env steps per second", lambda v: format_number(v.steps_per_s)),
        ("tf.function tracings (after warm-up)", lambda v: f"{v.tracing_counts[0]} -> {v.tracing_counts[1]}"),
        ("mean return, last 100 episodes", lambda v: format_number(v.mean_return)),
        (
            "first step with mean return >= 195",
            lambda v: "never" if v.steps_to_return_target is None else format_number(v.steps_to_return_target),
        ),
        ("environment steps", lambda v: format_number(v.global_step)),
        ("soak judge", lambda v: "PASS" if v.ok else "FAIL"),
    ]
    table = [(label, fmt(verdicts["legacy"]), fmt(verdicts["fixed"])) for label, fmt in rows]
    print("\n" + markdown_table(("", "v1.0.0 (leaky)", "fixed"), table))
    leaky, fixed = verdicts["legacy"], verdicts["fixed"]
    targets = {
        "fixed slope upper bound < 50 KB/iteration": fixed.slope_upper < 50 * kb,
        "leaky slope significantly positive": leaky.slope_lower > 0,
        "fixed peak RSS < 1 GB": fixed.peak_rss_bytes < 2**30,
        "fixed steps/s >= leaky": fixed.steps_per_s >= leaky.steps_per_s,
        "fixed mean return >= 195 within 100k steps": (fixed.steps_to_return_target or math.inf) <= 100_000,
    }
    print("\n" + markdown_table(("target", "verdict"), [(name, verdict(met)) for name, met in targets.items()]))
    summary = {
        "config": cattrs.unstructure(config),
        "iterations": iterations,
        "wall_seconds": wall,
        "verdicts": {k: attrs.asdict(v) for k, v in verdicts.items()},
        "targets": targets,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nsummary: {args.out / 'summary.json'}; chart: {args.out / 'rss-compare.png'}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
