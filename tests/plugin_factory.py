"""Writes small, real plugin distributions (module + dist-info with entry points) for the CLI tests.

The dist-info on ``PYTHONPATH`` is what ``importlib.metadata`` discovers, exactly like a pip install, so
``tars-run`` finds these plugins with no change to the core.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

TEMPLATE = '''
"""Test plugin {name}: a fix whose "target" is a marker file; every call is logged to calls.log."""
from pathlib import Path

import anyio
import attrs

from tars_core import (ApplyResult, BenchmarkResult, FixError, Metric, PluginInfo, ReportSection,
                       TargetError, VerifyResult, hookimpl)

NAME = {name!r}


@attrs.define
class Config:
    dir: str = "."
    fail_apply: bool = False
    unreachable: bool = False
    fail_verify: bool = False
    fail_rollback: bool = False
    sleep_apply: float = 0.0
    sleep_verify: float = 0.0
    password: str = ""
    retries: int = 1
    probe: str = ""  # a targets key: apply and verify connect to its host:port first (TargetError if refused)
    leak: bool = False  # print the probed URL raw to stderr, past the redactor (to prove checks catch it)


def _log(ctx, what):
    with open(Path(ctx.config.dir) / "calls.log", "a") as f:
        f.write(f"{{what}} {{NAME}}\\n")


def _marker(ctx):
    return Path(ctx.config.dir) / f"{{NAME}}.applied"


def _probe(ctx):
    import socket
    import sys

    from tars_core.redact import host_port

    url = ctx.targets.require(ctx.config.probe)
    if ctx.config.leak:
        print(f"probing {{url}}", file=sys.stderr)
    host, _, port = host_port(url).rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        where = f"targets.{{ctx.config.probe}} at {{host}}:{{port}}"
        raise TargetError(f"cannot reach {{where}} ({{exc.strerror}})") from None


@hookimpl
def tars_plugin_info():
    return PluginInfo(name=NAME, title="test fix " + NAME, requires={requires!r}, fix_id={fix_id!r},
                      config=Config)


@hookimpl
async def tars_apply(ctx):
    _log(ctx, "apply")
    if ctx.config.probe:
        _probe(ctx)
    marker = _marker(ctx)
    if ctx.dry_run:
        ctx.log.info("would write %s", marker)
        return ApplyResult(changed=not marker.exists())
    if ctx.config.sleep_apply:
        marker.write_text("partial")
        (Path(ctx.config.dir) / f"{{NAME}}.sleeping").write_text("1")
        await anyio.sleep(ctx.config.sleep_apply)
    if ctx.config.unreachable:
        raise TargetError(f"cannot reach the {{NAME}} target at 127.0.0.1:1 (connection refused); check targets")
    if ctx.config.fail_apply:
        raise FixError(f"cannot apply {{NAME}}: connecting with password {{ctx.config.password}} failed")
    changed = not marker.exists() or marker.read_text() != "ok"
    marker.write_text("ok")
    ctx.log.info("applied with password %s", ctx.config.password)
    return ApplyResult(changed=changed)


@hookimpl
def tars_verify(ctx):
    _log(ctx, "verify")
    if ctx.config.probe:
        _probe(ctx)
    marker = _marker(ctx)
    if ctx.config.sleep_verify:
        import time
        (Path(ctx.config.dir) / f"{{NAME}}.sleeping").write_text("1")
        time.sleep(ctx.config.sleep_verify)
    ok = marker.exists() and marker.read_text() == "ok" and not ctx.config.fail_verify
    return VerifyResult(ok=ok, detail="marker present" if ok else "marker missing or verify forced to fail",
                        checks={{"marker": "present" if marker.exists() else "missing"}})


@hookimpl
def tars_rollback(ctx):
    _log(ctx, "rollback")
    if ctx.config.fail_rollback:
        raise RuntimeError("disk on fire")
    existed = _marker(ctx).exists()
    _marker(ctx).unlink(missing_ok=True)
    return ApplyResult(changed=existed)


@hookimpl
async def tars_benchmark(ctx):
    return BenchmarkResult(metrics=[Metric("latency", 2.0, 1.0, "ms", "< 1.5 ms", True)])


@hookimpl
def tars_report(release):
    return ReportSection(title=f"{{NAME}} notes", markdown=f"state: {{release.states.get(NAME)}}")
'''


def write_dist(
    site: Path,
    dist: str,
    plugins: dict[str, Sequence[str]],
    *,
    version: str = "0.1.0",
    broken: Sequence[str] = (),
    fix_ids: dict[str, str] | None = None,
    requires_dist: Sequence[str] = (),
    undecorated: Sequence[str] = (),
    sources: dict[str, str] | None = None,
) -> None:
    """Write distribution ``dist`` into ``site`` with one module per plugin name (value: its requires).

    Names in ``broken`` get a module that raises at import, to test load-failure reporting.
    ``requires_dist`` become the distribution's ``Requires-Dist`` lines (e.g. ``tars-core<1.0``).
    Hooks named in ``undecorated`` lose their ``@hookimpl`` marker in every module of the distribution.
    ``sources`` gives a plugin's module text verbatim instead of the template (observers, odd plugins).
    """
    site.mkdir(parents=True, exist_ok=True)
    eps = ["[tars.plugins]"]
    for name, requires in plugins.items():
        module = "tp_" + name.replace("-", "_")
        if name in broken:
            body = "raise ImportError('No module named totally_missing_dependency')\n"
        elif sources and name in sources:
            body = sources[name]
        else:
            body = TEMPLATE.format(name=name, requires=tuple(requires), fix_id=(fix_ids or {}).get(name))
            for hook in undecorated:
                body = body.replace(f"@hookimpl\ndef {hook}(", f"def {hook}(")
                body = body.replace(f"@hookimpl\nasync def {hook}(", f"async def {hook}(")
        (site / f"{module}.py").write_text(textwrap.dedent(body))
        eps.append(f"{name} = {module}")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    requires = "".join(f"Requires-Dist: {line}\n" for line in requires_dist)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n{requires}")
    (info / "entry_points.txt").write_text("\n".join(eps) + "\n")
    (info / "RECORD").write_text("")
