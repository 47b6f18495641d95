"""Regression judges: is the canary (or the release, after) worse than the baseline (or before)?

The gate calls one function::

    from tars_telemetry.judges import JudgeConfig, MetricInput, judge

    result = judge(
        [
            MetricInput("api latency", "latency", baseline=[...], canary=[...]),           # bad: increase
            MetricInput("5xx", "errors", baseline=errs_b, canary=errs_c,
                        baseline_exposure=reqs_b, canary_exposure=reqs_c),                # events / requests
            MetricInput("trainer rss", "memory", baseline=rss_b, canary=rss_c,
                        baseline_times=t_b, canary_times=t_c),                            # slope per hour
        ],
        JudgeConfig(alpha=0.01, mode="sequential"),
    )
    result.verdict        # "pass" | "fail" | "inconclusive"
    result.reasons        # one line each, worst first; always states what could not be seen (the MDE)
    result.stop           # sequential mode: the verdict is final, the bake can end now
    result.as_dict()      # JSON for the ledger and report; result.markdown() for the report section

What each metric kind is tested with (``stats`` has the details):

- ``latency``, ``throughput``, ``gauge``: a rank test of a location shift with a Hodges-Lehmann estimate
  and interval (on the log scale when every sample is positive, so the effect is a ratio): Wilcoxon
  signed-rank on per-interval differences when both arms carry timestamps that line up (a concurrent
  canary; the shared traffic shape cancels out), Mann-Whitney U otherwise; z statistics are corrected for
  autocorrelation. Latency also gets bootstrap intervals on the p50/p95/p99 ratios (reported, not voted).
- ``errors``, ``counts``: samples are event counts per interval; exposures (requests per interval for
  error rates, else equal time per sample) make them rates. An exact conditional binomial test of the rate
  ratio: valid with zero or two events, where Kayenta passes a canary whose baseline had no errors.
- ``memory``: difference of slopes (a leak) by AR(1) generalised least squares, relative to the baseline
  level per hour; at least 30 samples a side (``min_slope_samples``).

Then Holm (default) or Benjamini-Hochberg across the metrics that were tested, and the verdict:

- ``fail``: some metric moved in its bad direction, significantly after the correction.
- ``inconclusive``: nothing failed, but some required metric had no data (never a pass), too few samples,
  too little traffic, or too little power: its MDE (the smallest change it would catch with 80 % power)
  is larger than what ``mde`` asks to be able to see. The reasons say which and by how much.
- ``pass``: every required metric was tested, none failed, and each could have seen the requested change.

``mode="sequential"`` replaces each test by an e-process (anytime-valid: it may be evaluated at every
interval and the release stopped at the first crossing of 1/alpha without inflating false alarms) - the
conditional binomial for counts, a Gaussian mixture on the (paired) mean of log values for latency,
throughput and gauges, and on the slope difference for memory. Call it again with all samples so far at
each interval; ``Result.stop`` says when the answer can no longer change (a metric failed, or every
metric's anytime-valid interval already rules out the requested change). Until then a ``pass`` is
provisional: keep calling until the bake ends and take the last verdict.

Kayenta's behaviour is there too, for comparison and migration: :func:`judge_kayenta` gives its verdict
on the same inputs (``Result.score`` is its weighted group score), and over repeated intervals
``kayenta.multi_interval([score, ...])`` applies Spinnaker's rule (earlier intervals at least marginal 75,
the last at pass 95). Its blind spots (no data passes, two errors against none pass, autocorrelated
series fail a third of clean runs: benchmarks/tars-regression-monitor_bench_results.md) are why it is
not the default.

This module imports only attrs and the core's errors; numpy and scipy load when :func:`judge` runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from tars_core.errors import ConfigError

KINDS = ("latency", "errors", "throughput", "memory", "counts", "gauge")
DIRECTIONS = ("increase", "decrease", "either")
VERDICTS = ("pass", "fail", "inconclusive")
#: the direction that hurts, when a metric does not say
DEFAULT_BAD = {
    "latency": "increase",
    "errors": "increase",
    "counts": "increase",
    "memory": "increase",
    "throughput": "decrease",
    "gauge": "either",
}
#: the change each kind must be able to see for a pass (relative; memory: of its level per hour).
#: Error rates and memory get coarser defaults because that is what ten minutes of sandbox-scale data
#: can resolve with a valid test (benchmarks/tars-regression-monitor_bench_results.md): a few hundred
#: errors cannot show a 10 % change, and ten minutes of autocorrelated RSS samples (10 s apart, AR 0.8)
#: resolve about 15 % of the level per hour (TARS-1005's v1.0.0 leak is more than 100 % an hour). A stricter
#: requirement is a config away; the verdict then says "inconclusive" until the data can support it.
DEFAULT_MDE = {
    "latency": 0.10,
    "throughput": 0.10,
    "gauge": 0.10,
    "memory": 0.25,
    "errors": 0.50,
    "counts": 0.50,
}
#: labels: Kayenta's (Pass, High, Low, Nodata, NodataFailMetric, Error) and what ours adds
LABELS = ("Pass", "High", "Low", "Nodata", "NodataFailMetric", "Error", "FewSamples", "LowPower")


def _floats(value: Iterable[float] | None) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if value is not None else ()


def _opt_floats(value: Iterable[float] | None) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def _check_kind(_: Any, __: Any, value: str) -> None:
    if value not in KINDS:
        raise ConfigError(f"unknown metric kind {value!r}: use one of {', '.join(KINDS)}")


def _default_bad(self: MetricInput) -> str:
    return DEFAULT_BAD.get(self.kind, "either")


@attrs.frozen
class MetricInput:
    """One metric to judge: its samples on each side and which way is bad.

    ``baseline`` and ``canary`` are per-interval values (latency seconds, counts per interval, bytes...);
    NaN marks a missing sample and is dropped. ``baseline_times``/``canary_times`` (unix seconds, same
    lengths) pair concurrent samples and give slopes their time axis (without them, memory samples are
    taken as 1 s apart). ``*_exposure`` (errors, counts): the requests (or seconds) behind each count; absent
    means equal exposure per sample. ``mde``/``margin`` override the config for this metric; a metric
    that is not ``required`` may lack data without making the verdict inconclusive.
    """

    name: str
    kind: str = attrs.field(validator=_check_kind)
    baseline: tuple[float, ...] = attrs.field(converter=_floats)
    canary: tuple[float, ...] = attrs.field(converter=_floats)
    bad: str = attrs.field(default=attrs.Factory(_default_bad, takes_self=True))
    baseline_times: tuple[float, ...] | None = attrs.field(default=None, converter=_opt_floats)
    canary_times: tuple[float, ...] | None = attrs.field(default=None, converter=_opt_floats)
    baseline_exposure: tuple[float, ...] | None = attrs.field(default=None, converter=_opt_floats)
    canary_exposure: tuple[float, ...] | None = attrs.field(default=None, converter=_opt_floats)
    mde: float | None = None
    margin: float | None = None
    required: bool = True

    def __attrs_post_init__(self) -> None:
        if self.bad not in DIRECTIONS:
            raise ConfigError(f"metric {self.name!r}: bad direction {self.bad!r} is not one of {', '.join(DIRECTIONS)}")
        for side in ("baseline", "canary"):
            values = getattr(self, side)
            for extra in ("times", "exposure"):
                other = getattr(self, f"{side}_{extra}")
                if other is not None and len(other) != len(values):
                    raise ConfigError(
                        f"metric {self.name!r}: {side}_{extra} has {len(other)} values for {len(values)} samples"
                    )
            exposure = getattr(self, f"{side}_exposure")
            if exposure is not None and any(e < 0 or math.isnan(e) for e in exposure):
                raise ConfigError(f"metric {self.name!r}: {side}_exposure must be non-negative numbers")
        if self.mde is not None and not self.mde > 0:
            raise ConfigError(f"metric {self.name!r}: mde must be positive, got {self.mde}")


def coerce_metrics(metrics: Iterable[MetricInput | Sequence[Any] | Mapping[str, Any]]) -> list[MetricInput]:
    """Accept MetricInput objects, ``(name, kind, baseline, canary[, bad[, baseline_times, canary_times]])``
    tuples, or dicts of MetricInput's fields."""
    out: list[MetricInput] = []
    for m in metrics:
        if isinstance(m, MetricInput):
            out.append(m)
        elif isinstance(m, Mapping):
            out.append(MetricInput(**m))
        else:
            t = tuple(m)
            if len(t) < 4:
                raise ConfigError(f"a metric needs (name, kind, baseline, canary), got {len(t)} fields")
            fields = ("name", "kind", "baseline", "canary", "bad", "baseline_times", "canary_times")
            out.append(MetricInput(**dict(zip(fields, t, strict=False))))
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"metric names must be unique: {', '.join(dup)} appear more than once")
    return out


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 < value < 1:
        raise ConfigError(f"{attribute.name} must be between 0 and 1, got {value}")


