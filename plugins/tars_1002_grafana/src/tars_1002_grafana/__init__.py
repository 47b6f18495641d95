"""TARS-1002: recording rules for the T.A.R.S. Grafana dashboards and the dashboard patcher.

Public API (imported lazily, so importing the plugin's entry point stays cheap):

* ``patch_dashboard(dashboard_json, rules=None) -> (patched_json, changes)``
* ``build_rules() -> list[Rule]`` and ``render_rule_file(rules) -> str``
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_rules", "patch_dashboard", "render_rule_file"]


def __getattr__(name: str) -> Any:
    if name == "patch_dashboard":
        from tars_1002_grafana.patcher import patch_dashboard

        return patch_dashboard
    if name in ("build_rules", "render_rule_file"):
        from tars_1002_grafana import rules

        return getattr(rules, name)
    raise AttributeError(name)
