"""The release report: ``report.json`` for machines, ``report.md`` for people, ``junit.xml`` for CI.

The report is rebuilt from the ledger (not from the last run's memory), so it tells the truth about
every phase ever recorded for the release, including crashes that were resolved later. Plugins add
sections through ``tars_report``; a plugin whose hook raises gets a section saying so instead of
silently disappearing from the evidence.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cattrs

from tars_core.config import converter
from tars_core.model import BenchmarkResult, PhaseRecord, Release, ReportSection
from tars_core.redact import Redactor


def build_release(
    name: str,
    plugins: Sequence[Any],
    states: dict[str, dict[str, str]],
    phases: Sequence[PhaseRecord],
    benchmarks: dict[str, dict[str, Any]],
    targets: dict[str, Any],
    report_dir: Path,
) -> Release:
    selected = {p.name for p in plugins}
    bench: dict[str, BenchmarkResult] = {}
    for plugin, data in benchmarks.items():
        if plugin in selected:
            try:
                bench[plugin] = converter.structure(data, BenchmarkResult)
            except cattrs.BaseValidationError:
                continue
    return Release(
        name=name,
        plugins=[p.info for p in plugins],
        states={p.name: states.get(p.name, {}).get("state", "not_applied") for p in plugins},
        phases=[r for r in phases if r.plugin in selected],
        benchmarks=bench,
        targets=targets,
        report_dir=report_dir,
    )


def write_report(
    release: Release,
    sections: dict[str, ReportSection | str],
    redact: Redactor,
    versions: dict[str, str],
) -> dict[str, Path]:
    """Write the three files; ``sections`` maps plugin name to its section or to an error text."""
    out = release.report_dir
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "release": release.name,
        "targets": release.targets,
        "plugins": [
            {
                "name": info.name,
                "title": info.title,
                "fix_id": info.fix_id,
                "kind": info.kind,
                "version": versions.get(info.name, ""),
                "state": release.states.get(info.name, "not_applied"),
                "phases": [converter.unstructure(r) for r in release.phases if r.plugin == info.name],
                "benchmark": converter.unstructure(release.benchmarks[info.name])
                if info.name in release.benchmarks
                else None,
                "section": _section_data(sections.get(info.name)),
            }
            for info in release.plugins
        ],
    }
    doc = redact.data(doc)
    paths = {"json": out / "report.json", "md": out / "report.md", "junit": out / "junit.xml"}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths["md"].write_text(redact(_markdown(doc)))
    paths["junit"].write_text(redact(_junit(doc)))
    return paths


def _section_data(section: ReportSection | str | None) -> dict[str, Any] | None:
    if section is None:
        return None
    if isinstance(section, str):
        return {"title": "report hook failed", "markdown": section, "data": {}}
    return {"title": section.title, "markdown": section.markdown, "data": dict(section.data)}


def _markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# Release {doc['release']}",
        "",
        "| plugin | fix | version | state | last phase |",
        "|---|---|---|---|---|",
    ]
    for p in doc["plugins"]:
        last = p["phases"][-1] if p["phases"] else None
        last_txt = f"{last['phase']} {last['outcome']}" if last else "never run"
        lines.append(f"| {p['name']} | {p['fix_id'] or ''} | {p['version']} | {p['state']} | {last_txt} |")
    lines.append("")
    targets = ", ".join(f"{k}={v}" for k, v in doc["targets"].items() if v)
    lines += [f"Targets: {targets or 'none'}", ""]
    for p in doc["plugins"]:
        lines += [f"## {p['name']}: {p['title']}", ""]
        if p["phases"]:
            lines += ["| phase | outcome | started | ended | error |", "|---|---|---|---|---|"]
            for r in p["phases"]:
                err = (r.get("error") or "").replace("|", "\\|")
                lines.append(
                    f"| {r['phase']} | {r['outcome']} | {r['started_at']} | {r.get('ended_at') or ''} | {err} |"
                )
            lines.append("")
        if p["benchmark"]:
            lines += ["| metric | before | after | unit | target | met |", "|---|---|---|---|---|---|"]
            for m in p["benchmark"]["metrics"]:
                met = "" if m.get("met") is None else ("yes" if m["met"] else "**no**")
                before = "" if m.get("before") is None else f"{m['before']:g}"
                lines.append(
                    f"| {m['name']} | {before} | {m['after']:g} | {m['unit']} | {m.get('target', '')} | {met} |"
                )
            lines.append("")
        if p["section"]:
            lines += [f"### {p['section']['title']}", "", p["section"]["markdown"], ""]
    return "\n".join(lines) + "\n"


def _junit(doc: dict[str, Any]) -> str:
    """One testcase per plugin and phase (its latest outcome), so CI shows which phase of which fix failed."""
    suite = ET.Element("testsuite", name=f"tars-{doc['release']}")
    tests = failures = skipped = 0
    for p in doc["plugins"]:
        latest: dict[str, dict[str, Any]] = {}
        for r in p["phases"]:
            latest[r["phase"]] = r
        for phase, r in latest.items():
            tests += 1
            case = ET.SubElement(suite, "testcase", classname=p["name"], name=phase)
            if r["outcome"] in ("failed", "interrupted"):
                failures += 1
                ET.SubElement(case, "failure", message=r.get("error") or r["outcome"]).text = r.get("error") or ""
            elif r["outcome"] in ("skipped", "dry-run"):
                skipped += 1
                ET.SubElement(case, "skipped", message=r.get("detail") or r["outcome"])
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    return ET.tostring(suite, encoding="unicode") + "\n"
