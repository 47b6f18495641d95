"""Issue 18: faults during a release get the contract's answer. Core defects, on real files, real
processes and real signals (the per-plugin cases live in each plugin's tests/test_faults.py, and the
fault-injection suite in tests/faults/, ``nox -s faults``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tars_core.state import atomic_write_bytes, atomic_write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    """Defect 4: the temp file is created 0600; the file it replaces must keep 0644 / 0640."""
    for mode in (0o644, 0o640, 0o755):
        path = tmp_path / f"f{mode:o}"
        path.write_bytes(b"old\r\n")
        path.chmod(mode)
        atomic_write_text(path, "new\n")
        assert _mode(path) == mode and path.read_bytes() == b"new\n"
        atomic_write_bytes(path, b"old\r\n")
        assert _mode(path) == mode and path.read_bytes() == b"old\r\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temp file was left behind"


def test_atomic_write_of_a_new_file_follows_the_umask_and_mode_overrides(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new", "x")
        assert _mode(tmp_path / "new") == 0o640
    finally:
        os.umask(old)
    atomic_write_bytes(tmp_path / "new", b"y", mode=0o600)
    assert _mode(tmp_path / "new") == 0o600
