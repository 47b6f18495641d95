"""The README documents exactly the exit codes, phase outcomes and plugin states the core writes (the
enums of ``tars_core.model``), no more and no fewer: "resolved" was documented and never written,
"applying" and "rollback_failed" were written and undocumented."""

from __future__ import annotations

import re
from pathlib import Path

from tars_core.model import ExitCode, Outcome, PluginState

README = Path(__file__).resolve().parent.parent / "README.md"


def documented(first_column: str) -> set[str]:
    """The backticked first cells of the README table whose header starts with ``first_column``."""
    text = README.read_text()
    table = re.search(rf"^\| {first_column} \|.*?\n((?:\|.*\n)+)", text, re.MULTILINE)
    assert table, f"README has no table headed '{first_column}'"
    return set(re.findall(r"^\| `([^`]+)` \|", table.group(1), re.MULTILINE))


def test_readme_documents_every_exit_code_and_no_other() -> None:
    assert documented("exit code") == {str(int(c)) for c in ExitCode}


def test_readme_documents_every_phase_outcome_and_no_other() -> None:
    assert documented("phase outcome") == {str(o) for o in Outcome}


def test_readme_documents_every_plugin_state_and_no_other() -> None:
    assert documented("plugin state") == {str(s) for s in PluginState}
