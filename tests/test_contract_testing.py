"""The checks ``tars_core.testing`` gives plugin authors, each shown to pass a good plugin and to fail a
bad one, and the core's own "no heavy import at discovery" check over every installed plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Project

from tars_core import (
    BenchmarkResult,
    Context,
    Metric,
    PhaseRecord,
    PluginInfo,
    TargetError,
    Targets,
    VerifyResult,
    hookimpl,
)
from tars_core.redact import Redactor
from tars_core.report import write_report
from tars_core.testing import (
    HEAVY_MODULES,
    assert_cheap_import,
    assert_hooks_raise_target_error,
    assert_unreachable_target_exits_2,
    make_context,
    release_for,
)

pytest_plugins = ("pytester",)

HEAVY_PLUGIN = """
import redis  # at import time: what the check exists to catch

from tars_core import PluginInfo, hookimpl


@hookimpl
def tars_plugin_info():
    return PluginInfo(name="fix-heavy", title="imports redis at the top")
"""

# A plugin's test module as its author writes it: one line per unreachable target; ``dir`` is filled in.
UNREACHABLE_TESTS = """
import pytest
import yaml

from tars_core.testing import unreachable_target_test

CONFIG = {{"dir": {dir!r}}}
SEEN = []


@pytest.fixture
def flags_hash():
    return "acme:flags"


def more_targets(tmp_path, flags_hash):
    SEEN.append(tmp_path)
    return {{"flags_key": flags_hash}}


test_unreachable_redis = unreachable_target_test(
    "fix-a",
    "redis",
    "redis://:{{password}}@127.0.0.1:{{port}}/0",
    expect=["fix-a", "cannot reach targets.redis at 127.0.0.1:{{port}}"],
    targets=more_targets,
    config={{**CONFIG, "probe": "redis"}},
)


def test_the_fixtures_reached_tars_run():
    configs = [yaml.safe_load((path / "tars-unreachable.yaml").read_text()) for path in SEEN]
    assert [c["targets"]["flags_key"] for c in configs] == ["acme:flags", "acme:flags"]


test_unreachable_postgres_leaks = unreachable_target_test(
    "fix-a",
    "postgres",
    "postgresql://tars:{{password}}@127.0.0.1:{{port}}/tars",
    expect="fix-a",
    commands=("verify",),
    config={{**CONFIG, "probe": "postgres", "leak": True}},
)
"""


def test_unreachable_target_test_is_one_test_per_command(
    project: Project, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The helper as pytest sees it: collected under its module name, parametrized by command, its
    ``targets`` function given the fixtures it names, and failing like the assertion it wraps."""
    project.dist("acme-fixes", {"fix-a": []})
    monkeypatch.setenv("PYTHONPATH", project.env()["PYTHONPATH"])
    pytester.makepyfile(test_acme=UNREACHABLE_TESTS.format(dir=str(project.work)))
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            "*test_unreachable_redis[[]apply[]] PASSED*",
            "*test_unreachable_redis[[]verify[]] PASSED*",
            "*test_the_fixtures_reached_tars_run PASSED*",
            "*test_unreachable_postgres_leaks[[]verify[]] FAILED*",
            "*printed the password*",
        ]
    )
    result.assert_outcomes(passed=3, failed=1)


def test_release_for_is_what_the_core_report_renders(tmp_path: Path) -> None:
    """A plugin's report test sees the release the runner would hand it: its state, its phases, its
    benchmark, all under its own name, so the core report renders them as in a real release."""
    info = PluginInfo(name="fix-a", title="test fix")
    phase = PhaseRecord("r1", "fix-a", "verify", "ok", "2026-11-27T22:00:00Z", detail="probe answered")
    bench = BenchmarkResult(metrics=[Metric("p95", 480.0, 0.6, "ms", "< 100 ms", True)])
    release = release_for(info, report_dir=tmp_path, state="rolled_back", phases=[phase], benchmark=bench)
    doc = json.loads(write_report(release, {}, Redactor(), {})["json"].read_text())
    (row,) = doc["plugins"]
    assert row["state"] == "rolled_back" and row["phases"][0]["detail"] == "probe answered"
    assert row["benchmark"]["metrics"][0]["name"] == "p95"
    assert release_for(info, report_dir=tmp_path).benchmarks == {}


