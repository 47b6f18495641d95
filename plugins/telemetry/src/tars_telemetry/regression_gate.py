"""The regression gate: is the fix slower, leakier, more error-prone or serving less than before it?

``tars_observe`` of ``tars-regression-monitor`` runs :func:`observe` for each fix's bake. Every
``poll_interval_s`` it reads the judged metrics from Prometheus with range queries and runs the judges
(:mod:`tars_telemetry.judges`) on two arms:

* **canary against baseline** when the fix left a feature flag at a fraction (``change.canary``, e.g.
  ``tars-1005-ppo-fixed=0.25``) and a metric's series carry ``canary_label`` (TARS-1005's RSS carries
  ``trainer``): the series whose id the flag turns on (:func:`tars_core.flags.enabled_for`, the same
  stable buckets the services use) against the others, over the bake, paired by time;
* **before against after** otherwise: the ``baseline_window_s`` before the fix was applied against the
  bake so far. For location tests the arms grow outward from the change (the latest pre-release samples
  are compared with the first post-release ones), so the two windows stay equally long and close in time.

Metrics: the default set (``tars:regression:*``: API latency p95, error ratio and throughput per
service, trainer RSS per trainer), the config's ``metrics`` and the ones ``metrics_for`` declares for the
fix. In ``sequential`` mode (the default) each judgement is anytime-valid, so judging at every poll is
sound and the bake stops at the first regression; ``fixed`` mode judges once, at the end of the bake.

The verdict is the judges' three-valued one. ``inconclusive`` (no data, too few samples, too little power
for the requested minimum detectable effect) is returned as such: the core then applies
``release.on_inconclusive`` (default: treated as a fail), so a blind gate never passes a fix silently.

Into the ledger and the report go: the reasons, one Evidence per judged metric (its PromQL, the relative
effect as value, and test, interval, p or e-value, samples and MDE in the detail), the full statistics as
JSON and a chart (PNG) of every judged metric, both in the monitor's state folder and named in the
evidence; :func:`report_section` copies the charts next to the report and shows them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import attrs

from tars_core import Context
from tars_core.errors import PrometheusError
from tars_core.flags import enabled_for
from tars_core.model import Change, Evidence, Judgement, Release, ReportSection
from tars_core.prometheus import Prometheus, connect
from tars_core.waiting import rounds
from tars_telemetry.regression_config import MetricSpec, RegressionMonitorConfig
from tars_telemetry.regression_rules import ERROR_RATIO, KINDS, PREFIX, THROUGHPUT

CHART = "chart: "  # Evidence.detail prefix of the chart file the report copies
STATISTICS = "statistics: "  # Evidence.detail prefix of the JSON file with every statistic
MAX_CHARTED = 12  # metrics drawn in one chart (failed and inconclusive first)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def _unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# -- which metrics -----------------------------------------------------------------------------------------------------


def default_specs() -> list[MetricSpec]:
    """The ``tars:regression:*`` series as metric specs; the error ratio is judged as errors per request
    (a rate-ratio test), so its selector is the 5xx rate and its exposure the request rate."""
    out = []
    for record, kind in KINDS.items():
        name = record[len(PREFIX) :]
        if record == ERROR_RATIO:
            out.append(MetricSpec(name, f"{ERROR_RATIO} * on (service) {THROUGHPUT}", kind, exposure=THROUGHPUT))
        else:
            out.append(MetricSpec(name, record, kind))
    return out


def specs_for(config: RegressionMonitorConfig, plugin: str) -> list[MetricSpec]:
    """The metrics judged for ``plugin``: the default set, the config's ``metrics`` and the fix's own;
    ``optional_metrics`` are marked not required. A later spec of the same name replaces an earlier one."""
    specs = default_specs() if config.default_metrics else []
    by_name = {s.name: s for s in [*specs, *config.metrics, *config.metrics_for.get(plugin, [])]}
    optional = set(config.optional_metrics)
    return [attrs.evolve(s, required=False) if s.name in optional else s for s in by_name.values()]


def parse_canary(text: str | None) -> list[tuple[str, str]]:
    """``change.canary`` (``"flag=0.25, other=0.1"``) as ``[(flag, value), ...]``."""
    pairs = []
    for part in (text or "").split(","):
        flag, sep, value = part.strip().rpartition("=")
        if sep and flag:
            pairs.append((flag, value))
    return pairs


def in_canary(canary: Sequence[tuple[str, str]], ident: str, previous: Mapping[str, str] | None = None) -> bool:
    """Did the fix change what runs for ``ident`` (a trainer id, a host)? Under each canary flag, is it on
    now and was it not before (or the other way round)? ``previous`` holds the flags' values before the fix
    (:func:`record_flags`); a flag it lacks was off, so the canary is the side the fraction turns on. Taking
    the side that *changed* makes a partial rollback (``on`` to ``0.75``: the v1.0.0 code back on a quarter)
    judge the rolled-back instances as the canary, which is what changed."""
    before = previous or {}
    return any(enabled_for(value, flag, ident) != enabled_for(before.get(flag), flag, ident) for flag, value in canary)


FLAGS = "flags_before"  # ctx.state key: the feature flags as the last preflight or observe left them


def record_flags(state: Any, flags: Mapping[str, str]) -> None:
    """Remember flag values for the next fix's canary split (merged over what was recorded)."""
    state.update({FLAGS: {**dict(state.get(FLAGS) or {}), **dict(flags)}})


