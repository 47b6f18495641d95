"""Online forecasts of a metric, for judging an in-place change that has no concurrent baseline.

A fix applied in place (no canary) leaves nothing to compare against at the same time, so the baseline is
what the metric's own past predicts: a :class:`Forecaster` per series is trained on the pre-release window,
then updated sample by sample (from the Prometheus remote-write stream or a query), and each sample is
judged against the interval it was predicted to fall in before it arrived.

The pieces, chosen by measurement (``benchmarks/tars-regression-forecast_bench.py`` and its results files:
coverage, MAE, detection delay, µs per update, memory, on series with the sandbox's traffic shapes):

* **Model**: additive Holt-Winters (level + season, no trend), its smoothing parameters and initial states
  fitted once by statsmodels' ``ExponentialSmoothing`` on the training window, then run online here with
  those parameters (about 6 µs per sample with band and drift; statsmodels has no per-sample update, and
  even a refit with fixed parameters costs 1.6 to 4 ms, the optimising fit 13 to 29 ms). The fit is
  bounded: the level may not forget faster than ``memory`` seconds.
  An unbounded maximum-likelihood fit of a ``rate()[30s]`` series picks a level smoothing near 1 (the
  overlapping windows make "the last value" the best one-step forecast), and such a model absorbs a
  regression in one sample: the residuals never show it. No trend term: a learnt trend would forecast a
  memory leak's slope as normal. Measured on five sandbox shapes (20 seeds each), this detects the most
  +20 % level shifts (0.71 of runs; our own seasonal median 0.67, river's HoltWinters 0.57, the unbounded
  fit 0.36, river's SNARIMAX 0.19 at 4x the cost per update). river's ``HoltWinters`` also initialises
  additive seasons as ratios (``y / level``), which wrecks small-valued series such as error ratios.
* **Band**: split-conformal, from the one-step residuals of the last season of the training window (the
  model is fitted on the seasons before it, so these are out-of-sample), then a rolling window of recent
  residuals. Signed quantiles, so a skewed metric (a p99 latency) gets an asymmetric band. A residual more
  than ``exclude_factor`` times the band's half-width is not learnt (neither by the band nor, beyond that
  clip, by the level), so a regression does not widen the band that is judging it.
* **Drift**: Page-Hinkley (river), one detector per direction, on the residual in band units (a z-like
  score: 1.96 at the 95 % band's edge), so the flag says whether the metric went up or down. Against
  ADWIN on the same residuals: half the false drifts (0.48 against 0.94 per 1,000 clean samples) and faster
  on most shapes; ADWIN catches more faint shifts in noisy series, which are the judges' job anyway.
* **Anomaly score**: ``|residual| / half-width`` of the band on the residual's side: 1 at the band's edge.

:class:`ForecastBank` keeps one forecaster per series and exports expected value, band, anomaly score and
drift as Prometheus gauges on a given registry (the streaming daemon's ``/metrics``); the Grafana dashboard
``data/dashboards/tars-regression.json`` plots them.

Cheap to import (attrs only); statsmodels, river and prometheus-client are imported where they are used.
"""

from __future__ import annotations

import bisect
import itertools
import math
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from tars_core.errors import ConfigError, FixError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: every series the bank exports; the dashboard's queries use only these names
METRICS = {
    "actual": "tars_forecast_actual",
    "expected": "tars_forecast_expected",
    "lower": "tars_forecast_lower",
    "upper": "tars_forecast_upper",
    "anomaly_score": "tars_forecast_anomaly_score",
    "drift": "tars_forecast_drift",
    "drift_direction": "tars_forecast_drift_direction",
    "ready": "tars_forecast_ready",
    "coverage": "tars_forecast_band_coverage_ratio",
    "drifts": "tars_forecast_drifts_total",
}
LABELS = ("metric", "series")
_SCORE_CAP = 1e6  # a band of width 0 (a constant series) still gives a finite score
_Z_CAP = 6.0  # what one sample can add to the drift statistic


class InsufficientHistory(FixError):
    """Too few samples to fit a forecaster; the gate reads it as inconclusive, never as a pass."""


