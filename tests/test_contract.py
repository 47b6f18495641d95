"""The plugin contract as a third party meets it: marked hooks, the core version, the allowlist.

Each case runs real distributions through the real ``tars-run`` (or a real :class:`PluginHost`): what
is refused is refused before any of the plugin's hooks runs, with one line saying what to do.
"""

from __future__ import annotations

import importlib.metadata as md
import threading
from pathlib import Path
from typing import Any

import anyio
import pluggy
import pytest
from conftest import Project
from plugin_factory import write_dist

from tars_core import ApplyResult, PluginInfo, Targets, VerifyResult, hookimpl
from tars_core.plugins import PluginHost, core_conflict, running_core_version
from tars_core.testing import check_conformance, make_context


def verdict(stderr: str) -> str:
    """The one ``tars-run:`` line of a refused command (and no traceback)."""
    lines = [line for line in stderr.splitlines() if line.startswith("tars-run:")]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


class FileFix:
    """A complete, correct fix on a file; it notes whether each sync hook ran on the main thread."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.threads: list[bool] = []

    @hookimpl
    def tars_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="file-fix", title="file fix")

    @hookimpl
    def tars_apply(self, ctx: Any) -> ApplyResult:
        self.threads.append(threading.current_thread() is threading.main_thread())
        changed = not self.target.exists()
        self.target.write_text("fixed")
        return ApplyResult(changed=changed)

    @hookimpl
    async def tars_verify(self, ctx: Any) -> VerifyResult:
        return VerifyResult(ok=self.target.exists())

    @hookimpl
    def tars_rollback(self, ctx: Any) -> ApplyResult:
        self.threads.append(threading.current_thread() is threading.main_thread())
        changed = self.target.exists()
        self.target.unlink(missing_ok=True)
        return ApplyResult(changed=changed)


class UnmarkedRollback(FileFix):
    def tars_rollback(self, ctx: Any) -> ApplyResult:  # no @hookimpl: pluggy would never call it
        return super().tars_rollback(ctx)


UNMARKED_LINE = "plugin file-fix: tars_rollback is not marked @hookimpl; decorate it with tars_core.hookimpl"


# -- unmarked hooks ------------------------------------------------------------------------------------
def test_unmarked_tars_hook_refuses_the_plugin_with_one_line(tars_host: PluginHost, tmp_path: Path) -> None:
    with pytest.raises(pluggy.PluginValidationError) as err:
        tars_host.register(UnmarkedRollback(tmp_path / "t"), "file-fix")
    assert str(err.value) == UNMARKED_LINE
    assert tars_host.plugins == {} and tars_host.pm.get_plugin("file-fix") is None  # nothing half-registered


def test_unmarked_hooks_are_all_named_and_non_callable_tars_attributes_are_fine(tars_host: PluginHost) -> None:
    class Notes:
        tars_notes = "plain data under the prefix is not a hook"

        def tars_apply(self, ctx: Any) -> None: ...

        def tars_verify(self, ctx: Any) -> None: ...

    with pytest.raises(pluggy.PluginValidationError, match="tars_apply, tars_verify are not marked @hookimpl"):
        tars_host.register(Notes(), "notes")
    del Notes.tars_apply, Notes.tars_verify
    assert tars_host.register(Notes(), "notes") is None  # nothing left but data: registered, not sequenced


def test_has_hook_answers_from_pluggy_not_getattr(tars_host: PluginHost, tmp_path: Path) -> None:
    class WrapsItsOwnVerify(FileFix):
        @hookimpl(wrapper=True)
        def tars_verify(self, ctx: Any) -> Any:  # a wrapper with no implementation under it does nothing
            return (yield)

    tars_host.register(WrapsItsOwnVerify(tmp_path / "t"), "file-fix")
    assert tars_host.has_hook("file-fix", "tars_apply")
    assert not tars_host.has_hook("file-fix", "tars_verify")
    assert not tars_host.has_hook("file-fix", "tars_benchmark")
    assert not tars_host.has_hook("no-such-plugin", "tars_apply")


def test_unmarked_rollback_is_refused_before_anything_runs(project: Project) -> None:
    """The bug: an unmarked ``tars_rollback`` was "rolled back" by the runner with nothing undone."""
    project.dist("acme-bad", {"fix-bad": []}, version="0.3.0", undecorated=["tars_rollback"])
    project.dist("acme-good", {"fix-good": []})
    project.config()
    res = project.run("--plugins", "fix-bad", "apply", select=False)
    assert res.returncode == 2
    assert verdict(res.stderr) == (
        "tars-run: error: plugin fix-bad (acme-bad 0.3.0) failed to load: tars_rollback is not marked @hookimpl; "
        "decorate it with tars_core.hookimpl; fix or uninstall it, or skip it with -p no:fix-bad"
    )
    assert project.calls() == []  # refused at load: not a single hook ran
    res = project.run("--plugins", "fix-good", "apply", select=False)  # a refused plugin hurts only when selected
    assert res.returncode == 0, res.stderr


def test_unmarked_plugin_info_is_a_load_failure_not_a_vanished_plugin(project: Project) -> None:
    """The bug: an unmarked ``tars_plugin_info`` made the plugin a silent wrapper, absent from ``list``."""
    project.dist("acme-bad", {"fix-bad": []}, undecorated=["tars_plugin_info"])
    code, doc = project.json("list", select=False)
    assert code == 0
    (row,) = [r for r in doc["plugins"] if r["name"] == "fix-bad"]  # type: ignore[union-attr]
    assert row["status"] == "broken" and "tars_plugin_info is not marked @hookimpl" in row["error"]
    res = project.run("--plugins", "fix-bad", "plan", select=False)
    assert res.returncode == 2 and "tars_plugin_info is not marked @hookimpl" in verdict(res.stderr)


# -- the conformance check takes the tars-run path -----------------------------------------------------
def test_check_conformance_refuses_an_unmarked_hook_as_tars_run_does(tmp_path: Path) -> None:
    ctx = make_context(FileFix(tmp_path / "t"), targets=Targets(), state_dir=tmp_path / "state")
    with pytest.raises(pluggy.PluginValidationError) as err:
        anyio.run(check_conformance, UnmarkedRollback(tmp_path / "t"), ctx)
    assert str(err.value) == UNMARKED_LINE
    assert not (tmp_path / "t").exists()  # refused before apply
    with pytest.raises(pluggy.PluginValidationError, match="tars_rollback is not marked"):
        make_context(UnmarkedRollback(tmp_path / "t"), targets=Targets(), state_dir=tmp_path / "state")


def test_check_conformance_calls_through_the_plugin_host(tmp_path: Path) -> None:
    """Sync hooks run in the host's worker thread, as in ``tars-run``, not called directly."""
    fix = FileFix(tmp_path / "t")
    anyio.run(check_conformance, fix, make_context(fix, targets=Targets(), state_dir=tmp_path / "state"))
    assert fix.threads == [False, False, False, False]  # apply, apply again, rollback, rollback again


