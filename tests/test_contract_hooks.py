"""One test of its own for each hook, through the same host calls as ``tars-run`` (see HOOK_TESTS in
test_hookspecs.py, which fails when a hook has none)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import Project
from test_contract import FileFix

from tars_core import PluginInfo, Targets, hookimpl
from tars_core.plugins import PluginHost
from tars_core.testing import check_conformance, make_context


def test_tars_plugin_info_names_the_plugin_and_its_requirements(tars_host: PluginHost) -> None:
    class Described:
        @hookimpl
        def tars_plugin_info(self) -> PluginInfo:
            return PluginInfo(name="described", title="a described fix", requires=("other",), fix_id="ACME-7")

    loaded = tars_host.register(Described(), "described")
    assert loaded is not None and loaded.info.requires == ("other",) and tars_host.resolve_name("acme-7") == "described"


def test_tars_apply_verify_and_rollback_through_the_host(tmp_path: Path) -> None:
    """check_conformance drives tars_apply, tars_verify and tars_rollback via PluginHost.call."""
    fix = FileFix(tmp_path / "target")
    anyio.run(check_conformance, fix, make_context(fix, targets=Targets(), state_dir=tmp_path / "state"))
    assert not (tmp_path / "target").exists()  # rolled back at the end


def test_tars_benchmark_figures_come_back_through_the_cli(project: Project) -> None:
    """The factory plugin's tars_benchmark result is stored and printed by ``tars-run benchmark``."""
    project.dist("acme-fixes", {"fix-a": []})
    project.config()
    code, doc = project.json("benchmark")
    assert code == 0
    (step,) = doc["steps"]  # type: ignore[misc]
    assert (step["plugin"], step["phase"], step["outcome"]) == ("fix-a", "benchmark", "ok")


def test_tars_report_section_reaches_the_report(project: Project) -> None:
    """The factory plugin's tars_report section (title and markdown) is in report.md."""
    project.dist("acme-fixes", {"fix-a": []})
    project.config()
    assert project.run("apply").returncode == 0
    code, doc = project.json("report")
    assert code == 0
    text = Path(doc["files"]["md"]).read_text()  # type: ignore[index]
    assert "fix-a notes" in text and "state: applied" in text


class Observer:
    """No tars_plugin_info: never sequenced, but hears every phase; one sync hook, one async."""

    def __init__(self, heard: list[tuple[Any, ...]]) -> None:
        self.heard = heard

    @hookimpl
    def tars_phase_started(self, plugin: str, phase: str) -> None:  # may take a subset of the arguments
        self.heard.append(("started", plugin, phase))

    @hookimpl
    async def tars_phase_finished(self, plugin: str, phase: str, outcome: str, seconds: float) -> None:
        await anyio.sleep(0)
        self.heard.append(("finished", plugin, phase, outcome, seconds))


class Broken:
    @hookimpl
    def tars_phase_started(self, plugin: str) -> None:
        raise RuntimeError("exporter down")

    @hookimpl
    async def tars_phase_finished(self) -> None:
        raise ValueError("still down")


def test_tars_phase_started_and_finished_reach_every_observer_and_a_failing_one_is_ignored(
    tars_host: PluginHost, tars_register: Any, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[tuple[Any, ...]] = []
    assert tars_register(Observer(heard), "observer") is None
    tars_register(Broken(), "broken-observer")

    async def phase() -> None:
        await tars_host.notify("tars_phase_started", plugin="fix-a", phase="apply", ctx=None)
        await tars_host.notify(
            "tars_phase_finished", plugin="fix-a", phase="apply", outcome="ok", seconds=0.25, error=None
        )

    with caplog.at_level(logging.WARNING, logger="tars"):
        anyio.run(phase)
    assert heard == [("started", "fix-a", "apply"), ("finished", "fix-a", "apply", "ok", 0.25)]
    assert [r.getMessage() for r in caplog.records] == [
        "observer broken-observer: tars_phase_started raised RuntimeError: exporter down; ignored",
        "observer broken-observer: tars_phase_finished raised ValueError: still down; ignored",
    ]
