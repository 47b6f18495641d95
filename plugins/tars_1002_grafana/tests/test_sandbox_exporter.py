"""The sandbox contribution (exporter service, scrape target, seed), the exporter's exposition, the report
hook and a small benchmark run through the hook."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tars_1002_grafana import plugin
from tars_1002_grafana.catalogue import FAMILIES

from tars_core import BenchmarkResult, Metric, PluginInfo, SandboxSite, Targets
from tars_core.processes import Service, http_ready
from tars_core.redact import Redactor
from tars_core.report import write_report
from tars_core.testing import make_context, release_for
from tars_core.waiting import wait_until


def _scrape(target: str) -> dict[str, Any]:
    text = httpx.get(f"http://{target}/metrics", timeout=5).text
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_exporter_serves_every_catalogue_family_with_growing_counters(exporter: str) -> None:
    first = _scrape(exporter)
    for fam in FAMILIES:
        name = fam.name[: -len("_total")] if fam.type == "counter" and fam.name.endswith("_total") else fam.name
        assert name in first, f"{fam.name} missing from the exporter"
        labels = set(first[name].samples[0].labels) - {"le"}
        assert labels == set(fam.labels) - {"instance"}, (fam.name, labels)

    def counters(families: dict[str, Any]) -> dict[Any, float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families["tars_evaluations"].samples}

    a = counters(first)

    def moved() -> dict[Any, float] | None:
        now = counters(_scrape(exporter))
        return now if now != a else None

    b = wait_until(moved, timeout=30, what="the exporter's counters moving")
    assert a.keys() == b.keys() and all(b[k] >= a[k] for k in a) and any(b[k] > a[k] for k in a)
    hist = first["tars_evaluation_duration_seconds"].samples
    one = [
        s.value
        for s in hist
        if s.name.endswith("_bucket") and s.labels["agent_id"] == "agent-000" and s.labels["region"] == "us-east-1"
    ]
    assert len(one) == 12 and one == sorted(one)  # 12 cumulative buckets


def test_sandbox_contributes_a_running_exporter_and_seeds_dashboards_idempotently(tmp_path: Path) -> None:
    targets = Targets(
        prometheus_url="http://127.0.0.1:1",
        prometheus_rules_dir=str(tmp_path / "rules"),
        grafana_dashboards_dir=str(tmp_path / "dash"),
    )
    contrib = plugin.tars_sandbox(SandboxSite(dir=tmp_path, targets=targets, python=sys.executable))
    (svc,) = contrib.services
    assert svc.argv[:3] == [sys.executable, "-m", "tars_1002_grafana.exporter"]
    assert contrib.scrape_targets == [f"127.0.0.1:{svc.port}"]
    assert svc.ready == "http:/metrics"
    ready = http_ready(f"http://{contrib.scrape_targets[0]}/metrics")
    with Service(svc.name, svc.argv, log=tmp_path / "exporter.log", ready=ready, start_timeout=30) as running:
        assert running.check() is None  # started and answering where the sandbox will scrape it
    ctx = make_context(plugin, targets=targets, config=dict(contrib.config), state_dir=tmp_path / "state")
    plugin.tars_sandbox_seed(ctx)
    seeded = sorted(p.name for p in (tmp_path / "dash").iterdir())
    assert seeded == ["tars-infrastructure.json", "tars-overview.json"]
    assert (tmp_path / "rules").is_dir()
    patched = tmp_path / "dash" / "tars-overview.json"
    patched.write_text('{"panels": []}')
    plugin.tars_sandbox_seed(ctx)  # again: a patched (already changed) dashboard is left alone
    assert patched.read_text() == '{"panels": []}'


def test_report_section_lists_groups_and_leaves_the_metrics_to_the_core(tmp_path: Path) -> None:
    info = plugin.tars_plugin_info()
    bench = BenchmarkResult(
        metrics=[Metric("whole dashboard load", 2300.0, 310.0, "ms", "< 1000 ms", True)], detail="table"
    )
    release = release_for(info, report_dir=tmp_path, benchmark=bench)
    section = plugin.tars_report(release)
    assert section is not None
    assert "| tars_slo_compliance | 60s | 12 |" in section.markdown
    assert "whole dashboard load" not in section.markdown and "applied" not in section.markdown
    assert section.data == {"rules": 71, "groups": 9}
    report = write_report(release, {info.name: section}, Redactor(), {}).get("md")
    assert report is not None
    text = report.read_text()
    assert text.count("whole dashboard load") == 1 and "| tars_slo_compliance | 60s | 12 |" in text
    assert plugin.tars_report(release_for(PluginInfo(name="x", title="x"), report_dir=tmp_path)) is None


def test_benchmark_hook_small_run_on_a_real_backfilled_prometheus(tmp_path: Path) -> None:
    """Shape and sanity only (tests never assert timing): every rewritten panel returns recorded series."""
    ctx = make_context(
        plugin,
        targets=Targets(),
        state_dir=tmp_path,
        config={
            "benchmark_agents": 4,
            "benchmark_regions": 2,
            "benchmark_hours": 2.5,
            "benchmark_calls": 2,
            "benchmark_resolution_s": 30,
        },
    )

    result = plugin.tars_benchmark(ctx)
    names = [m.name for m in result.metrics]
    assert "whole dashboard load (all panels at once), median" in names
    assert all(m.unit for m in result.metrics) and all(m.after >= 0 for m in result.metrics)
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["evaluations"] > 5000
    rewritten = [p for p in report["panels"] if "recorded" in p]
    assert len(rewritten) >= 40
    assert all(p["rec_series"] > 0 and p["raw_series"] > 0 for p in rewritten), [
        p["panel"] for p in rewritten if not p["rec_series"]
    ]
