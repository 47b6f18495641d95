"""Meta-test: every hook is documented where it is declared and exercised by some test."""

from __future__ import annotations

import inspect
from pathlib import Path

from tars_core import hookspecs

REPO = Path(__file__).resolve().parent.parent
HOOKS = [name for name, fn in vars(hookspecs).items() if name.startswith("tars_") and inspect.isfunction(fn)]


def test_every_hook_is_documented() -> None:
    assert len(HOOKS) >= 8
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 80, f"{name} needs a docstring saying when it is called and what it returns"
        assert "Called" in doc, f"{name}: say when it is called"
        assert name in (REPO / "docs" / "plugins.md").read_text(), f"{name} missing from docs/plugins.md"


def test_every_hook_has_a_test() -> None:
    texts = [p.read_text() for p in REPO.glob("tests/*.py") if p.name != "test_hookspecs.py"]
    texts += [p.read_text() for p in REPO.glob("plugins/*/tests/**/*.py")]
    for name in HOOKS:
        assert any(name in t for t in texts), f"no test mentions {name}"
