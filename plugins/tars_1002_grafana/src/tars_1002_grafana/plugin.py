"""tars-1002-grafana: the TARS-1002 hooks (recording rules + dashboard patch on Prometheus/Grafana).

Imports only the core, attrs and the standard library at module level so ``tars-run list`` stays fast;
the work (promql-parser, httpx, yaml, promtool) lives in ``fix``/``bench`` and is imported inside hooks.
The blocking work runs in a worker thread so the runner's timeouts and Ctrl-C still reach it.
"""

import importlib.resources
import sys
from pathlib import Path
from typing import Any, Literal

import attrs

from tars_core import (
    ApplyResult,
    BenchmarkResult,
    Context,
    PluginInfo,
    Release,
    ReportSection,
    SandboxContribution,
    SandboxSite,
    ServiceSpec,
    VerifyResult,
    hookimpl,
)

NAME = "tars-1002-grafana"


@attrs.define
class ExtraRule:
    """A site-specific recording rule added to the generated file (and matched by the patcher)."""

    record: str
    expr: str
    group: str = "tars_site_aggregations"
    interval: str = "30s"


@attrs.define
class GrafanaConfig:
    """``plugins.tars-1002-grafana`` section. See the README for what each key changes."""

    rule_file_name: str = "tars-1002-recording-rules.yml"
    macro_windows: dict[str, str] = attrs.field(factory=dict)
    extra_rules: list[ExtraRule] = attrs.field(factory=list)
    reload_method: Literal["http", "sighup"] = "http"
    prometheus_pid_file: str | None = None
    reload_timeout_s: float = 150.0
    verify_data: bool = True
    data_timeout_s: float = 150.0  # verify waits this long for fresh rules to record their first samples
    seed_dashboards: bool = True
    benchmark_agents: int = 100
    benchmark_regions: int = 5
    benchmark_hours: float = 2.0
    benchmark_calls: int = 5
    benchmark_resolution_s: int = 30
    benchmark_step_s: int = 60


@hookimpl
def tars_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        title="Grafana query timeouts: recording rules and dashboard patch",
        kind="hotfix",
        fix_id="TARS-1002",
        config=GrafanaConfig,
        description="71 Prometheus recording rules in 9 groups; Grafana panels rewritten onto them when the "
        "parsed query is the same computation.",
        risk="low: read-only optimisation, rule file and dashboards restored on rollback",
    )


async def _in_thread(fn: Any, ctx: Context) -> Any:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn, ctx, abandon_on_cancel=True)


@hookimpl
async def tars_apply(ctx: Context) -> ApplyResult:
    from tars_1002_grafana import fix

    return await _in_thread(fix.apply, ctx)


@hookimpl
async def tars_verify(ctx: Context) -> VerifyResult:
    from tars_1002_grafana import fix

    return await _in_thread(fix.verify, ctx)


@hookimpl
async def tars_rollback(ctx: Context) -> ApplyResult:
    from tars_1002_grafana import fix

    return await _in_thread(fix.rollback, ctx)


@hookimpl
async def tars_benchmark(ctx: Context) -> BenchmarkResult:
    from tars_1002_grafana import bench

    return await _in_thread(bench.benchmark_hook, ctx)


@hookimpl
def tars_report(release: Release) -> ReportSection | None:
    if not any(p.name == NAME for p in release.plugins):
        return None
    from tars_1002_grafana.rules import GROUPS, build_rules

    rules = build_rules()
    lines = [
        f"State: **{release.states.get(NAME, 'unknown')}**. {len(rules)} recording rules in {len(GROUPS)} groups:",
        "",
        "| group | interval | rules |",
        "|---|---|---|",
    ]
    for name, interval, _ in GROUPS:
        lines.append(f"| {name} | {interval} | {sum(1 for r in rules if r.group == name)} |")
    data: dict[str, Any] = {"rules": len(rules), "groups": len(GROUPS)}
    result = release.benchmarks.get(NAME)
    if result is not None:
        lines += ["", "| metric | before | after | unit | target | met |", "|---|---|---|---|---|---|"]
        for m in result.metrics:
            before = "" if m.before is None else f"{m.before:g}"
            lines.append(
                f"| {m.name} | {before} | {m.after:g} | {m.unit} | {m.target} | "
                f"{'' if m.met is None else ('yes' if m.met else 'no')} |"
            )
        if result.detail:
            lines += ["", result.detail]
        data["benchmark"] = {m.name: {"before": m.before, "after": m.after, "unit": m.unit} for m in result.metrics}
    return ReportSection(title="TARS-1002 Grafana query timeouts", markdown="\n".join(lines), data=data)


@hookimpl
def tars_sandbox(site: SandboxSite) -> SandboxContribution:
    port = site.free_port()
    argv = [site.python, "-m", "tars_1002_grafana.exporter", "--port", str(port), "--agents", "20", "--regions", "3"]
    return SandboxContribution(
        services=[ServiceSpec(name="exporter", argv=argv, port=port, ready="http:/metrics")],
        scrape_targets=[f"127.0.0.1:{port}"],
        config={},
    )


def dashboard_files() -> dict[str, str]:
    """The shipped T.A.R.S. v1.0.0 dashboards (the "before"), by file name."""
    root = importlib.resources.files("tars_1002_grafana") / "data" / "dashboards" / "v1.0.0"
    return {p.name: p.read_text(encoding="utf-8") for p in root.iterdir() if p.name.endswith(".json")}


@hookimpl
def tars_sandbox_seed(ctx: Context) -> None:
    """Put the v1.0.0 dashboards where Grafana provisioning reads them; leaves patched files alone."""
    if not ctx.config.seed_dashboards:
        return
    directory = Path(ctx.targets.require("grafana_dashboards_dir"))
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in dashboard_files().items():
        path = directory / name
        if not path.exists():
            path.write_text(text, encoding="utf-8")
            print(f"{NAME}: seeded {path}", file=sys.stderr)
    Path(ctx.targets.require("prometheus_rules_dir")).mkdir(parents=True, exist_ok=True)
