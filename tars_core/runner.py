"""Sequencing a release: apply then verify each plugin in dependency order, roll back on failure."""

from __future__ import annotations

import logging
from pathlib import Path

from tars_core.config import TarsConfig, plugin_config
from tars_core.flags import FeatureFlags
from tars_core.model import Context
from tars_core.plugins import LoadedPlugin

log = logging.getLogger("tars")


def build_context(
    plugin: LoadedPlugin,
    cfg: TarsConfig,
    *,
    root: Path,
    phase: str,
    dry_run: bool = False,
    section: object | None = None,
) -> Context:
    """The ``ctx`` a phase hook receives; ``section`` overrides the structured config section."""
    state_dir = root / ".tars" / "plugins" / plugin.name
    state_dir.mkdir(parents=True, exist_ok=True)
    return Context(
        plugin=plugin.info,
        config=section if section is not None else plugin_config(plugin.info, cfg),
        targets=cfg.targets,
        log=logging.getLogger(f"tars.{plugin.name}"),
        dry_run=dry_run,
        flags=FeatureFlags(cfg.targets.redis, cfg.targets.flags_key),
        state_dir=state_dir,
        release=cfg.release.name,
        phase=phase,
    )
