"""The release gate: an error-budget policy before a release, and a burn-rate watch on each fix's bake.

Production burn alerts look back an hour (the Workbook's 14.4x page tier); a fix baking for minutes
cannot wait for that, and its own effect is diluted in an hour of history. So ``tars_observe`` judges
each fix on three things, all read from Prometheus with the queries recorded as evidence:

1. a page-tier ``SLOErrorBudgetBurn`` alert firing for an SLO the fix touches (production's own signal);
2. the burn rate over the fix's bake window (since its verify passed): the SLO's error ratio over exactly
   that window divided by its budget, judged against ``bake_burn_rate`` (14.4x by default) only when the
   window holds ``bake_min_events`` events (a quiet system is "insufficient data", never a verdict);
3. the budget the release has spent so far (error ratio since preflight x elapsed time, in minutes of the
   SLO's budget), judged against ``max_release_burn_percent`` of the period's budget.

It polls every ``poll_interval_s`` and fails as soon as one of them trips, so a fast burn rolls the fix
back without waiting out the bake. The hook is async and sleeps with anyio, so Ctrl-C ends it at once;
each round of queries runs in a worker thread the core tracks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import anyio
import attrs

from tars_core import Context
from tars_core.errors import PrometheusError
from tars_core.model import Change, Evidence, Judgement, JudgementRecord, Plan, Release, ReportSection
from tars_core.prometheus import Prometheus, connect
from tars_core.report import markdown_table
from tars_core.waiting import rounds
from tars_telemetry.config import SLOMonitorConfig
from tars_telemetry.monitor import load_slos
from tars_telemetry.rules import BURN_ALERT, TIERS, Tier, error_ratio_expr, events_expr, num, threshold
from tars_telemetry.spec import SLO

RELEASE_STARTED = "release_started"  # ctx.state key: unix time of the preflight of the running release
BASELINE = "release_baseline"  # ctx.state key: each SLO's error ratio over the hour before the release
BASELINE_WINDOW = "1h"
REMAINING = "slo:period_error_budget_remaining:ratio"
SPENT = "budget spent by the release"  # Evidence.detail prefix the report reads back


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def _unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _scalar(prom: Prometheus, query: str, at: float) -> float | None:
    """The single value of an aggregated query; ``None`` for no data or NaN (0/0: no events)."""
    result = prom.query(query, at=at)
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


def _burning_expr(slo: SLO, tier: Tier) -> str:
    """A tier's burn condition (both windows above its threshold) without the minimum-events guard."""
    sel, thr = f'{{slo="{slo.name}"}}', num(threshold(slo, tier))
    return f"slo:sli_error:ratio_rate{tier.long}{sel} > {thr} and slo:sli_error:ratio_rate{tier.short}{sel} > {thr}"


def _alert_key(labels: Mapping[str, str]) -> tuple[str, str]:
    return labels.get("slo", ""), labels.get("tier", "")


def _percent(share: float) -> str:
    return f"{share * 100:.1f} %"


def _budget_minutes(slo: SLO) -> float:
    return slo.budget * slo.period / 60


def gated(config: SLOMonitorConfig, plugin: str | None = None) -> list[SLO]:
    """The SLOs the gate judges: all but ``ignore_slos``; for a fix, those ``slos_for`` names (else all)."""
    slos = [s for s in load_slos(config) if s.name not in config.ignore_slos]
    wanted = config.slos_for.get(plugin or "")
    return [s for s in slos if s.name in wanted] if wanted else slos


def preflight(ctx: Context, plan: Plan) -> Judgement:
    """The error-budget policy: freeze the release while an SLO has less than ``freeze_below_percent`` of
    its budget left, unless it is a reliability release (then say so and let it through)."""
    config: SLOMonitorConfig = ctx.config
    slos = gated(config)
    t = time.time()
    with connect(ctx.targets) as prom:
        remaining = {r["metric"].get("slo"): float(r["value"][1]) for r in prom.query(REMAINING, at=t)}
        baseline = {s.name: _scalar(prom, error_ratio_expr(s, BASELINE_WINDOW), t) for s in slos}
    ctx.state.update({RELEASE_STARTED: t, BASELINE: baseline})
    evidence: list[Evidence] = []
    low: list[tuple[SLO, float]] = []
    for slo in slos:
        value = remaining.get(slo.name)
        if value is not None and math.isnan(value):
            value = None
        detail = "no data yet" if value is None else f"{_percent(value)} of the {slo.period_text} budget left"
        evidence.append(Evidence(query=f'{REMAINING}{{slo="{slo.name}"}}', value=value, at=iso(t), detail=detail))
        if value is not None and value * 100 < config.freeze_below_percent:
            low.append((slo, value))
    judged = [e for e in evidence if e.value is not None]
    if not judged:
        return Judgement(
            "inconclusive",
            (f"no SLO has a remaining-budget figure on {prom.shown}: the SLO rules have no data yet",),
            evidence,
        )
    policy = f"policy: freeze below {config.freeze_below_percent:g} %"
    frozen = [f"{slo.name} has {_percent(v)} of its {slo.period_text} error budget left ({policy})" for slo, v in low]
    if frozen and not plan.reliability:
        return Judgement(
            "fail",
            (
                f"release frozen by the error-budget policy: {frozen[0]}; only a reliability release "
                "(release.reliability: true) may go ahead",
                *frozen[1:],
            ),
            evidence,
        )
    if frozen:
        reasons = tuple(f"warning: {line}; allowed because {plan.release} is a reliability release" for line in frozen)
        return Judgement("pass", reasons, evidence)
    lowest = min((e for e in judged), key=lambda e: e.value or 0.0)
    slo_name = lowest.query.split('"')[1]
    return Judgement(
        "pass",
        (
            f"every SLO has at least {config.freeze_below_percent:g} % of its budget left (lowest: {slo_name}, "
            f"{_percent(lowest.value or 0.0)})",
        ),
        evidence,
    )


