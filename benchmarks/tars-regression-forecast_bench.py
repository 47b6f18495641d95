"""tars-regression-monitor benchmark: the online forecaster (``tars_telemetry.forecast``) and its candidates.

Synthetic series with the sandbox's traffic shapes, sampled every 5 s (the sandbox's scrape and rule
interval), the exporter's daily cycle compressed to a 10-minute "day" (120 samples) with an eighth-of-a-day
harmonic, as the TARS-1002 simulator builds its rates (``r0 (1 + a1 sin(day) + a2 sin(day/8))``, a1 in
0.3-0.5, a2 in 0.05-0.2), plus the noise the simulator leaves out:

* ``rate``: ``rate(requests_total[30s])`` of a Poisson counter at about 8 requests/s;
* ``error_ratio``: 5xx / all over ``[1m]`` at 1 % errors (sparse, discrete);
* ``latency_p99``: ``histogram_quantile(0.99, ...[30s])`` over the HTTP buckets, lognormal fast
  requests plus a slow share that grows with load;
* ``rss``: process RSS with a slow upward trend (2-6 % over the training window), a GC sawtooth, noise;
* ``queue_depth``: a gauge like the exporter's (sinus, uniform jitter of +/-20 %, rounded).

Each run trains on 4 "days" (the pre-release window) and is then updated sample by sample. Parts:

1. **Models** (same band and drift detector around each, :class:`tars_telemetry.forecast.Forecaster` with
   its ``model`` hook): river SNARIMAX, river HoltWinters (fixed Brutlag parameters), statsmodels
   ExponentialSmoothing fitted by maximum likelihood and continued online (unbounded), a robust seasonal
   median of our own, and the shipped model (the same fit with the level's memory bounded). Clean
   samples: 95 % band coverage, MAE relative to the seasonal-naive forecast (MASE), µs per update, memory
   per forecaster; a +20 % level shift one "day" after the fit: share detected within 4 "days" and the
   median delay in samples; drift flags on clean data per 1,000 samples.
2. **Drift detectors** on the shipped model: river Page-Hinkley (shipped) against river ADWIN, on the same
   residual stream; +20 % and +50 % shifts, false alarms on clean data.
3. **Calibration** of the shipped forecaster over 8 clean "days" per run: coverage of the 95 % band
   (target 95 +/- 2 %), pooled and per shape.
4. **Cost**: ``Forecaster.update`` and ``ForecastBank.update`` (gauges included) µs per sample, the fit's
   time for a 120- and a 720-sample season (a 1-hour season at 5 s), memory per forecaster.
   statsmodels' own refit, for comparison: what a per-sample refit would cost.

    python benchmarks/tars-regression-forecast_bench.py                  # 20 seeds per shape, ~5 minutes
    python benchmarks/tars-regression-forecast_bench.py --seeds 4 --out /tmp/forecast-bench

Writes ``tars-regression-forecast_bench_results.{json,md}`` in ``--out`` (default: beside this script).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tars_telemetry.forecast import ForecastBank, ForecastConfig, Forecaster, ForecastModel, _HoltWinters, preload

from tars_core.report import format_number, markdown_table

STEP = 5.0
M = 120  # samples per compressed day
TRAIN = 4 * M
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf)
CONFIG = ForecastConfig(step=STEP, season=M * STEP)
COVERAGE_TARGET = (0.93, 0.97)


# -- series ----------------------------------------------------------------------------------------
def _load(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n)
    a1, a2 = rng.uniform(0.3, 0.5), rng.uniform(0.05, 0.2)
    p1, p2 = rng.uniform(0, 2 * np.pi, 2)
    return 1 + a1 * np.sin(2 * np.pi * t / M + p1) + a2 * np.sin(2 * np.pi * t / (M / 8) + p2)


def _window(counts: np.ndarray, w: int) -> np.ndarray:
    c = np.concatenate([np.zeros(w), np.cumsum(counts)])
    return c[w:] - c[:-w]


def _shifted(n: int, at: int | None, factor: float) -> np.ndarray:
    f = np.ones(n)
    if at is not None:
        f[at:] = factor
    return f


def rate(n: int, rng: np.random.Generator, at: int | None = None, factor: float = 1.0) -> np.ndarray:
    w = 6
    lam = 8.0 * rng.uniform(0.7, 1.3) * _load(n + w, rng) * _shifted(n + w, None if at is None else at + w, factor)
    return _window(rng.poisson(lam * STEP).astype(float), w)[w:] / (w * STEP)


def error_ratio(n: int, rng: np.random.Generator, at: int | None = None, factor: float = 1.0) -> np.ndarray:
    w = 12
    req = rng.poisson(8.0 * _load(n + w, rng) * STEP)
    p = 0.01 * _shifted(n + w, None if at is None else at + w, factor)
    err = rng.binomial(req, np.minimum(p, 1.0))
    return _window(err.astype(float), w)[w:] / np.maximum(_window(req.astype(float), w)[w:], 1.0)


def latency_p99(n: int, rng: np.random.Generator, at: int | None = None, factor: float = 1.0) -> np.ndarray:
    from scipy.stats import lognorm

    w = 6
    load = _load(n + w, rng)
    req = rng.poisson(8.0 * load * STEP)
    f = _shifted(n + w, None if at is None else at + w, factor)
    b = np.array(HTTP_BUCKETS[:-1])
    counts = np.zeros((n + w, len(HTTP_BUCKETS)))
    for i in range(n + w):
        median = 0.045 * (0.8 + 0.4 * load[i])
        slow = 0.05 * load[i]
        cdf = (1 - slow) * lognorm.cdf(b / f[i], 0.5, scale=median) + slow * lognorm.cdf(
            b / f[i], 0.6, scale=median * 6
        )
        probs = np.clip(np.diff(np.concatenate([[0.0], cdf, [1.0]])), 0, 1)
        counts[i] = rng.multinomial(req[i], probs / probs.sum())
    cum = np.cumsum(counts, axis=1)
    win = np.stack([_window(cum[:, j], w) for j in range(cum.shape[1])], axis=1)[w:]
    bounds = (0.0, *HTTP_BUCKETS)
    q = np.empty(n)
    for i in range(n):  # Prometheus' histogram_quantile: linear inside the bucket, the last finite bound at most
        rank = 0.99 * win[i, -1]
        j = int(np.searchsorted(win[i], rank))
        if j >= len(HTTP_BUCKETS) - 1:
            q[i] = HTTP_BUCKETS[-2]
            continue
        below = win[i, j - 1] if j else 0.0
        q[i] = bounds[j] + (bounds[j + 1] - bounds[j]) * (rank - below) / max(win[i, j] - below, 1e-9)
    return q


def rss(n: int, rng: np.random.Generator, at: int | None = None, factor: float = 1.0) -> np.ndarray:
    t = np.arange(n)
    base = 600e6
    slope = base * rng.uniform(0.02, 0.06) / TRAIN
    y = (
        base
        + slope * t
        + base * 0.01 * ((t % 37) / 37)
        + base * 0.01 * np.sin(2 * np.pi * t / M + rng.uniform(0, 6))
        + base * 0.002 * rng.normal(size=n)
    )
    return y * _shifted(n, at, factor)


def queue_depth(n: int, rng: np.random.Generator, at: int | None = None, factor: float = 1.0) -> np.ndarray:
    t = np.arange(n)
    y = 24.0 * (1 + 0.6 * np.sin(2 * np.pi * t / M + rng.uniform(0, 6)) + rng.uniform(-0.2, 0.2, n))
    return np.round(y * _shifted(n, at, factor))


SHAPES: dict[str, Callable[..., np.ndarray]] = {
    "rate": rate,
    "error_ratio": error_ratio,
    "latency_p99": latency_p99,
    "rss": rss,
    "queue_depth": queue_depth,
}


# -- candidate models (the shipped one is tars_telemetry.forecast._HoltWinters.fit) ------------------
class _RiverModel:
    """A river forecaster learnt online over the training window (its parameters are not fitted)."""

    def __init__(self, model: Any, values: Sequence[float]) -> None:
        self.model = model
        for y in values:
            model.learn_one(float(y))

    def forecast(self) -> float:
        return float(self.model.forecast(horizon=1)[0])

    def learn(self, y: float) -> None:
        self.model.learn_one(float(y))

    def skip(self, n: int) -> None:
        for _ in range(n):
            self.learn(self.forecast())


def river_snarimax(values: Sequence[float], period: int, alpha_max: float, gamma_max: float) -> ForecastModel:
    from river import linear_model, optim, preprocessing, time_series

    regressor = preprocessing.StandardScaler() | linear_model.LinearRegression(
        intercept_init=0.0, optimizer=optim.SGD(0.01), intercept_lr=0.1
    )
    # seasonal differencing (sd=1) removes the day; AR(2) + MA(1) + one seasonal AR lag on what is left
    model = time_series.SNARIMAX(p=2, d=0, q=1, m=period or 1, sp=1, sd=1 if period else 0, sq=0, regressor=regressor)
    return _RiverModel(model, values)


def river_holt_winters(values: Sequence[float], period: int, alpha_max: float, gamma_max: float) -> ForecastModel:
    from river import time_series

    # Brutlag's parameters (RRDtool's aberrant-behaviour detection), river needs beta with a season
    return _RiverModel(time_series.HoltWinters(alpha=0.1, beta=0.0035, gamma=0.1, seasonality=period), values)


def statsmodels_unbounded(values: Sequence[float], period: int, alpha_max: float, gamma_max: float) -> ForecastModel:
    return _HoltWinters.fit(values, period, 1.0, 1.0)


class SeasonalMedian:
    """Our own robust baseline: per phase of the day the median over the training days, plus a level that
    follows the residuals (clipped at 3 MADs) with the shipped memory."""

    def __init__(self, values: Sequence[float], period: int, alpha: float) -> None:
        y = np.asarray(values, dtype=float)
        days = len(y) // period
        table = y[len(y) - days * period :].reshape(days, period)
        self.profile = list(np.median(table, axis=0))
        self.scale = float(np.median(np.abs(table - np.median(table, axis=0)))) * 1.4826 or 1e-12
        self.phase = len(y) % period  # the next sample's phase
        self.offset = 0.0
        self.alpha = alpha

    def forecast(self) -> float:
        return self.profile[self.phase] + self.offset

    def learn(self, y: float) -> None:
        r = y - self.forecast()
        c = 3 * self.scale
        self.offset += self.alpha * max(-c, min(c, r))
        self.phase = (self.phase + 1) % len(self.profile)

    def skip(self, n: int) -> None:
        self.phase = (self.phase + n) % len(self.profile)


def seasonal_median(values: Sequence[float], period: int, alpha_max: float, gamma_max: float) -> ForecastModel:
    return SeasonalMedian(values, period, alpha_max)


MODELS: dict[str, Any] = {
    "river SNARIMAX(2,0,1)(1,1,0)": river_snarimax,
    "river HoltWinters (Brutlag a=0.1 b=0.0035 g=0.1)": river_holt_winters,
    "statsmodels HW fit, unbounded, online": statsmodels_unbounded,
    "seasonal median (own)": seasonal_median,
    "statsmodels HW fit, memory-bounded, online (shipped)": None,
}
SHIPPED = "statsmodels HW fit, memory-bounded, online (shipped)"


def _forecaster(model: Any) -> Forecaster:
    return Forecaster(CONFIG, model=model)


def _times(n: int) -> list[float]:
    return [i * STEP for i in range(n)]


def clean_run(shape: str, seed: int, model: Any, days: int = 4) -> dict[str, float]:
    n = TRAIN + days * M
    y = SHAPES[shape](n, np.random.default_rng(seed))
    t = _times(n)
    f = _forecaster(model)
    f.fit(zip(t[:TRAIN], y[:TRAIN], strict=True))
    err = naive = 0.0
    inside = flags = 0
    started = time.perf_counter()
    for i in range(TRAIN, n):
        p = f.update(t[i], float(y[i]))
        assert p is not None and p.ready
        inside += p.inside
        flags += p.drift and not (f.drift_until - CONFIG.drift_hold < t[i] - STEP)  # count each detection once
        err += abs(p.residual)
        naive += abs(y[i] - y[i - M])
    us = (time.perf_counter() - started) / (n - TRAIN) * 1e6
    return {"coverage": inside / (n - TRAIN), "mase": err / naive, "us": us, "drifts": f.drifts, "n": n - TRAIN}


def shift_run(shape: str, seed: int, model: Any, factor: float, detector: str = "page-hinkley") -> float | None:
    """Samples from the shift (one day after the fit) to the first drift flag; None if not within 4 days."""
    at = TRAIN + M
    n = at + 4 * M
    y = SHAPES[shape](n, np.random.default_rng(seed), at=at, factor=factor)
    t = _times(n)
    f = _forecaster(model) if detector == "page-hinkley" else _AdwinForecaster(CONFIG, model=model)
    f.fit(zip(t[:TRAIN], y[:TRAIN], strict=True))
    for i in range(TRAIN, n):
        p = f.update(t[i], float(y[i]))
        if i >= at and p is not None and p.drift and f.direction == 1:
            return i - at
    return None


class _AdwinForecaster(Forecaster):
    """The shipped forecaster with river's ADWIN (both directions in one) in place of Page-Hinkley."""

    def _detectors(self) -> tuple[Any, Any]:
        from river.drift import ADWIN

        up = _Directional(ADWIN(delta=0.002))
        return up, _Mirror(up)


