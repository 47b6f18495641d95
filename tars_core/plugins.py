"""Plugin discovery, selection and per-plugin hook calls.

Discovery follows sqlfluff and datasette: each ``tars.plugins`` entry point is loaded in its own
try/except so one broken distribution is reported (with its name and version) instead of taking the CLI
down, names are deduplicated (the same dist-info can be on ``sys.path`` twice), and ``check_pending``
catches a misspelt hook name at load time rather than as a silently ignored function at run time.

What may load is decided before anything is imported: ``TARS_LOAD_PLUGINS=name,...`` (an allowlist of
entry-point or distribution names; a release runner holds database credentials, so production says
exactly which code may run), then the blocklist (``-p no:NAME``, ``TARS_DISABLE_PLUGINS``), then the
distribution's own requirement on ``tars-core``: a plugin built for another hook contract is refused
with one line naming both versions instead of failing later inside a hook.

A ``tars_*`` function without ``@hookimpl`` is refused at registration (pytest's
``parse_hookimpl_opts`` decides the same question; pytest accepts unmarked hooks for history's sake,
we refuse them): pluggy would never call it, so the runner must not believe it is there.

The runner never calls ``pm.hook.tars_apply`` directly: that would run every fix at once, last
registered first. ``PluginHost.call`` calls one plugin's implementation through ``subset_hook_caller``,
which keeps pure wrapper plugins (no ``tars_plugin_info``) in the call so they still wrap it.
"""

from __future__ import annotations

import functools
import heapq
import importlib.metadata as md
import inspect
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import pluggy

from tars_core import hookspecs
from tars_core.errors import UsageError
from tars_core.model import PluginInfo

ENTRY_POINT_GROUP = "tars.plugins"
OBSERVER_TIMEOUT = 5.0  # seconds an async observer may take before it is abandoned (logged)

log = logging.getLogger("tars")


@attrs.define
class LoadedPlugin:
    name: str
    obj: Any
    info: PluginInfo
    distribution: str | None = None
    version: str = "0+unknown"