# -- the hook contract's version -----------------------------------------------------------------------
def test_plugin_built_for_another_core_is_refused_naming_both_versions(project: Project) -> None:
    # broken at import too: the version is checked first, so the plugin is never imported
    project.dist("acme-old", {"fix-old": []}, version="2.0", requires_dist=["tars-core<1.0"], broken=["fix-old"])
    core = running_core_version()
    code, doc = project.json("list", select=False)
    assert code == 0
    (row,) = [r for r in doc["plugins"] if r["name"] == "fix-old"]  # type: ignore[union-attr]
    assert row["status"] == "broken" and row["error"] == f"requires tars-core<1.0, this is tars-core {core}"
    res = project.run("--plugins", "fix-old", "plan", select=False)
    assert res.returncode == 2
    assert verdict(res.stderr) == (
        f"tars-run: error: plugin fix-old (acme-old 2.0) requires tars-core<1.0, this is tars-core {core}; "
        "install a matching version, or skip it with -p no:fix-old"
    )


def test_matching_bare_and_extra_only_core_requirements_load(project: Project) -> None:
    project.dist("acme-pinned", {"fix-pinned": []}, requires_dist=["attrs>=23", "tars-core>=1.0.1,<2"])
    project.dist("acme-bare", {"fix-bare": []}, requires_dist=["tars-core"])
    project.dist("acme-extra", {"fix-extra": []}, requires_dist=['tars_core>=9; extra == "dev"'])
    code, doc = project.json("list", select=False)
    rows = {r["name"]: r["status"] for r in doc["plugins"]}  # type: ignore[union-attr]
    assert code == 0 and {rows["fix-pinned"], rows["fix-bare"], rows["fix-extra"]} == {"ok"}


