"""``tars-run new-plugin NAME``: a third-party plugin distribution that passes the conformance check.

The generated fix manages one line in a file (its "target"), which is enough to show every hook's
contract — idempotent apply, behavioural verify, a rollback that restores the backup — without any
server; authors replace the bodies and keep the shape.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from tars_core.errors import UsageError
from tars_core.hookspecs import CORE_REQUIREMENT

FILES: dict[str, str] = {
    "pyproject.toml": """[build-system]
requires = ["hatchling>=1.24"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "0.1.0"
description = "{title}"
requires-python = ">=3.10"
dependencies = ["{core}", "attrs>=23.1"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points."tars.plugins"]
{name} = "{pkg}.plugin"

[tool.hatch.build.targets.wheel]
packages = ["src/{pkg}"]
""",
    "README.md": """# {name}

{title}: a T.A.R.S. hotfix plugin. Install it next to `tars-core` and it shows up in `tars-run list`.

```
pip install -e .[test]
pytest tests          # the tars conformance check
tars-run --plugins {name} plan
```

Config section (`plugins.{name}` in tars.yaml): `path` (str, the file this fix manages) and `line`
(str, the line the fix guarantees is present).
""",
    "src/{pkg}/__init__.py": '"""{title}."""\n',
    "src/{pkg}/plugin.py": '''"""Hooks of {name}. Keep module-level imports cheap: heavy libraries go in the hooks."""

from __future__ import annotations

import shutil
from pathlib import Path

import attrs

from tars_core import ApplyResult, Context, PluginInfo, VerifyResult, hookimpl

# Raise tars_core.FixError("what is wrong and how to fix it") for expected failures: one line, no traceback.


@attrs.define
class Config:
    path: str = "example-target.conf"
    line: str = "feature_x = fixed"


def _target(ctx: Context) -> Path:
    path = Path(ctx.config.path)
    return path if path.is_absolute() else ctx.state_dir / path


@hookimpl
def tars_plugin_info() -> PluginInfo:
    return PluginInfo(name="{name}", title="{title}", config=Config)


@hookimpl
def tars_apply(ctx: Context) -> ApplyResult:
    target = _target(ctx)
    lines = target.read_text().splitlines() if target.exists() else []
    if ctx.config.line in lines:
        return ApplyResult(changed=False, detail="already present")
    if ctx.dry_run:
        ctx.log.info("would add %r to %s", ctx.config.line, target)
        return ApplyResult(changed=True, detail="dry run")
    backup = ctx.state_dir / "backup"
    if target.exists():
        shutil.copy2(target, backup)
    else:
        backup.write_text("\\0absent")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\\n".join([*lines, ctx.config.line]) + "\\n")
    return ApplyResult(changed=True, detail=f"added to {{target}}")


@hookimpl
def tars_verify(ctx: Context) -> VerifyResult:
    target = _target(ctx)
    ok = target.exists() and ctx.config.line in target.read_text().splitlines()
    return VerifyResult(ok=ok, detail="line present" if ok else "line missing", checks={{"line": str(ok)}})


@hookimpl
def tars_rollback(ctx: Context) -> ApplyResult:
    backup = ctx.state_dir / "backup"
    if not backup.exists():
        ctx.log.warning("nothing to roll back: %s was not applied by this plugin", ctx.plugin.name)
        return ApplyResult(changed=False)
    target = _target(ctx)
    if ctx.dry_run:
        return ApplyResult(changed=True, detail="dry run")
    if backup.read_text() == "\\0absent":
        target.unlink(missing_ok=True)
    else:
        shutil.copy2(backup, target)
    backup.unlink()
    return ApplyResult(changed=True, detail="restored")
''',
    "tests/test_conformance.py": """import anyio

from tars_core import Targets
from tars_core.testing import assert_cheap_import, check_conformance, make_context

from {pkg} import plugin


def test_conformance(tmp_path):
    ctx = make_context(plugin, targets=Targets(), config={{"path": str(tmp_path / "t.conf")}},
                       state_dir=tmp_path / "state")
    anyio.run(check_conformance, plugin, ctx)


def test_registers(tars_register):
    loaded = tars_register(plugin, "{name}")
    assert loaded.info.name == "{name}"


def test_imports_cheaply():
    assert_cheap_import("{pkg}.plugin")  # tars-run list imports every plugin: keep heavy imports in hooks
""",
}


def new_plugin(name: str, dest: Path) -> Path:
    if not re.fullmatch(r"[a-z][a-z0-9-]*[a-z0-9]", name):
        raise UsageError(f"plugin name {name!r} must be lowercase letters, digits and dashes, e.g. acme-cache-fix")
    pkg = name.replace("-", "_")
    if keyword.iskeyword(pkg):
        raise UsageError(f"plugin name {name!r} makes the package name {pkg!r}, a Python keyword; pick another")
    if dest.exists() and any(dest.iterdir()):
        raise UsageError(f"{dest} exists and is not empty; choose another --dir")
    title = f"{name} hotfix"
    for rel, body in FILES.items():
        path = dest / rel.format(pkg=pkg)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body.format(name=name, pkg=pkg, title=title, core=CORE_REQUIREMENT))
    return dest
