"""The checks ``tars_core.testing`` gives plugin authors, each shown to pass a good plugin and to fail a
bad one, and the core's own "no heavy import at discovery" check over every installed plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import Project

from tars_core.testing import HEAVY_MODULES, assert_cheap_import, assert_unreachable_target_exits_2

HEAVY_PLUGIN = """
import redis  # at import time: what the check exists to catch

from tars_core import PluginInfo, hookimpl


@hookimpl
def tars_plugin_info():
    return PluginInfo(name="fix-heavy", title="imports redis at the top")
"""


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
