"""Issue 18: faults during a release get the contract's answer. Core defects, on real files, real
processes and real signals (the per-plugin cases live in each plugin's tests/test_faults.py, and the
fault-injection suite in tests/faults/, ``nox -s faults``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest

from tars_core.config import structure_section
from tars_core.errors import ConfigError
from tars_core.model import non_empty, non_negative, positive, unit_interval
from tars_core.state import atomic_write_bytes, atomic_write_text
from tars_core.testing import bad_config_values


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


# -- defects 5 and 7: every bad config value refused before anything runs, naming the key ------------------


@attrs.define
class _Section:
    name: str = attrs.field(default="x", validator=non_empty)
    count: int = attrs.field(default=1, validator=positive)
    share: float = attrs.field(default=0.5, validator=unit_interval)
    grace: float = attrs.field(default=0.0, validator=non_negative)
    mode: Literal["http", "sighup"] = "http"
    on: bool = True
    items: tuple[str, ...] = ()
    labels: dict[str, str] = attrs.field(factory=dict)
    nested: _Nested = attrs.field(factory=lambda: _Nested())


@attrs.define
class _Nested:
    seconds: float = attrs.field(default=1.0, validator=positive)


def test_the_bad_value_matrix_covers_every_kind_and_each_is_refused_on_one_line() -> None:
    cases = bad_config_values(_Section)
    paths = {c.path for c in cases}
    assert {"name", "count", "share", "grace", "mode", "on", "items", "labels", "nested", "nested.seconds"} <= paths
    values = {(c.path, repr(c.value)) for c in cases}
    assert {("count", "0"), ("count", "-1"), ("count", "1.5"), ("share", "1.5"), ("grace", "-1")} <= values
    assert ("mode", "'no-such-choice'") in values and ("nested.seconds", "nan") in values
    for case in cases:
        with pytest.raises(ConfigError) as err:
            structure_section(_Section, case.section, "config tars.yaml: ", "plugins.acme")
        text = str(err.value)
        assert "\n" not in text and "unknown error" not in text, (case, text)
        assert all(word in text for word in case.mention), (case, text)
    enum = next(c for c in cases if c.path == "mode")
    with pytest.raises(ConfigError, match="mode: expected one of http, sighup"):
        structure_section(_Section, enum.section, "", "plugins.acme")


@pytest.mark.parametrize(
    ("section", "expect"),
    [
        ({"retries": 1.5}, "plugins.fix-a.retries: invalid value for type, expected int, got a number 1.5"),
        ({"retries": True}, "plugins.fix-a.retries: invalid value for type, expected int, got a boolean True"),
        (
            {"sleep_apply": float("nan")},
            "plugins.fix-a.sleep_apply: invalid value for type, expected a finite float, got nan",
        ),
        (
            {"fail_apply": "maybe"},
            "plugins.fix-a.fail_apply: invalid value for type, expected bool (true or false), got a string 'maybe'",
        ),
        ({"dir": [1, 2]}, "plugins.fix-a.dir: invalid value for type, expected str, got a list"),
    ],
)
def test_tars_run_refuses_a_coerced_value_with_exit_2_before_anything_runs(
    project: Any, section: dict[str, Any], expect: str
) -> None:
    """Plain cattrs coerced these (1.5 retries became 1, 'maybe' became True, a list became its repr)
    and the release ran with them."""
    project.dist("acme", {"fix-a": []})
    project.config({"fix-a": section})
    res = project.run("apply")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tars-run: error: config {project.work / 'tars.yaml'}: {expect}")
    assert project.calls() == [] and not (project.work / ".tars" / "state.db").exists()