@attrs.frozen
class ForecastConfig:
    """How a :class:`Forecaster` models one series. Times are seconds.

    ``step``: the sample interval (the scrape or rule evaluation interval); samples are placed on this grid.
    ``season``: the seasonal period (None: level only). Fitting a season needs ``3 * season`` of history
    (two seasons to fit, one to calibrate); with less, :meth:`Forecaster.fit` falls back to level only, and a
    streamed forecaster whose ``train`` is shorter refits with the season once three seasons have arrived
    (a daemon can forecast after a short warm-up and still learn a long cycle).
    ``level``: the band's nominal coverage. ``memory``: the level may not forget faster than this (smoothing
    bounded by ``step / memory``); ``season_memory`` bounds the seasonal smoothing likewise, in seasons.
    ``train``: history a fit started by :meth:`Forecaster.update` waits for (default three seasons, or 30
    minutes without a season). ``calibration_window``: residuals the band is computed from.
    ``drift_threshold``/``drift_delta``: Page-Hinkley's lambda and delta, in band units (z-like); ``drift_hold``:
    how long the drift flag stays up after the last detection (a gauge scraped every 15 s still sees it).
    ``max_gap``: a longer silence starts the warm-up again (the old state no longer describes the series).
    ``refit_every``: refit on the buffered history (the latest ``train``, or three seasons when longer) this
    often (None: never).
    """

    step: float = 5.0
    season: float | None = 600.0
    level: float = 0.95
    memory: float = 300.0
    season_memory: float = 20.0
    train: float | None = None
    calibration_window: int = 720
    exclude_factor: float = 3.0
    drift_threshold: float = 25.0
    drift_delta: float = 0.5
    drift_min_samples: int = 30
    drift_hold: float = 300.0
    max_gap: float | None = None
    refit_every: float | None = None

    def __attrs_post_init__(self) -> None:
        if not self.step > 0:
            raise ConfigError(f"forecast step must be positive seconds, got {self.step}")
        if self.season is not None and self.season < 2 * self.step:
            raise ConfigError(f"forecast season {self.season}s is under two steps of {self.step}s; use a longer one")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"forecast band level must be in [0.5, 1), got {self.level}")
        if self.memory < self.step:
            raise ConfigError(f"forecast memory {self.memory}s is shorter than the step {self.step}s")
        if self.calibration_window < 20:
            raise ConfigError(f"calibration_window {self.calibration_window} is too small; use at least 20")

    @property
    def period(self) -> int:
        """Samples per season (0 without one)."""
        return 0 if self.season is None else round(self.season / self.step)

    @property
    def train_samples(self) -> int:
        if self.train is not None:
            return max(round(self.train / self.step), 40)
        return 3 * self.period if self.period else round(1800 / self.step)

    @property
    def history_samples(self) -> int:
        """Samples a streamed forecaster keeps for its fits: the warm-up, or three seasons when longer."""
        return max(self.train_samples, 3 * self.period)

    @property
    def gap_samples(self) -> int:
        if self.max_gap is not None:
            return max(round(self.max_gap / self.step), 1)
        return max(self.period, round(600 / self.step))


@attrs.frozen
class Prediction:
    """One sample judged against the forecast made before it arrived.

    ``expected``/``lower``/``upper`` are NaN while the forecaster has no fitted model (``ready`` false);
    ``anomaly_score`` is the residual over the band's half-width on its side (1 at the edge; NaN while not
    ready); ``drift`` stays true for ``drift_hold`` after the residuals' mean moved, ``direction`` +1 up,
    -1 down (0 without a drift).
    """

    at: float
    value: float
    expected: float
    lower: float
    upper: float
    anomaly_score: float
    drift: bool = False
    direction: int = 0
    ready: bool = True

    @property
    def inside(self) -> bool:
        return self.lower <= self.value <= self.upper

    @property
    def residual(self) -> float:
        return self.value - self.expected


class _Detector(Protocol):
    @property
    def drift_detected(self) -> bool: ...

    def update(self, x: float) -> Any: ...


class ForecastModel(Protocol):
    """A point forecaster the band and the drift detector wrap (the shipped one is Holt-Winters)."""

    def forecast(self) -> float: ...

    def learn(self, y: float) -> None: ...

    def skip(self, n: int) -> None: ...


