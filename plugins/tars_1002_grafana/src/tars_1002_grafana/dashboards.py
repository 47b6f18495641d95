"""The T.A.R.S. v1.0.0 dashboards shipped with the fix: the sandbox seeds them, the benchmark times them.

A module of its own (standard library only) so the hooks and the benchmark both read them without
importing each other.
"""

from __future__ import annotations

import importlib.resources


def dashboard_files() -> dict[str, str]:
    """The shipped T.A.R.S. v1.0.0 dashboards (the "before"), by file name."""
    root = importlib.resources.files("tars_1002_grafana") / "data" / "dashboards" / "v1.0.0"
    return {p.name: p.read_text(encoding="utf-8") for p in root.iterdir() if p.name.endswith(".json")}
