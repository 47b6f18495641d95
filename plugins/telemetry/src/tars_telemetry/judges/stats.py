"""The statistics behind :func:`tars_telemetry.judges.judge`: one test per metric kind, fixed-sample and
anytime-valid, multiplicity corrections, and the minimum detectable effect of each.

Conventions, so every test reads the same way:

- ``bad`` is the direction that hurts (``increase``, ``decrease``, ``either``); one-sided tests look only
  that way, so an improvement never fails a release and its alpha is not spent on the other tail.
- Effects are relative: a ratio minus 1 for latency, throughput and rates (computed on the log scale,
  where a multiplicative change is a shift), a fraction of the baseline level per hour for slopes.
- ``margin`` is the relative change tolerated before a change is a regression (practical significance);
  the null hypothesis is "the change is at most the margin".
- The MDE is the smallest relative change in the bad direction that the test, at its level and with the
  data it has, detects with the requested power (default 80 %). A verdict that found nothing is only a
  pass if the MDE is no larger than what the user asked to be able to see.
- Sequential tests are e-processes (nonnegative supermartingales under the null): the running maximum of
  the e-value crossing 1/alpha rejects, however often it is looked at (Ville's inequality), which a
  fixed-sample p-value recomputed every interval does not allow.

Pure functions over numpy arrays; scipy is imported here, so this module is imported only when judging.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np
from scipy import optimize, stats  # type: ignore[import-untyped]
from scipy.special import log_ndtr, logsumexp, ndtri  # type: ignore[import-untyped]

# -- results -----------------------------------------------------------------------------------------------------------


@attrs.frozen
class TestResult:
    """What one test found. ``p_value`` is fixed-sample (or, in sequential mode, the anytime-valid
    ``1 / max e``); ``effect`` and ``ci`` are relative changes (see the module doc); ``mde`` is relative and
    positive (the size in the bad direction), ``inf`` when no amount of change could be shown."""

    test: str
    p_value: float
    effect: float
    ci: tuple[float, float]
    mde: float
    estimate: float = math.nan  # the natural-unit estimate (shift on the log scale, rate ratio, slope/s)
    e_value: float | None = None  # sequential: the running maximum of the e-process
    decided_at: int | None = None  # sequential: index of the interval where the e-process crossed
    settled: bool = False  # sequential: the verdict can no longer change (crossed, or effect ruled out)
    notes: tuple[str, ...] = ()
    extra: dict[str, object] = attrs.field(factory=dict)


# -- small helpers -----------------------------------------------------------------------------------------------------


def z(q: float) -> float:
    """The standard normal quantile."""
    return float(ndtri(q))


def lag1_autocorrelation(values: np.ndarray, fitted: int = 1) -> float:
    """Lag-1 autocorrelation, bias-corrected and clipped to [0, 0.95].

    The sample estimate from residuals is biased towards zero by about (1 + 3 rho)/n once a mean is
    removed, more once a trend is (``fitted`` = 2): on a 10-minute series of strongly autocorrelated
    memory samples the raw estimate halves the true inflation and a flat series "leaks" one time in six.
    Negative values are noise for our series, and near 1 the effective sample size means nothing."""
    n = values.size
    if n < 4:
        return 0.95 if fitted > 1 else 0.0
    d = values - values.mean()
    denom = float((d * d).sum())
    if denom == 0:
        return 0.0
    rho = float((d[1:] * d[:-1]).sum()) / denom
    rho += (1 + 3 * max(rho, 0.0)) / n if fitted <= 1 else (2 + 4 * max(rho, 0.0)) / n
    return min(max(rho, 0.0), 0.95)


def variance_inflation(values: np.ndarray) -> float:
    """(1 + rho) / (1 - rho) for AR(1)-like series: how much autocorrelation inflates a mean's variance.

    Per-interval metrics are autocorrelated (traffic has a daily and an hourly shape, a slow phase lasts
    several intervals); treating them as independent is how a before/after comparison fails an unchanged
    release. Applied to rank statistics too, as an effective sample size."""
    rho = lag1_autocorrelation(values)
    return (1 + rho) / (1 - rho)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: family-wise error control under any dependence."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate; valid under positive dependence)."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    out = np.empty(m)
    out[order] = adj
    return out


def e_benjamini_hochberg(e_values: Sequence[float] | np.ndarray, alpha: float) -> np.ndarray:
    """e-BH (Wang and Ramdas 2022): reject the k largest e-values, k the largest with e_(k) >= m/(k alpha).

    Controls the false discovery rate under any dependence, which p-BH on 1/e does not promise."""
    e = np.asarray(e_values, dtype=float)
    m = e.size
    reject = np.zeros(m, dtype=bool)
    if m == 0:
        return reject
    order = np.argsort(-e)
    ks = np.nonzero(e[order] >= m / (np.arange(1, m + 1) * alpha))[0]
    if ks.size:
        reject[order[: ks[-1] + 1]] = True
    return reject


def _sign(bad: str) -> float:
    return -1.0 if bad == "decrease" else 1.0


def _one_sided_p(zstat: float, bad: str) -> float:
    if bad == "either":
        return float(min(1.0, 2 * stats.norm.sf(abs(zstat))))
    return float(stats.norm.sf(_sign(bad) * zstat))


def _relative(log_change: float) -> float:
    return math.expm1(log_change)


def _mde_log(se: float, alpha: float, power: float, bad: str) -> float:
    """Detectable shift on the log (or natural) scale for an estimator with standard error ``se``."""
    a = alpha / 2 if bad == "either" else alpha
    return (z(1 - a) + z(power)) * se


def _mde_relative(log_shift: float, bad: str) -> float:
    """A log-scale detectable shift as a positive relative change in the bad direction."""
    if not math.isfinite(log_shift):
        return math.inf
    return -math.expm1(-log_shift) if bad == "decrease" else math.expm1(log_shift)


# -- location: latency, throughput, gauges -----------------------------------------------------------------------------


def can_log(*arrays: np.ndarray) -> bool:
    return all(a.size and bool(np.all(a > 0)) for a in arrays)


def _order_stat_ci(values: np.ndarray, k: int) -> tuple[float, float]:
    n = values.size
    k = min(max(k, 0), (n - 1) // 2)
    part = np.partition(values, (k, n - 1 - k))
    return float(part[k]), float(part[n - 1 - k])


def location_test(
    baseline: np.ndarray,
    canary: np.ndarray,
    bad: str,
    *,
    alpha: float,
    mde_alpha: float,
    power: float = 0.8,
    margin: float = 0.0,
    paired: bool = False,
    log_scale: bool = True,
    max_pairs: int = 1_000_000,
    rng: np.random.Generator | None = None,
) -> TestResult:
    """Rank test of a location shift with its Hodges-Lehmann estimate and interval.

    Unpaired: Mann-Whitney U (normal approximation, tie and continuity corrected). Paired (concurrent
    canary and baseline sampled at the same instants): Wilcoxon signed-rank on the per-interval
    differences, which removes the traffic shape both arms share and is far more sensitive. Both z
    statistics are divided by the square root of the autocorrelation variance inflation (of the
    differences when paired, of the baseline when not). On the log scale
    (positive data) the shift is a ratio. The interval is two-sided at 1 - 2 alpha (the one-sided test's
    dual; 98 % at alpha 0.01, Kayenta's level) and the MDE uses ``mde_alpha`` (alpha over the number of
    metrics, what a correction across metrics leaves the first rejection).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    tx = np.log if log_scale else (lambda a: a)
    b, c = tx(baseline), tx(canary)
    shift = _sign(bad) * math.log1p(margin) if log_scale else 0.0
    if not log_scale and margin:
        ref = float(np.median(baseline))
        shift = _sign(bad) * margin * abs(ref)
    zc = z(1 - alpha)
    notes: list[str] = []
    if paired:
        d = c - b
        dz = d - shift
        vif = variance_inflation(d)
        nz = dz[dz != 0]
        n = nz.size
        if n == 0:
            zstat = 0.0
        else:
            ranks = stats.rankdata(np.abs(nz))
            t_plus = float(ranks[nz > 0].sum())
            _, ties = np.unique(ranks, return_counts=True)
            var = n * (n + 1) * (2 * n + 1) / 24 - float((ties**3 - ties).sum()) / 48
            mean = n * (n + 1) / 4
            diff = t_plus - mean
            zstat = 0.0 if var <= 0 else (diff - math.copysign(0.5, diff) * (diff != 0)) / math.sqrt(var * vif)
        m = d.size
        if m * (m + 1) // 2 > max_pairs:
            d = rng.choice(d, size=int(math.sqrt(2 * max_pairs)), replace=False)
            m = d.size
            notes.append(f"Hodges-Lehmann on a random subset of {m} differences")
        i, j = np.triu_indices(m)
        walsh = (d[i] + d[j]) / 2
        estimate = float(np.median(walsh))
        sd_t = math.sqrt(m * (m + 1) * (2 * m + 1) / 24 * vif)
        k = math.floor(m * (m + 1) / 4 - zc * sd_t)
        lo, hi = _order_stat_ci(walsh, k)
        name = "wilcoxon signed-rank, paired by time (hodges-lehmann)"
        se = (hi - lo) / (2 * zc) if hi > lo else float(np.std(d, ddof=1) / math.sqrt(m)) if m > 1 else math.inf
    else:
        nb, nc = b.size, c.size
        # The baseline's autocorrelation stands for both arms (the same process under the null): the
        # canary's own would count the regression's shape (a step, a burst of slow samples) as noise.
        vif = variance_inflation(b)
        both = np.concatenate([b, c - shift])
        ranks = stats.rankdata(both)
        u = float(ranks[nb:].sum()) - nc * (nc + 1) / 2
        n = nb + nc
        _, ties = np.unique(ranks, return_counts=True)
        var = nb * nc / 12 * ((n + 1) - float((ties**3 - ties).sum()) / (n * (n - 1)))
        diff = u - nb * nc / 2
        zstat = 0.0 if var <= 0 else (diff - math.copysign(0.5, diff) * (diff != 0)) / math.sqrt(var * vif)
        bs, cs = b, c
        if nb * nc > max_pairs:
            keep = int(math.sqrt(max_pairs))
            bs = rng.choice(b, size=min(nb, keep), replace=False)
            cs = rng.choice(c, size=min(nc, keep), replace=False)
            notes.append(f"Hodges-Lehmann on random subsets of {bs.size} x {cs.size} samples")
        diffs = (cs[:, None] - bs[None, :]).ravel()
        estimate = float(np.median(diffs))
        mb, mc = bs.size, cs.size
        sd_u = math.sqrt(mb * mc * (mb + mc + 1) / 12 * vif)
        k = math.floor(mb * mc / 2 - zc * sd_u)
        lo, hi = _order_stat_ci(diffs, k)
        name = "mann-whitney u (hodges-lehmann)"
        se = (hi - lo) / (2 * zc) if hi > lo else 0.0
    if vif > 1.05:
        notes.append(f"autocorrelation: variance inflated x{vif:.2f}")
    p = _one_sided_p(zstat, bad)
    mde_shift = _mde_log(se, mde_alpha, power, bad)
    if log_scale:
        effect, ci, mde = _relative(estimate), (_relative(lo), _relative(hi)), _mde_relative(mde_shift, bad)
    else:
        ref = abs(float(np.median(baseline))) or abs(float(np.mean(baseline)))
        scale = 1 / ref if ref else math.nan
        effect, ci, mde = estimate * scale, (lo * scale, hi * scale), mde_shift * scale
    return TestResult(name, p, effect, ci, mde, estimate=estimate, notes=tuple(notes), extra={"z": zstat, "vif": vif})


