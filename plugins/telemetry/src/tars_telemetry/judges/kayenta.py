"""A Kayenta-compatible canary judge (NetflixACAJudge v1.0), written from its published behaviour.

Why have it at all: it is the anchor the issue asks us to beat, so the benchmark runs it side by side with
ours, and users migrating from Spinnaker can ask ``tars-regression judge --judge kayenta`` for the verdict
they know. It reproduces, per metric: NaN handling (``remove`` / ``replace`` by 0), optional IQR outlier
removal (factor 3, the reduced-sensitivity fences max(p99, Q3 + 3 IQR) / min(p1, Q1 - 3 IQR)), the
Mann-Whitney U test with the Hodges-Lehmann confidence interval found by root-finding on the normal
approximation with continuity and tie corrections (R's ``wilcox.test(conf.int=TRUE, exact=FALSE)``,
confLevel 0.98), the "tolerance" rule (the interval must clear 0.25 x |estimate|), the effect size
(meanRatio or CLES) against allowed and critical increase/decrease, the critical and mustHaveData flags,
and the labels Pass/High/Low/Nodata/NodataFailMetric/Error; then the weighted group score (share of Pass,
no-data groups count as 100, a critical failure or >= 50 % Nodata scores 0), pass 95 / marginal 75, and
the multi-interval rule (every earlier interval at least marginal, the last one at pass).

Its known blind spots are kept on purpose (they are what the benchmark measures): a control of all zeros
against a canary with two errors passes (Kayenta issue 426), Nodata is not a failure unless flagged, and
the statistics behind a label are not reported. Checked against vectors re-derived with R 4.2 in
``tests/data/kayenta``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
from scipy.special import ndtri  # type: ignore[import-untyped]
from scipy.stats import rankdata  # type: ignore[import-untyped]

from tars_core.errors import ConfigError

if TYPE_CHECKING:
    from tars_telemetry.judges import MetricInput, Result

LABELS = ("Pass", "High", "Low", "Nodata", "NodataFailMetric", "Error")
DIRECTIONS = ("increase", "decrease", "either")
_ROOT_TOL = 1e-4  # R's uniroot default (.Machine$double.eps^0.25 rounded), which Kayenta's solver copies
_EPS = 2.220446049250313e-16


# -- preprocessing -----------------------------------------------------------------------------------------------------


def handle_nans(values: Sequence[float], strategy: str = "remove") -> np.ndarray:
    """``remove`` drops NaNs; ``replace`` turns them into 0 (Kayenta's only replacement value)."""
    arr = np.asarray(values, dtype=float)
    if strategy == "replace":
        return np.asarray(np.where(np.isnan(arr), 0.0, arr))
    if strategy == "remove":
        return np.asarray(arr[~np.isnan(arr)])
    raise ConfigError(f"nan_strategy must be 'remove' or 'replace', got {strategy!r}")


def iqr_outliers(
    values: Sequence[float] | np.ndarray, factor: float = 3.0, reduce_sensitivity: bool = True
) -> np.ndarray:
    """A boolean mask of outliers by Tukey's fences with R-7 quantiles (numpy's default).

    ``reduce_sensitivity`` (what the judge uses) widens the fences to at least the 1st and 99th
    percentiles, so a long but smooth tail is never cut.
    """
    if factor <= 0:
        raise ConfigError(f"outlier factor must be greater than zero, got {factor}")
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return np.zeros(0, dtype=bool)
    p25, p75 = np.percentile(arr, [25, 75])
    low, high = p25 - factor * (p75 - p25), p75 + factor * (p75 - p25)
    if reduce_sensitivity:
        p01, p99 = np.percentile(arr, [1, 99])
        low, high = min(p01, low), max(p99, high)
    return np.asarray((arr > high) | (arr < low))


# -- effect sizes ------------------------------------------------------------------------------------------------------


def mean_ratio(control: np.ndarray, experiment: np.ndarray) -> float:
    """mean(experiment) / mean(control); NaN when either mean is 0 (then the effect check is skipped)."""
    cm, em = float(np.mean(control)), float(np.mean(experiment))
    return math.nan if cm == 0.0 or em == 0.0 else em / cm


def cles(control: np.ndarray, experiment: np.ndarray) -> float:
    """Common-language effect size (Vargha-Delaney A): the share of pairs where the experiment is higher."""
    m, n = len(experiment), len(control)
    ranks = rankdata(np.concatenate([experiment, control]))
    r1 = float(ranks[:m].sum())
    return (2 * r1 - m * (m + 1)) / (2 * n * m)


# -- Mann-Whitney with a Hodges-Lehmann interval -----------------------------------------------------------------------


def wilcoxon_diff(mu: float, quantile: float, x: np.ndarray, y: np.ndarray) -> float:
    """The standardised rank-sum of ``x - mu`` against ``y`` minus ``quantile``: decreasing in ``mu``, so its
    roots are the interval's ends (quantile = +-z) and the estimate (quantile = 0)."""
    nx, ny = len(x), len(y)
    both = np.concatenate([x - mu, y])
    both = np.where(np.isnan(both), np.inf, both)  # NaN ranks last, as commons-math's MAXIMAL strategy
    ranks = rankdata(both)
    dz = float(ranks[:nx].sum()) - nx * (nx + 1) / 2 - nx * ny / 2
    correction = math.copysign(0.5, dz) if dz != 0 else 0.0
    _, ties = np.unique(ranks, return_counts=True)
    n = nx + ny
    sigma = math.sqrt((nx * ny / 12) * ((n + 1) - float((ties**3 - ties).sum()) / (n * (n - 1))))
    if sigma == 0:
        raise ValueError("cannot compute confidence interval when all observations are tied")
    return (dz - correction) / sigma - quantile


def zeroin(ax: float, bx: float, fa: float, fb: float, f: Callable[[float], float], tol: float = _ROOT_TOL) -> float:
    """Brent's root finder (Forsythe, Malcolm and Moler's ``zeroin``), with R's tolerance.

    The rank statistic is a step function, so its "root" is wherever the bracketing stops: scipy's brentq
    at 1e-12 lands on the jump itself, R (and Kayenta) land within 1e-4 of it. Matching the reference to
    1e-6 needs the same iteration, which is why this is not ``scipy.optimize.brentq``.
    """
    a, b, c, fc = ax, bx, ax, fa
    if fa == 0:
        return a
    if fb == 0:
        return b
    for _ in range(1001):
        prev_step = b - a
        if abs(fc) < abs(fb):
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol_act = 2 * _EPS * abs(b) + tol / 2
        new_step = (c - b) / 2
        if abs(new_step) <= tol_act or fb == 0:
            return b
        if abs(prev_step) >= tol_act and abs(fa) > abs(fb):
            cb = c - b
            if a == c:  # secant
                t1 = fb / fa
                p, q = cb * t1, 1.0 - t1
            else:  # inverse quadratic interpolation
                q, t1, t2 = fa / fc, fb / fc, fb / fa
                p = t2 * (cb * q * (q - t1) - (b - a) * (t1 - 1.0))
                q = (q - 1.0) * (t1 - 1.0) * (t2 - 1.0)
            if p > 0:
                q = -q
            else:
                p = -p
            if p < (0.75 * cb * q - abs(tol_act * q) / 2) and p < abs(prev_step * q / 2):
                new_step = p / q
        if abs(new_step) < tol_act:
            new_step = tol_act if new_step > 0 else -tol_act
        a, fa = b, fb
        b += new_step
        fb = f(b)
        if (fb > 0 and fc > 0) or (fb < 0 and fc < 0):
            c, fc = a, fa
    return b


def mann_whitney_ci(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, conf_level: float = 0.95
) -> tuple[float, float, float]:
    """(lower, upper, estimate) of the location shift x - y, as R's ``wilcox.test(x, y, conf.int=TRUE,
    exact=FALSE, correct=TRUE)`` computes it. Raises ValueError when every observation is tied."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.size == 0 or ya.size == 0:
        raise ValueError("Mann-Whitney needs data in both samples")
    mu_min, mu_max = float(xa.min() - ya.max()), float(xa.max() - ya.min())
    z = float(ndtri((1 - conf_level) / 2))  # negative

    def root(zq: float) -> float:
        f_low, f_high = wilcoxon_diff(mu_min, zq, xa, ya), wilcoxon_diff(mu_max, zq, xa, ya)
        if f_low <= 0:
            return mu_min
        if f_high >= 0:
            return mu_max
        return zeroin(mu_min, mu_max, f_low, f_high, lambda mu: wilcoxon_diff(mu, zq, xa, ya))

    lower, upper = root(-z), root(z)
    f_low, f_high = wilcoxon_diff(mu_min, 0, xa, ya), wilcoxon_diff(mu_max, 0, xa, ya)
    estimate = zeroin(mu_min, mu_max, f_low, f_high, lambda mu: wilcoxon_diff(mu, 0, xa, ya))
    return lower, upper, estimate


# -- the metric classifier ---------------------------------------------------------------------------------------------


@attrs.frozen
class KayentaMetricConfig:
    """One metric's ``analysisConfigurations.canary`` section, with Kayenta's defaults.

    ``allowed`` and ``critical_effect`` are (decrease, increase) thresholds on the effect size: a ratio for
    ``meanRatio`` (default 1.0: any effect) or a probability for ``cles`` (default 0.5).
    """

    direction: str = attrs.field(default="either", validator=attrs.validators.in_(DIRECTIONS))
    nan_strategy: str = attrs.field(default="remove", validator=attrs.validators.in_(("remove", "replace")))
    outliers: str = attrs.field(default="keep", validator=attrs.validators.in_(("keep", "remove")))
    outlier_factor: float = 3.0
    critical: bool = False
    must_have_data: bool = False
    muted: bool = False
    effect_measure: str = attrs.field(default="meanRatio", validator=attrs.validators.in_(("meanRatio", "cles")))
    allowed: tuple[float, float] | None = None
    critical_effect: tuple[float, float] | None = None
    groups: tuple[str, ...] = ()

    def thresholds(self) -> tuple[tuple[float, float], tuple[float, float]]:
        default = 0.5 if self.effect_measure == "cles" else 1.0
        return self.allowed or (default, default), self.critical_effect or (default, default)


@attrs.frozen
class Classification:
    """A metric's label as Kayenta reports it, plus the statistics Kayenta computes but does not show."""

    label: str
    reason: str | None
    deviation: float  # mean ratio canary / baseline (Kayenta's "ratio"); NaN when a mean is 0
    critical: bool
    effect_size: float = math.nan
    estimate: float = math.nan  # Hodges-Lehmann shift canary - baseline
    lower: float = math.nan
    upper: float = math.nan


def _noise(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Kayenta breaks an all-tied comparison with Gaussian noise scaled to 1e-5 of the value."""
    return values + rng.normal(0.0, abs(float(values[0])) * 1e-5, values.size)


def classify(
    control: Sequence[float] | np.ndarray,
    experiment: Sequence[float] | np.ndarray,
    direction: str = "either",
    *,
    tolerance: float = 0.25,
    conf_level: float = 0.98,
    allowed: tuple[float, float] = (1.0, 1.0),
    critical_effect: tuple[float, float] = (1.0, 1.0),
    effect_measure: str = "meanRatio",
    nan_strategy: str = "remove",
    critical: bool = False,
    must_have_data: bool = False,
    name: str = "metric",
    rng: np.random.Generator | None = None,
) -> Classification:
    """Kayenta's ``MannWhitneyClassifier.classify`` on already-transformed samples.

    The judge calls it with tolerance 0.25 and confLevel 0.98; its test suite also uses 0.10 / 0.95, so
    both are parameters. ``allowed`` and ``critical_effect`` are (decrease, increase) thresholds.
    """
    ctrl, expt = np.asarray(control, dtype=float), np.asarray(experiment, dtype=float)
    if expt.size == 0 or ctrl.size == 0:
        if nan_strategy == "remove":
            reason = f"Missing data for {name}"
            if must_have_data and not critical:
                return Classification("NodataFailMetric", reason, 1.0, False)
            return Classification("Nodata", reason, 1.0, critical)
        return Classification("Pass", None, 1.0, False)
    if np.array_equal(np.sort(expt), np.sort(ctrl)):
        return Classification("Pass", "The canary and baseline data are identical", 1.0, False)
    if np.unique(np.concatenate([expt, ctrl])).size == 1:
        return Classification("Pass", None, 1.0, False)

    rng = rng if rng is not None else np.random.default_rng(0)
    if np.unique(expt).size == 1 and np.unique(ctrl).size == 1:
        expt, ctrl = _noise(expt, rng), _noise(ctrl, rng)
    lower, upper, estimate = mann_whitney_ci(expt, ctrl, conf_level)
    deviation = mean_ratio(ctrl, expt)
    effect = cles(ctrl, expt) if effect_measure == "cles" else deviation
    bound = tolerance * abs(estimate)
    high = direction in ("increase", "either") and lower > bound and (math.isnan(effect) or effect >= allowed[1])
    low = direction in ("decrease", "either") and upper < -bound and (math.isnan(effect) or effect <= allowed[0])
    stats = {"effect_size": effect, "estimate": estimate, "lower": lower, "upper": upper}
    if high:
        if critical and (math.isnan(effect) or effect >= critical_effect[1]):
            return Classification(
                "High", f"The metric {name} was classified as High (Critical)", deviation, True, **stats
            )
        return Classification("High", f"{name} was classified as High", deviation, False, **stats)
    if low:
        if critical and (math.isnan(effect) or effect <= critical_effect[0]):
            return Classification(
                "Low", f"The metric {name} was classified as Low (Critical)", deviation, True, **stats
            )
        return Classification("Low", f"{name} was classified as Low", deviation, False, **stats)
    return Classification("Pass", None, deviation, False, **stats)


def classify_metric(
    control: Sequence[float],
    experiment: Sequence[float],
    config: KayentaMetricConfig,
    *,
    name: str = "metric",
    rng: np.random.Generator | None = None,
) -> Classification:
    """What ``NetflixACAJudge.classifyMetric`` does: transform both sides, classify at 0.25 / 0.98, and
    label any failure of the statistics ``Error`` instead of raising."""
    ctrl = handle_nans(control, config.nan_strategy)
    expt = handle_nans(experiment, config.nan_strategy)
    if config.outliers == "remove":
        ctrl = ctrl[~iqr_outliers(ctrl, config.outlier_factor)]
        expt = expt[~iqr_outliers(expt, config.outlier_factor)]
    allowed, critical_effect = config.thresholds()
    try:
        return classify(
            ctrl,
            expt,
            config.direction,
            allowed=allowed,
            critical_effect=critical_effect,
            effect_measure=config.effect_measure,
            nan_strategy=config.nan_strategy,
            critical=config.critical,
            must_have_data=config.must_have_data,
            name=name,
            rng=rng,
        )
    except (ValueError, ArithmeticError):
        return Classification("Error", "Metric Classification Failed", math.nan, False)


# -- scoring -----------------------------------------------------------------------------------------------------------


@attrs.frozen
class Scored:
    """One metric's outcome as the scorer sees it."""

    name: str
    label: str
    groups: tuple[str, ...]
    critical: bool = False
    muted: bool = False
    reason: str | None = None


@attrs.frozen
class Score:
    score: float
    classification: str  # Pass / Marginal / Fail
    groups: Mapping[str, float]
    reason: str | None


NODATA_THRESHOLD = 50.0


def _round2(value: float) -> float:
    return float(Decimal(repr(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def score(
    results: Sequence[Scored],
    group_weights: Mapping[str, float] | None = None,
    pass_threshold: float = 95.0,
    marginal_threshold: float = 75.0,
) -> Score:
    """Kayenta's WeightedSumScorer and ThresholdScoreClassifier over the non-muted metrics.

    A group scores the share of Pass among Pass/High/Low/NodataFailMetric (Nodata and Error do not count);
    a group with none of those counts as 100 in the summary. Groups without a weight share what the
    weights leave of 100. A critical metric that is not Pass, or Nodata on half the metrics or more, makes
    the score 0.
    """
    weights = dict(group_weights or {})
    live = [r for r in results if not r.muted]
    by_group: dict[str, list[str]] = {}
    for r in live:
        for g in r.groups:
            by_group.setdefault(g, []).append(r.label)
    group_scores: dict[str, float] = {}
    no_data: set[str] = set()
    for g, labels in by_group.items():
        counted = sum(labels.count(k) for k in ("Pass", "High", "Low", "NodataFailMetric"))
        group_scores[g] = 0.0 if counted == 0 else labels.count("Pass") / counted * 100
        if counted == 0:
            no_data.add(g)
    reason = None
    critical = [r for r in live if r.critical and r.label != "Pass"]
    nodata = sum(1 for r in live if r.label == "Nodata")
    if critical:
        summary, reason = 0.0, f"Canary Failed: {critical[0].reason or critical[0].name + ' ' + critical[0].label}"
    elif live and nodata / len(live) * 100 >= NODATA_THRESHOLD:
        summary, reason = 0.0, f"Canary Failed: {NODATA_THRESHOLD:g}% or more metrics returned NODATA"
    else:
        unweighted = set(group_scores) - set(weights)
        share = (100 - sum(weights.values())) / len(unweighted) if unweighted else 0.0
        total = 0.0
        for g, s in group_scores.items():
            total += (100.0 if g in no_data else s) * weights.get(g, share) / 100
        summary = _round2(total)
    return Score(summary, classify_score(summary, pass_threshold, marginal_threshold), group_scores, reason)


def classify_score(value: float, pass_threshold: float = 95.0, marginal_threshold: float = 75.0) -> str:
    if value >= pass_threshold:
        return "Pass"
    return "Marginal" if value >= marginal_threshold else "Fail"


def multi_interval(
    scores: Sequence[float], pass_threshold: float = 95.0, marginal_threshold: float = 75.0
) -> tuple[str, int, str]:
    """Spinnaker's rule over a canary's intervals: (``Pass``/``Fail``, index decided at, reason).

    Every interval before the last must score at least marginal (below it, the canary fails at once);
    the last must score at least pass. An empty list is a failure (nothing was judged).
    """
    if not scores:
        return "Fail", -1, "no interval was judged"
    for i, s in enumerate(scores[:-1]):
        if s < marginal_threshold:
            return "Fail", i, f"interval {i + 1} scored {s:g} < marginal {marginal_threshold:g}"
    last = scores[-1]
    if last >= pass_threshold:
        return "Pass", len(scores) - 1, f"last interval scored {last:g} >= pass {pass_threshold:g}"
    return "Fail", len(scores) - 1, f"last interval scored {last:g} < pass {pass_threshold:g}"


# -- the whole judge over our metric inputs ----------------------------------------------------------------------------


@attrs.frozen
class KayentaConfig:
    """Canary config for :func:`judge`: per-metric settings (by name; else derived from the metric's
    ``bad`` direction), group weights (groups default to the metric kind) and the score thresholds."""

    metrics: Mapping[str, KayentaMetricConfig] = attrs.field(factory=dict)
    group_weights: Mapping[str, float] = attrs.field(factory=dict)
    pass_threshold: float = 95.0
    marginal_threshold: float = 75.0
    outliers: str = "keep"
    seed: int = 0


def judge(metrics: Sequence[MetricInput], config: KayentaConfig | None = None) -> Result:
    """Kayenta's verdict on our inputs, as a :class:`~tars_telemetry.judges.Result` so reports and the
    benchmark can show it beside ours. Pass at a score >= pass; anything less fails (a final Marginal
    fails a Spinnaker canary too). Per-metric rows carry the Hodges-Lehmann interval Kayenta computed."""
    from tars_telemetry.judges import MetricResult, Result, coerce_metrics

    cfg = config or KayentaConfig()
    rng = np.random.default_rng(cfg.seed)
    scored: list[Scored] = []
    rows: list[MetricResult] = []
    for m in coerce_metrics(metrics):
        mc = cfg.metrics.get(m.name) or KayentaMetricConfig(direction=m.bad, outliers=cfg.outliers)
        c = classify_metric(m.baseline, m.canary, mc, name=m.name, rng=rng)
        scored.append(Scored(m.name, c.label, mc.groups or (m.kind,), c.critical, mc.muted, c.reason))
        bad = c.label in ("High", "Low", "NodataFailMetric") or (c.critical and c.label != "Pass")
        ref = abs(float(np.nanmean(m.baseline))) if m.baseline and not all(map(math.isnan, m.baseline)) else 0.0
        rel = (c.lower / ref, c.upper / ref) if ref else (math.nan, math.nan)
        verdict = "fail" if bad else ("pass" if c.label == "Pass" else "inconclusive")
        rows.append(
            MetricResult(
                name=m.name,
                kind=m.kind,
                bad=m.bad,
                test="kayenta mann-whitney (hodges-lehmann, conf 0.98, tolerance 0.25)",
                label=c.label,
                verdict=verdict,
                n_baseline=len(m.baseline),
                n_canary=len(m.canary),
                estimate=c.estimate,
                effect=c.deviation - 1 if math.isfinite(c.deviation) else math.nan,
                ci=rel,
                reasons=(c.reason,) if c.reason else (),
            )
        )
    s = score(scored, cfg.group_weights, cfg.pass_threshold, cfg.marginal_threshold)
    verdict = "pass" if s.classification == "Pass" else "fail"
    reasons = [
        f"Kayenta score {s.score:g} ({s.classification}; pass {cfg.pass_threshold:g}, "
        f"marginal {cfg.marginal_threshold:g})"
    ]
    if s.reason:
        reasons.append(s.reason)
    reasons += [f"{r.name}: {r.label}" for r in rows if r.label != "Pass"]
    extra: dict[str, Any] = {"groups": dict(s.groups)}
    return Result(
        verdict=verdict, reasons=tuple(reasons), metrics=tuple(rows), judge="kayenta", score=s.score, extra=extra
    )