#: ``(values on the step grid, samples per season or 0, level smoothing bound, seasonal bound) -> model``
ModelFit = Callable[[Sequence[float], int, float, float], ForecastModel]


class _Conformal:
    """Signed residual quantiles over a rolling window: the band is [expected + lo, expected + hi].

    Finite-sample split-conformal ranks (ceil((n + 1) * q)), so a small window errs towards a wider band.
    """

    def __init__(self, level: float, window: int) -> None:
        self.tail = (1 - level) / 2
        self.fifo: deque[float] = deque()
        self.sorted: list[float] = []
        self.window = window

    def __len__(self) -> int:
        return len(self.sorted)

    def add(self, r: float) -> None:
        self.fifo.append(r)
        bisect.insort(self.sorted, r)
        if len(self.fifo) > self.window:
            old = self.fifo.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]

    def bounds(self) -> tuple[float, float]:
        s, n = self.sorted, len(self.sorted)
        hi = s[min(math.ceil((n + 1) * (1 - self.tail)), n) - 1]
        lo = s[max(math.floor((n + 1) * self.tail), 1) - 1]
        return min(lo, 0.0), max(hi, 0.0)


@attrs.define
class _HoltWinters:
    """Additive Holt-Winters without trend (ETS A,N,A), the recursion statsmodels fits:

    ``l_t = a (y_t - s_{t-m}) + (1 - a) l_{t-1}``, ``s_t = g (y_t - l_{t-1}) + (1 - g) s_{t-m}``.
    """

    alpha: float
    gamma: float
    level: float
    season: list[float]  # s_{t-m} .. s_{t-1}, read at ``phase``
    phase: int = 0

    def forecast(self) -> float:
        return self.level + (self.season[self.phase] if self.season else 0.0)

    def learn(self, y: float) -> None:
        if not self.season:
            self.level = self.alpha * y + (1 - self.alpha) * self.level
            return
        s = self.season[self.phase]
        l0 = self.level
        self.level = self.alpha * (y - s) + (1 - self.alpha) * l0
        self.season[self.phase] = self.gamma * (y - l0) + (1 - self.gamma) * s
        self.phase = (self.phase + 1) % len(self.season)

    def skip(self, n: int) -> None:
        """``n`` missing samples: the forecast stands in for them, which leaves level and season as they were."""
        if self.season:
            self.phase = (self.phase + n) % len(self.season)

    @classmethod
    def fit(cls, y: Sequence[float], period: int, alpha_max: float, gamma_max: float) -> _HoltWinters:
        """statsmodels' maximum-likelihood fit with bounded smoothing, as the state after the last sample."""
        import numpy as np
        from statsmodels.tsa.holtwinters import ExponentialSmoothing  # type: ignore[import-untyped]

        data = np.asarray(y, dtype=float)
        bounds = {"smoothing_level": (0.0, alpha_max)}
        if period:
            bounds["smoothing_seasonal"] = (0.0, gamma_max)
        with warnings.catch_warnings():  # convergence chatter on flat or short series; the fit is still usable
            warnings.simplefilter("ignore")
            model = ExponentialSmoothing(
                data,
                trend=None,
                seasonal="add" if period else None,
                seasonal_periods=period or None,
                initialization_method="heuristic" if period else "estimated",
                bounds=bounds,
            )
            fitted = model.fit()
        params = fitted.params
        alpha = float(params["smoothing_level"])
        gamma = float(params["smoothing_seasonal"]) if period else 0.0
        level = float(fitted.level[-1])
        season = [float(s) for s in fitted.season[-period:]] if period else []
        if not all(math.isfinite(v) for v in (alpha, gamma, level, *season)):
            raise InsufficientHistory("the forecaster fit did not converge (NaN parameters); give it a longer window")
        return cls(alpha, gamma, level, season, 0)


