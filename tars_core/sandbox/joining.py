"""Plugins joining and leaving the sandbox: the ``tars_sandbox`` and ``tars_sandbox_seed`` hooks.

A plugin joins once: when the sandbox is created, or on the first ``up`` after it was installed. Its
contribution (services, scrape targets, config section, target hints) is recorded in ``state.json`` and
its hooks are not called again; a plugin that is uninstalled leaves, and its services are stopped.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import attrs

from tars_core.config import TarsConfig
from tars_core.errors import SandboxError
from tars_core.model import SandboxContribution, SandboxSite, Targets
from tars_core.plugins import PluginHost
from tars_core.sandbox import supervise
from tars_core.sandbox.state import Contributed, Paths, ServiceRecord, State, now, show

TARGET_KEYS = frozenset(f.name for f in attrs.fields(Targets))


def targets(state: State) -> Targets:
    return Targets(**state.targets)


# a seed that times out is waited for (like a release phase) before the sandbox reports the failure
GRACE = TarsConfig().release.timeout_grace


def _hook_error(paths: Paths, plugin: str, hook: str, exc: BaseException, timeout: float) -> SandboxError:
    """One line naming the plugin and hook; the traceback goes to ``logs/sandbox.log``."""
    logfile = paths.logs / "sandbox.log"
    with open(logfile, "a") as fh:
        fh.write(f"--- {now()} {plugin}.{hook} failed\n")
        fh.write("".join(traceback.format_exception(exc)))
    if isinstance(exc, TimeoutError):
        what = f"timed out after {timeout:.0f}s"
    else:
        what = (f"{type(exc).__name__}: {exc}".strip().splitlines() or [type(exc).__name__])[0]
    return SandboxError(
        f"plugin {plugin}: {hook} failed ({what}); traceback in {show(logfile)}; "
        f"skip the plugin with -p no:{plugin} or fix it and rerun"
    )


@attrs.frozen
class _Joining:
    """A plugin's contribution, applied to the state only once every joining plugin has seeded."""

    name: str
    contributed: Contributed
    services: list[ServiceRecord]
    section: dict[str, Any]


def _record(name: str, version: str, contrib: object, paths: Paths) -> _Joining:
    if not isinstance(contrib, SandboxContribution):
        raise SandboxError(f"plugin {name}: tars_sandbox returned {type(contrib).__name__}, not SandboxContribution")
    section = dict(contrib.config)
    hints = section.pop("targets", None) or {}
    if not isinstance(hints, dict) or not set(hints) <= TARGET_KEYS:
        bad = sorted(set(hints) - TARGET_KEYS) if isinstance(hints, dict) else hints
        raise SandboxError(f"plugin {name}: tars_sandbox config.targets has unknown keys {bad}")
    services = [
        ServiceRecord(
            f"{name}.{spec.name}",
            [str(a) for a in spec.argv],
            spec.port,
            spec.ready,
            str(paths.logs / f"{name}.{spec.name}.log"),
            owner=name,
            cwd=str(paths.plugin_dir(name)),
            env={str(k): str(v) for k, v in spec.env.items()},
        )
        for spec in contrib.services
    ]
    contributed = Contributed(
        version=version,
        scrape_targets=[str(t) for t in contrib.scrape_targets],
        services=[s.name for s in services],
        targets=dict(hints),
        remote_write=[str(u) for u in contrib.remote_write],
        remote_write_keep=contrib.remote_write_keep,
    )
    return _Joining(name, contributed, services, json.loads(json.dumps(section, default=str)))


async def _contribute(host: PluginHost, paths: Paths, state: State, name: str, timeout: float) -> _Joining:
    """Call the plugin's ``tars_sandbox`` (if any); its target hints apply at once, for the next plugins."""
    site_dir = paths.plugin_dir(name)
    site_dir.mkdir(parents=True, exist_ok=True)
    contrib: object = None
    if host.has_hook(name, "tars_sandbox"):
        site = SandboxSite(dir=site_dir, targets=targets(state), python=sys.executable)
        try:
            contrib = await host.call(name, "tars_sandbox", timeout=timeout, grace=GRACE, site=site)
        except Exception as exc:
            raise _hook_error(paths, name, "tars_sandbox", exc, timeout) from None
    joining = _record(name, host.plugins[name].version, contrib or SandboxContribution(), paths)
    state.targets.update(joining.contributed.targets)
    state.plugins[name] = joining.section
    return joining


async def _seed(host: PluginHost, paths: Paths, state: State, names: Sequence[str], timeout: float) -> None:
    from tars_core.runner import build_context

    cfg = TarsConfig(targets=targets(state), plugins=state.plugins, source=str(paths.config))
    for name in names:
        if not host.has_hook(name, "tars_sandbox_seed"):
            continue
        ctx = build_context(host.plugins[name], cfg, root=paths.root, phase="sandbox_seed")
        try:
            await host.call(name, "tars_sandbox_seed", timeout=timeout, grace=GRACE, ctx=ctx)
        except Exception as exc:
            raise _hook_error(paths, name, "tars_sandbox_seed", exc, timeout) from None


def join(host: PluginHost, paths: Paths, state: State, names: Sequence[str]) -> None:
    """Ask each new plugin for its contribution, then seed them all in dependency order.

    A plugin is recorded as contributed only after its seed ran, so a failure here leaves it to be
    joined again by the next ``up``.
    """
    import anyio

    timeout = TarsConfig().release.timeouts.sandbox

    async def run() -> list[_Joining]:
        joined = [await _contribute(host, paths, state, name, timeout) for name in names]
        await _seed(host, paths, state, names, timeout)
        return joined

    for joining in anyio.run(run):
        state.services.extend(joining.services)
        state.contributed[joining.name] = joining.contributed


def leave(host: PluginHost, state: State) -> None:
    """Plugins uninstalled since they joined leave: their services stop, their config section goes.

    A plugin blocked (``-p no:NAME``) or left out by ``TARS_LOAD_PLUGINS`` is only skipped for this
    invocation, and one that failed to load is still installed (a half-done edit must not cost it its
    seeded data): they stay.
    """
    installed = {*host.plugins, *host.blocked, *host.not_allowed, *host.failures}
    for name in [n for n in state.contributed if n not in installed]:
        gone = state.contributed.pop(name)
        for rec in [s for s in state.services if s.name in gone.services]:
            supervise.stop(rec)
            state.services.remove(rec)
        state.plugins.pop(name, None)