# -- reading Prometheus ------------------------------------------------------------------------------------------------


@attrs.frozen
class Series:
    """One series of a range query: its labels (without ``__name__``), times and values."""

    labels: Mapping[str, str]
    times: tuple[float, ...]
    values: tuple[float, ...]

    def key(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.labels.items()))


def _series(result: Sequence[Mapping[str, Any]]) -> list[Series]:
    out = []
    for r in result:
        labels = {k: v for k, v in r.get("metric", {}).items() if k != "__name__"}
        pairs = r.get("values", [])
        out.append(Series(labels, tuple(float(t) for t, _ in pairs), tuple(float(v) for _, v in pairs)))
    return out


def label_text(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""


def read(
    prom: Prometheus, spec: MetricSpec, start: float, end: float, step: float
) -> tuple[list[Series], list[Series]]:
    """The spec's series and, for errors/counts with an exposure, the exposure's series."""
    values = _series(prom.query_range(spec.selector, start, end, step))
    exposure = _series(prom.query_range(spec.exposure, start, end, step)) if spec.exposure.strip() else []
    return values, exposure


# -- the two arms ------------------------------------------------------------------------------------------------------


@attrs.frozen
class Arm:
    """One side of a comparison, in the order the judge should accrue it."""

    values: tuple[float, ...]
    times: tuple[float, ...]
    exposure: tuple[float, ...] | None = None


@attrs.frozen
class Compared:
    """One judged metric: its arms, what they are, and the series to draw."""

    name: str
    spec: MetricSpec
    query: str
    how: str  # "canary vs baseline" / "after vs before"
    baseline: Arm
    canary: Arm
    plot: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...]  # (label, times, values)


def _chunks(
    values: Sequence[float], exposure: Sequence[float], size: int, backwards: bool
) -> tuple[list[float], list[float]]:
    """Sum consecutive samples into complete chunks of ``size`` (from the change point outward)."""
    v, e = list(values), list(exposure)
    if backwards:
        v, e = v[::-1], e[::-1]
    out_v, out_e = [], []
    for i in range(0, len(v) - size + 1, size):
        out_v.append(sum(v[i : i + size]))
        out_e.append(sum(e[i : i + size]))
    return out_v, out_e


def _counts(values: Series, exposure: Series | None, step: float) -> tuple[list[float], list[float], list[float]]:
    """Events and exposure per step from per-second rates: (times, events, exposure); a sample whose
    exposure is missing is dropped."""
    by_time = dict(zip(exposure.times, exposure.values, strict=True)) if exposure is not None else None
    times, events, expo = [], [], []
    for t, v in zip(values.times, values.values, strict=True):
        x = by_time.get(t, math.nan) if by_time is not None else 1.0
        if math.isnan(v) or math.isnan(x):
            continue
        times.append(t)
        events.append(max(v, 0.0) * step)
        expo.append(max(x, 0.0) * step)
    return times, events, expo