class _Directional:
    """ADWIN flags a change of mean either way; the direction is that of the recent residuals' mean."""

    def __init__(self, adwin: Any) -> None:
        self.adwin = adwin
        self.recent: list[float] = []
        self.drift_detected = False
        self.down = False

    def update(self, x: float) -> None:
        self.adwin.update(x)
        self.recent = [*self.recent[-9:], x]
        hit = bool(self.adwin.drift_detected)
        mean = sum(self.recent) / len(self.recent)
        self.drift_detected = hit and mean > 0
        self.down = hit and mean <= 0


class _Mirror:
    def __init__(self, up: _Directional) -> None:
        self.up = up

    def update(self, x: float) -> None:
        pass

    @property
    def drift_detected(self) -> bool:
        return self.up.down


def clean_drifts(shape: str, seed: int, detector: str) -> tuple[int, int]:
    n = TRAIN + 4 * M
    y = SHAPES[shape](n, np.random.default_rng(seed))
    t = _times(n)
    f = Forecaster(CONFIG) if detector == "page-hinkley" else _AdwinForecaster(CONFIG)
    f.fit(zip(t[:TRAIN], y[:TRAIN], strict=True))
    for i in range(TRAIN, n):
        f.update(t[i], float(y[i]))
    return f.drifts, n - TRAIN


