"""The soak harness: the judge on known series, then real soaks of both trainers in their own processes."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tars_1005_ppo.plugin as plugin
from ppo_support import SMALL
from tars_1005_ppo.soak import Sample, judge, load_verdict, read_samples

from tars_core import Targets
from tars_core.testing import make_context
from tars_core.waiting import wait_until

MB = 2**20


def series(rss: list[float], tracing: list[int] | None = None, segments: list[int] | None = None) -> list[Sample]:
    n = len(rss)
    return [
        Sample(
            segment=(segments or [0] * n)[i],
            iteration=i + 1,
            elapsed_s=float(i),
            global_step=256 * (i + 1),
            rss_bytes=int(r),
            tracing_count=(tracing or [3] * n)[i],
            buffer_bytes=1000,
            retained_items=10,
            mean_return=20.0 + i,
            train_seconds=0.1 * (i + 1),
        )
        for i, r in enumerate(rss)
    ]


def test_judge_passes_flat_memory_after_warmup() -> None:
    rng = np.random.default_rng(0)
    warm = list(np.linspace(500, 600, 10) * MB)
    flat = list(600 * MB + rng.normal(0, 20_000, 90))  # 20 KB noise, no trend
    verdict = judge(series(warm + flat), warmup="10")
    assert verdict.ok, verdict.checks
    assert abs(verdict.slope_bytes_per_iter) < 5_000 and verdict.slope_upper < 50 * 1024
    assert verdict.samples_judged == 90 and verdict.peak_rss_bytes == max(s.rss_bytes for s in series(warm + flat))


def test_judge_fails_a_leak_and_says_so() -> None:
    rng = np.random.default_rng(1)
    rss = [600 * MB + 200_000 * i + rng.normal(0, 50_000) for i in range(60)]
    verdict = judge(series(rss), warmup="0.2")
    assert not verdict.ok and verdict.leak_detected
    assert verdict.checks["slope"].startswith("FAIL")
    assert verdict.slope_lower > 150_000


def test_judge_fails_on_retracing_and_on_peak() -> None:
    flat = [700 * MB] * 30
    retrace = judge(series(flat, tracing=[3] * 20 + [4] * 10))
    assert not retrace.ok and retrace.checks["tracing"] == "FAIL: tf.function tracing count after warm-up 3 -> 4"
    peak = judge(series(flat), peak_budget_bytes=512 * MB)
    assert not peak.ok and peak.checks["peak"].startswith("FAIL") and peak.checks["slope"].startswith("ok")


def test_judge_fits_one_intercept_per_segment() -> None:
    """A resumed soak restarts from a lower RSS: that step must not read as a trend."""
    rss = [900 * MB] * 20 + [600 * MB] * 20
    verdict = judge(series(rss, segments=[0] * 20 + [1] * 20), warmup="2")
    assert verdict.ok and verdict.slope_bytes_per_iter == 0


def test_judge_refuses_too_few_samples() -> None:
    verdict = judge(series([600 * MB] * 4), warmup="0.2")
    assert not verdict.ok and "samples after warm-up" in verdict.checks["slope"]


def soak(out: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tars_1005_ppo.soak", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_fixed_soak_passes_and_writes_csv_and_png(tmp_path: Path, small_config_file: Path) -> None:
    run = soak(tmp_path, "--iterations", "40", "--config", str(small_config_file), "--warmup", "0.25")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "fixed soak PASS" in run.stdout
    verdict = load_verdict(tmp_path / "verdict.json")
    assert verdict.ok and verdict.tracing_counts == (3, 3) and verdict.iterations == 40
    rows = list(csv.DictReader((tmp_path / "samples.csv").open()))
    assert len(rows) == 40 and {r["buffer_bytes"] for r in rows} == {str(4 * 16 * 44)}
    assert (tmp_path / "rss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_leaky_reproduction_fails_the_same_judge(tmp_path: Path, small_config_file: Path) -> None:
    run = soak(
        tmp_path, "--impl", "legacy", "--iterations", "25", "--config", str(small_config_file), "--warmup", "0.2"
    )
    assert run.returncode == 1, run.stdout + run.stderr
    verdict = load_verdict(tmp_path / "verdict.json")
    assert not verdict.ok and verdict.leak_detected
    assert verdict.slope_lower > 0 and verdict.slope_upper > 50 * 1024
    assert not verdict.tracing_constant


def test_sigterm_stops_cleanly_and_resume_continues(tmp_path: Path, small_config_file: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tars_1005_ppo.soak",
            "--out",
            str(tmp_path),
            "--duration",
            "10m",
            "--config",
            str(small_config_file),
            "--checkpoint-every",
            "1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    csv_path = tmp_path / "samples.csv"

    def sampled() -> bool:
        assert proc.poll() is None, proc.communicate()
        return csv_path.exists() and len(csv_path.read_text().splitlines()) >= 8

    wait_until(sampled, timeout=120, interval=0.3, what="7 samples written")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "stopped; --resume continues" in out
    state = json.loads((tmp_path / "state.json").read_text())
    stopped_at = state["iteration"]
    assert stopped_at >= 7 and not load_verdict(tmp_path / "verdict.json").complete
    assert len(read_samples(csv_path)) == stopped_at  # every iteration up to the stop was sampled

    run = soak(tmp_path, "--iterations", str(stopped_at + 12), "--resume", "--warmup", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    samples = read_samples(csv_path)
    resumed = [s for s in samples if s.segment == 1]
    assert [s.iteration for s in resumed] == list(range(stopped_at + 1, stopped_at + 13))
    assert resumed[0].global_step == samples[stopped_at - 1].global_step + 64  # counters restored
    verdict = load_verdict(tmp_path / "verdict.json")
    assert verdict.complete and verdict.iterations == stopped_at + 12


def test_bad_arguments_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"n_steps": 0}))
    run = soak(tmp_path / "a", "--iterations", "3", "--config", str(bad))
    assert run.returncode == 2 and "n_steps must be > 0" in run.stderr and "config" in run.stderr
    run = soak(tmp_path / "b", "--iterations", "3", "--env", "NoSuchEnv-v0")
    assert run.returncode == 2 and "unknown gymnasium environment 'NoSuchEnv-v0'" in run.stderr
    run = soak(tmp_path / "c", "--duration", "ten minutes")
    assert run.returncode == 2 and "not a duration" in run.stderr


@pytest.mark.anyio
async def test_benchmark_hook_measures_both_trainers(tmp_path: Path) -> None:
    ctx = make_context(
        plugin, targets=Targets(), config={"benchmark_iterations": 20, "trainer": SMALL}, state_dir=tmp_path
    )
    result = await plugin.tars_benchmark(ctx)
    metrics = {m.name: m for m in result.metrics}
    assert set(metrics) == {
        "rss_slope_per_iteration",
        "peak_rss",
        "tracings_after_warmup",
        "steps_per_second",
        "cartpole_mean_return",
    }
    slope = metrics["rss_slope_per_iteration"]
    assert slope.before > slope.after and slope.unit == "KB/iteration"
    assert metrics["tracings_after_warmup"].after == 0 and metrics["tracings_after_warmup"].before > 0
    assert (tmp_path / "benchmark" / "rss-compare.png").exists()


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("48h", 172800), ("1h30m", 5400), ("12", 12)])
def test_durations(text: str, seconds: float) -> None:
    from tars_1005_ppo.config import parse_duration

    assert parse_duration(text) == seconds