def series_query(selector: str, labels: Mapping[str, str]) -> str:
    """PromQL for one series of ``selector``: ``name{labels}`` for a bare metric name, else the selector
    with the series named in a PromQL comment."""
    if not labels:
        return selector
    if re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", selector.strip()):
        return selector.strip() + label_text(labels)
    return f"{selector}  # series {label_text(labels)}"


def before_after(
    spec: MetricSpec, series: Series, exposure: Series | None, applied: float, config: RegressionMonitorConfig
) -> Compared:
    """The pre-release window against the bake so far, for one series."""
    name = spec.name + label_text(series.labels)
    query = series_query(spec.selector, series.labels)
    how = "after vs before"
    if spec.kind in ("errors", "counts"):
        times, events, expo = _counts(series, exposure, config.step_s)
        size = max(1, round(config.count_chunk_s / config.step_s))
        before = [i for i, t in enumerate(times) if t <= applied]
        after = [i for i, t in enumerate(times) if t > applied]
        bv, be = _chunks([events[i] for i in before], [expo[i] for i in before], size, backwards=True)
        av, ae = _chunks([events[i] for i in after], [expo[i] for i in after], size, backwards=False)
        per = "per request" if exposure is not None else "per second"
        rate = tuple(v / e if e else math.nan for v, e in zip(events, expo, strict=True))
        return Compared(
            name,
            spec,
            query,
            how,
            Arm(tuple(bv), (), tuple(be)),
            Arm(tuple(av), (), tuple(ae)),
            ((f"events {per}", tuple(times), rate),),
        )
    pairs = [(t, v) for t, v in zip(series.times, series.values, strict=True) if not math.isnan(v)]
    pre = [(t, v) for t, v in pairs if t <= applied]
    post = [(t, v) for t, v in pairs if t > applied]
    if spec.kind != "memory":
        pre = pre[::-1]  # the latest pre-release sample first: the arms grow outward from the change
    plot = (
        ("before", tuple(t for t, _ in pre), tuple(v for _, v in pre)),
        ("after", tuple(t for t, _ in post), tuple(v for _, v in post)),
    )
    return Compared(
        name,
        spec,
        query,
        how,
        Arm(tuple(v for _, v in pre), tuple(t for t, _ in pre)),
        Arm(tuple(v for _, v in post), tuple(t for t, _ in post)),
        plot,
    )


def _aggregate(group: Sequence[Series], applied: float, total: bool) -> tuple[list[float], list[float]]:
    """Per timestamp after ``applied``: the mean (or sum, for counts) across a group's series."""
    acc: dict[float, list[float]] = {}
    for s in group:
        for t, v in zip(s.times, s.values, strict=True):
            if t > applied and not math.isnan(v):
                acc.setdefault(t, []).append(v)
    times = sorted(acc)
    return times, [sum(acc[t]) if total else sum(acc[t]) / len(acc[t]) for t in times]


def canary_vs_baseline(
    spec: MetricSpec,
    series: Sequence[Series],
    exposure: Sequence[Series],
    canary: Sequence[tuple[str, str]],
    applied: float,
    config: RegressionMonitorConfig,
    previous: Mapping[str, str] | None = None,
) -> Compared | None:
    """The series the fix changed (:func:`in_canary`) against the others, over the bake; ``None`` when
    that is all or none of them (then they are judged before against after)."""
    label = config.canary_label
    inside = [s for s in series if in_canary(canary, s.labels[label], previous)]
    outside = [s for s in series if not in_canary(canary, s.labels[label], previous)]
    if not inside or not outside:
        return None
    ids = ", ".join(sorted(s.labels[label] for s in inside))
    others = ", ".join(sorted(s.labels[label] for s in outside))
    name = f"{spec.name}{{{label}=canary}}"
    query = f"{spec.selector}  # canary {label}: {ids}; baseline {label}: {others}"
    how = f"canary vs baseline ({label} {ids} against {others})"
    counts = spec.kind in ("errors", "counts")
    tc, vc = _aggregate(inside, applied, total=counts)
    tb, vb = _aggregate(outside, applied, total=counts)
    if counts:
        by_key = {s.key(): s for s in exposure}

        def exposures(group: Sequence[Series], times: Sequence[float]) -> list[float]:
            if not exposure:
                return [config.step_s] * len(times)
            acc: dict[float, float] = {}
            for s in group:
                e = by_key.get(s.key())
                for t, x in zip(e.times, e.values, strict=True) if e else ():
                    acc[t] = acc.get(t, 0.0) + x
            return [acc.get(t, math.nan) * config.step_s for t in times]

        size = max(1, round(config.count_chunk_s / config.step_s))
        cv, ce = _chunks([v * config.step_s for v in vc], exposures(inside, tc), size, backwards=False)
        bv, be = _chunks([v * config.step_s for v in vb], exposures(outside, tb), size, backwards=False)
        return Compared(
            name,
            spec,
            query,
            how,
            Arm(tuple(bv), (), tuple(be)),
            Arm(tuple(cv), (), tuple(ce)),
            (("canary", tuple(tc), tuple(vc)), ("baseline", tuple(tb), tuple(vb))),
        )
    return Compared(
        name,
        spec,
        query,
        how,
        Arm(tuple(vb), tuple(tb)),
        Arm(tuple(vc), tuple(tc)),
        (("baseline", tuple(tb), tuple(vb)), ("canary", tuple(tc), tuple(vc))),
    )