@attrs.frozen
class Round:
    """One round of queries during a bake: what tripped (empty: nothing) and what was read."""

    failures: list[str]
    evidence: list[Evidence]
    judged: int  # SLOs with enough events to judge


def check(
    prom: Prometheus,
    config: SLOMonitorConfig,
    slos: Sequence[SLO],
    change: Change,
    since: float,
    baseline: Mapping[str, float | None],
) -> Round:
    t = time.time()
    applied = _unix(change.applied_at)
    failures: list[str] = []
    evidence: list[Evidence] = []
    names = "|".join(s.name for s in slos)
    alerts = f'ALERTS{{alertname="{BURN_ALERT}",alertstate="firing",severity="page",slo=~"{names}"}}'
    firing = prom.query(alerts, at=t)
    # when each went active (pending): Prometheus keeps it in ALERTS_FOR_STATE; one active before the fix
    # was applied is a burn the fix found, not one it caused
    since_q = alerts.replace("ALERTS{", "ALERTS_FOR_STATE{").replace(',alertstate="firing"', "")
    active = {_alert_key(r["metric"]): float(r["value"][1]) for r in prom.query(since_q, at=t)}
    evidence.append(Evidence(query=alerts, value=float(len(firing)), at=iso(t), detail="page-tier alerts firing"))
    by_name = {s.name: s for s in slos}
    tiers = {tier.name: tier for tier in TIERS}
    for alert in firing:
        labels = alert["metric"]
        started = active.get(_alert_key(labels), t)
        where = (
            f"{labels.get('slo')}: page tier {labels.get('tier')} (burn over both {labels.get('long_window')} and "
            f"{labels.get('short_window')})"
        )
        if started < applied:
            why = f"active since {iso(started)}, before {change.plugin}"
        else:
            # An alert can start after the fix only because its minimum-events guard was met then: the burn
            # was there before. Its condition without the guard, at the time the fix was applied, says which.
            slo, tier = by_name.get(labels.get("slo", "")), tiers.get(labels.get("tier", ""))
            before_q = _burning_expr(slo, tier) if slo and tier else None
            if before_q is None or not prom.query(before_q, at=applied):
                failures.append(f"{where} started firing after {change.plugin} was applied")
                continue
            why = f"its burn condition already held when {change.plugin} was applied ({before_q})"
        evidence.append(
            Evidence(query=since_q, value=started, at=iso(t), detail=f"{where} {why}: not judged against it")
        )
    judged = 0
    window = max(t - applied, config.min_window_s)
    w = f"{round(window)}s"
    seconds = round(max(t - since, config.min_window_s))
    for slo in slos:
        ratio_q = error_ratio_expr(slo, w)
        ratio = _scalar(prom, ratio_q, t)
        before = _scalar(prom, ratio_q, applied)  # the same length of time just before the fix
        events = _scalar(prom, events_expr(slo, w), t) or 0.0
        burn = None if ratio is None else ratio / slo.budget
        burn_before = 0.0 if before is None else before / slo.budget
        if burn is None or events < config.bake_min_events:
            detail = f"insufficient data: {events:.0f} events in {w} (judged from {config.bake_min_events})"
        else:
            judged += 1
            detail = (
                f"burn {burn:.2f}x over the {w} since {change.plugin} was applied ({burn_before:.2f}x in the {w} "
                f"before), on {events:.0f} events"
            )
            caused = burn >= config.regression_factor * burn_before
            if burn >= config.bake_burn_rate and caused:
                failures.append(
                    f"{slo.name}: error budget burning at {burn:.1f}x over the {w} since {change.plugin} was "
                    f"applied, {burn_before:.1f}x before it (error ratio {ratio:.4%} on {events:.0f} events; "
                    f"limit {config.bake_burn_rate:g}x)"
                )
            elif burn >= config.bake_burn_rate:
                detail += f"; already burning this fast before {change.plugin}, so not judged against it"
        evidence.append(Evidence(query=ratio_q, value=ratio, at=iso(t), detail=detail))
        spent_q = f"({error_ratio_expr(slo, f'{seconds}s')}) * {seconds} / 60"
        spent = _scalar(prom, spent_q, t)
        if spent is None:
            continue
        usual = (baseline.get(slo.name) or 0.0) * seconds / 60  # what the pre-release error rate would spend
        excess = max(0.0, spent - usual)
        share = excess / _budget_minutes(slo)
        evidence.append(
            Evidence(
                query=spent_q,
                value=spent,
                at=iso(t),
                detail=f"{SPENT} {slo.name}: {spent:.2f} min of its {_budget_minutes(slo):.1f} min "
                f"{slo.period_text} budget in {seconds}s, {excess:.2f} min ({_percent(share)}) above the "
                "pre-release error rate",
            )
        )
        if share * 100 > config.max_release_burn_percent:
            failures.append(
                f"{slo.name}: the release has spent {_percent(share)} of the {slo.period_text} error budget above "
                f"the pre-release rate ({excess:.1f} min; limit {config.max_release_burn_percent:g} %)"
            )
    return Round(failures, evidence, judged)


