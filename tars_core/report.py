"""The release report: ``report.json`` for machines, ``report.md`` for people, ``junit.xml`` for CI.

The report is rebuilt from the ledger (not from the last run's memory), so it tells the truth about
every phase ever recorded for the release, including crashes that were resolved later. Plugins add
sections through ``tars_report``; a plugin whose hook raises gets a section saying so instead of
silently disappearing from the evidence.

A release run in several regions (``release.region``) has a report per region (``write_report`` with
``region``) and one for all of them with a section per region (``write_regions_report``).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cattrs

from tars_core.config import converter
from tars_core.model import (
    BenchmarkResult,
    JudgementRecord,
    Metric,
    Outcome,
    PhaseRecord,
    PluginState,
    Release,
    ReportSection,
)
from tars_core.redact import Redactor

MISSED = "MISSED"  # the one spelling of a missed target, in tables, progress lines and JSON consumers


def percentile(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values``, linear between closest ranks (numpy's default).

    Every benchmark reports p50/p95/p99 the same way, so figures from two plugins are comparable.
    """
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    if len(data) == 1 or p == 0:
        return float(data[0])
    if p == 100:
        return float(data[-1])
    return float(statistics.quantiles(data, n=10_000, method="inclusive")[round(p * 100) - 1])


def format_number(value: float | None) -> str:
    """One number format for every report: about four significant digits, thousands separated, no
    trailing zeros ("4.7", not "4.700")."""
    if value is None:
        return "n/a"
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -3:
        return f"{value:.3g}"
    text = f"{value:,.{max(0, 3 - magnitude)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def verdict(met: bool | None) -> str:
    """``met`` / ``MISSED`` / empty (the metric has no target)."""
    return "" if met is None else ("met" if met else MISSED)