def compare(
    config: RegressionMonitorConfig,
    specs: Sequence[MetricSpec],
    data: Mapping[str, tuple[list[Series], list[Series]]],
    change: Change,
    applied: float,
    previous: Mapping[str, str] | None = None,
) -> list[Compared]:
    """Every judged metric's arms from what :func:`read` returned, by spec name (``previous``: the flags
    before the fix, see :func:`in_canary`). A spec with no series at all is one metric with empty arms (no
    data is never a pass)."""
    canary = parse_canary(change.canary)
    out: list[Compared] = []
    for spec in specs:
        series, exposure = data.get(spec.name, ([], []))
        if not series:
            out.append(Compared(spec.name, spec, spec.selector, "no series", Arm((), ()), Arm((), ()), ()))
            continue
        label = config.canary_label
        if canary and label and all(label in s.labels for s in series):
            split = canary_vs_baseline(spec, series, exposure, canary, applied, config, previous)
            if split is not None:
                out.append(split)
                continue
        by_key = {s.key(): s for s in exposure}
        for s in series:
            expo = by_key.get(s.key()) if spec.exposure.strip() else None
            out.append(before_after(spec, s, expo, applied, config))
    return out


def inputs(compared: Sequence[Compared]) -> list[Any]:
    """The judges' MetricInputs for the compared metrics."""
    from tars_telemetry.judges import MetricInput

    out = []
    for c in compared:
        kw: dict[str, Any] = {} if c.spec.bad is None else {"bad": c.spec.bad}
        timed = c.spec.kind == "memory" or "canary" in c.how
        out.append(
            MetricInput(
                c.name,
                c.spec.kind,
                c.baseline.values,
                c.canary.values,
                baseline_times=c.baseline.times if timed and c.baseline.times else None,
                canary_times=c.canary.times if timed and c.canary.times else None,
                baseline_exposure=c.baseline.exposure,
                canary_exposure=c.canary.exposure,
                mde=c.spec.mde,
                margin=c.spec.margin,
                required=c.spec.required,
                **kw,
            )
        )
    return out


def judge_config(config: RegressionMonitorConfig) -> Any:
    from tars_telemetry.judges import JudgeConfig

    return JudgeConfig(alpha=config.alpha, mode=config.mode, correction=config.correction, mde=dict(config.mde))


def run_judges(config: RegressionMonitorConfig, compared: Sequence[Compared]) -> Any:
    """The judges' Result on the compared metrics, per-kind margins filled in where a spec has none."""
    from tars_telemetry.judges import judge

    metrics = inputs(compared)
    metrics = [
        attrs.evolve(m, margin=config.margin.get(m.kind)) if m.margin is None and m.kind in config.margin else m
        for m in metrics
    ]
    return judge(metrics, judge_config(config))


# -- the bake ----------------------------------------------------------------------------------------------------------


@attrs.frozen
class Round:
    """One poll: what was compared, the judges' result, when."""

    compared: list[Compared]
    result: Any
    at: float


