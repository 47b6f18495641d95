"""Meta-tests of the core's layout: one home for errors, and no import cycles.

Every error class a plugin may catch or raise lives in ``tars_core/errors.py`` (a reader looks in one
place; ``errors`` imports nothing of the core at run time, so any module can raise them without a
cycle). And every module of the core must import on its own in a fresh interpreter: a cycle hidden by
the order in which ``tars_core/__init__`` happens to import things breaks the first plugin or script that
imports the "wrong" module first.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import tars_core

#: Exception classes still defined outside errors.py, each with why; an entry that no longer exists
#: fails the test too, so the list only shrinks.
ELSEWHERE: set[str] = set()  # exceptions allowed outside errors.py (none today): the list may only shrink


def _modules() -> list[str]:
    return sorted(
        ["tars_core"]
        + [m.name for m in pkgutil.walk_packages(tars_core.__path__, "tars_core.") if m.name != "__main__"]
    )


def test_every_exception_class_of_the_core_lives_in_errors() -> None:
    found: set[str] = set()
    for name in _modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name:
                found.add(f"{name}.{obj.__qualname__}")
    outside = sorted(f for f in found if not f.startswith("tars_core.errors.") and f not in ELSEWHERE)
    assert not outside, f"exception classes defined outside tars_core/errors.py: {', '.join(outside)}"
    stale = sorted(ELSEWHERE - found)
    assert not stale, f"no longer defined, remove from ELSEWHERE: {', '.join(stale)}"
    assert "tars_core.errors.WaitTimeout" in found


def test_waiting_still_exports_wait_timeout() -> None:
    from tars_core import errors, waiting

    assert waiting.WaitTimeout is errors.WaitTimeout


def _import_alone(name: str) -> tuple[str, str] | None:
    res = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120)
    if res.returncode == 0:
        return None
    return name, res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"


def test_every_core_module_imports_alone_in_a_fresh_interpreter() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [f for f in pool.map(_import_alone, _modules()) if f is not None]
    assert not failed, "modules that do not import on their own (an import cycle?):\n" + "\n".join(
        f"  {name}: {error}" for name, error in failed
    )
