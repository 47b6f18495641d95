"""tars-1002-grafana: the TARS-1002 hooks (recording rules + dashboard patch on Prometheus/Grafana).

Imports only the core, attrs and the standard library at module level so ``tars-run list`` stays fast;
the work (promql-parser, httpx, yaml, promtool) lives in ``fix``/``bench`` and is imported inside hooks.
The phase hooks are plain functions because their work blocks: the core runs a sync hook in a worker
thread and, after a timeout or Ctrl-C, waits for that thread before any rollback, which a hook that
handed its work to an abandoned thread of its own would defeat.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tars_1002_grafana.config import GrafanaConfig
from tars_1002_grafana.dashboards import dashboard_files
from tars_core import PluginInfo, ReportSection, hookimpl
from tars_core.model import SandboxContribution, ServiceSpec

if TYPE_CHECKING:
    from tars_core import ApplyResult, BenchmarkResult, Context, Release, SandboxSite, VerifyResult

NAME = "tars-1002-grafana"


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


@hookimpl
def tars_apply(ctx: Context) -> ApplyResult:
    from tars_1002_grafana import fix

    return fix.apply(ctx)


@hookimpl
def tars_verify(ctx: Context) -> VerifyResult:
    from tars_1002_grafana import fix

    return fix.verify(ctx)


@hookimpl
def tars_rollback(ctx: Context) -> ApplyResult:
    from tars_1002_grafana import fix

    return fix.rollback(ctx)


@hookimpl
def tars_benchmark(ctx: Context) -> BenchmarkResult:
    from tars_1002_grafana import bench

    return bench.benchmark_hook(ctx)


@hookimpl
def tars_report(release: Release) -> ReportSection | None:
    """The rule groups this fix installs; the core report already shows the state, phases and benchmark."""
    if not any(p.name == NAME for p in release.plugins):
        return None
    from tars_1002_grafana.rules import GROUPS, build_rules
    from tars_core.report import markdown_table

    rules = build_rules()
    rows = [(name, interval, sum(1 for r in rules if r.group == name)) for name, interval, _ in GROUPS]
    markdown = f"{len(rules)} recording rules in {len(GROUPS)} groups:\n\n" + markdown_table(
        ("group", "interval", "rules"), rows
    )
    data: dict[str, Any] = {"rules": len(rules), "groups": len(GROUPS)}
    return ReportSection(title="TARS-1002 Grafana query timeouts", markdown=markdown, data=data)


@hookimpl
def tars_sandbox(site: SandboxSite) -> SandboxContribution:
    from tars_core.sandbox.incidents import site_incidents_path

    port = site.free_port()
    argv = [site.python, "-m", "tars_1002_grafana.exporter", "--port", str(port), "--agents", "20", "--regions", "3"]
    argv += ["--incidents", str(site_incidents_path(site))]  # `tars-run sandbox incident` writes it
    return SandboxContribution(
        services=[ServiceSpec(name="exporter", argv=argv, port=port, ready="http:/metrics")],
        scrape_targets=[f"127.0.0.1:{port}"],
        config={},
    )


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
