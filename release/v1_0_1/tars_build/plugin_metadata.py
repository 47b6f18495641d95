"""Print, as JSON, what every installed T.A.R.S. plugin says about itself (for the release notes).

Run by the build with the clean venv's interpreter, so it reads the installed artifacts, not the source
tree. ``PluginInfo`` has no field for feature flags or targets, so both are read from what the plugin
ships: flags are the defaults of its config class's ``flag``/``*_flag`` fields; targets are the
``targets.<key>`` / ``targets.require("<key>")`` uses in its modules (parsed with ``ast``, not grepped).
"""

from __future__ import annotations

import ast
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def _flags(config: type | None) -> list[str]:
    import attrs

    if config is None or not attrs.has(config):
        return []
    found = []
    for field in attrs.fields(config):
        if (field.name == "flag" or field.name.endswith("_flag")) and isinstance(field.default, str):
            found.append(field.default)
    return found


def _targets_in(source: str, keys: set[str]) -> set[str]:
    used: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        # targets.require("postgres")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "require"
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "targets"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in keys
        ):
            used.add(str(node.args[0].value))
        # targets.redis
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in keys
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "targets"
        ):
            used.add(node.attr)
    return used


def _targets(distribution: str | None) -> list[str]:
    import attrs

    from tars_core.model import Targets

    if distribution is None:
        return []
    keys = {f.name for f in attrs.fields(Targets)}
    used: set[str] = set()
    dist = metadata.distribution(distribution)
    for file in dist.files or []:
        if file.suffix == ".py":
            used |= _targets_in(Path(str(file.locate())).read_text(encoding="utf-8"), keys)
    return sorted(used)


def collect() -> dict[str, Any]:
    from tars_core.plugins import PluginHost

    host = PluginHost(blocked=(), allowed=None)
    host.load_entry_points()
    plugins = []
    for name in sorted(host.plugins):
        p = host.plugins[name]
        plugins.append(
            {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "kind": p.info.kind,
                "fix_id": p.info.fix_id,
                "title": p.info.title,
                "description": p.info.description,
                "risk": p.info.risk,
                "requires": list(p.info.requires),
                "flags": _flags(p.info.config),
                "targets": _targets(p.distribution),
            }
        )
    failures = {name: f.message() for name, f in host.failures.items()}
    return {"core": metadata.version("tars-core"), "plugins": plugins, "failures": failures}


if __name__ == "__main__":
    json.dump(collect(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