def test_every_installed_plugin_loads_without_a_heavy_import() -> None:
    """``tars-run list`` loads every ``tars.plugins`` entry point; none may pull in a heavy library.

    Fails, not skips, when no plugin is installed: the nox session that installs every plugin of the
    repo runs it; the core-only session says TARS_EXPECT_NO_PLUGINS=1 (and then none may be there).
    """
    script = (
        "import json, sys\n"
        "from tars_core.cli import main\n"
        "code = main(['--format', 'json', 'list'])\n"
        "sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)) + '\\n')\n"
        "sys.exit(code)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["plugins"]
    broken = [f"{r['name']}: {r['error']}" for r in rows if r["status"] != "ok"]
    assert not broken, f"installed plugins failed to load: {broken}"
    if os.environ.get("TARS_EXPECT_NO_PLUGINS") == "1":
        assert rows == [], "TARS_EXPECT_NO_PLUGINS=1, yet plugins are installed"
    else:
        assert rows, "no tars.plugins entry point is installed: install the plugins (or TARS_EXPECT_NO_PLUGINS=1)"
    modules = json.loads(res.stderr.rsplit("MODULES ", 1)[1])
    heavy = sorted({h for h in HEAVY_MODULES for m in modules if m == h or m.startswith(h + ".")})
    assert not heavy, f"loading {[r['name'] for r in rows]} imported {heavy}"


def test_assert_cheap_import_passes_a_light_plugin_and_names_the_chain_of_a_heavy_one(project: Project) -> None:
    project.dist("acme-fixes", {"fix-light": [], "fix-heavy": []}, sources={"fix-heavy": HEAVY_PLUGIN})
    env = project.env()
    assert_cheap_import("fix-light", env=env)  # entry-point name
    assert_cheap_import("tp_fix_light", env=env)  # module name
    with pytest.raises(AssertionError) as err:
        assert_cheap_import("fix-heavy", env=env)
    assert "importing fix-heavy imported heavy modules" in str(err.value)
    assert "tp_fix_heavy -> redis" in str(err.value)
    assert_cheap_import("fix-heavy", forbidden=("tensorflow",), env=env)  # redis allowed on request
    with pytest.raises(AssertionError, match="importing no_such_module failed"):
        assert_cheap_import("no_such_module", env=env)


def test_assert_unreachable_target_exits_2_accepts_a_plugin_that_keeps_the_contract(project: Project) -> None:
    project.dist("acme-fixes", {"fix-a": []})
    for command in ("apply", "verify"):
        res = assert_unreachable_target_exits_2(
            "fix-a",
            "redis",
            "redis://:{password}@127.0.0.1:{port}/0",
            config={"probe": "redis", "dir": str(project.work)},
            expect=["fix-a", "cannot reach targets.redis at 127.0.0.1:{port}", "Connection refused"],
            tmp_path=project.work,
            command=command,
            env=project.env(),
        )
        assert "bad input" in res.stderr


def test_assert_unreachable_target_exits_2_catches_a_leaked_password_and_a_wrong_exit_code(project: Project) -> None:
    project.dist("acme-fixes", {"fix-a": []})
    common = {"tmp_path": project.work, "env": project.env(), "expect": "fix-a"}
    url = "postgresql://tars:{password}@127.0.0.1:{port}/tars"
    with pytest.raises(AssertionError, match="printed the password"):
        assert_unreachable_target_exits_2(
            "fix-a", "postgres", url, config={"probe": "postgres", "leak": True, "dir": str(project.work)}, **common
        )
    with pytest.raises(AssertionError, match="exited 1, not 2"):  # a FixError is a failed fix, not bad input
        assert_unreachable_target_exits_2(
            "fix-a", "postgres", url, config={"fail_apply": True, "dir": str(project.work)}, **common
        )


class _Hooks:
    """A plugin whose hooks raise what ``message`` says (``None``: they succeed)."""

    def __init__(self, message: str | None) -> None:
        self.message = message

    @hookimpl
    def tars_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="tgt-check", title="target check")

    @hookimpl
    async def tars_apply(self, ctx: Context) -> None:
        if self.message is not None:
            raise TargetError(self.message)

    @hookimpl
    def tars_verify(self, ctx: Context) -> VerifyResult:
        if self.message is not None:
            raise TargetError(self.message)
        return VerifyResult(ok=True)


@pytest.mark.parametrize(
    ("message", "fails_with"),
    [
        ("cannot reach targets.redis at 127.0.0.1:1 (ConnectionError)", None),
        ("cannot reach targets.redis at redis://:s3cret@127.0.0.1:1", "shows the password"),
        ("cannot reach targets.redis\nat 127.0.0.1:1", "not one line"),
        ("connection refused", "does not match"),
        (None, "tars_apply did not raise TargetError"),
    ],
)
def test_assert_hooks_raise_target_error_checks_message_password_and_raising(
    tmp_path: Path, message: str | None, fails_with: str | None
) -> None:
    import anyio

    plugin = _Hooks(message)
    ctx = make_context(plugin, targets=Targets(), state_dir=tmp_path)
    check = assert_hooks_raise_target_error(
        plugin, ctx, expect=r"cannot reach targets\.redis", hooks=("tars_apply", "tars_verify")
    )
    if fails_with is None:
        anyio.run(lambda: check)
    else:
        with pytest.raises(AssertionError, match=fails_with):
            anyio.run(lambda: check)
