"""``tars-run new-plugin`` writes a distribution that passes the conformance check as generated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tars_core.hookspecs import CORE_REQUIREMENT
from tars_core.scaffold import new_plugin


def test_scaffold_passes_conformance_and_is_discovered(tmp_path: Path) -> None:
    dest = tmp_path / "acme-cache-fix"
    res = subprocess.run(
        ["tars-run", "new-plugin", "acme-cache-fix", "--dir", str(dest)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    env = dict(os.environ, PYTHONPATH=str(dest / "src"))
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(dest / "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=dest,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 passed" in res.stdout


def test_scaffold_pins_the_hook_contract(tmp_path: Path) -> None:
    dest = tmp_path / "acme-cache-fix"
    new_plugin("acme-cache-fix", dest)
    assert f'dependencies = ["{CORE_REQUIREMENT}", ' in (dest / "pyproject.toml").read_text()
    assert CORE_REQUIREMENT == "tars-core>=1.0.1,<2"


def test_scaffold_refuses_bad_names(tmp_path: Path) -> None:
    res = subprocess.run(["tars-run", "new-plugin", "Bad_Name"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2
    assert "lowercase letters" in res.stderr and "Traceback" not in res.stderr
