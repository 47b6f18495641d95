"""Plugin discovery, selection and per-plugin hook calls.

Discovery follows sqlfluff and datasette: each ``tars.plugins`` entry point is loaded in its own
try/except so one broken distribution is reported (with its name and version) instead of taking the CLI
down, names are deduplicated (the same dist-info can be on ``sys.path`` twice), and ``check_pending``
catches a misspelt hook name at load time rather than as a silently ignored function at run time.

The runner never calls ``pm.hook.tars_apply`` directly: that would run every fix at once, last
registered first. ``PluginHost.call`` calls one plugin's implementation through ``subset_hook_caller``,
which keeps pure wrapper plugins (no ``tars_plugin_info``) in the call so they still wrap it.
"""

from __future__ import annotations

import heapq
import importlib.metadata as md
import inspect
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import pluggy

from tars_core import hookspecs
from tars_core.errors import UsageError
from tars_core.model import PluginInfo

ENTRY_POINT_GROUP = "tars.plugins"


@attrs.define
class LoadedPlugin:
    name: str
    obj: Any
    info: PluginInfo
    distribution: str | None = None
    version: str = "0+unknown"


@attrs.frozen
class LoadFailure:
    name: str
    distribution: str | None
    version: str | None
    error: str

    def message(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "unknown distribution"
        return (
            f"plugin {self.name} ({dist}) failed to load: {self.error}; "
            f"fix or uninstall it, or skip it with -p no:{self.name}"
        )


def blocked_from_env() -> list[str]:
    return [n.strip() for n in os.environ.get("TARS_DISABLE_PLUGINS", "").split(",") if n.strip()]


class PluginHost:
    """The loaded plugins of one ``tars-run`` invocation (or one test), in a pluggy PluginManager."""

    def __init__(self, blocked: Iterable[str] = (), trace: bool | None = None) -> None:
        self.pm = pluggy.PluginManager("tars")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, LoadedPlugin] = {}
        self.failures: dict[str, LoadFailure] = {}
        self.blocked: set[str] = set(blocked) | set(blocked_from_env())
        for name in self.blocked:
            self.pm.set_blocked(name)
        if trace if trace is not None else os.environ.get("TARS_TRACE_PLUGINS") == "1":
            self.pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
            self.pm.enable_tracing()
        self._callers: dict[tuple[str, str], Any] = {}

    # -- discovery -------------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        seen: set[str] = set()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen or ep.name in self.plugins:
                continue
            seen.add(ep.name)
            if ep.name in self.blocked:
                continue
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            try:
                obj = ep.load()
                self.register(obj, ep.name, distribution=dist, version=version or "0+unknown")
            except Exception as exc:  # one broken plugin must not take the CLI down
                self.failures[ep.name] = LoadFailure(ep.name, dist, version, _one_line(exc))

    def register(
        self, obj: Any, name: str, *, distribution: str | None = None, version: str = "0+local"
    ) -> LoadedPlugin | None:
        """Register a plugin object under ``name``; returns ``None`` for a pure wrapper plugin.

        A release plugin must answer ``tars_plugin_info`` with ``name`` equal to its registered name,
        or the ledger and ``--plugins`` would disagree about what it is called.
        """
        if name in self.blocked:
            return None
        self.pm.register(obj, name=name)
        try:
            self.pm.check_pending()
            info: PluginInfo | None = None
            if getattr(obj, "tars_plugin_info", None) is not None:
                info = self.pm.subset_hook_caller("tars_plugin_info", self._others(obj)).__call__()
            if info is None:
                self._callers.clear()
                return None
            if not isinstance(info, PluginInfo):
                raise TypeError(f"tars_plugin_info returned {type(info).__name__}, not PluginInfo")
            if info.name != name:
                raise ValueError(f"tars_plugin_info says its name is {info.name!r}, entry point says {name!r}")
        except Exception:
            self.pm.unregister(obj)
            raise
        loaded = LoadedPlugin(name, obj, info, distribution, version)
        self.plugins[name] = loaded
        self._callers.clear()
        return loaded

    def unregister(self, name: str) -> None:
        loaded = self.plugins.pop(name, None)
        obj = loaded.obj if loaded else self.pm.get_plugin(name)
        if obj is not None:
            self.pm.unregister(obj)
        self._callers.clear()

    def _others(self, obj: Any) -> list[Any]:
        return [p.obj for p in self.plugins.values() if p.obj is not obj]

    # -- selection -------------------------------------------------------------------------------
    def resolve_name(self, token: str) -> str:
        """A plugin name from a name or a fix id (``TARS-1004``), case-insensitively."""
        t = token.strip()
        if t in self.plugins:
            return t
        for p in self.plugins.values():
            if p.info.fix_id and p.info.fix_id.lower() == t.lower():
                return p.name
            if p.name.lower() == t.lower():
                return p.name
        if t in self.failures:
            raise UsageError(self.failures[t].message())
        if t in self.blocked:
            raise UsageError(f"plugin {t} is disabled (-p no:{t} or TARS_DISABLE_PLUGINS); remove the block")
        known = ", ".join(sorted(self.plugins)) or "none installed"
        raise UsageError(f"unknown plugin {t!r}: installed plugins are {known} (see tars-run list)")

    def select(self, spec: str | Sequence[str] = "all", *, with_requirements: bool = True) -> list[LoadedPlugin]:
        """The plugins named by ``--plugins`` (plus their requirements for apply), in dependency order.

        ``all`` refuses to run when an installed plugin failed to load: a release that silently skips
        a fix is worse than one that stops; ``-p no:NAME`` is the explicit way to leave it out.
        """
        tokens = [spec] if isinstance(spec, str) else list(spec)
        tokens = [t for tok in tokens for t in tok.split(",") if t.strip()]
        if not tokens or tokens == ["all"]:
            if self.failures:
                raise UsageError(next(iter(self.failures.values())).message())
            names = set(self.plugins)
        else:
            names = {self.resolve_name(t) for t in tokens}
        wanted: set[str] = set()
        stack = list(names)
        while stack:
            n = stack.pop()
            if n in wanted:
                continue
            wanted.add(n)
            for req in self.plugins[n].info.requires:
                if req in wanted or (not with_requirements and req in self.plugins):
                    continue
                if req not in self.plugins:
                    why = "is disabled" if req in self.blocked else "is not installed"
                    raise UsageError(f"plugin {n} requires {req}, which {why}; install it or deselect {n}")
                stack.append(req)
        return [self.plugins[n] for n in self.order(wanted)]

    def order(self, names: Iterable[str]) -> list[str]:
        """Topological order by ``requires`` (Kahn), ties broken by name so plans are reproducible."""
        names = set(names)
        indeg = {n: 0 for n in names}
        children: dict[str, list[str]] = {n: [] for n in names}
        for n in names:
            for req in self.plugins[n].info.requires:
                if req in names:
                    indeg[n] += 1
                    children[req].append(n)
        ready = [n for n, d in indeg.items() if d == 0]
        heapq.heapify(ready)
        out: list[str] = []
        while ready:
            n = heapq.heappop(ready)
            out.append(n)
            for c in children[n]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    heapq.heappush(ready, c)
        if len(out) != len(names):
            cycle = sorted(n for n in names if n not in out)
            raise UsageError(f"dependency cycle among plugins: {' -> '.join(cycle)}; fix their requires")
        return out

    # -- calling ---------------------------------------------------------------------------------
    def has_hook(self, name: str, hook: str) -> bool:
        return getattr(self.plugins[name].obj, hook, None) is not None

    def caller(self, name: str, hook: str) -> Any:
        key = (name, hook)
        if key not in self._callers:
            self._callers[key] = self.pm.subset_hook_caller(hook, self._others(self.plugins[name].obj))
        return self._callers[key]

    async def call(self, name: str, hook: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call one plugin's ``hook`` and await its result, within ``timeout`` seconds.

        Sync implementations run in a worker thread so a blocking hook cannot freeze the event loop
        (and so the timeout can give up on it); async ones are awaited on the loop.
        """
        import anyio
        import anyio.to_thread

        caller = self.caller(name, hook)
        impl = getattr(self.plugins[name].obj, hook, None)
        with anyio.fail_after(timeout):
            if inspect.iscoroutinefunction(impl):
                result = caller(**kwargs)
            else:
                result = await anyio.to_thread.run_sync(lambda: caller(**kwargs), abandon_on_cancel=True)
            while inspect.isawaitable(result):
                result = await result
        return result

    def broadcast(self, hook: str, **kwargs: Any) -> list[Any]:
        return list(getattr(self.pm.hook, hook)(**kwargs))


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__