def judge_round(
    prom: Prometheus,
    config: RegressionMonitorConfig,
    specs: Sequence[MetricSpec],
    change: Change,
    applied: float,
    previous: Mapping[str, str] | None = None,
) -> Round:
    t = time.time()
    start = applied - config.baseline_window_s
    data = {s.name: read(prom, s, start, t, config.step_s) for s in specs}
    compared = compare(config, specs, data, change, applied, previous)
    return Round(compared, run_judges(config, compared), t)


async def preflight(ctx: Context) -> None:
    """Record the feature flags before the release changes any, so the first fix's canary split knows
    which side it changed (:func:`in_canary`). Abstains (no judgement): it judges nothing, and a Redis it
    cannot read only means a canary is taken to be the side its fraction turns on."""
    if not ctx.targets.redis:
        return
    try:
        flags = await ctx.flags.all()
    except Exception as exc:  # TargetError and what a Redis client raises: judging goes on without them
        ctx.log.warning(
            "cannot read the feature flags before the release (%s): a canary is taken to be the "
            "side its fraction turns on",
            exc,
        )
        return
    ctx.state.update({FLAGS: dict(flags)})


async def observe(ctx: Context, change: Change) -> Judgement | None:
    config: RegressionMonitorConfig = ctx.config
    specs = specs_for(config, change.plugin)
    if not specs:
        return Judgement(
            "inconclusive",
            (f"no metrics to judge {change.plugin} on: default_metrics is off and none are configured",),
        )
    applied = _unix(change.applied_at)
    previous: dict[str, str] = dict(ctx.state.get(FLAGS) or {})
    record_flags(ctx.state, change.flags)  # the next fix's "before", whatever this judgement says
    # sequential: a judgement every poll, stopping at the first fail; fixed: one test at the end of the bake
    interval = config.poll_interval_s if config.mode == "sequential" else change.bake_seconds
    bake = rounds(change.bake_seconds, interval, first=config.mode == "sequential" or change.bake_seconds <= 0)
    judged = 0
    first_fail: int | None = None
    prom = await anyio.to_thread.run_sync(connect, ctx.targets)
    try:
        async for _ in bake:
            try:
                last = await anyio.to_thread.run_sync(judge_round, prom, config, specs, change, applied, previous)
            except PrometheusError as exc:
                return Judgement("inconclusive", (f"cannot read the metrics while {change.plugin} bakes: {exc}",))
            judged += 1
            if last.result.verdict == "fail":
                first_fail = judged
                break
    finally:
        prom.close()
    if last.result.verdict == "inconclusive" and change.bake_seconds < config.min_bake_s:
        ctx.log.warning(
            "%s not judged: its %gs bake is shorter than min_bake_s (%gs) and ended inconclusive (%s); "
            "abstaining. Give it release.bake_times.%s >= %g for a verdict",
            change.plugin,
            change.bake_seconds,
            config.min_bake_s,
            last.result.reasons[0] if last.result.reasons else "no reason",
            change.plugin,
            config.min_bake_s,
        )
        return None
    return await anyio.to_thread.run_sync(_judgement, ctx, config, change, last, judged, first_fail, applied)


def _what(compared: Sequence[Compared]) -> str:
    hows = sorted({c.how for c in compared if c.how != "no series"})
    return "; ".join(hows) or "nothing compared"