def memory_bytes(model: Any) -> int:
    y = rate(TRAIN, np.random.default_rng(0))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    f = _forecaster(model)
    f.fit(zip(_times(TRAIN), y, strict=True))
    for i in range(M):  # a filled calibration window grows with updates: measure after some
        f.update((TRAIN + i) * STEP, float(y[i]))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    keep = f
    del keep
    return after - before


# -- parts -----------------------------------------------------------------------------------------
def _summary(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def part_models(seeds: int) -> list[dict[str, Any]]:
    rows = []
    for name, model in MODELS.items():
        for shape in SHAPES:
            clean = [clean_run(shape, s, model) for s in range(seeds)]
            delays = [shift_run(shape, 1000 + s, model, 1.2) for s in range(seeds)]
            found = [d for d in delays if d is not None]
            samples = sum(c["n"] for c in clean)
            rows.append(
                {
                    "model": name,
                    "shape": shape,
                    "coverage": _summary([c["coverage"] for c in clean]),
                    "mase": statistics.fmean(c["mase"] for c in clean),
                    "us_per_update": statistics.median(c["us"] for c in clean),
                    "false_drifts_per_1000": 1000 * sum(c["drifts"] for c in clean) / samples,
                    "shift20_detected": len(found) / len(delays),
                    "shift20_median_delay": statistics.median(found) if found else None,
                }
            )
            print(f"  {name} / {shape}: {_fmt_row(rows[-1])}", file=sys.stderr, flush=True)
        rows.append({"model": name, "shape": "memory", "bytes": memory_bytes(model)})
    return rows


def _fmt_row(r: dict[str, Any]) -> str:
    return (
        f"coverage {r['coverage'][0]:.3f}, MASE {r['mase']:.3f}, {r['us_per_update']:.1f} us, "
        f"+20% detected {r['shift20_detected']:.2f} (median {r['shift20_median_delay']} samples)"
    )


def part_detectors(seeds: int) -> list[dict[str, Any]]:
    rows = []
    for detector in ("page-hinkley", "adwin"):
        for shape in SHAPES:
            drifts = [clean_drifts(shape, s, detector) for s in range(seeds)]
            row: dict[str, Any] = {
                "detector": detector,
                "shape": shape,
                "false_drifts_per_1000": 1000 * sum(d for d, _ in drifts) / sum(n for _, n in drifts),
            }
            for factor in (1.2, 1.5):
                delays = [shift_run(shape, 1000 + s, None, factor, detector) for s in range(seeds)]
                found = [d for d in delays if d is not None]
                row[f"x{factor}_detected"] = len(found) / len(delays)
                row[f"x{factor}_median_delay"] = statistics.median(found) if found else None
                row[f"x{factor}_max_delay"] = max(found) if found else None
            rows.append(row)
            print(f"  {detector} / {shape}: {row}", file=sys.stderr, flush=True)
    return rows


def part_calibration(seeds: int) -> dict[str, Any]:
    per_shape: dict[str, Any] = {}
    pooled_in = pooled_n = 0
    for shape in SHAPES:
        runs = [clean_run(shape, 5000 + s, None, days=8) for s in range(seeds)]
        cov = [r["coverage"] for r in runs]
        per_shape[shape] = {
            "mean": statistics.fmean(cov),
            "sd": statistics.pstdev(cov),
            "min": min(cov),
            "max": max(cov),
        }
        pooled_in += sum(round(r["coverage"] * r["n"]) for r in runs)
        pooled_n += sum(int(r["n"]) for r in runs)
    pooled = pooled_in / pooled_n
    return {
        "per_shape": per_shape,
        "pooled": pooled,
        "samples": pooled_n,
        "met": COVERAGE_TARGET[0] <= pooled <= COVERAGE_TARGET[1],
    }


def part_cost() -> dict[str, Any]:
    from prometheus_client import CollectorRegistry
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    out: dict[str, Any] = {}
    code = (
        "import time; t = time.perf_counter(); import tars_telemetry.forecast as f; f.preload(); "
        "print(time.perf_counter() - t)"
    )
    took = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    out["preload_ms_fresh_process"] = float(took) * 1e3  # what a daemon's first fit would wait without preload()
    preload()
    n = 20_000
    for period in (120, 720):
        cfg = ForecastConfig(step=STEP, season=period * STEP)
        total = 3 * period + n
        k = np.arange(total)
        y = 40 + 10 * np.sin(2 * np.pi * k / period) + np.random.default_rng(1).normal(0, 1, total)
        t = _times(total)
        train = list(zip(t[: 3 * period], y[: 3 * period], strict=True))
        stream = [(t[i], float(y[i])) for i in range(3 * period, total)]
        f = Forecaster(cfg)
        started = time.perf_counter()
        f.fit(train)
        out[f"fit_ms_season_{period}"] = (time.perf_counter() - started) * 1e3
        with warnings.catch_warnings():  # the cheapest statsmodels refit: parameters fixed, not optimised
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            for _ in range(5):
                ExponentialSmoothing(
                    y[: 3 * period], seasonal="add", seasonal_periods=period, initialization_method="heuristic"
                ).fit(smoothing_level=0.01, smoothing_seasonal=0.01, optimized=False)
        out[f"statsmodels_refit_fixed_params_ms_season_{period}"] = (time.perf_counter() - started) / 5 * 1e3
        started = time.perf_counter()
        for ti, v in stream:
            f.update(ti, v)
        out[f"forecaster_update_us_season_{period}"] = (time.perf_counter() - started) / n * 1e6
        bank = ForecastBank(CollectorRegistry(), cfg)
        labels = {"__name__": "tars:http_p99", "service": "eval-api"}
        bank.fit(labels, train)
        started = time.perf_counter()
        for ti, v in stream:
            bank.update(labels, ti, v)
        out[f"bank_update_us_season_{period}"] = (time.perf_counter() - started) / n * 1e6
    out["memory_bytes_season_120"] = memory_bytes(None)
    return out


# -- report ----------------------------------------------------------------------------------------
def _n(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return format_number(value) if not isinstance(value, float) else f"{value:.{digits}g}"


def render(result: dict[str, Any]) -> str:
    lines = [
        "# tars-regression-monitor: online forecaster benchmark",
        "",
        f"Run {result['when']} on {result['machine']}; {result['seeds']} seeds per shape; "
        f"river {result['versions']['river']}, statsmodels {result['versions']['statsmodels']}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "5 s samples, a 10-minute compressed day (120 samples), 4 days of training (the pre-release window), 95 % "
        "bands. MASE: mean absolute error of the one-step forecast over that of the seasonal-naive forecast "
        "(lower is better). Detected: share of runs whose +20 % level shift, one day after the fit, was "
        "flagged upwards within 4 days; delay in samples (5 s each).",
        "",
        "## Models (same conformal band and Page-Hinkley detector around each)",
        "",
    ]
    rows = []
    mem = {r["model"]: r["bytes"] for r in result["models"] if r["shape"] == "memory"}
    for r in result["models"]:
        if r["shape"] == "memory":
            continue
        rows.append(
            [
                r["model"],
                r["shape"],
                f"{r['coverage'][0]:.3f} ± {r['coverage'][1]:.3f}",
                f"{r['mase']:.3f}",
                f"{r['us_per_update']:.1f}",
                f"{r['false_drifts_per_1000']:.2f}",
                f"{r['shift20_detected']:.2f}",
                _n(r["shift20_median_delay"]),
            ]
        )
    lines.append(
        markdown_table(
            [
                "model",
                "shape",
                "coverage (mean ± sd)",
                "MASE",
                "µs/update",
                "false drifts /1000",
                "+20 % detected",
                "median delay",
            ],
            rows,
        )
    )
    lines += [
        "",
        "Averages over the five shapes, and memory per forecaster (tracemalloc, after fit and 120 updates):",
        "",
    ]
    rows = []
    for name in MODELS:
        rs = [r for r in result["models"] if r["model"] == name and r["shape"] != "memory"]
        rows.append(
            [
                name,
                f"{statistics.fmean(r['coverage'][0] for r in rs):.3f}",
                f"{statistics.fmean(r['mase'] for r in rs):.3f}",
                f"{statistics.fmean(r['us_per_update'] for r in rs):.1f}",
                f"{statistics.fmean(r['false_drifts_per_1000'] for r in rs):.2f}",
                f"{statistics.fmean(r['shift20_detected'] for r in rs):.2f}",
                f"{mem[name] / 1024:.0f} KiB",
            ]
        )
    lines.append(
        markdown_table(
            ["model", "coverage", "MASE", "µs/update", "false drifts /1000", "+20 % detected", "memory"], rows
        )
    )
    lines += ["", "## Drift detectors on the shipped model's residuals", ""]
    rows = [
        [
            r["detector"],
            r["shape"],
            f"{r['false_drifts_per_1000']:.2f}",
            f"{r['x1.2_detected']:.2f}",
            _n(r["x1.2_median_delay"]),
            _n(r["x1.2_max_delay"]),
            f"{r['x1.5_detected']:.2f}",
            _n(r["x1.5_median_delay"]),
            _n(r["x1.5_max_delay"]),
        ]
        for r in result["detectors"]
    ]
    lines.append(
        markdown_table(
            [
                "detector",
                "shape",
                "false drifts /1000",
                "+20 % detected",
                "median",
                "max",
                "+50 % detected",
                "median",
                "max",
            ],
            rows,
        )
    )
    cal = result["calibration"]
    lines += [
        "",
        "## Calibration of the shipped forecaster (8 clean days after the fit)",
        "",
        f"Pooled coverage of the 95 % band: **{cal['pooled']:.4f}** over {cal['samples']:,} clean samples; "
        f"target 0.95 ± 0.02: **{'met' if cal['met'] else 'MISSED'}**.",
        "",
        markdown_table(
            ["shape", "mean", "sd across runs", "min", "max"],
            [
                [s, f"{v['mean']:.4f}", f"{v['sd']:.4f}", f"{v['min']:.4f}", f"{v['max']:.4f}"]
                for s, v in cal["per_shape"].items()
            ],
        ),
        "",
        "## Cost",
        "",
        markdown_table(["figure", "value"], [[k, f"{v:,.1f}"] for k, v in result["cost"].items()]),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="runs per shape and model")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--skip-models", action="store_true", help="only the shipped forecaster's parts (3, 4)")
    args = ap.parse_args()
    import river
    import statsmodels

    result: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "seeds": args.seeds,
        "versions": {"river": river.__version__, "statsmodels": statsmodels.__version__},
    }
    print("cost", file=sys.stderr, flush=True)
    result["cost"] = part_cost()
    print("calibration", file=sys.stderr, flush=True)
    result["calibration"] = part_calibration(args.seeds)
    if not args.skip_models:
        print("detectors", file=sys.stderr, flush=True)
        result["detectors"] = part_detectors(args.seeds)
        print("models", file=sys.stderr, flush=True)
        result["models"] = part_models(args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tars-regression-forecast_bench_results.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.skip_models:
        (args.out / "tars-regression-forecast_bench_results.md").write_text(render(result))
    print(json.dumps({"calibration": result["calibration"]["pooled"], "cost": result["cost"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
