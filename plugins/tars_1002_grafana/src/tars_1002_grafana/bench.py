"""Dashboard query latency, raw versus recorded, on a real Prometheus holding realistic cardinality.

1. The catalogue's simulator writes ``hours`` of history for ``agents × regions`` (12-bucket histograms,
   one sample per ``step``) as OpenMetrics, one 2-hour block-aligned file at a time, and
   ``promtool tsdb create-blocks-from openmetrics`` turns each into TSDB blocks.
2. A throwaway ``prometheus`` opens that TSDB; ``promtool tsdb create-blocks-from rules`` evaluates the
   recording rules the patched dashboards use over the same span (as a rule evaluation every ``step``
   would have), and the blocks are moved in before Prometheus is restarted.
3. Every Prometheus panel query of the v1.0.0 dashboards (raw) and of the patched ones (recorded) is sent
   as Grafana sends it: ``POST /api/v1/query_range`` over the dashboard's time range, variables at "All".
   Each query runs ``calls`` times after one warm-up; the whole dashboard is then loaded ``loads`` times
   with all panel queries in flight at once. Latency is wall time at the client, in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from tars_1002_grafana.catalogue import Simulator, Topology, write_openmetrics
from tars_1002_grafana.config import GrafanaConfig
from tars_1002_grafana.dashboards import dashboard_files
from tars_1002_grafana.patcher import (
    VAR_MATCHER,
    fill_variables,
    iter_panels,
    parse_query,
    patch_dashboard,
    selector_names,
    vector_selectors,
)
from tars_1002_grafana.rules import (
    Rule,
    build_rules,
    group_intervals,
    render_rule_file,
)
from tars_core import BenchmarkResult, Context, Metric
from tars_core.prometheus import Prometheus, PrometheusServer
from tars_core.promtool import promtool
from tars_core.report import format_number, markdown_table, percentile
from tars_core.waiting import WaitTimeout, wait_until

BLOCK = 7200


@attrs.frozen
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    raw: str
    recorded: str | None  # None when the patcher left the query as it was


@attrs.define
class Timing:
    p50_ms: float
    p95_ms: float
    series: int
    samples: list[float]


@attrs.define
class BenchReport:
    agents: int
    regions: int
    hours: float
    resolution_s: int
    step_s: int
    range_hours: float
    series_total: int
    samples_total: int
    evaluations: float
    panels: list[dict[str, Any]]
    dashboard_raw_ms: list[float]
    dashboard_recorded_ms: list[float]
    setup_s: float
    seed_example: dict[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchReport:
        return cls(**data)


def grafana_expr(expr: str, step: int, scrape: int, selected: Mapping[str, Sequence[str]] | None = None) -> str:
    """The query Grafana sends: variables at "All" (allValue ``.*``) unless ``selected`` gives their
    values (a multi-value selection becomes ``(a|b|c)``), and Grafana's macro values.

    ``$__rate_interval`` is max($__interval + scrape interval, 4 × scrape interval), as Grafana defines it.
    """
    chosen = selected or {}

    def matcher(m: re.Match[str]) -> str:
        label, op, var = m.group(1), m.group(2), m.group(3)
        name = re.sub(r"^\$\{?|(?::[^}]*)?\}?$|^\[\[|\]\]$", "", var)
        values = chosen.get(name)
        if values:
            value = values[0] if len(values) == 1 else "(" + "|".join(values) + ")"
            if op in ("=", "!=") and len(values) > 1:
                op = "=~" if op == "=" else "!~"
            return f'{label}{op}"{value}"'
        return f'{label}=~".*"' if op in ("=", "=~") else f'{label}!~".*"'

    expr = VAR_MATCHER.sub(matcher, expr)
    rate_interval = max(step + scrape, 4 * scrape)
    return fill_variables(expr, {"__rate_interval": f"{rate_interval}s", "__interval": f"{step}s"})


def dashboard_queries(dashboards: dict[str, dict[str, Any]], rules: Sequence[Rule]) -> list[PanelQuery]:
    out = []
    for name, dash in dashboards.items():
        _, changes = patch_dashboard(dash, rules)
        rewritten = {(c.panel, c.ref): c.after for c in changes if c.action == "rewritten"}
        skipped = {(c.panel, c.ref) for c in changes if c.action == "skipped" and c.reason == "not a Prometheus query"}
        for panel in iter_panels(dash):
            title = str(panel.get("title"))
            for t in panel.get("targets") or []:
                ref, expr = str(t.get("refId")), t.get("expr")
                if not isinstance(expr, str) or (title, ref) in skipped or panel.get("libraryPanel"):
                    continue
                out.append(PanelQuery(name, title, ref, expr, rewritten.get((title, ref))))
    return out


def _selectors(expr: str) -> list[str]:
    return [str(vs) for vs in vector_selectors(parse_query(expr)[0])]


def _time(prom: Prometheus, expr: str, start: float, end: float, step: int, calls: int) -> list[float]:
    prom.query_range(expr, start, end, step)  # warm-up, not counted
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        prom.query_range(expr, start, end, step)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _load_dashboard(url: str, exprs: Sequence[str], start: float, end: float, step: int) -> float:
    """All panel queries in flight at once, as a dashboard opening does; wall time until the last answer."""
    clients = [Prometheus(url, timeout=300) for _ in exprs]
    try:
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(len(exprs), 1)) as pool:
            list(pool.map(lambda ce: ce[0].query_range(ce[1], start, end, step), zip(clients, exprs, strict=True)))
        return (time.perf_counter() - t) * 1000
    finally:
        for c in clients:
            c.close()


def build_tsdb(
    workdir: Path, topo: Topology, hours: float, step: int, log: Callable[[str], None]
) -> tuple[float, float, int]:
    """Backfill ``hours`` sampled every ``step`` s, ending before now; returns (start, end, samples)."""
    sim = Simulator(topo)
    end = math.floor((time.time() - 120) / 60) * 60
    start = end - int(hours * 3600)
    t0 = start - 3600  # an hour of history before the window, so rates are defined from the start
    tsdb = workdir / "tsdb"
    tsdb.mkdir(parents=True, exist_ok=True)
    samples = 0
    chunk_start = start
    while chunk_start <= end:
        chunk_end = min((chunk_start // BLOCK + 1) * BLOCK - step, end)
        om = workdir / "chunk.om"
        samples += write_openmetrics(
            sim,
            om,
            start=chunk_start,
            end=chunk_end,
            step=step,
            t0=t0,
            extra_labels={"job": "tars-eval-api", "instance": "eval-api:8000"},
        )
        promtool("tsdb", "create-blocks-from", "openmetrics", str(om), str(tsdb), timeout=3600)
        om.unlink()
        log(
            f"backfilled {time.strftime('%H:%M', time.gmtime(chunk_start))}-"
            f"{time.strftime('%H:%M', time.gmtime(chunk_end))} UTC ({samples:,} samples so far)"
        )
        chunk_start = chunk_end + step
    return start, end, samples


def _wait_compacted(tsdb: Path, timeout: float) -> int:
    """Wait until the block count is stable for a minute (vertical compaction of the backfilled rule
    blocks into the raw ones has finished), so timing does not race the compactor."""

    def count() -> int:
        return sum(1 for p in tsdb.iterdir() if p.is_dir() and len(p.name) == 26 and (p / "meta.json").exists())

    seen = {"blocks": count(), "since": time.monotonic()}

    def settled() -> bool:
        now = count()
        busy = any(p.name.endswith(".tmp-for-creation") for p in tsdb.iterdir())
        if now != seen["blocks"] or busy:
            seen.update(blocks=now, since=time.monotonic())
            return False
        return time.monotonic() - seen["since"] >= 60

    with contextlib.suppress(WaitTimeout):  # still compacting: time it anyway, as before a deadline
        wait_until(settled, timeout=timeout, interval=10, what="TSDB compaction")
    return int(seen["blocks"])


def run(
    *,
    agents: int = 200,
    regions: int = 5,
    hours: float = 24.0,
    resolution: int = 30,
    step: int = 60,
    range_hours: float | None = None,
    query_step: int | None = None,
    seed_calls: int = 0,
    calls: int = 20,
    loads: int = 5,
    selected: Mapping[str, Sequence[str]] | None = None,
    panels_only: Sequence[str] = (),
    workdir: Path | None = None,
    dashboards: dict[str, dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
) -> BenchReport:
    setup = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="tars-1002-bench-")) if workdir is None else workdir
    try:
        marker = tmp / "backfill.json"
        if marker.exists() and (tmp / "tsdb").is_dir():
            # --workdir of an earlier run: the raw history is already in the TSDB, reuse it
            done = json.loads(marker.read_text())
            start, end, samples = float(done["start"]), float(done["end"]), int(done["samples"])
            log(f"reusing the backfilled TSDB in {tmp} ({samples:,} samples)")
        else:
            start, end, samples = build_tsdb(tmp, Topology(agents=agents, regions=regions), hours, resolution, log)
            marker.write_text(json.dumps({"start": start, "end": end, "samples": samples}))
        rules = build_rules()
        dashes = dashboards or {n: json.loads(t) for n, t in dashboard_files().items()}
        queries = dashboard_queries(dashes, rules)
        timed = [q for q in queries if not panels_only or q.panel in panels_only]
        used = {name for q in queries if q.recorded for name in selector_names(parse_query(q.recorded)[0])}
        needed = [r for r in rules if r.record in used]
        rule_file = tmp / "backfill-rules.yml"
        # Evaluate every group at the query step: promtool backfills at each group's own interval
        # otherwise (4x the work for 15 s groups) while the dashboard reads one point per step anyway.
        rule_file.write_text(render_rule_file(needed, {g: f"{step}s" for g in group_intervals()}), encoding="utf-8")
        server = PrometheusServer(
            tmp / "prom",
            tsdb=tmp / "tsdb",
            rules_dir=tmp / "prom" / "rules",
            extra_args=["--query.timeout=10m"],
            retention="3650d",
            process_name="tars-1002-bench-prometheus",
        )
        rules_marker = tmp / "rules-backfilled.json"
        wanted = sorted(r.record for r in needed)
        if rules_marker.exists() and json.loads(rules_marker.read_text()) == wanted:
            log(f"reusing the {len(needed)} backfilled recording rules")
            server.start(timeout=300)
        else:
            blocks = tmp / "rule-blocks"
            shutil.rmtree(blocks, ignore_errors=True)
            server.start(timeout=300)
            try:
                log(
                    f"evaluating {len(needed)} recording rules over {(end - start) / 3600:g} h with "
                    "promtool tsdb create-blocks-from rules"
                )
                promtool(
                    "tsdb",
                    "create-blocks-from",
                    "rules",
                    f"--start={int(start)}",
                    f"--end={int(end)}",
                    f"--url={server.url}",
                    f"--output-dir={blocks}",
                    f"--eval-interval={step}s",
                    str(rule_file),
                    timeout=7200,
                )
            finally:
                server.stop()
            for block in blocks.iterdir():
                if block.is_dir():
                    shutil.move(str(block), str(tmp / "tsdb" / block.name))
            rules_marker.write_text(json.dumps(wanted))
            server.start(timeout=300)
        log("waiting for Prometheus to compact the backfilled blocks")
        blocks_left = _wait_compacted(tmp / "tsdb", timeout=1800)
        log(f"{blocks_left} blocks after compaction")
        setup_s = time.perf_counter() - setup
        qstep = query_step or step
        qstart = end - range_hours * 3600 if range_hours else start
        try:
            with Prometheus(server.url, timeout=900) as prom:
                series_total = int(float(prom.query('count({__name__=~".+"})', at=end)[0]["value"][1]))
                ev = prom.query(f"sum(increase(tars_evaluations_total[{int(end - start)}s]))", at=end)
                evaluations = float(ev[0]["value"][1]) if ev else 0.0
                log(
                    f"{series_total:,} series, {evaluations:,.0f} evaluations in the window; timing "
                    f"{len(timed)} panel queries x {calls} calls over {(end - qstart) / 3600:g} h, step {qstep} s"
                )
                panels = []
                for q in timed:
                    raw = grafana_expr(q.raw, qstep, resolution, selected)
                    row: dict[str, Any] = {"dashboard": q.dashboard, "panel": q.panel, "ref": q.ref, "raw": raw}
                    t_raw = _time(prom, raw, qstart, end, qstep, calls)
                    row["raw_p50_ms"], row["raw_p95_ms"] = percentile(t_raw, 50), percentile(t_raw, 95)
                    row["raw_series"] = sum(prom.series_count(s, qstart, end) for s in _selectors(raw))
                    if q.recorded:
                        rec = grafana_expr(q.recorded, qstep, resolution, selected)
                        t_rec = _time(prom, rec, qstart, end, qstep, calls)
                        row.update(
                            recorded=rec,
                            rec_p50_ms=percentile(t_rec, 50),
                            rec_p95_ms=percentile(t_rec, 95),
                            rec_series=sum(prom.series_count(s, qstart, end) for s in _selectors(rec)),
                        )
                    panels.append(row)
                    log(
                        f"  {q.panel[:44]:44} raw p50 {row['raw_p50_ms']:8.1f} ms"
                        + (f"  recorded p50 {row['rec_p50_ms']:7.1f} ms" if q.recorded else "  (not rewritten)")
                    )
                seed: dict[str, Any] = {}
                if seed_calls:
                    p = next(p for p in panels if p["panel"] == "Evaluation latency p95 by agent")
                    log(f"seed example over the whole {(end - start) / 3600:g} h, step {step} s, {seed_calls} calls")
                    t_raw = _time(prom, p["raw"], start, end, step, seed_calls)
                    t_rec = _time(prom, p["recorded"], start, end, step, seed_calls)
                    seed = {
                        "panel": p["panel"],
                        "range_hours": (end - start) / 3600,
                        "step_s": step,
                        "calls": seed_calls,
                        "raw": p["raw"],
                        "recorded": p["recorded"],
                        "raw_ms": t_raw,
                        "rec_ms": t_rec,
                    }
                    log(f"  raw median {statistics.median(t_raw):.0f} ms, recorded {statistics.median(t_rec):.0f} ms")
            raw_exprs = [p["raw"] for p in panels]
            rec_exprs = [p.get("recorded") or p["raw"] for p in panels]
            dash_raw = [_load_dashboard(server.url, raw_exprs, qstart, end, qstep) for _ in range(loads)]
            dash_rec = [_load_dashboard(server.url, rec_exprs, qstart, end, qstep) for _ in range(loads)]
        finally:
            server.stop()
        return BenchReport(
            agents,
            regions,
            (end - start) / 3600,
            resolution,
            qstep,
            (end - qstart) / 3600,
            series_total,
            samples,
            evaluations,
            panels,
            dash_raw,
            dash_rec,
            setup_s,
            seed,
        )
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


SEED_PANEL = "Evaluation latency p95 by agent"


def summary_metrics(report: BenchReport) -> list[Metric]:
    """The headline before/after figures.

    * the seed's own example panel (p95 by agent and region): raw vs recorded query_range p50;
    * latency panels (every rewritten ``histogram_quantile`` query): median of the per-panel speed-ups;
    * the slowest panel query and the whole dashboard with all panels in flight at once.
    """

    def ratio(p: dict[str, Any]) -> float:
        return float(p["raw_p50_ms"] / p["rec_p50_ms"]) if p.get("rec_p50_ms") else math.nan

    out = []
    seed = next((p for p in report.panels if p["panel"] == SEED_PANEL and "recorded" in p), None)
    if seed is not None:
        out.append(
            Metric(
                "seed example panel (p95 by agent, region): query_range p50",
                round(seed["raw_p50_ms"], 1),
                round(seed["rec_p50_ms"], 1),
                "ms",
                "seed: 5000 ms -> 150 ms",
                seed["rec_p50_ms"] <= 150,
            )
        )
        out.append(
            Metric("seed example panel: speed-up", None, round(ratio(seed), 1), "x", ">= 33x", ratio(seed) >= 33)
        )
    latency = [p for p in report.panels if "histogram_quantile" in p["raw"] and "recorded" in p]
    if latency:
        med = statistics.median(ratio(p) for p in latency)
        out.append(
            Metric(
                f"latency panels ({len(latency)} histogram_quantile queries): median speed-up",
                None,
                round(med, 1),
                "x",
                ">= 33x",
                med >= 33,
            )
        )
        out.append(
            Metric(
                "latency panels: sum of query_range p50",
                round(sum(p["raw_p50_ms"] for p in latency), 1),
                round(sum(p["rec_p50_ms"] for p in latency), 1),
                "ms",
                "",
                None,
            )
        )
    worst_raw = max(p["raw_p95_ms"] for p in report.panels)
    worst_rec = max(p.get("rec_p95_ms", p["raw_p95_ms"]) for p in report.panels)
    out.append(Metric("slowest panel query p95", round(worst_raw, 1), round(worst_rec, 1), "ms", "", None))
    dash_raw, dash_rec = statistics.median(report.dashboard_raw_ms), statistics.median(report.dashboard_recorded_ms)
    out.append(
        Metric(
            "whole dashboard load (all panels at once), median",
            round(dash_raw, 1),
            round(dash_rec, 1),
            "ms",
            "< 1000 ms patched (seed bar: 5000 ms)",
            dash_rec < 1000,
        )
    )
    return out


def markdown(report: BenchReport) -> str:
    """The per-panel figures (the core report renders the headline metrics; this is the evidence behind them)."""
    rows = []
    for p in report.panels:
        raw = [format_number(p["raw_p50_ms"]), format_number(p["raw_p95_ms"]), format_number(p["raw_series"])]
        if "recorded" in p:
            speedup = p["raw_p50_ms"] / p["rec_p50_ms"] if p["rec_p50_ms"] else math.nan
            rec = [format_number(p[k]) for k in ("rec_p50_ms", "rec_p95_ms", "rec_series")]
            rows.append([f"{p['panel']} [{p['ref']}]", *raw, *rec, f"{format_number(speedup)}x"])
        else:
            rows.append([f"{p['panel']} [{p['ref']}] (not rewritten)", *raw, "", "", "", ""])
    headers = ("panel", "raw p50 ms", "raw p95 ms", "raw series", "recorded p50 ms", "recorded p95 ms")
    lines = [
        f"{report.agents} agents x {report.regions} regions, {report.hours:g} h sampled every "
        f"{report.resolution_s} s; dashboard range {report.range_hours:g} h, step {report.step_s} s; "
        f"{report.series_total:,} series, "
        f"{report.samples_total:,} raw samples, "
        f"{report.evaluations:,.0f} evaluations in the window.",
        "",
        markdown_table((*headers, "recorded series", "speed-up"), rows),
        "",
        f"Whole dashboard load (all {len(report.panels)} queries at once), median of "
        f"{len(report.dashboard_raw_ms)}: raw {statistics.median(report.dashboard_raw_ms):.0f} ms "
        f"(max {max(report.dashboard_raw_ms):.0f}), "
        f"patched {statistics.median(report.dashboard_recorded_ms):.0f} ms "
        f"(max {max(report.dashboard_recorded_ms):.0f}).",
    ]
    s = report.seed_example
    if s:
        lines += [
            "",
            f"Seed example over the whole {s['range_hours']:g} h (step {s['step_s']} s, {s['calls']} calls): "
            f"`{s['raw']}` median {statistics.median(s['raw_ms']):.0f} ms (max {max(s['raw_ms']):.0f}); "
            f"`{s['recorded']}` median {statistics.median(s['rec_ms']):.0f} ms (max {max(s['rec_ms']):.0f}).",
        ]
    return "\n".join(lines)


def benchmark_hook(ctx: Context) -> BenchmarkResult:
    """The ``tars_benchmark`` hook: a shorter run sized by the config (default 100 agents, 5 regions, 2 h)."""
    c: GrafanaConfig = ctx.config
    report = run(
        agents=c.benchmark_agents,
        regions=c.benchmark_regions,
        hours=c.benchmark_hours,
        resolution=c.benchmark_resolution_s,
        step=c.benchmark_step_s,
        calls=c.benchmark_calls,
        loads=3,
        log=ctx.log.info,
    )
    out = ctx.state_dir / "benchmark.json"
    out.write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    return BenchmarkResult(
        metrics=summary_metrics(report),
        detail=markdown(report) + f"\n\nRaw figures: {out}. Full size: python benchmarks/tars-1002-grafana_bench.py",
    )
