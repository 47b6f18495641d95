"""The entry-point module: plugin info as the runner reads it, cheap to import, config structured by the core."""

from __future__ import annotations

from pathlib import Path

from tars_telemetry import plugin
from tars_telemetry.config import SLOMonitorConfig

from tars_core import Targets
from tars_core.testing import HEAVY_MODULES, assert_cheap_import, make_context


def test_plugin_info() -> None:
    info = plugin.tars_plugin_info()
    assert (info.name, info.kind, info.config) == ("tars-slo-monitor", "monitor", SLOMonitorConfig)


def test_entry_point_module_is_cheap_to_import() -> None:
    assert_cheap_import("tars_telemetry.plugin", forbidden=(*HEAVY_MODULES, "yaml"))


def test_config_section_is_structured_by_the_core(tmp_path: Path) -> None:
    ctx = make_context(plugin, targets=Targets(), config={"slo_files": ["slos/"]}, state_dir=tmp_path)
    assert ctx.config == SLOMonitorConfig(slo_files=["slos/"])