def metric_line(m: Metric) -> str:
    """``name: before -> after unit; target T (met)``: the progress line of ``tars-run benchmark``."""
    before = format_number(m.before)
    tail = f"; target {m.target}" if m.target else ""
    judged = verdict(m.met)
    return f"{m.name}: {before} -> {format_number(m.after)} {m.unit}{tail}" + (f" (target {judged})" if judged else "")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; cells are escaped (``|``, newlines) so data cannot break it."""

    def cell(value: object) -> str:
        text = "" if value is None else str(value)
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ").strip()

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(metrics: Iterable[Metric | dict[str, Any]]) -> str:
    """The one rendering of benchmark figures: metric, before, after, unit, target, verdict."""
    rows = []
    for m in metrics:
        m = m if isinstance(m, Metric) else converter.structure(m, Metric)
        judged = verdict(m.met)
        rows.append(
            (
                m.name,
                format_number(m.before),
                format_number(m.after),
                m.unit,
                m.target,
                f"**{judged}**" if judged == MISSED else judged,
            )
        )
    return markdown_table(("metric", "before", "after", "unit", "target", "verdict"), rows)


def build_release(
    name: str,
    plugins: Sequence[Any],
    states: dict[str, dict[str, str]],
    phases: Sequence[PhaseRecord],
    benchmarks: dict[str, dict[str, Any]],
    targets: dict[str, Any],
    report_dir: Path,
    judgements: Sequence[JudgementRecord] = (),
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
        states={p.name: states.get(p.name, {}).get("state", str(PluginState.NOT_APPLIED)) for p in plugins},
        phases=[r for r in phases if r.plugin in selected],
        benchmarks=bench,
        targets=targets,
        report_dir=report_dir,
        judgements=[j for j in judgements if j.monitor in selected],
    )


def write_report(
    release: Release,
    sections: dict[str, ReportSection | str],
    redact: Redactor,
    versions: dict[str, str],
    region: str | None = None,
) -> dict[str, Path]:
    """Write the three files; ``sections`` maps plugin name to its section or to an error text; a
    ``region`` is named in each (the ledger rows behind them are that region's)."""
    out = release.report_dir
    out.mkdir(parents=True, exist_ok=True)
    doc = redact.data(_report_doc(release, sections, versions, region))
    paths = {"json": out / "report.json", "md": out / "report.md", "junit": out / "junit.xml"}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths["md"].write_text(redact(_markdown(doc)))
    paths["junit"].write_text(redact(ET.tostring(_junit_suite(doc), encoding="unicode") + "\n"))
    return paths


def write_regions_report(
    name: str,
    parts: Sequence[tuple[str, Release, dict[str, ReportSection | str]]],
    redact: Redactor,
    versions: dict[str, str],
    out: Path,
) -> dict[str, Path]:
    """One report of a release across regions: ``parts`` is (region, its release, its sections) per
    region (``""``: rows written without a region). report.json has the region documents under
    ``regions``; report.md a summary table, then each region's report one heading level down; junit.xml
    one test suite per region, so CI shows which region failed."""
    out.mkdir(parents=True, exist_ok=True)
    docs = [redact.data(_report_doc(release, sections, versions, region)) for region, release, sections in parts]
    doc = {"release": name, "regions": docs}
    summary = [
        (
            _region_name(d["region"]),
            p["name"],
            p["state"],
            f"{p['phases'][-1]['phase']} {p['phases'][-1]['outcome']}" if p["phases"] else "never run",
        )
        for d in docs
        for p in d["plugins"]
    ]
    lines = [f"# Release {name} in {len(docs)} region{'s' if len(docs) != 1 else ''}", ""]
    lines += [markdown_table(("region", "plugin", "state", "last phase"), summary), ""]
    markdown = "\n".join(lines) + "\n" + "".join(_markdown(_relinked(d), depth=1) for d in docs)
    suites = ET.Element("testsuites", name=f"tars-{name}")
    for d in docs:
        suites.append(_junit_suite(d, prefix=f"{d['region']}." if d["region"] else ""))
    paths = {"json": out / "report.json", "md": out / "report.md", "junit": out / "junit.xml"}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths["md"].write_text(redact(markdown))
    paths["junit"].write_text(redact(ET.tostring(suites, encoding="unicode") + "\n"))
    return paths


def _region_name(region: str | None) -> str:
    return region or "(no region)"


# A Markdown link or image whose target is a relative path: not a URL (scheme:), an absolute path or an anchor.
_RELATIVE_LINK = re.compile(r"(!?\[[^\]\n]*\]\()(?![A-Za-z][A-Za-z0-9+.-]*:|/|#)([^)\s]+)(\))")


def _relinked(doc: dict[str, Any]) -> dict[str, Any]:
    """A region's document for the report across regions, its sections' relative links pointing into the
    region's folder: a plugin attaches files to its report folder (``<release>/<region>/``) and links them
    relative to it, while this report.md sits in ``<release>/``."""
    if not doc["region"]:
        return doc
    prefix = doc["region"] + "/"
    plugins = []
    for p in doc["plugins"]:
        section = p["section"]
        if section:
            section = {**section, "markdown": _RELATIVE_LINK.sub(rf"\g<1>{prefix}\g<2>\g<3>", section["markdown"])}
        plugins.append({**p, "section": section})
    return {**doc, "plugins": plugins}


def _report_doc(
    release: Release, sections: dict[str, ReportSection | str], versions: dict[str, str], region: str | None
) -> dict[str, Any]:
    return {
        "release": release.name,
        "region": region or None,
        "targets": release.targets,
        "plugins": [
            {
                "name": info.name,
                "title": info.title,
                "fix_id": info.fix_id,
                "kind": info.kind,
                "version": versions.get(info.name, ""),
                "state": release.states.get(info.name, str(PluginState.NOT_APPLIED)),
                "phases": [converter.unstructure(r) for r in release.phases if r.plugin == info.name],
                "benchmark": converter.unstructure(release.benchmarks[info.name])
                if info.name in release.benchmarks
                else None,
                "section": _section_data(sections.get(info.name)),
            }
            for info in release.plugins
        ],
        "judgements": [converter.unstructure(j) for j in release.judgements],
    }


def _section_data(section: ReportSection | str | None) -> dict[str, Any] | None:
    if section is None:
        return None
    if isinstance(section, str):
        return {"title": "report hook failed", "markdown": section, "data": {}}
    return {"title": section.title, "markdown": section.markdown, "data": dict(section.data)}


def _markdown(doc: dict[str, Any], depth: int = 0) -> str:
    """The report of one region (or of the ledger without regions); ``depth`` more ``#`` on every heading
    when it is a section of the report across regions."""
    deeper = "#" * depth
    if depth:
        title = f"# Region {_region_name(doc['region'])}"
    else:
        title = f"# Release {doc['release']}" + (f", region {doc['region']}" if doc["region"] else "")
    lines = [deeper + title, ""]
    rows = []
    for p in doc["plugins"]:
        last = p["phases"][-1] if p["phases"] else None
        rows.append(
            (
                p["name"],
                p["fix_id"] or "",
                p["version"],
                p["state"],
                f"{last['phase']} {last['outcome']}" if last else "never run",
            )
        )
    lines += [markdown_table(("plugin", "fix", "version", "state", "last phase"), rows), ""]
    targets = ", ".join(f"{k}={v}" for k, v in doc["targets"].items() if v)
    lines += [f"Targets: {targets or 'none'}", ""]
    if doc["judgements"]:
        lines += [deeper + line if line.startswith("#") else line for line in _gates_markdown(doc["judgements"])]
    for p in doc["plugins"]:
        lines += [f"{deeper}## {p['name']}: {p['title']}", ""]
        if p["phases"]:
            rows = [
                (r["phase"], r["outcome"], r["started_at"], r.get("ended_at"), r.get("error") or r.get("detail"))
                for r in p["phases"]
            ]
            lines += [markdown_table(("phase", "outcome", "started", "ended", "error / detail"), rows), ""]
        if p["benchmark"]:
            if p["benchmark"].get("detail"):
                lines += [p["benchmark"]["detail"], ""]
            lines += [metrics_table(p["benchmark"]["metrics"]), ""]
        if p["section"]:
            lines += [f"{deeper}### {p['section']['title']}", "", p["section"]["markdown"], ""]
    return "\n".join(lines) + "\n"


def _judged(j: dict[str, Any]) -> str:
    return f"{j['kind']} of {j['plugin']}" if j["plugin"] else j["kind"]


def _gates_markdown(judgements: Sequence[dict[str, Any]]) -> list[str]:
    """Every monitor judgement with its reasons, then the evidence behind each: query, value and time."""
    rows = [
        (
            j["monitor"],
            _judged(j),
            f"**{j['verdict']}**" if j["verdict"] != "pass" else j["verdict"],
            format_number(j["score"]) if j["score"] is not None else "",
            "; ".join(j["reasons"]),
            j["started_at"],
            j["ended_at"],
        )
        for j in judgements
    ]
    lines = ["## Release gates", ""]
    lines += [markdown_table(("monitor", "judged", "verdict", "score", "reasons", "started", "ended"), rows), ""]
    evidence = [
        (j["monitor"], _judged(j), e["query"], format_number(e["value"]), e["at"], e["detail"])
        for j in judgements
        for e in j["evidence"]
    ]
    if evidence:
        lines += ["### Evidence", ""]
        lines += [markdown_table(("monitor", "judged", "query", "value", "at", "detail"), evidence), ""]
    return lines


# JUnit's three verdicts for a phase's latest outcome; ``ok`` passes.
_FAILING = frozenset({Outcome.FAILED, Outcome.UNREACHED, Outcome.INTERRUPTED, Outcome.UNKNOWN, Outcome.RUNNING})
_SKIPPING = frozenset({Outcome.SKIPPED, Outcome.DRY_RUN})


def _junit_suite(doc: dict[str, Any], prefix: str = "") -> ET.Element:
    """One testcase per plugin and phase (its latest outcome), so CI shows which phase of which fix failed;
    ``prefix`` (``region.``) keeps the class names of two regions apart in one file."""
    name = f"tars-{doc['release']}" + (f"-{doc['region']}" if doc.get("region") else "")
    suite = ET.Element("testsuite", name=name)
    tests = failures = skipped = 0
    for p in doc["plugins"]:
        latest: dict[str, dict[str, Any]] = {}
        for r in p["phases"]:
            latest[r["phase"]] = r
        for phase, r in latest.items():
            tests += 1
            case = ET.SubElement(suite, "testcase", classname=prefix + p["name"], name=phase)
            if r["outcome"] in _FAILING:
                failures += 1
                ET.SubElement(case, "failure", message=r.get("error") or r["outcome"]).text = r.get("error") or ""
            elif r["outcome"] in _SKIPPING:
                skipped += 1
                ET.SubElement(case, "skipped", message=r.get("detail") or r["outcome"])
    errors = 0
    for j in doc["judgements"]:  # one testcase per judgement: a failed gate fails CI, a blind one errs
        tests += 1
        case = ET.SubElement(suite, "testcase", classname=prefix + j["monitor"], name=_judged(j))
        reasons = "; ".join(j["reasons"])
        evidence = "\n".join(f"{e['at']} {e['query']} = {format_number(e['value'])}" for e in j["evidence"])
        if j["verdict"] == "fail":
            failures += 1
            ET.SubElement(case, "failure", message=reasons or "fail").text = evidence
        elif j["verdict"] == "inconclusive":
            errors += 1
            ET.SubElement(case, "error", message=reasons or "inconclusive").text = evidence
        elif evidence:
            ET.SubElement(case, "system-out").text = evidence
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    return suite
