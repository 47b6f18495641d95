"""The fault-injection suite (issue 18): ``nox -s faults`` (every case) or, inside ``nox -s together``,
``TARS_FAULTS=quick`` (a short sample). Collected only when ``TARS_FAULTS`` is set and every hotfix plugin
is installed, so the core session and a plain ``pytest tests`` skip it.

One private sandbox for the whole session (``tars-run sandbox up`` in a temporary folder), one ledger per
plugin; every case starts and ends with the target at its pre-release state. The figures (faults
injected, handled as contracted, recovered without manual action) are printed at the end and written to
``faults-report.json`` in the sandbox folder, and to ``$TARS_FAULTS_REPORT`` when set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml

MODE = os.environ.get("TARS_FAULTS", "")
HOTFIXES = ("tars-1001-ws", "tars-1002-grafana", "tars-1003-jaeger", "tars-1004-db", "tars-1005-ppo")


def _installed() -> set[str]:
    return {ep.name for ep in entry_points(group="tars.plugins")}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.name.startswith("test_") and (not MODE or not set(HOTFIXES) <= _installed()):
        return True
    return None


_TALLY: Any = None


@pytest.fixture(scope="session")
def tally() -> Any:
    from faults.harness import Tally

    global _TALLY
    _TALLY = Tally()
    return _TALLY


@pytest.fixture(scope="session")
def site() -> Iterator[Any]:
    from faults.harness import Site

    root = Path(tempfile.mkdtemp(prefix="tars-faults-"))
    os.chmod(root, 0o755)  # the postgres account must reach the cluster folder inside
    up = Site(root, {}).sandbox("up")
    assert up.returncode == 0, up.stderr
    base = yaml.safe_load((root / ".tars" / "sandbox" / "tars.yaml").read_text())
    s = Site(root, base)
    try:
        yield s
    finally:
        if _TALLY is not None:
            report = json.dumps(_TALLY.figures(), indent=2)
            (root / "faults-report.json").write_text(report)
            if os.environ.get("TARS_FAULTS_REPORT"):
                Path(os.environ["TARS_FAULTS_REPORT"]).write_text(report)
        s.sandbox("down")
        if os.environ.get("TARS_FAULTS_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _TALLY is None or not _TALLY.outcomes:
        return
    fig = _TALLY.figures()
    tr = terminalreporter
    tr.section("fault injection (issue 18)")
    for label in ("all", "runtime_faults", "bad_values"):
        f = fig[label]
        tr.write_line(
            f"{label:15} injected {f['injected']:4}  handled as contracted {f['handled_as_contracted']:4}  "
            f"recovered without manual action {f['recovered_without_manual_action']:4}"
        )
    for plugin, f in fig["by_plugin"].items():
        tr.write_line(
            f"  {plugin:20} {f['injected']:4} injected, {f['handled_as_contracted']:4} as contracted, "
            f"{f['recovered_without_manual_action']:4} recovered"
        )
    for o in fig["failures"]:
        tr.write_line(f"  NOT AS CONTRACTED: {o['case']}: exit {o['exit_code']}: {o['detail'][:200]}")
    tr.write_line(f"seed {fig['seed']} (TARS_FAULTS_SEED)")
