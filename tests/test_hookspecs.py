"""Meta-tests for the hook contract (datasette's tests/test_docs.py is the model): every hook is documented
where it is declared and under its own heading in docs/plugins.md, carries the version it appeared in,
and has a test of its own, named in HOOK_TESTS."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tars_core import hookspecs
from tars_core.plugins import running_core_version

REPO = Path(__file__).resolve().parent.parent
HOOKS = {name: fn for name, fn in vars(hookspecs).items() if name.startswith("tars_") and inspect.isfunction(fn)}
VERSIONADDED = re.compile(r"^\.\. versionadded:: (\S+)$", re.MULTILINE)

CONFORMANCE = "tests/test_contract_hooks.py::test_tars_apply_verify_and_rollback_through_the_host"
OBSERVERS = (
    "tests/test_contract_hooks.py::"
    "test_tars_phase_started_and_finished_reach_every_observer_and_a_failing_one_is_ignored",
    "tests/test_runner_hooks.py::test_observers_see_every_awaited_phase_and_cannot_fail_the_release",
)
HOOK_TESTS: dict[str, tuple[str, ...]] = {
    "tars_plugin_info": (
        "tests/test_contract_hooks.py::test_tars_plugin_info_names_the_plugin_and_its_requirements",
        "tests/test_contract.py::test_unmarked_plugin_info_is_a_load_failure_not_a_vanished_plugin",
    ),
    "tars_apply": (CONFORMANCE,),
    "tars_verify": (CONFORMANCE,),
    "tars_rollback": (CONFORMANCE, "tests/test_contract.py::test_unmarked_rollback_is_refused_before_anything_runs"),
    "tars_benchmark": ("tests/test_contract_hooks.py::test_tars_benchmark_figures_come_back_through_the_cli",),
    "tars_report": ("tests/test_contract_hooks.py::test_tars_report_section_reaches_the_report",),
    "tars_sandbox": ("tests/test_sandbox.py::test_a_plugin_installed_later_joins_the_running_sandbox",),
    "tars_sandbox_seed": ("tests/test_sandbox.py::test_a_failing_seed_is_named_and_a_corrupt_state_is_reset",),
    "tars_preflight": ("tests/test_release_gates.py::test_preflight_fail_stops_before_any_hotfix_applies",),
    "tars_observe": (
        "tests/test_release_gates.py::test_observe_fail_rolls_back_the_observed_fix_and_the_earlier_ones",
        "tests/test_release_gates.py::test_two_monitors_observe_each_fix_concurrently",
    ),
    "tars_phase_started": OBSERVERS,
    "tars_phase_finished": OBSERVERS,
}
"""Each hook -> the tests that exercise it. A listed test must exist and name the hook in its own source,
or live in a module with an implementation of it (a ``def tars_...(``, also in plugin source the module
writes out), which is what the test drives."""


def test_every_hook_documents_when_arguments_returns_firstresult_and_version() -> None:
    assert len(HOOKS) >= 10
    for name, fn in HOOKS.items():
        doc = inspect.getdoc(fn) or ""
        assert "Called" in doc, f"{name}: say when it is called"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{name}: document the argument {param!r} (:param {param}:)"
        assert ":returns:" in doc, f"{name}: say what it returns (:returns:)"
        firstresult = fn.tars_spec["firstresult"]  # type: ignore[attr-defined]
        stance = "Stops at the first non-``None`` result (``firstresult``)." if firstresult else "Not ``firstresult``"
        assert stance in doc, f"{name}: say whether it is firstresult ({stance!r})"
        assert VERSIONADDED.search(doc), f"{name}: say which version added it (.. versionadded:: X.Y.Z)"


def test_the_contract_version_is_the_newest_hook_and_this_core_implements_it() -> None:
    added = {name: Version(VERSIONADDED.findall(inspect.getdoc(fn) or "")[0]) for name, fn in HOOKS.items()}
    contract = Version(hookspecs.HOOK_CONTRACT)
    assert max(added.values()) == contract, f"HOOK_CONTRACT must be the newest versionadded: {added}"
    accepted = SpecifierSet(hookspecs.CORE_RANGE)
    assert contract in accepted and Version(running_core_version()) in accepted
    assert hookspecs.CORE_REQUIREMENT == f"tars-core{hookspecs.CORE_RANGE}"


def test_every_plugin_of_the_repo_pins_the_hook_contract() -> None:
    pyprojects = sorted(REPO.glob("plugins/*/pyproject.toml"))
    assert pyprojects
    for path in pyprojects:
        core = re.findall(r'"(tars[-_]core\b[^"]*)"', path.read_text())  # no tomllib on Python 3.10
        assert core == [hookspecs.CORE_REQUIREMENT], f"{path.parent.name} must depend on {hookspecs.CORE_REQUIREMENT}"


def test_every_hook_has_its_own_heading_in_docs_plugins_md() -> None:
    text = (REPO / "docs" / "plugins.md").read_text()
    headings = re.findall(r"^### `(tars_\w+)\(", text, re.MULTILINE)
    assert sorted(headings) == sorted(HOOKS), "docs/plugins.md needs exactly one '### `hook(...)`' per hook"


def _exercises(node_id: str, hook: str) -> bool:
    """Does test ``node_id`` exist, and name ``hook`` in its source or in an implementation it drives?"""
    file, _, test = node_id.partition("::")
    path = REPO / file
    if not path.exists():
        return False
    source = path.read_text()
    tree = ast.parse(source)
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == test]
    if not funcs:
        return False
    implemented = re.search(rf"\bdef {hook}\(", source) is not None  # in code, or in plugin source it writes
    return hook in (ast.get_source_segment(source, funcs[0]) or "") or implemented


def test_every_hook_has_a_test_of_its_own() -> None:
    assert sorted(HOOK_TESTS) == sorted(HOOKS), "HOOK_TESTS must list every hook, and nothing else"
    for hook, tests in HOOK_TESTS.items():
        assert tests, f"{hook} has no test"
        for node_id in tests:
            assert _exercises(node_id, hook), f"{node_id} does not exist or does not exercise {hook}"