async def observe(ctx: Context, change: Change) -> Judgement:
    config: SLOMonitorConfig = ctx.config
    slos = gated(config, change.plugin)
    since = float(ctx.state.get(RELEASE_STARTED) or _unix(change.applied_at))
    baseline: dict[str, float | None] = ctx.state.get(BASELINE) or {}
    bake = rounds(change.bake_seconds, config.poll_interval_s)  # the bake starts now, not once connected
    prom = await anyio.to_thread.run_sync(connect, ctx.targets)
    try:
        async for _ in bake:
            try:
                last = await anyio.to_thread.run_sync(check, prom, config, slos, change, since, baseline)
            except PrometheusError as exc:
                return Judgement("inconclusive", (f"cannot read the SLOs while {change.plugin} bakes: {exc}",))
            if last.failures:
                return Judgement("fail", tuple(last.failures), last.evidence)
    finally:
        prom.close()
    if not last.judged:
        return Judgement(
            "inconclusive",
            (
                f"no SLO {change.plugin} touches had {config.bake_min_events} events during its "
                f"{change.bake_seconds:g}s bake: nothing to judge it on",
            ),
            last.evidence,
        )
    return Judgement(
        "pass",
        (f"{last.judged} SLO(s) burned below {config.bake_burn_rate:g}x during the {change.bake_seconds:g}s bake",),
        last.evidence,
    )


def budget_spent(judgements: Sequence[JudgementRecord], monitor: str) -> dict[str, Evidence]:
    """Per SLO, the last "budget spent by the release" figure this monitor recorded while fixes baked."""
    latest: dict[str, Evidence] = {}
    for record in sorted(judgements, key=lambda j: j.ended_at):
        if record.monitor != monitor or record.kind != "observe":
            continue
        for e in record.evidence:
            if e.detail.startswith(SPENT) and e.value is not None:
                latest[e.detail[len(SPENT) :].split(":")[0].strip()] = e
    return latest


def report_section(release: Release, monitor: str) -> ReportSection | None:
    """ "v1.0.1 burned 3.2 min of the evaluation-success budget", per SLO, from the ledger's judgements."""
    spent = budget_spent(release.judgements, monitor)
    gates = [j for j in release.judgements if j.monitor == monitor]
    if not gates:
        return None
    lines: list[str] = []
    if spent:
        worst = max(spent.items(), key=lambda kv: kv[1].value or 0.0)
        lines.append(
            f"{release.name} burned {worst[1].value:.1f} min of the {worst[0]} error budget, the most of any SLO "
            "(measured from preflight to the end of the last bake):\n"
        )
        rows = [(name, e.detail.split(": ", 1)[1], e.at) for name, e in sorted(spent.items())]
        lines.append(markdown_table(("SLO", "budget spent by the release", "measured at"), rows))
    else:
        lines.append("No fix baked under this monitor, so no budget figure was taken.")
    verdicts = [f"{j.kind} {j.plugin or 'release'}: {j.verdict}" for j in gates]
    lines.append("\nGate decisions (details, queries and values in the gates section above): " + "; ".join(verdicts))
    data = {name: {"minutes": e.value, "query": e.query, "at": e.at} for name, e in spent.items()}
    return ReportSection(title="SLO monitor: error budget spent by the release", markdown="\n".join(lines), data=data)