def test_core_conflict_reads_only_what_applies_and_judges_prereleases_by_number(tmp_path: Path) -> None:
    other = ['tars-core<1; python_version < "3"', "tars-core-extras<0.1", "tars-core @ https://example.org/x.whl"]
    write_dist(tmp_path, "acme", {"fix-a": []}, requires_dist=["tars-core (>=1.0.1,<2)", *other])
    dist = md.PathDistribution(tmp_path / "acme-0.1.0.dist-info")
    assert core_conflict(dist, "1.0.1") is None
    assert core_conflict(dist, "1.4.0.dev3") is None
    assert core_conflict(dist, "2.0.0") == "tars-core<2,>=1.0.1"
    assert core_conflict(dist, "1.0.0") == "tars-core<2,>=1.0.1"


# -- the allowlist -------------------------------------------------------------------------------------
@pytest.fixture
def shop(project: Project) -> Project:
    """acme-fixes (fix-a, fix-b broken at import) and other-fixes (fix-c requires fix-a)."""
    project.dist("acme-fixes", {"fix-a": [], "fix-b": []}, broken=["fix-b"])
    project.dist("other-fixes", {"fix-c": ["fix-a"]})
    project.plugins = ["fix-a", "fix-c"]
    project.config()
    return project


def listed(project: Project, **env: str) -> dict[str, str]:
    code, doc = project.json("list", select=False, env=project.env(**env))
    assert code == 0
    # only the shop's plugins: the repo's own may be installed too (the "together" session)
    return {r["name"]: r["status"] for r in doc["plugins"] if r["name"].startswith("fix-")}  # type: ignore[union-attr]


def test_allowlist_loads_only_what_it_names_by_plugin_or_distribution(shop: Project) -> None:
    # fix-b raises at import: it is not even imported, so it is not reported broken
    assert listed(shop, TARS_LOAD_PLUGINS="fix-a, other_fixes") == {
        "fix-a": "ok",
        "fix-c": "ok",
        "fix-b": "not_allowed",
    }
    assert listed(shop, TARS_LOAD_PLUGINS="acme-fixes") == {"fix-a": "ok", "fix-b": "broken", "fix-c": "not_allowed"}
    assert {"fix-a", "fix-b", "fix-c"} <= set(listed(shop, TARS_LOAD_PLUGINS=""))  # empty: no allowlist


def test_selecting_a_plugin_outside_the_allowlist_exits_2(shop: Project) -> None:
    env = shop.env(TARS_LOAD_PLUGINS="fix-a")
    res = shop.run("--plugins", "fix-c", "plan", select=False, env=env)
    assert res.returncode == 2
    assert verdict(res.stderr) == (
        "tars-run: error: plugin fix-c is not allowed to load: TARS_LOAD_PLUGINS names neither it nor its "
        "distribution other-fixes; add fix-c to TARS_LOAD_PLUGINS to run it"
    )
    res = shop.run("--plugins", "fix-c", "plan", select=False, env=shop.env(TARS_LOAD_PLUGINS="fix-c"))
    assert res.returncode == 2
    assert "plugin fix-c requires fix-a, which is not allowed to load (TARS_LOAD_PLUGINS)" in verdict(res.stderr)
    assert shop.run("--plugins", "fix-a", "apply", select=False, env=env).returncode == 0
    assert shop.calls() == ["apply fix-a", "verify fix-a"]


def test_blocklist_still_applies_inside_the_allowlist(shop: Project) -> None:
    allowed = "fix-a,fix-c"
    assert {
        k: v for k, v in listed(shop, TARS_LOAD_PLUGINS=allowed, TARS_DISABLE_PLUGINS="fix-c").items() if v == "ok"
    } == {"fix-a": "ok"}
    res = shop.run(
        "-p", "no:fix-a", "--plugins", "fix-a", "plan", select=False, env=shop.env(TARS_LOAD_PLUGINS=allowed)
    )
    assert res.returncode == 2 and "disabled" in verdict(res.stderr)


def test_version_prints_the_installed_core_and_exits_0(project: Project) -> None:
    res = project.run("--version", select=False)
    assert (res.returncode, res.stdout.strip()) == (0, f"tars-run {md.version('tars-core')}")