@attrs.frozen
class JudgeConfig:
    """How to judge. Defaults are the release gate's: alpha 0.01 with Holm across metrics.

    ``mde``: per-kind changes a pass must be able to see (merged over :data:`DEFAULT_MDE`); ``margin``:
    relative change tolerated before it counts as a regression (0: any significant change in the bad
    direction fails); ``min_samples``: per arm, for location tests; ``min_slope_samples``: per arm for
    slopes (fewer cannot tell a trend from autocorrelated noise: 24 samples of a flat AR(0.8) series
    still "leak" at four times alpha); ``paired``: ``auto`` pairs
    concurrent samples by timestamp, ``never`` does not; ``bootstrap``: resamples for latency quantiles;
    ``tau``: sequential mixtures' scale per kind (default: that kind's MDE, where they are quickest);
    ``per``: the time unit of slopes, seconds.
    """

    alpha: float = attrs.field(default=0.01, validator=_positive)
    mode: str = attrs.field(default="fixed", validator=attrs.validators.in_(("fixed", "sequential")))
    correction: str = attrs.field(default="holm", validator=attrs.validators.in_(("holm", "bh", "none")))
    mde: Mapping[str, float] = attrs.field(factory=dict)
    power: float = attrs.field(default=0.8, validator=_positive)
    margin: float = 0.0
    min_samples: int = 5
    min_slope_samples: int = 30
    paired: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", "never")))
    bootstrap: int = 400
    tau: Mapping[str, float] = attrs.field(factory=dict)
    per: float = 3600.0
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        unknown = sorted(set(self.mde) - set(KINDS)) + sorted(set(self.tau) - set(KINDS))
        if unknown:
            raise ConfigError(f"unknown metric kind {unknown[0]!r} in the judge config: use one of {', '.join(KINDS)}")

    def mde_for(self, m: MetricInput) -> float:
        return m.mde if m.mde is not None else float({**DEFAULT_MDE, **self.mde}[m.kind])