class Forecaster:
    """One series' forecaster: :meth:`fit` on the pre-release window, then :meth:`update` per sample.

    Without a :meth:`fit`, :meth:`update` buffers a warm-up of ``config.train_samples`` and fits itself on it
    (``auto_fit``; a fit takes 13 to 29 ms for a 120- to 720-sample season, plus 2 to 4 s of imports the first
    time unless :func:`preload` ran, so an event loop that owns
    many series may pass ``auto_fit=False``, watch :attr:`fit_due` and run :meth:`refit` in a worker thread:
    :meth:`update` keeps going meanwhile, and the samples it took during the fit are replayed onto the new
    state when it is swapped in).
    """

    def __init__(
        self, config: ForecastConfig | None = None, *, auto_fit: bool = True, model: ModelFit | None = None
    ) -> None:
        import threading

        self.config = config or ForecastConfig()
        self.auto_fit = auto_fit
        self.fit_model: ModelFit = model or _HoltWinters.fit  # another model: the benchmark's candidates
        self.model: ForecastModel | None = None
        self.band = _Conformal(self.config.level, self.config.calibration_window)
        self.history: deque[tuple[float, float]] = deque(maxlen=self.config.history_samples)
        self.last_at: float | None = None  # the last sample's slot on the step grid
        self.fitted_at: float | None = None
        self.seasonal = False  # the fitted model has a season (a short warm-up fits the level only)
        self.samples = 0  # samples judged since the last fit
        self.inside = 0  # of which inside the band, outside drift periods
        self.counted = 0  # samples outside drift periods
        self.drifts = 0
        self.drift_until = -math.inf
        self.direction = 0
        self._up: _Detector | None = None
        self._down: _Detector | None = None
        self._z = NormalDist().inv_cdf(1 - (1 - self.config.level) / 2)
        self._lock = threading.Lock()  # update() on the event loop, refit() in a worker thread

    # -- training ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def fit_due(self) -> bool:
        """A fit is waiting: a warm-up is complete, three seasons arrived after a level-only fit, or
        ``refit_every`` has passed since the last fit."""
        c = self.config
        if self.model is None:
            return len(self.history) >= c.train_samples
        if c.period and not self.seasonal and len(self.history) >= 3 * c.period:
            return True
        return (
            c.refit_every is not None
            and self.fitted_at is not None
            and self.last_at is not None
            and self.last_at - self.fitted_at >= c.refit_every
        )

    def fit(self, samples: Iterable[tuple[float, float]]) -> None:
        """Train on ``(timestamp, value)`` pairs (the pre-release window, e.g. a range query; any order,
        gaps interpolated onto the step grid). Samples already streamed after the window's end are replayed
        onto the new state. Raises :class:`InsufficientHistory` when there are too few."""
        self._fit_points(list(samples))

    def refit(self) -> None:
        """Fit again on the buffered history (the warm-up, three seasons, or the latest for ``refit_every``)."""
        with self._lock:
            snapshot = list(self.history)
        self._fit_points(snapshot)

    def _grid(self, samples: Iterable[tuple[float, float]]) -> tuple[list[float], float]:
        """Values on the step grid ending at the newest sample (gaps interpolated), and that sample's slot."""
        step = self.config.step
        points = sorted((float(t), float(v)) for t, v in samples if math.isfinite(v))
        if len(points) < 2:
            raise InsufficientHistory(f"{len(points)} usable samples to fit a forecaster; give it a longer window")
        end = points[-1][0]
        slots: dict[int, float] = {}
        for t, v in points:
            slots[round((t - end) / step)] = v  # 0 for the newest, negative before; the newest of a slot wins
        keys = sorted(slots)
        values: list[float] = []
        for a, b in itertools.pairwise(keys):
            va, vb = slots[a], slots[b]
            values.extend(va + (vb - va) * (i / (b - a)) for i in range(b - a))
        values.append(slots[0])
        return values, end

    def _fit_points(self, points: list[tuple[float, float]]) -> None:
        values, end = self._grid(points)
        c = self.config
        n = len(values)
        period = c.period if c.period and n >= 3 * c.period else 0
        calibrate = period or min(n // 3, 240)  # seasonal: one full season, every phase gets a residual
        if calibrate < 20:
            season = f" ({3 * c.period} to fit the season)" if c.period else ""
            raise InsufficientHistory(
                f"{n} samples at {c.step:g}s steps are too few to fit a forecaster: need 60{season}; "
                "give it a longer pre-release window"
            )
        model = self.fit_model(values[: n - calibrate], period, min(1.0, c.step / c.memory), 1 / c.season_memory)
        band = _Conformal(c.level, c.calibration_window)
        residuals: list[float] = []
        for y in values[n - calibrate :]:
            r = y - model.forecast()
            residuals.append(r)
            band.add(r)
            model.learn(y)
        up, down = self._detectors()
        lo, hi = band.bounds()
        for r in residuals:  # prime the detectors' running mean with clean residuals
            z = math.copysign(_score(r, lo, hi), r) * self._z
            up.update(z)
            down.update(z)
        with self._lock:
            # what update() took after the window: the rest of a warm-up, or samples streamed during the fit
            pending = sorted(p for p in self.history if p[0] > end + c.step / 2)
            self.model, self.band, self._up, self._down = model, band, up, down
            self.fitted_at = end
            self.last_at = end
            self.seasonal = period > 0
            self.samples = self.inside = self.counted = self.drifts = self.direction = 0
            self.drift_until = -math.inf
            self.history.clear()
            grid = [(end - (n - 1 - i) * c.step, v) for i, v in enumerate(values)]
            self.history.extend(grid)
            for t, v in pending:
                self.history.append((t, v))
                self._step(t, v)

    def _detectors(self) -> tuple[_Detector, _Detector]:
        from river.drift import PageHinkley

        c = self.config
        kw: dict[str, Any] = {
            "min_instances": c.drift_min_samples,
            "delta": c.drift_delta,
            "threshold": c.drift_threshold,
            "alpha": 1.0,  # classic Page-Hinkley: the residuals' mean since the last detection, no forgetting
        }
        return PageHinkley(mode="up", **kw), PageHinkley(mode="down", **kw)

    # -- streaming --------------------------------------------------------------------------------
    def update(self, t: float, value: float) -> Prediction | None:
        """Judge the sample at ``t`` (seconds) against the forecast made before it, then learn it.

        Returns None for a sample that is not newer than the last one by at least half a step (a duplicate
        or an out-of-order push) or whose value is not finite (a 0/0 ratio); a not-``ready`` prediction
        (NaN expected and band) while the forecaster warms up.
        """
        if not math.isfinite(value):
            return None
        with self._lock:
            step = self.config.step
            if self.last_at is not None:
                ahead = round((t - self.last_at) / step)
                if ahead < 1:
                    return None
                if ahead - 1 > self.config.gap_samples:  # a long silence: the old state is a guess; warm up again
                    self._forget()
            self.history.append((t, value))
            if self.model is not None:
                prediction = self._step(t, value)
            else:
                self.last_at = t if self.last_at is None else self.last_at + round((t - self.last_at) / step) * step
                prediction = Prediction(t, value, math.nan, math.nan, math.nan, math.nan, False, 0, ready=False)
            due = self.auto_fit and self.fit_due
        if due:
            self.refit()
        return prediction

    def _step(self, t: float, value: float) -> Prediction:
        """Place a newer sample on the grid (missing slots forecast, not learnt) and judge it."""
        assert self.model is not None and self.last_at is not None
        ahead = max(round((t - self.last_at) / self.config.step), 1)
        if ahead > 1:
            self.model.skip(ahead - 1)
        self.last_at += ahead * self.config.step
        return self._judge(t, value)

    def _forget(self) -> None:
        self.model = None
        self.history.clear()
        self.last_at = self.fitted_at = None
        self.seasonal = False
        self.band = _Conformal(self.config.level, self.config.calibration_window)

    def _judge(self, t: float, value: float) -> Prediction:
        assert self.model is not None and self._up is not None and self._down is not None
        expected = self.model.forecast()
        lo, hi = self.band.bounds()
        r = value - expected
        score = _score(r, lo, hi)
        limit = self.config.exclude_factor
        if score <= limit:
            self.band.add(r)
            self.model.learn(value)
        else:  # an outlier or a regression: the band does not learn it, the level learns only the clip
            self.model.learn(expected + limit * (hi if r > 0 else lo))
        z = max(-_Z_CAP, min(_Z_CAP, math.copysign(score, r) * self._z))
        self._up.update(z)
        self._down.update(z)
        if self._up.drift_detected or self._down.drift_detected:
            self.drifts += 1
            self.direction = 1 if self._up.drift_detected else -1
            self.drift_until = t + self.config.drift_hold
        drift = t <= self.drift_until
        if not drift:
            self.direction = 0
            self.counted += 1
            self.inside += lo <= r <= hi
        self.samples += 1
        return Prediction(t, value, expected, expected + lo, expected + hi, score, drift, self.direction)

    @property
    def coverage(self) -> float:
        """Share of the samples since the fit, outside drift periods, that fell inside the band."""
        return self.inside / self.counted if self.counted else math.nan

    def describe(self) -> dict[str, Any]:
        """What a report shows about the model: parameters, band, coverage and drifts since the fit."""
        m = self.model
        lo, hi = self.band.bounds() if len(self.band) else (math.nan, math.nan)
        hw = m if isinstance(m, _HoltWinters) else None
        return {
            "ready": m is not None,
            "alpha": hw.alpha if hw else None,
            "gamma": hw.gamma if hw else None,
            "period": len(hw.season) if hw else None,
            "band": [lo, hi],
            "coverage": self.coverage,
            "samples": self.samples,
            "drifts": self.drifts,
        }


def preload() -> None:
    """Import statsmodels and river now (2-4 s each on a busy 2-core machine), so the first fit does not
    pay for it: a daemon calls this in a worker thread at start-up."""
    import river.drift  # noqa: F401
    import statsmodels.tsa.holtwinters  # type: ignore[import-untyped]  # noqa: F401


def _score(r: float, lo: float, hi: float) -> float:
    """The residual over the band's half-width on its side: 1 at the edge."""
    half = hi if r >= 0 else -lo
    if half <= 0:
        return 0.0 if r == 0 else _SCORE_CAP
    return min(abs(r) / half, _SCORE_CAP)


def series_key(labels: Mapping[str, str]) -> str:
    """The ``series`` label of a forecast: ``name{a=x,b=y}``, labels sorted, without quotes.

    No double quotes or backslashes, so Grafana can put it in a PromQL string through a variable (it
    regex-escapes a multi-value variable but never escapes ``"``): those characters in a label value
    become ``'`` and ``/``.
    """
    name = labels.get("__name__", "")
    rest = ",".join(f"{k}={_clean(v)}" for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}"


def _clean(value: str) -> str:
    return value.replace('"', "'").replace("\\", "/").replace("\n", " ")


class _SampleLike(Protocol):
    """What :meth:`ForecastBank.ingest` reads: :class:`tars_telemetry.live.Sample` fits."""

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def value(self) -> float: ...

    @property
    def at(self) -> float: ...

    @property
    def stale(self) -> bool: ...


class ForecastBank:
    """One :class:`Forecaster` per series, its predictions exported as gauges on ``registry``.

    ``config``: a :class:`ForecastConfig` for every series, or a callable ``labels -> ForecastConfig | None``
    (None: that series is not forecast, e.g. not a metric the monitor judges). Gauges carry the labels
    ``metric`` (the series' ``__name__``) and ``series`` (:func:`series_key`); see :data:`METRICS`.
    ``last`` and ``labels`` hold each series' latest judged sample and its labels, for a JSON view.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        config: ForecastConfig | Callable[[Mapping[str, str]], ForecastConfig | None] | None = None,
        *,
        auto_fit: bool = True,
    ) -> None:
        from prometheus_client import Counter, Gauge

        self.config = config or ForecastConfig()
        self.auto_fit = auto_fit
        self.forecasters: dict[str, Forecaster] = {}
        self.names: dict[str, str] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.last: dict[str, Prediction] = {}
        self.children: dict[str, dict[str, Any]] = {}
        g: dict[str, Any] = {}
        helps = {
            "actual": "Last sample of the forecast series",
            "expected": "One-step forecast of the series made before the sample arrived",
            "lower": "Lower edge of the forecast's prediction band",
            "upper": "Upper edge of the forecast's prediction band",
            "anomaly_score": "Residual over the band's half-width on its side (1 at the band's edge)",
            "drift": "1 while the residuals' mean has moved (Page-Hinkley), for drift_hold after the last detection",
            "drift_direction": "+1 the series drifted up, -1 down, 0 no drift",
            "ready": "1 once the forecaster has a fitted model (0 while it warms up)",
            "coverage": "Share of the samples since the fit, outside drifts, that fell inside the band",
        }
        for key, help_text in helps.items():
            g[key] = Gauge(METRICS[key], help_text, LABELS, registry=registry)
        g["drifts"] = Counter(
            METRICS["drifts"][: -len("_total")], "Drifts detected since the fit", LABELS, registry=registry
        )
        self.gauges = g

    def __len__(self) -> int:
        return len(self.forecasters)

    def __contains__(self, labels: Mapping[str, str]) -> bool:
        return series_key(labels) in self.forecasters

    def _config_for(self, labels: Mapping[str, str]) -> ForecastConfig | None:
        return self.config(labels) if callable(self.config) else self.config

    def forecaster(self, labels: Mapping[str, str]) -> Forecaster | None:
        """The series' forecaster, created on first sight (None if the config callable declines it)."""
        return self._forecaster(series_key(labels), labels)

    def _forecaster(self, key: str, labels: Mapping[str, str]) -> Forecaster | None:
        found = self.forecasters.get(key)
        if found is None:
            config = self._config_for(labels)
            if config is None:
                return None
            found = self.forecasters[key] = Forecaster(config, auto_fit=self.auto_fit)
            self.names[key] = labels.get("__name__", "")
            self.labels[key] = dict(labels)
        return found

    def fit(self, labels: Mapping[str, str], samples: Iterable[tuple[float, float]]) -> Forecaster | None:
        """Train a series on its pre-release window (``(timestamp, value)`` pairs, e.g. a range query)."""
        f = self.forecaster(labels)
        if f is not None:
            f.fit(samples)
            self._children(series_key(labels))["ready"].set(1)
        return f

    def update(self, labels: Mapping[str, str], t: float, value: float) -> Prediction | None:
        """Judge and learn one sample, and set the series' gauges. None: not forecast, or skipped."""
        key = series_key(labels)
        f = self._forecaster(key, labels)
        if f is None:
            return None
        drifts = f.drifts
        p = f.update(t, value)
        if p is None:
            return None
        self.last[key] = p
        g = self._children(key)
        g["actual"].set(p.value)
        g["ready"].set(1 if p.ready else 0)
        if p.ready:
            g["expected"].set(p.expected)
            g["lower"].set(p.lower)
            g["upper"].set(p.upper)
            g["anomaly_score"].set(p.anomaly_score)
            g["drift"].set(1 if p.drift else 0)
            g["drift_direction"].set(p.direction)
            if math.isfinite(f.coverage):
                g["coverage"].set(f.coverage)
            if f.drifts > drifts:
                g["drifts"].inc(f.drifts - drifts)
        return p

    def _children(self, key: str) -> dict[str, Any]:
        """The series' labelled gauges, looked up once (``labels()`` costs a lock and a dict lookup each)."""
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = {k: g.labels(self.names[key], key) for k, g in self.gauges.items()}
        return found

    def ingest(self, samples: Iterable[_SampleLike]) -> int:
        """Feed remote-write samples (:class:`tars_telemetry.live.Sample`); a stale marker removes the series.
        Returns how many samples were judged."""
        judged = 0
        for s in samples:
            if s.stale:
                self.remove(s.labels)
            elif self.update(s.labels, s.at, s.value) is not None:
                judged += 1
        return judged

    def remove(self, labels: Mapping[str, str]) -> None:
        """Forget a series and drop its gauges (it ended: a stale marker, a deleted target)."""
        key = series_key(labels)
        if self.forecasters.pop(key, None) is None:
            return
        name = self.names.pop(key)
        self.labels.pop(key, None)
        self.last.pop(key, None)
        self.children.pop(key, None)
        for gauge in self.gauges.values():
            try:
                gauge.remove(name, key)
            except KeyError:
                pass

    def due(self) -> list[str]:
        """Series whose fit is due (for ``auto_fit=False``: run :meth:`Forecaster.refit` in a worker thread)."""
        return [k for k, f in self.forecasters.items() if f.fit_due]