def bootstrap_quantile_ratios(
    baseline: np.ndarray,
    canary: np.ndarray,
    quantiles: Sequence[float] = (0.5, 0.95, 0.99),
    *,
    resamples: int = 400,
    conf: float = 0.98,
    rng: np.random.Generator | None = None,
) -> dict[str, tuple[float, float, float]]:
    """Canary/baseline ratio of each quantile with a percentile-bootstrap interval: {"p95": (ratio, lo, hi)}.

    Shows a tail that moved when the median did not (a slow path taken by a few requests); reported beside
    the rank test, not part of its decision, so the alpha is not spent twice."""
    rng = rng if rng is not None else np.random.default_rng(0)
    q = np.asarray(quantiles)
    out: dict[str, tuple[float, float, float]] = {}
    if baseline.size < 2 or canary.size < 2:
        return out
    qb = np.quantile(baseline[rng.integers(0, baseline.size, (resamples, baseline.size))], q, axis=1)
    qc = np.quantile(canary[rng.integers(0, canary.size, (resamples, canary.size))], q, axis=1)
    point_b, point_c = np.quantile(baseline, q), np.quantile(canary, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = qc / qb
        point = point_c / point_b
    tail = (1 - conf) / 2
    for i, qq in enumerate(q):
        lo, hi = np.nanquantile(ratios[i], [tail, 1 - tail]) if np.isfinite(ratios[i]).any() else (math.nan,) * 2
        out[f"p{qq * 100:g}"] = (float(point[i]), float(lo), float(hi))
    return out


# -- counts and error rates --------------------------------------------------------------------------------------------


def _theta(ratio: float | np.ndarray, share: float | np.ndarray) -> np.ndarray:
    """P(an event is the canary's) when the canary's rate is ``ratio`` x the baseline's and it has
    ``share`` of the exposure."""
    r = np.asarray(ratio, dtype=float)
    s = np.asarray(share, dtype=float)
    return np.asarray(r * s / (r * s + 1 - s))


def _ratio_from_theta(theta: float, share: float) -> float:
    if theta >= 1:
        return math.inf
    if theta <= 0:
        return 0.0
    return theta / (1 - theta) * (1 - share) / share


def rate_ratio_test(
    base_events: float,
    canary_events: float,
    base_exposure: float,
    canary_exposure: float,
    bad: str,
    *,
    alpha: float,
    mde_alpha: float,
    power: float = 0.8,
    margin: float = 0.0,
) -> TestResult:
    """Exact conditional test of two Poisson rates (events per request, or per second).

    Given n events in all, the canary's count is Binomial(n, theta) with theta fixed by its exposure share
    and the rate ratio, so the test is exact for any n, including the sparse case Kayenta passes (baseline
    0 events, canary 2: p = 0.25 at equal exposure, so it cannot fail at alpha 0.01). Its MDE is exact too:
    the smallest ratio whose conditional power reaches ``power`` at ``mde_alpha``; ``inf`` when even a
    canary holding every event would not be significant (n < 7 at equal exposure and alpha 0.01). The
    interval is Clopper-Pearson on theta mapped to the ratio (two-sided 1 - 2 alpha).
    """
    xb, xc = round(base_events), round(canary_events)
    n = xb + xc
    share = canary_exposure / (canary_exposure + base_exposure)
    up = 1 + margin
    down = 1 - margin if margin < 1 else 0.0
    if n == 0:
        p = 1.0
    elif bad == "increase":
        p = float(stats.binom.sf(xc - 1, n, float(_theta(up, share))))
    elif bad == "decrease":
        p = float(stats.binom.cdf(xc, n, float(_theta(down, share))))
    else:
        p = min(
            1.0,
            2
            * min(
                float(stats.binom.sf(xc - 1, n, float(_theta(up, share)))),
                float(stats.binom.cdf(xc, n, float(_theta(down, share)))),
            ),
        )
    rate_b = xb / base_exposure if base_exposure else math.nan
    rate_c = xc / canary_exposure if canary_exposure else math.nan
    ratio = rate_c / rate_b if rate_b else (math.inf if rate_c else math.nan)
    if n:
        lo_t = float(stats.beta.ppf(alpha, xc, n - xc + 1)) if xc > 0 else 0.0
        hi_t = float(stats.beta.ppf(1 - alpha, xc + 1, n - xc)) if xc < n else 1.0
        ci = (_ratio_from_theta(lo_t, share) - 1, _ratio_from_theta(hi_t, share) - 1)
    else:
        ci = (-1.0, math.inf)
    mde = rate_mde(n, share, bad, mde_alpha, power)
    effect = ratio - 1 if math.isfinite(ratio) else ratio
    return TestResult(
        "conditional binomial (poisson rate ratio)",
        p,
        effect,
        ci,
        mde,
        estimate=ratio,
        extra={"events": (xb, xc), "exposure": (base_exposure, canary_exposure), "rates": (rate_b, rate_c)},
    )


def rate_mde(n: int, share: float, bad: str, alpha: float, power: float = 0.8) -> float:
    """Smallest relative rate change in the bad direction detected with ``power`` given n events in all."""
    if n <= 0 or not 0 < share < 1:
        return math.inf
    a = alpha / 2 if bad == "either" else alpha
    if bad == "decrease":
        # reject when the canary's count is at most k: the largest k with P(X <= k | share) <= a
        k = int(stats.binom.ppf(a, n, share))
        while k >= 0 and stats.binom.cdf(k, n, share) > a:
            k -= 1
        if k < 0:
            return math.inf
        th = optimize.brentq(lambda t: stats.binom.cdf(k, n, t) - power, 1e-12, share)
        return 1 - _ratio_from_theta(th, share)
    k = int(stats.binom.isf(a, n, share)) + 1  # smallest count with P(X >= k) <= a
    while k > 0 and stats.binom.sf(k - 2, n, share) <= a:
        k -= 1
    while k <= n and stats.binom.sf(k - 1, n, share) > a:
        k += 1
    if k > n:
        return math.inf
    if stats.binom.sf(k - 1, n, 1 - 1e-12) < power:
        return math.inf
    th = optimize.brentq(lambda t: stats.binom.sf(k - 1, n, t) - power, share, 1 - 1e-12)
    return _ratio_from_theta(th, share) - 1


def min_events_to_reject(share: float, alpha: float) -> int:
    """How many events, all of them the canary's, a conditional test needs to reject at ``alpha``."""
    if not 0 < share < 1:
        return 0
    return max(1, math.ceil(math.log(alpha) / math.log(share)))


# -- trends: memory and other slopes -----------------------------------------------------------------------------------


def _gls_slope(t: np.ndarray, y: np.ndarray, rho: float) -> tuple[float, float, float]:
    """Prais-Winsten regression of y on t under AR(1) noise with coefficient rho: (slope, se, df).

    Whitening (y_i - rho y_{i-1} on t_i - rho t_{i-1}, the first row scaled by sqrt(1 - rho^2)) leaves
    independent errors, so the usual standard error and n - 3 degrees of freedom apply (one spent on rho).
    The cruder alternative, OLS with an effective sample size, has to use n_eff - 2 degrees of freedom:
    with six effective samples in ten minutes its t quantiles alone made a flat series "inconclusive"."""
    n = t.size
    if n < 4 or float(np.ptp(t)) == 0:
        return math.nan, math.inf, 1.0
    scale = math.sqrt(1 - rho * rho)
    ones = np.ones(n)
    x0 = np.concatenate([[scale], ones[1:] - rho])
    x1 = np.concatenate([[scale * t[0]], t[1:] - rho * t[:-1]])
    yy = np.concatenate([[scale * y[0]], y[1:] - rho * y[:-1]])
    # the slope column made orthogonal to the intercept column: same model, a well-conditioned system
    x = np.column_stack([x0, x1 - x0 * float(x0 @ x1) / float(x0 @ x0)])
    xtx = x.T @ x
    try:
        inv = np.linalg.inv(xtx)
    except np.linalg.LinAlgError:
        return math.nan, math.inf, 1.0
    beta = inv @ (x.T @ yy)
    resid = yy - x @ beta
    df = max(n - 3, 1)
    s2 = float(resid @ resid) / df
    return float(beta[1]), math.sqrt(max(s2 * float(inv[1, 1]), 0.0)), float(df)


def _slope_pair(
    tb: np.ndarray,
    yb: np.ndarray,
    tc: np.ndarray,
    yc: np.ndarray,
    upper: float | None = None,
    rho: float | None = None,
) -> tuple[float, float, float, float, float, float]:
    """Both arms' slopes with standard errors and degrees of freedom under AR(1) noise:
    (slope_b, se_b, df_b, slope_c, se_c, df_c), by :func:`_gls_slope`.

    rho is the profile-likelihood estimate pooled over both arms (:func:`_ml_rho`), bias-corrected and
    then raised by ``upper`` standard errors (default :data:`_RHO_UPPER`). Why so careful: with a trend
    fitted, the residuals' plain lag-1 autocorrelation reads about 0.3 on 24 samples of an AR(0.8)
    series, and a flat series then "leaks" one time in six (the first benchmark); with the point
    estimate alone, an underestimate one time in twenty still made false alarms five times alpha.
    Benchmark A/A: 0 false alarms in 400 ten-minute runs at alpha/3, MDE 15 % of the level per hour.
    """
    if rho is None:
        upper = _RHO_UPPER if upper is None else upper
        rho = _ml_rho(tb, yb, tc, yc)
        rho = min(rho + upper * math.sqrt((1 - rho * rho) / max(tb.size + tc.size, 1)), 0.95)
    sb, seb, dfb = _gls_slope(tb, yb, rho)
    sc, sec, dfc = _gls_slope(tc, yc, rho)
    return sb, seb, dfb, sc, sec, dfc


_RHO_GRID = np.linspace(0.0, 0.95, 96)
_RHO_UPPER = 1.0  # standard errors added to the estimated rho: its uncertainty must widen, not narrow


def _ml_rho(tb: np.ndarray, yb: np.ndarray, tc: np.ndarray, yc: np.ndarray) -> float:
    """AR(1) coefficient of the noise around each arm's own line, by profile likelihood over a grid,
    pooled over both arms, plus its small-sample bias ((2 + 4 rho) / n with a trend fitted)."""
    loglik = np.zeros(_RHO_GRID.size)
    n_total = 0
    for t, y in ((tb, yb), (tc, yc)):
        n = t.size
        if n < 4:
            continue
        n_total += n
        tt = (t - t.mean()) / (float(np.ptp(t)) or 1.0)
        yy = y - y.mean()
        r = _RHO_GRID[:, None]
        scale = np.sqrt(1 - _RHO_GRID**2)[:, None]
        x0 = np.concatenate([scale, np.broadcast_to(1 - r, (r.size, n - 1))], axis=1)
        x1 = np.concatenate([scale * tt[0], tt[None, 1:] - r * tt[None, :-1]], axis=1)
        yw = np.concatenate([scale * yy[0], yy[None, 1:] - r * yy[None, :-1]], axis=1)
        # least squares on two columns per rho, in closed form
        a, b, c = (x0 * x0).sum(1), (x0 * x1).sum(1), (x1 * x1).sum(1)
        p, q = (x0 * yw).sum(1), (x1 * yw).sum(1)
        det = a * c - b * b
        b0, b1 = (c * p - b * q) / det, (a * q - b * p) / det
        ss = ((yw - b0[:, None] * x0 - b1[:, None] * x1) ** 2).sum(1)
        loglik += -n / 2 * np.log(np.maximum(ss, 1e-300) / n) + 0.5 * np.log(1 - _RHO_GRID**2)
    if n_total == 0:
        return 0.0
    rho = float(_RHO_GRID[int(np.argmax(loglik))])
    return min(rho + (2 + 4 * rho) / (n_total / 2), 0.95)


def slope_test(
    baseline: np.ndarray,
    canary: np.ndarray,
    base_times: np.ndarray,
    canary_times: np.ndarray,
    bad: str,
    *,
    alpha: float,
    mde_alpha: float,
    power: float = 0.8,
    margin: float = 0.0,
    per: float = 3600.0,
) -> TestResult:
    """Difference of least-squares slopes (canary - baseline), relative to the baseline level per ``per``
    seconds (a leak of 0.10 grows memory by 10 % of its level an hour).

    Each slope is a Prais-Winsten (AR(1) generalised least squares) fit with a rho estimated from both
    arms and widened by its uncertainty (:func:`_slope_pair`); degrees of freedom by Welch-Satterthwaite.
    ``margin`` is a tolerated slope in the same relative unit."""
    sb, seb, dfb, sc, sec, dfc = _slope_pair(base_times, baseline, canary_times, canary)
    level = abs(float(np.mean(baseline))) or abs(float(np.mean(canary))) or 1.0
    unit = per / level
    diff = (sc - sb) * unit
    se = math.hypot(seb, sec) * unit
    df = (se**4 / ((seb * unit) ** 4 / dfb + (sec * unit) ** 4 / dfc)) if se > 0 else 1.0
    shifted = diff - _sign(bad) * margin
    if se == 0 or not math.isfinite(se):
        p = 0.0 if (shifted * _sign(bad) > 0 and bad != "either") or (bad == "either" and shifted != 0) else 1.0
    elif bad == "either":
        p = float(min(1.0, 2 * stats.t.sf(abs(shifted) / se, df)))
    else:
        p = float(stats.t.sf(_sign(bad) * shifted / se, df))
    tq = float(stats.t.ppf(1 - alpha, df))
    a = mde_alpha / 2 if bad == "either" else mde_alpha
    mde = (float(stats.t.ppf(1 - a, df)) + float(stats.t.ppf(power, df))) * se
    return TestResult(
        "slope difference (AR(1) generalised least squares)",
        p,
        diff,
        (diff - tq * se, diff + tq * se),
        mde,
        estimate=sc - sb,
        extra={"slopes_per_s": (sb, sc), "level": level, "df": df},
    )


# -- sequential (anytime-valid) ----------------------------------------------------------------------------------------


def log_mixture_e(score: np.ndarray, info: np.ndarray, tau: float, bad: str) -> np.ndarray:
    """log e-value of the Gaussian mixture likelihood ratio for a drift theta in the bad direction.

    ``score`` = info x (estimate - null) and ``info`` = 1 / variance of the estimate, per look. The prior
    on theta is N(0, tau^2), folded onto the bad side for one-sided tests (a half-normal mixture, itself
    a test martingale under theta = 0 and a supermartingale for any theta on the good side), so
    ``exp(max)`` >= 1/alpha rejects with type I error at most alpha however many looks there are.
    Setting tau near the effect one cares about makes the test quickest for effects of that size.
    """
    v = info * tau * tau
    base = -0.5 * np.log1p(v) + (score * tau) ** 2 / (2 * (1 + v))
    if bad == "either":
        return np.asarray(base)
    s = _sign(bad) * score
    return np.asarray(math.log(2) + base + log_ndtr(s * tau / np.sqrt(1 + v)))


def mixture_half_width(info: float, tau: float, alpha: float) -> float:
    """Half-width of the anytime-valid confidence sequence from the two-sided mixture at ``info``."""
    if info <= 0 or not math.isfinite(info):
        return math.inf
    v = info * tau * tau
    return math.sqrt(2 * (1 + v) / (info * info * tau * tau) * (math.log(1 / alpha) + 0.5 * math.log1p(v)))


def mixture_mde(info: float, tau: float, alpha: float, power: float, bad: str) -> float:
    """Smallest drift (natural units) the one-sided mixture crosses 1/alpha for with ``power``: the drift
    theta whose score I theta + z_power sqrt(I) just reaches the crossing score."""
    if info <= 0 or not math.isfinite(info):
        return math.inf
    target = math.log(1 / alpha)
    side = "increase" if bad != "decrease" else "decrease"

    def gap(s: float) -> float:
        return float(log_mixture_e(np.array([_sign(side) * s]), np.array([info]), tau, side)[0]) - target

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2
        if hi > 1e12:
            return math.inf
    s_cross = float(optimize.brentq(gap, 0.0, hi))
    return (s_cross + z(power) * math.sqrt(info)) / info


def _first_crossing(path: np.ndarray, threshold: float) -> int | None:
    hits = np.nonzero(path >= threshold)[0]
    return int(hits[0]) if hits.size else None


def sequential_rate_test(
    base_events: np.ndarray,
    canary_events: np.ndarray,
    base_exposure: np.ndarray,
    canary_exposure: np.ndarray,
    bad: str,
    *,
    alpha: float,
    mde_alpha: float,
    power: float = 0.8,
    margin: float = 0.0,
    tau: float = math.log(1.25),
    grid: int = 32,
) -> TestResult:
    """Anytime-valid test of a rate ratio, interval by interval (Lindon et al., KDD 2022, in spirit).

    Each interval's events split between the arms as Binomial(n_i, theta_i(R)) with theta_i from that
    interval's exposure share, so traffic that shifts between arms does not bias it. The e-process is the
    likelihood ratio of R against the null R0 = 1 +- margin, mixed over log(R / R0) ~ half-normal(tau)
    on the bad side (``grid`` equal-probability points; a quarter of the weight on a wide scale),
    updated per interval; crossing 1/alpha rejects. A fixed mixture of test martingales is one, so the
    discretised prior costs no validity.
    """
    xb = np.rint(np.asarray(base_events, dtype=float))
    xc = np.rint(np.asarray(canary_events, dtype=float))
    eb = np.asarray(base_exposure, dtype=float)
    ec = np.asarray(canary_exposure, dtype=float)
    tiny = 1e-12
    share = np.clip(ec / np.maximum(ec + eb, tiny), tiny, 1 - tiny)
    r0 = 1 + margin if bad != "decrease" else max(1 - margin, tiny)
    # Half-normal quantile points at scale tau, and a quarter of the weight on a wide scale so that a
    # large change on few events (10 errors against none) is not lost on a prior tuned for small ones.
    unit = ndtri(0.5 + 0.5 * (np.arange(grid) + 0.5) / grid)
    wide = max(4 * tau, math.log(10))
    quant = np.concatenate([unit * tau, unit[::2] * wide])
    log_w = np.concatenate(
        [np.full(grid, math.log(0.75 / grid)), np.full(unit[::2].size, math.log(0.25 / unit[::2].size))]
    )
    if bad == "either":
        flip = np.arange(quant.size) % 2 == 1
        logs = np.where(flip, -quant, quant)
    else:
        logs = _sign(bad) * quant
    ratios = r0 * np.exp(logs)
    th0 = _theta(r0, share)  # (intervals,)
    th = _theta(ratios[:, None], share[None, :])  # (grid, intervals)
    step = xc[None, :] * np.log(th / th0[None, :]) + xb[None, :] * np.log((1 - th) / (1 - th0[None, :]))
    log_paths = np.cumsum(step, axis=1)
    log_e = logsumexp(log_paths + log_w[:, None], axis=0) if xb.size else np.zeros(0)
    threshold = math.log(1 / alpha)
    running = np.maximum.accumulate(log_e) if log_e.size else log_e
    e_max = float(np.exp(min(running[-1], 700))) if running.size else 1.0
    crossed = _first_crossing(log_e, threshold)
    tb, tc = float(xb.sum()), float(xc.sum())
    sb, sc = float(eb.sum()), float(ec.sum())
    rate_b, rate_c = (tb / sb if sb else math.nan), (tc / sc if sc else math.nan)
    ratio = rate_c / rate_b if rate_b else (math.inf if rate_c else math.nan)
    # Normal approximation on log R for the interval, the MDE and the "effect ruled out" check.
    info = 1 / (1 / (tb + 0.5) + 1 / (tc + 0.5))
    log_r = math.log((tc + 0.5) / max(sc, tiny)) - math.log((tb + 0.5) / max(sb, tiny))
    w = mixture_half_width(info, tau, alpha)
    mde_log = mixture_mde(info, tau, mde_alpha, power, bad)
    mde = _mde_relative(mde_log, bad)
    # With few events the normal approximation flatters: if every event being on the bad side would still
    # not cross 1/mde_alpha, no change can be shown yet.
    n_all = tb + tc
    agg = sc / (sc + sb) if sc + sb > 0 else 0.5
    th_all, th_null = _theta(ratios, agg), float(_theta(r0, agg))
    if bad == "decrease":
        best = n_all * np.log((1 - th_all) / (1 - th_null))
    else:
        best = n_all * np.log(th_all / th_null)
    if n_all == 0 or logsumexp(best + log_w) < math.log(1 / mde_alpha):
        mde = math.inf
    effect = ratio - 1 if math.isfinite(ratio) else ratio
    return TestResult(
        "sequential conditional binomial (mixture e-process)",
        min(1.0, 1 / e_max),
        effect,
        (math.expm1(log_r - w), math.expm1(log_r + w)),
        mde,
        estimate=ratio,
        e_value=e_max,
        decided_at=crossed,
        extra={"events": (tb, tc), "exposure": (sb, sc), "log_ratio_bound": (log_r - w, log_r + w)},
    )


def sequential_mean_test(
    baseline: np.ndarray,
    canary: np.ndarray,
    bad: str,
    *,
    alpha: float,
    mde_alpha: float,
    power: float = 0.8,
    margin: float = 0.0,
    tau: float = math.log(1.10),
    paired: bool = False,
    log_scale: bool = True,
    min_samples: int = 10,
) -> TestResult:
    """Anytime-valid test of a difference in means (on the log scale for positive data), per interval.

    Paired: the per-interval differences' running mean; unpaired: the two running means, the arms growing
    together in sample order. Variances are plugged in (a t-like correction inflates them while samples
    are few) and divided by the autocorrelation inflation; the mixture e-process starts at
    ``min_samples`` per arm. The plug-in makes validity asymptotic rather than exact, which the benchmark's
    A/A runs check (false alarms stay under alpha)."""
    tx = np.log if log_scale else (lambda a: a)
    b, c = tx(baseline), tx(canary)
    null = _sign(bad) * math.log1p(margin) if log_scale else _sign(bad) * margin * abs(float(np.median(baseline)))
    if paired:
        d = c - b
        n = np.arange(1, d.size + 1, dtype=float)
        cs = np.cumsum(d)
        mean = cs / n
        var = np.maximum((np.cumsum(d * d) - n * mean * mean) / np.maximum(n - 1, 1), 0.0)
        var = var * np.where(n > 3, (n - 1) / np.maximum(n - 3, 1), np.inf)
        vif = variance_inflation(d)
        info = n / np.maximum(var * vif, 1e-300)
        est = mean
        valid = n >= min_samples
    else:
        k = min(b.size, c.size)
        n = np.arange(1, k + 1, dtype=float)

        def running(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            s = np.cumsum(x[:k])
            m = s / n
            v = np.maximum((np.cumsum(x[:k] ** 2) - n * m * m) / np.maximum(n - 1, 1), 0.0)
            return m, v * np.where(n > 3, (n - 1) / np.maximum(n - 3, 1), np.inf)

        mb, vb = running(b)
        mc, vc = running(c)
        vif = variance_inflation(b)  # the baseline's, as in location_test
        info = 1 / np.maximum((vb / n + vc / n) * vif, 1e-300)
        est = mc - mb
        valid = n >= min_samples
    score = info * (est - null)
    log_e = np.where(valid, log_mixture_e(score, info, tau, bad), -np.inf)
    e_max = float(np.exp(min(float(np.max(log_e)), 700))) if log_e.size and np.isfinite(log_e).any() else 1.0
    crossed = _first_crossing(log_e, math.log(1 / alpha))
    last_info = float(info[-1]) if info.size else 0.0
    last_est = float(est[-1]) if est.size else math.nan
    w = mixture_half_width(last_info, tau, alpha) if info.size and valid[-1] else math.inf
    mde_shift = mixture_mde(last_info, tau, mde_alpha, power, bad) if info.size and valid[-1] else math.inf
    if log_scale:
        effect, ci, mde = (
            _relative(last_est),
            (_relative(last_est - w), _relative(last_est + w)),
            _mde_relative(mde_shift, bad),
        )
    else:
        ref = abs(float(np.median(baseline))) or 1.0
        effect, ci, mde = last_est / ref, ((last_est - w) / ref, (last_est + w) / ref), mde_shift / ref
    name = (
        "sequential mean difference, paired by time (mixture e-process)"
        if paired
        else ("sequential mean difference (mixture e-process)")
    )
    return TestResult(
        name,
        min(1.0, 1 / e_max),
        effect,
        ci,
        mde,
        estimate=last_est,
        e_value=e_max,
        decided_at=crossed,
        extra={"vif": vif, "bound": (last_est - w, last_est + w)},
    )


def sequential_slope_test(
    baseline: np.ndarray,
    canary: np.ndarray,
    base_times: np.ndarray,
    canary_times: np.ndarray,
    bad: str,
    *,
    alpha: float,
    mde_alpha: float,
    power: float = 0.8,
    margin: float = 0.0,
    tau: float = 0.10,
    per: float = 3600.0,
    min_samples: int = 10,
) -> TestResult:
    """Anytime-valid slope difference: the mixture e-process on the least-squares slope difference
    (relative to the baseline level per ``per`` seconds) at every look, with its autocorrelation-adjusted
    information, as anytime-valid linear models do (Lindon et al., NeurIPS 2022); asymptotic like the
    plug-in mean test. Autocorrelated samples carry one effective sample every few: the e-process looks
    once per effective sample ((1 + rho) / (1 - rho) samples apart from ``min_samples`` on, and at the
    latest sample), since looking at every
    strongly correlated sample adds chances to cross without adding information (A/A runs at rho 0.8
    crossed 1/alpha two to three times as often). O(n) looks of O(n) fits: fine for a bake's samples."""
    k = min(baseline.size, canary.size)
    level = abs(float(np.mean(baseline))) or abs(float(np.mean(canary))) or 1.0
    unit = per / level
    start = max(min_samples, 4)
    gap = 1
    rho = _ml_rho(base_times[:k], baseline[:k], canary_times[:k], canary[:k]) if k >= 4 else 0.0
    rho = min(rho + _RHO_UPPER * math.sqrt((1 - rho * rho) / max(2 * k, 1)), 0.95)
    if k >= start:
        gap = max(1, math.ceil((1 + rho) / (1 - rho)))
    scores, infos, ests = [], [], []
    for i in range(k):
        n = i + 1
        if n < start or ((n - start) % gap and n != k):  # the current sample is always a look
            scores.append(0.0)
            infos.append(0.0)
            ests.append(math.nan)
            continue
        sb, seb, dfb, sc, sec, dfc = _slope_pair(base_times[:n], baseline[:n], canary_times[:n], canary[:n], rho=rho)
        # With a handful of effective samples the studentised slope has t tails, far heavier than the
        # Gaussian the mixture assumes: map it to the normal quantile of the same tail probability.
        df = min(dfb, dfc)
        se = math.hypot(seb, sec) * unit
        est = (sc - sb) * unit
        info = 1 / se**2 if se > 0 and math.isfinite(se) else 0.0
        ests.append(est)
        infos.append(info)
        if info:
            t_stat = (est - _sign(bad) * margin) / se
            z_eq = float(ndtri(stats.t.cdf(t_stat, df))) if math.isfinite(t_stat) else t_stat
            scores.append(z_eq * math.sqrt(info))
        else:
            scores.append(0.0)
    info_a, score_a = np.asarray(infos), np.asarray(scores)
    log_e = np.where(info_a > 0, log_mixture_e(score_a, info_a, tau, bad), -np.inf)
    finite = np.isfinite(log_e)
    e_max = float(np.exp(min(float(log_e[finite].max()), 700))) if finite.any() else 1.0
    crossed = _first_crossing(log_e, math.log(1 / alpha))
    last_info = float(info_a[-1]) if info_a.size else 0.0
    last_est = float(ests[-1]) if ests else math.nan
    w = mixture_half_width(last_info, tau, alpha)
    mde = mixture_mde(last_info, tau, mde_alpha, power, bad)
    return TestResult(
        "sequential slope difference, AR(1) GLS (mixture e-process)",
        min(1.0, 1 / e_max),
        last_est,
        (last_est - w, last_est + w),
        mde,
        estimate=last_est / unit if math.isfinite(last_est) else math.nan,
        e_value=e_max,
        decided_at=crossed,
        extra={"level": level},
    )