def _judgement(
    ctx: Context,
    config: RegressionMonitorConfig,
    change: Change,
    last: Round,
    judgements: int,
    first_fail: int | None,
    applied: float,
) -> Judgement:
    result = last.result
    at = iso(last.at)
    elapsed = last.at - applied
    when = (
        f"after {elapsed:.0f}s of the {change.bake_seconds:g}s bake (judgement {judgements}, {config.mode})"
        if first_fail
        else f"over the {change.bake_seconds:g}s bake ({judgements} judgement(s), {config.mode})"
    )
    reasons = list(result.reasons)
    if reasons:
        reasons[0] = f"{reasons[0]} [{when}]"
    if result.verdict == "inconclusive":
        reasons.append(
            "inconclusive is not a pass: release.on_inconclusive decides what happens to the fix "
            "(default: treated as a fail and rolled back)"
        )
    by_name = {c.name: c for c in last.compared}
    evidence = [
        Evidence(
            query="tars-regression-monitor: comparison",
            value=float(len(result.metrics)),
            at=at,
            detail=f"{change.plugin}: {_what(last.compared)}; pre-release window {config.baseline_window_s:g}s, "
            f"step {config.step_s:g}s; {when}; alpha {result.alpha:g} with {result.correction}",
        )
    ]
    for m in result.metrics:
        c = by_name.get(m.name)
        value = m.effect if isinstance(m.effect, float) and math.isfinite(m.effect) else None
        evidence.append(Evidence(query=c.query if c else m.name, value=value, at=at, detail=metric_detail(m)))
    folder = ctx.state_dir / "regression"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', change.plugin)}-{int(last.at)}"
    stats_path = folder / f"{stem}.json"
    doc = {"plugin": change.plugin, "applied_at": change.applied_at, "judged_at": at, "result": result.as_dict()}
    stats_path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    evidence.append(
        Evidence(query="tars-regression-monitor: statistics", value=None, at=at, detail=STATISTICS + str(stats_path))
    )
    if config.charts:
        try:
            png = chart(folder / f"{stem}.png", last.compared, result, applied, change.plugin)
        except Exception as exc:  # a chart must never cost the verdict
            ctx.log.warning("regression chart not drawn: %s", exc)
        else:
            evidence.append(
                Evidence(query="tars-regression-monitor: chart", value=None, at=at, detail=CHART + str(png))
            )
    return Judgement(result.verdict, tuple(reasons), tuple(evidence), score=result.score)


def metric_detail(m: Any) -> str:
    """One metric's statistics in one line: verdict, label, effect, interval, MDE, p or e, samples, test."""
    from tars_telemetry.judges import fmt_pct

    ci = "n/a" if any(math.isnan(v) for v in m.ci) else f"[{fmt_pct(m.ci[0])}, {fmt_pct(m.ci[1])}]"
    pe = "n/a"
    if m.e_value is not None:
        pe = f"e={m.e_value:.3g}"
    elif m.p_value is not None:
        pe = f"p={m.p_value:.3g}"
    if m.p_adjusted is not None:
        pe += f" (p adj {m.p_adjusted:.3g})"
    mde = fmt_pct(m.mde, signed=False) if m.mde is not None else "n/a"
    asked = fmt_pct(m.mde_requested, signed=False) if m.mde_requested is not None else "n/a"
    why = f"; {m.reasons[0]}" if m.reasons else ""
    return (
        f"{m.name} ({m.kind}, bad: {m.bad}): {m.verdict} ({m.label}); effect {fmt_pct(m.effect)} CI {ci}; "
        f"MDE {mde} (asked {asked}); {pe}; n {m.n_baseline}/{m.n_canary}; {m.test}{why}"
    )


# -- the chart ---------------------------------------------------------------------------------------------------------