@attrs.frozen
class MetricResult:
    """One metric's judgement with the statistics behind it (Kayenta hides them: its issue 521).

    ``effect`` and ``ci`` are relative changes canary vs baseline (+0.12 = 12 % higher; memory: change of
    slope as a fraction of the baseline level per hour); ``mde`` is the smallest change in the bad
    direction this test could catch with the configured power (``inf``: none). ``p_value`` is the raw
    one-sided p-value (sequential: the anytime-valid 1/e), ``p_adjusted`` after the correction across
    metrics; ``e_value`` and ``decided_at`` (sample index of the crossing) are set in sequential mode.
    """

    name: str
    kind: str
    bad: str
    test: str
    label: str
    verdict: str
    n_baseline: int = 0
    n_canary: int = 0
    p_value: float | None = None
    p_adjusted: float | None = None
    e_value: float | None = None
    effect: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    mde: float | None = None
    mde_requested: float | None = None
    estimate: float = math.nan
    decided_at: int | None = None
    settled: bool = False
    required: bool = True
    quantiles: Mapping[str, tuple[float, float, float]] = attrs.field(factory=dict)
    reasons: tuple[str, ...] = ()
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = _jsonable(attrs.asdict(self, recurse=False))
        return doc


@attrs.frozen
class Result:
    """The overall judgement: ``verdict`` with ``reasons`` (worst first), per-metric rows, ``score`` (the
    share of required metrics that passed, 0-100, Kayenta-like), ``stop`` (sequential: final already).
    Maps onto the core's ``Judgement(verdict, reasons, evidence=as_dict(), score)``."""

    verdict: str
    reasons: tuple[str, ...]
    metrics: tuple[MetricResult, ...]
    judge: str = "tars"
    mode: str = "fixed"
    alpha: float = 0.01
    correction: str = "holm"
    score: float | None = None
    stop: bool = False
    cpu_seconds: float = 0.0
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    def metric(self, name: str) -> MetricResult:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = _jsonable(attrs.asdict(self, recurse=False, filter=lambda a, _: a.name != "metrics"))
        doc["metrics"] = [m.as_dict() for m in self.metrics]
        return doc

    def markdown(self) -> str:
        """The report section body: the verdict, its reasons and one row per metric."""
        from tars_core.report import markdown_table

        lines = [f"**{self.verdict}** ({self.judge} judge, {self.mode}, alpha {self.alpha:g}, {self.correction})", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines += ["", markdown_table(TABLE_HEADERS, table_rows(self))]
        return "\n".join(lines)


TABLE_HEADERS = ("metric", "kind", "verdict", "label", "effect", "CI", "MDE", "p / e", "n", "test")


def fmt_pct(value: float | None, signed: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(value) >= 100:
        return (">+" if value > 0 else "<-") + "9999%"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"


def table_rows(result: Result) -> list[tuple[str, ...]]:
    """One row per metric for text and Markdown tables (the CLI and :meth:`Result.markdown`)."""
    rows: list[tuple[str, ...]] = []
    for m in result.metrics:
        ci = "n/a" if any(math.isnan(v) for v in m.ci) else f"[{fmt_pct(m.ci[0])}, {fmt_pct(m.ci[1])}]"
        pe = "n/a"
        if m.e_value is not None:
            pe = f"e={m.e_value:.3g}"
        elif m.p_value is not None:
            pe = f"p={m.p_value:.3g}" + (f" (adj {m.p_adjusted:.3g})" if m.p_adjusted is not None else "")
        mde = fmt_pct(m.mde, signed=False) if m.mde is not None else "n/a"
        rows.append(
            (m.name, m.kind, m.verdict, m.label, fmt_pct(m.effect), ci, mde, pe, f"{m.n_baseline}/{m.n_canary}", m.test)
        )
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value


# -- the judge ---------------------------------------------------------------------------------------------------------


def judge(
    metrics: Iterable[MetricInput | Sequence[Any] | Mapping[str, Any]], config: JudgeConfig | None = None
) -> Result:
    """Judge every metric and combine them into one verdict (see the module documentation).

    Never raises for what the data are (no data, constant series, a statistic that fails are each a
    labelled row and an inconclusive verdict); raises :class:`tars_core.errors.ConfigError` for what the
    caller got wrong (unknown kind, mismatched lengths, duplicate names).
    """
    import numpy as np

    cfg = config or JudgeConfig()
    started = time.process_time()
    items = coerce_metrics(metrics)
    testable = sum(1 for m in items if _has_data(m))
    mde_alpha = cfg.alpha / max(testable, 1) if cfg.correction != "none" else cfg.alpha
    rng = np.random.default_rng(cfg.seed)
    with np.errstate(all="ignore"):
        rows = [_judge_one(m, cfg, mde_alpha, rng) for m in items]
    result = _combine(rows, cfg)
    return attrs.evolve(result, cpu_seconds=time.process_time() - started)


# -- one metric, then all of them --------------------------------------------------------------------------------------


def _clean(values: Sequence[float], *others: Sequence[float] | None) -> list[Any]:
    """Drop NaN samples (and their timestamps/exposures); numpy arrays out."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    keep = ~np.isnan(v)
    return [v[keep]] + [None if o is None else np.asarray(o, dtype=float)[keep] for o in others]


def _has_data(m: MetricInput) -> bool:
    return any(not math.isnan(v) for v in m.baseline) and any(not math.isnan(v) for v in m.canary)


def _aligned(tb: Any, tc: Any) -> bool:
    """Concurrent samples: same count and each pair within half the median sampling step."""
    import numpy as np

    if tb is None or tc is None or tb.size != tc.size or tb.size < 2:
        return False
    step = float(np.median(np.diff(np.sort(tb)))) or 1.0
    return bool(np.all(np.abs(np.sort(tb) - np.sort(tc)) <= step / 2))


def _row(m: MetricInput, label: str, reasons: Sequence[str], **kw: Any) -> MetricResult:
    verdict = {"Pass": "pass", "High": "fail", "Low": "fail"}.get(label, "inconclusive")
    return MetricResult(
        name=m.name,
        kind=m.kind,
        bad=m.bad,
        label=label,
        verdict=verdict,
        required=m.required,
        reasons=tuple(reasons),
        **kw,
    )


def _judge_one(m: MetricInput, cfg: JudgeConfig, mde_alpha: float, rng: Any) -> MetricResult:
    """The test for this kind, before the correction across metrics (labels are provisional)."""
    import numpy as np

    from tars_telemetry.judges import stats

    sequential = cfg.mode == "sequential"
    b, tb, eb = _clean(m.baseline, m.baseline_times, m.baseline_exposure)
    c, tc, ec = _clean(m.canary, m.canary_times, m.canary_exposure)
    mde_req = cfg.mde_for(m)
    margin = m.margin if m.margin is not None else cfg.margin
    common = {"n_baseline": int(b.size), "n_canary": int(c.size), "mde_requested": mde_req}
    counts = m.kind in ("errors", "counts")
    test_name = {
        True: "conditional binomial (poisson rate ratio)",
        False: "slope difference (AR(1) GLS)" if m.kind == "memory" else "rank test (hodges-lehmann)",
    }[counts]
    if b.size == 0 or c.size == 0:
        missing = " and ".join(s for s, a in (("baseline", b), ("canary", c)) if a.size == 0)
        return _row(m, "Nodata", [f"no data for the {missing}: no data is never a pass"], test=test_name, **common)
    try:
        kw: dict[str, Any] = {"alpha": cfg.alpha, "mde_alpha": mde_alpha, "power": cfg.power, "margin": margin}
        quantiles: dict[str, tuple[float, float, float]] = {}
        if counts:
            eb = eb if eb is not None else np.ones_like(b)
            ec = ec if ec is not None else np.ones_like(c)
            if (b < 0).any() or (c < 0).any():
                return _row(
                    m,
                    "Error",
                    ["negative event counts: give counts per interval (increase(), not rate())"],
                    test=test_name,
                    **common,
                )
            if eb.sum() == 0 or ec.sum() == 0:
                side = "baseline" if eb.sum() == 0 else "canary"
                return _row(
                    m,
                    "Nodata",
                    [f"no traffic on the {side} (exposure 0): no data is never a pass"],
                    test=test_name,
                    **common,
                )
            if sequential:
                k = min(b.size, c.size)
                tau = cfg.tau.get(m.kind, math.log1p(mde_req))
                r = stats.sequential_rate_test(b[:k], c[:k], eb[:k], ec[:k], m.bad, tau=tau, **kw)
            else:
                r = stats.rate_ratio_test(float(b.sum()), float(c.sum()), float(eb.sum()), float(ec.sum()), m.bad, **kw)
        elif m.kind == "memory":
            need = max(cfg.min_slope_samples, 4)
            if b.size < need or c.size < need:
                return _row(
                    m,
                    "FewSamples",
                    [f"{min(b.size, c.size)} samples on one side; a slope needs {need}"],
                    test=test_name,
                    **common,
                )
            tb = tb if tb is not None else np.arange(b.size, dtype=float)
            tc = tc if tc is not None else np.arange(c.size, dtype=float)
            ob, oc = np.argsort(tb, kind="stable"), np.argsort(tc, kind="stable")
            b, tb, c, tc = b[ob], tb[ob], c[oc], tc[oc]
            if sequential:
                tau = cfg.tau.get(m.kind, mde_req)
                r = stats.sequential_slope_test(b, c, tb, tc, m.bad, tau=tau, per=cfg.per, min_samples=need, **kw)
            else:
                r = stats.slope_test(b, c, tb, tc, m.bad, per=cfg.per, **kw)
            if m.baseline_times is None or m.canary_times is None:
                r = attrs.evolve(r, notes=(*r.notes, "no timestamps: samples taken as 1 s apart"))
        else:
            if b.size < cfg.min_samples or c.size < cfg.min_samples:
                return _row(
                    m,
                    "FewSamples",
                    [f"{min(b.size, c.size)} samples on one side; the rank test needs {cfg.min_samples}"],
                    test=test_name,
                    **common,
                )
            paired = cfg.paired == "auto" and _aligned(tb, tc)
            # time order (the sequential tests accrue samples in it; pairing needs the same instants)
            b = b[np.argsort(tb, kind="stable")] if tb is not None else b
            c = c[np.argsort(tc, kind="stable")] if tc is not None else c
            log_scale = stats.can_log(b, c)
            if sequential:
                tau = cfg.tau.get(m.kind, math.log1p(mde_req))
                r = stats.sequential_mean_test(
                    b, c, m.bad, tau=tau, paired=paired, log_scale=log_scale, min_samples=max(cfg.min_samples, 10), **kw
                )
            else:
                r = stats.location_test(b, c, m.bad, paired=paired, log_scale=log_scale, rng=rng, **kw)
            if m.kind == "latency" and cfg.bootstrap > 0:
                quantiles = stats.bootstrap_quantile_ratios(
                    b, c, resamples=cfg.bootstrap, conf=1 - 2 * cfg.alpha, rng=rng
                )
    except (ValueError, ArithmeticError, FloatingPointError) as exc:
        return _row(m, "Error", [f"the statistics failed: {exc}"], test=test_name, **common)
    settled = False
    if sequential:
        lo, hi = r.ci
        ruled_out = {"increase": hi < mde_req, "decrease": lo > -mde_req}.get(m.bad, hi < mde_req and lo > -mde_req)
        settled = bool(ruled_out)
    return _row(
        m,
        "Pass",  # provisional: _combine decides after the correction across metrics
        r.notes,
        test=r.test,
        p_value=r.p_value,
        e_value=r.e_value,
        effect=r.effect,
        ci=r.ci,
        mde=r.mde,
        estimate=r.estimate,
        decided_at=r.decided_at,
        settled=settled,
        quantiles=quantiles,
        extra=r.extra,
        **common,
    )


def _what(m: MetricResult) -> str:
    unit = " of the baseline level per hour" if m.kind == "memory" else ""
    ci = "" if any(math.isnan(v) for v in m.ci) else f" [{fmt_pct(m.ci[0])}, {fmt_pct(m.ci[1])}]"
    return f"{fmt_pct(m.effect)}{ci}{unit}"


def _combine(rows: list[MetricResult], cfg: JudgeConfig) -> Result:
    import numpy as np

    from tars_telemetry.judges import stats

    tested = [i for i, r in enumerate(rows) if r.p_value is not None]
    rejected: set[int] = set()
    adjusted: dict[int, float] = {}
    if tested:
        p = np.array([rows[i].p_value for i in tested], dtype=float)
        if cfg.mode == "sequential" and cfg.correction == "bh":
            e = np.array([rows[i].e_value or 1.0 for i in tested])
            rejected = {tested[k] for k in np.nonzero(stats.e_benjamini_hochberg(e, cfg.alpha))[0]}
            adj = np.minimum(1.0, p * len(tested))
        else:
            adj = {"holm": stats.holm, "bh": stats.benjamini_hochberg}.get(cfg.correction, lambda x: np.asarray(x))(p)
            rejected = {tested[k] for k in np.nonzero(adj <= cfg.alpha)[0]}
        adjusted = {tested[k]: float(adj[k]) for k in range(len(tested))}
    out: list[MetricResult] = []
    for i, r in enumerate(rows):
        if i not in adjusted:
            out.append(r)
            continue
        reasons = list(r.reasons)
        if i in rejected:
            label = "Low" if (r.bad == "decrease" or (r.bad == "either" and r.effect < 0)) else "High"
            where = f" at sample {r.decided_at}" if r.decided_at is not None else ""
            stat = f"e={r.e_value:.3g} >= 1/alpha" if cfg.mode == "sequential" else f"p={adjusted[i]:.2g} (adjusted)"
            reasons.insert(0, f"regression: {_what(r)} ({stat}{where}; {r.test})")
            settled = True
        elif r.mde is None or not math.isfinite(r.mde) or r.mde > (r.mde_requested or math.inf):
            label, settled = "LowPower", False
            if r.mde is None or not math.isfinite(r.mde):
                mde = f"no {r.bad} at all"
            else:
                mde = f"only a {fmt_pct(r.mde, False)} {r.bad}"
            why = "too little traffic" if r.kind in ("errors", "counts") else "too few or too noisy samples"
            events = r.extra.get("events") if isinstance(r.extra, Mapping) else None
            more = f" ({int(events[0])} baseline / {int(events[1])} canary events)" if events else ""
            reasons.insert(
                0,
                f"{why}{more}: could see {mde}, not the {fmt_pct(r.mde_requested, False)} asked; measured {_what(r)}",
            )
        else:
            label, settled = "Pass", r.settled
            reasons.insert(0, f"no regression: {_what(r)}; could see a {fmt_pct(r.mde, False)} {r.bad}")
        verdict = {"Pass": "pass", "High": "fail", "Low": "fail"}.get(label, "inconclusive")
        out.append(
            attrs.evolve(
                r, label=label, verdict=verdict, p_adjusted=adjusted[i], settled=settled, reasons=tuple(reasons)
            )
        )
    failed = [r for r in out if r.verdict == "fail"]
    open_ = [r for r in out if r.verdict == "inconclusive" and r.required]
    required = [r for r in out if r.required]
    if failed:
        verdict = "fail"
    elif open_ or not any(r.p_value is not None for r in out):
        verdict = "inconclusive"
    else:
        verdict = "pass"
    reasons = [f"{r.name} ({r.kind}): {r.reasons[0]}" for r in failed]
    reasons += [f"{r.name} ({r.kind}): {r.label}: {r.reasons[0]}" for r in open_ if r.reasons]
    if not any(r.p_value is not None for r in out):
        reasons.append("no metric had data on both sides: no data is never a pass")
    passed = [r for r in out if r.verdict == "pass"]
    if passed:
        seen = ", ".join(f"{r.name} {fmt_pct(r.mde, False)}" for r in passed)
        reasons.append(
            f"{len(passed)} of {len(out)} metrics show no regression; smallest change each could see: {seen}"
        )
    score = 100.0 * sum(1 for r in required if r.verdict == "pass") / len(required) if required else None
    stop = bool(failed) or (cfg.mode == "sequential" and bool(required) and all(r.settled for r in required))
    return Result(
        verdict=verdict,
        reasons=tuple(reasons),
        metrics=tuple(out),
        mode=cfg.mode,
        alpha=cfg.alpha,
        correction=cfg.correction,
        score=score,
        stop=stop,
    )


def judge_kayenta(metrics: Iterable[MetricInput | Sequence[Any] | Mapping[str, Any]], config: Any = None) -> Result:
    """Kayenta's NetflixACAJudge on the same inputs (:func:`tars_telemetry.judges.kayenta.judge`)."""
    from tars_telemetry.judges import kayenta

    started = time.process_time()
    result = kayenta.judge(coerce_metrics(metrics), config)
    return attrs.evolve(result, cpu_seconds=time.process_time() - started)


__all__ = [
    "DEFAULT_BAD",
    "DEFAULT_MDE",
    "KINDS",
    "JudgeConfig",
    "MetricInput",
    "MetricResult",
    "Result",
    "judge",
    "judge_kayenta",
]