@attrs.frozen
class LoadFailure:
    """An installed plugin that could not be loaded; ``error`` says what, ``advice`` what to do."""

    name: str
    distribution: str | None
    version: str | None
    error: str
    advice: str = "fix or uninstall it"

    def message(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "unknown distribution"
        return f"plugin {self.name} ({dist}) {self.error}; {self.advice}, or skip it with -p no:{self.name}"


def _names_from_env(var: str) -> list[str]:
    return [n.strip() for n in os.environ.get(var, "").split(",") if n.strip()]


def blocked_from_env() -> list[str]:
    return _names_from_env("TARS_DISABLE_PLUGINS")


def allowed_from_env() -> list[str] | None:
    """``TARS_LOAD_PLUGINS`` as a list, or ``None`` when unset or empty (no allowlist: load everything)."""
    return _names_from_env("TARS_LOAD_PLUGINS") or None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503, so tars_1004_db allows tars-1004-db


@functools.cache
def running_core_version() -> str:
    """The installed tars-core version (the contract version when running from a source tree)."""
    try:
        return md.version("tars-core")
    except md.PackageNotFoundError:
        return hookspecs.HOOK_CONTRACT


# ``name [extras] (specifier) ; marker`` of a Requires-Dist line naming tars-core. Parsed here rather than by
# packaging.requirements, whose marker machinery adds ~35 ms to every ``tars-run list``; a URL pin is no match.
_CORE_REQUIREMENT = re.compile(
    r"\s*tars[-_.]core(?![\w.-])\s*(?:\[[^\]]*\])?\s*\(?(?P<spec>[^;()@]*?)\)?\s*(?:;(?P<marker>.*))?$", re.IGNORECASE
)


def core_conflict(dist: md.Distribution, core: str) -> str | None:
    """The distribution's requirement on tars-core when it excludes ``core``, else ``None``.

    Requirements that apply only to an extra (``; extra == "test"``) or another platform do not count;
    a pre-release core is judged by its number (``1.1.0.dev1`` satisfies ``>=1.0.1,<2``).
    """
    for line in dist.requires or ():
        match = _CORE_REQUIREMENT.match(line)
        if match is None or not match["spec"]:
            continue
        if match["marker"]:
            from packaging.markers import Marker

            if not Marker(match["marker"]).evaluate({"extra": ""}):
                continue
        from packaging.specifiers import SpecifierSet

        spec = SpecifierSet(match["spec"])
        if not spec.contains(core, prereleases=True):
            return f"tars-core{spec}"
    return None


def _callable_attr(plugin: object, name: str) -> bool:
    attr = inspect.getattr_static(plugin, name, None)
    return isinstance(attr, staticmethod | classmethod) or callable(attr)


class TarsPluginManager(pluggy.PluginManager):
    """pluggy's manager with the ``tars_`` prefix reserved for marked hook implementations.

    ``register`` refuses an object with an unmarked ``tars_*`` callable before changing any state,
    naming every such function; only ``tars_*`` attributes are inspected at all (pytest does the same
    with ``pytest_*``), so a plugin's unrelated properties are never evaluated.
    """

    def __init__(self) -> None:
        super().__init__("tars")

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        if not name.startswith("tars_"):
            return None
        return super().parse_hookimpl_opts(plugin, name)

    def register(self, plugin: object, name: str | None = None) -> str | None:
        if name is not None and self.is_blocked(name):
            return None
        unmarked = [
            n
            for n in dir(plugin)
            if n.startswith("tars_") and _callable_attr(plugin, n) and self.parse_hookimpl_opts(plugin, n) is None
        ]
        if unmarked:
            shown = name or self.get_canonical_name(plugin)
            what = f"{unmarked[0]} is" if len(unmarked) == 1 else f"{', '.join(unmarked)} are"
            them = "it" if len(unmarked) == 1 else "them"
            raise pluggy.PluginValidationError(
                plugin, f"plugin {shown}: {what} not marked @hookimpl; decorate {them} with tars_core.hookimpl"
            )
        return super().register(plugin, name)


class PluginHost:
    """The loaded plugins of one ``tars-run`` invocation (or one test), in a pluggy PluginManager.

    ``allowed`` (default: ``TARS_LOAD_PLUGINS``) limits which entry points are loaded at all, by
    entry-point or distribution name; the others are not imported and are listed in ``not_allowed``.
    It applies to discovery only: an object a test registers in process is registered.
    """

    def __init__(
        self, blocked: Iterable[str] = (), trace: bool | None = None, allowed: Iterable[str] | None = None
    ) -> None:
        self.pm = TarsPluginManager()
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, LoadedPlugin] = {}
        self.failures: dict[str, LoadFailure] = {}
        self.blocked: set[str] = set(blocked) | set(blocked_from_env())
        for name in self.blocked:
            self.pm.set_blocked(name)
        names = allowed if allowed is not None else allowed_from_env()
        self.allowed: set[str] | None = None if names is None else {_canonical(n) for n in names}
        self.not_allowed: dict[str, str | None] = {}  # entry-point name -> distribution, never imported
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
            if self.allowed is not None and not {_canonical(ep.name), _canonical(dist or "")} & self.allowed:
                self.not_allowed[ep.name] = dist
                continue
            try:
                conflict = core_conflict(ep.dist, running_core_version()) if ep.dist is not None else None
                if conflict:
                    error = f"requires {conflict}, this is tars-core {running_core_version()}"
                    self.failures[ep.name] = LoadFailure(ep.name, dist, version, error, "install a matching version")
                    continue
                obj = ep.load()
                self.register(obj, ep.name, distribution=dist, version=version or "0+unknown")
            except Exception as exc:  # one broken plugin must not take the CLI down
                reason = _one_line(exc).removeprefix(f"plugin {ep.name}: ")
                self.failures[ep.name] = LoadFailure(ep.name, dist, version, f"failed to load: {reason}")

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
            if self._implements(obj, "tars_plugin_info"):
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
        if t in self.not_allowed:
            dist = self.not_allowed[t]
            raise UsageError(
                f"plugin {t} is not allowed to load: TARS_LOAD_PLUGINS names neither it nor its distribution "
                f"{dist or '(unknown)'}; add {t} to TARS_LOAD_PLUGINS to run it"
            )
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
                    why = (
                        "is disabled"
                        if req in self.blocked
                        else "is not allowed to load (TARS_LOAD_PLUGINS)"
                        if req in self.not_allowed
                        else "is not installed"
                    )
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
    def _implements(self, obj: Any, hook: str) -> bool:
        caller = getattr(self.pm.hook, hook, None)
        return caller is not None and any(
            impl.plugin is obj and not (impl.hookwrapper or impl.wrapper) for impl in caller.get_hookimpls()
        )

    def has_hook(self, name: str, hook: str) -> bool:
        """Will calling ``hook`` of plugin ``name`` run an implementation of that plugin?

        Answered from pluggy's registered implementations, never from ``getattr``: an attribute pluggy
        does not call (or a wrapper with nothing to wrap) would let the runner record work as done.
        """
        obj = self.pm.get_plugin(name)
        return obj is not None and self._implements(obj, hook)

    def caller(self, name: str, hook: str) -> Any:
        key = (name, hook)
        if key not in self._callers:
            self._callers[key] = self.pm.subset_hook_caller(hook, self._others(self.plugins[name].obj))
        return self._callers[key]

    async def call(
        self, name: str, hook: str, *, timeout: float | None = None, grace: float = 0.0, **kwargs: Any
    ) -> Any:
        """Call one plugin's ``hook`` and await its result, within ``timeout`` seconds.

        Sync implementations run in a worker thread so a blocking hook cannot freeze the event loop;
        async ones run as their own task. After a timeout (``TimeoutError``) or a cancellation the
        worker, and any ``asyncio.to_thread`` job it started, is awaited for up to ``grace`` seconds, so
        nothing that runs next (a rollback) races it; one still running then raises
        :class:`tars_core.errors.HookStillRunning` (see that module for why and how).
        """
        from tars_core.hookcall import run_hook

        caller = self.caller(name, hook)
        impl = getattr(self.plugins[name].obj, hook, None)
        return await run_hook(
            lambda: caller(**kwargs),
            in_thread=not inspect.iscoroutinefunction(impl),
            hook=hook,
            timeout=timeout,
            grace=grace,
        )

    async def notify(self, hook: str, *, timeout: float = OBSERVER_TIMEOUT, **kwargs: Any) -> None:
        """Call every implementation of an observer hook (``tars_phase_started``/``_finished``).

        Each implementation is called on its own, in pluggy's order, and awaited if it returns an
        awaitable (within ``timeout`` seconds): an observer that raises or hangs is logged and skipped,
        so the others still hear of the phase and the release never fails because of an observer.
        Sync observers run on the event loop: they must be quick.
        """
        import anyio

        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):  # pluggy calls LIFO
            if impl.hookwrapper or impl.wrapper:
                continue
            try:
                with anyio.fail_after(timeout):
                    result = impl.function(*(kwargs[arg] for arg in impl.argnames))
                    while inspect.isawaitable(result):
                        result = await result
            except Exception as exc:
                why = f"took longer than {timeout:g}s" if isinstance(exc, TimeoutError) else f"raised {_one_line(exc)}"
                log.warning("observer %s: %s %s; ignored", impl.plugin_name, hook, why)


def _one_line(exc: BaseException) -> str:
    """The first line of an error; a contract violation's message is already a sentence for the user."""
    text = str(exc) if isinstance(exc, pluggy.PluginValidationError) else f"{type(exc).__name__}: {exc}"
    text = text.strip()
    return text.splitlines()[0] if text else type(exc).__name__