def chart(path: Path, compared: Sequence[Compared], result: Any, applied: float, plugin: str) -> Path:
    """Every judged metric (failed and inconclusive first, up to :data:`MAX_CHARTED`) against time, seconds
    from the change, with the change marked and the verdict in the title. matplotlib's Agg backend, so it
    draws without a display; imported here only (it is heavy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = {"fail": 0, "inconclusive": 1, "pass": 2}
    verdicts = {m.name: m for m in result.metrics}
    shown = sorted(
        (c for c in compared if c.plot), key=lambda c: order.get(getattr(verdicts.get(c.name), "verdict", ""), 3)
    )[:MAX_CHARTED]
    cols = 2 if len(shown) > 1 else 1
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 2.6 * rows), squeeze=False)
    try:
        for ax, c in zip(axes.flat, shown, strict=False):
            m = verdicts.get(c.name)
            for label, times, values in c.plot:
                ax.plot([t - applied for t in times], values, label=label, linewidth=1.2)
            if "before" in c.how:
                ax.axvline(0, color="grey", linestyle="--", linewidth=0.8)
            title = c.name if m is None else f"{c.name}: {m.verdict} ({m.label})"
            ax.set_title(
                title,
                fontsize=8,
                color={"fail": "red", "inconclusive": "darkorange"}.get(getattr(m, "verdict", ""), "black"),
            )
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7, loc="best")
        for ax in list(axes.flat)[len(shown) :]:
            ax.axis("off")
        fig.suptitle(f"{plugin}: {result.verdict} (seconds from the change)", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)
    return path


# -- the report --------------------------------------------------------------------------------------------------------


TABLE = ("metric", "kind", "verdict", "label", "effect", "CI", "MDE (asked)", "p / e", "n", "test")


def _stat_rows(path: str | None) -> list[tuple[str, ...]]:
    """The per-metric table from the statistics file a judgement named (empty when it is gone)."""
    from tars_telemetry.judges import fmt_pct

    if not path or not Path(path).is_file():
        return []
    try:
        metrics = json.loads(Path(path).read_text())["result"]["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return []

    def pct(v: Any, signed: bool = True) -> str:
        return fmt_pct(math.nan if v is None else float(v), signed)

    rows: list[tuple[str, ...]] = []
    for m in metrics:
        ci = m.get("ci") or [None, None]
        interval = "n/a" if None in ci else f"[{pct(ci[0])}, {pct(ci[1])}]"
        if m.get("e_value") is not None:
            pe = f"e={m['e_value']:.3g}"
        elif m.get("p_value") is not None:
            pe = f"p={m['p_value']:.3g}"
        else:
            pe = "n/a"
        if m.get("p_adjusted") is not None:
            pe += f" (p adj {m['p_adjusted']:.3g})"
        mde = f"{pct(m.get('mde'), False)} ({pct(m.get('mde_requested'), False)})"
        n = f"{m.get('n_baseline', 0)}/{m.get('n_canary', 0)}"
        rows.append(
            (m["name"], m["kind"], m["verdict"], m["label"], pct(m.get("effect")), interval, mde, pe, n, m["test"])
        )
    return rows


def report_section(release: Release, monitor: str) -> ReportSection | None:
    """Per judged fix: the verdict, its reasons, the per-metric statistics and the chart (copied next to
    the report so ``report.md`` shows it)."""
    from tars_core.report import markdown_table

    gates = [j for j in release.judgements if j.monitor == monitor and j.kind == "observe"]
    if not gates:
        return None
    lines = [
        "Each fix was judged on its metrics while it baked (canary against baseline, or after against "
        "before). effect: relative change of the canary/after side; CI: its interval at the configured "
        "alpha; MDE: the smallest change in the bad direction the test could see (a pass must be able to "
        "see the change asked); p / e: p-value, or e-value for the anytime-valid sequential test (a "
        "regression when e >= 1/alpha after the correction across metrics); n: samples baseline/canary.",
        "",
    ]
    data: dict[str, Any] = {}
    for i, j in enumerate(sorted(gates, key=lambda g: g.ended_at)):
        lines += [f"#### {j.plugin}: {j.verdict}", ""]
        lines += [f"- {r}" for r in j.reasons]
        details = []
        chart_name = stats_file = None
        for e in j.evidence:
            if e.detail.startswith(CHART):
                chart_name = e.detail[len(CHART) :]
            elif e.detail.startswith(STATISTICS):
                stats_file = e.detail[len(STATISTICS) :]
            elif e.query.startswith("tars-regression-monitor:"):
                lines += ["", f"Compared: {e.detail}"]
            else:
                details.append(f"- `{e.query}`: {e.detail}")
        rows = _stat_rows(stats_file)
        if rows:
            lines += ["", markdown_table(TABLE, rows)]
        elif details:  # the statistics file is gone: the ledger's evidence lines say the same
            lines += ["", *details]
        if chart_name:
            src = Path(chart_name)
            if src.is_file():
                dest = release.report_dir / f"regression-{i + 1}-{re.sub(r'[^A-Za-z0-9_.-]', '_', j.plugin or '')}.png"
                release.report_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                lines += ["", f"![{j.plugin}: judged metrics]({dest.name})"]
            else:
                lines += ["", f"(chart {chart_name} is no longer there)"]
        if stats_file:
            lines += ["", f"All statistics: `{stats_file}`"]
        lines.append("")
        data[f"{j.plugin}#{i + 1}"] = {
            "verdict": j.verdict,
            "score": j.score,
            "chart": chart_name,
            "statistics": stats_file,
        }
    return ReportSection(title="Regression monitor: judged metrics per fix", markdown="\n".join(lines), data=data)
