"""The hooks a T.A.R.S. plugin may implement: the hook contract, version :data:`HOOK_CONTRACT`.

Every hook may be a plain function or an ``async def``: the core awaits whatever is awaitable. Mark each
implementation with ``tars_core.hookimpl``. In a plugin module or object the ``tars_`` prefix belongs to
hooks: a ``tars_*`` callable without the marker refuses the plugin at load (pluggy would never call it,
so an unmarked ``tars_rollback`` would let the ledger say "rolled back" with nothing undone), and a
marked one whose name is not declared here fails ``check_pending`` (a misspelt hook).

The phase hooks (``tars_apply``, ``tars_verify``, ``tars_rollback``, ``tars_benchmark``) are called for one
plugin at a time, through ``PluginManager.subset_hook_caller``, so a release applies fixes in dependency
order. A hook signals failure by raising; ``tars_core.FixError`` is the expected kind, shown as one line.

Monitors (``kind="monitor"``) may also gate the release: ``tars_preflight`` before any hotfix is
applied, ``tars_observe`` during each fix's bake time. Both answer with a :class:`tars_core.Judgement`.

To time, trace or count phases, implement the observer hooks ``tars_phase_started`` and
``tars_phase_finished``: the runner calls them around the *awaited* phase call, with its outcome and
duration. Hook wrappers (``wrapper=True``) cannot do that job: every real plugin's hooks are
``async def``, and a wrapper around one sees only the coroutine object, returned before any of its work
has run.

Versioning: every hook says in which core version it appeared (``.. versionadded::``);
:data:`HOOK_CONTRACT` is the newest of them. A plugin declares the cores it was written for in its
distribution's requirements (:data:`CORE_REQUIREMENT`, what ``tars-run new-plugin`` writes); discovery
refuses a plugin whose requirement excludes the running core, naming both versions, instead of letting
it fail later on a hook that does not exist or means something else.

Writing a plugin: docs/plugins.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from tars_core.model import (
        ApplyResult,
        BenchmarkResult,
        Change,
        Context,
        Judgement,
        Plan,
        PluginInfo,
        Release,
        ReportSection,
        SandboxContribution,
        SandboxSite,
        VerifyResult,
    )

hookspec = pluggy.HookspecMarker("tars")
hookimpl = pluggy.HookimplMarker("tars")

HOOK_CONTRACT = "1.0.1"
"""The version of the hook contract this core implements: the newest ``versionadded`` below."""

CORE_RANGE = ">=1.0.1,<2"
"""The tars-core versions that implement this contract (a new major version may break it)."""

CORE_REQUIREMENT = f"tars-core{CORE_RANGE}"
"""The requirement a plugin written against this contract puts in its ``dependencies``."""


@hookspec(firstresult=True)
def tars_plugin_info() -> PluginInfo:
    """Describe the plugin: name, title, kind, fix id, requirements and config class.

    Called once per plugin at load time (discovery, or ``PluginHost.register`` in tests), for that
    plugin alone, before any other hook. Every release plugin must implement it; a registered object
    without it is a pure observer or wrapper: it is never sequenced itself.

    Stops at the first non-``None`` result (``firstresult``).

    :returns: a :class:`tars_core.PluginInfo` whose ``name`` equals the entry-point name; anything
        else refuses the plugin at load.

    .. versionadded:: 1.0.1
    """


@hookspec(firstresult=True)
def tars_apply(ctx: Context) -> ApplyResult | None:
    """Put the fix in place on ``ctx.targets``.

    Called once per plugin in dependency order by ``apply``, unless the ledger says the fix is applied
    with the same version and config and ``tars_verify`` confirms it. Must be idempotent: applying twice
    changes nothing the second time (return ``ApplyResult(changed=False)``). With ``ctx.dry_run`` the
    hook must change nothing and log what it would do. A fix that changes running code turns its feature
    flag on (``ctx.flags``) only after checking that the fixed code is what runs. Raising
    :class:`tars_core.TargetError` before changing anything tells the runner the target was never
    reached: the run exits 2 and the automatic rollback of this plugin is a recorded no-op.

    Stops at the first non-``None`` result (``firstresult``).

    :param ctx: the plugin's config section (``ctx.config``), targets, logger, flags and state.
    :returns: :class:`tars_core.ApplyResult` or ``None`` (changed unknown); raise to fail the step,
        which rolls back this plugin and every plugin applied earlier in the run.

    .. versionadded:: 1.0.1
    """


@hookspec(firstresult=True)
def tars_verify(ctx: Context) -> VerifyResult:
    """Check that the fix is in place *and* the running system behaves as fixed.

    Called after each apply, by ``verify``, when an idempotent re-run decides whether to skip, and when
    a run finds a phase interrupted by a crash. Must not change the target. Checks behaviour, never only
    a flag or a file.

    Stops at the first non-``None`` result (``firstresult``).

    :param ctx: as for :func:`tars_apply`.
    :returns: :class:`tars_core.VerifyResult`; ``ok=False`` fails the step (the release rolls back), and
        after a rollback verify must report ``ok=False`` (not applied).

    .. versionadded:: 1.0.1
    """


@hookspec(firstresult=True)
def tars_rollback(ctx: Context) -> ApplyResult | None:
    """Undo the fix, restoring the target to its state before ``tars_apply``.

    Called in reverse order for the failed plugin and every plugin applied earlier in the same run, by
    ``rollback``, and when a crashed run is resolved. Must be idempotent: rolling back what is not
    applied logs a warning and returns ``ApplyResult(changed=False)``. Raising here means manual action
    is needed: the run exits 4 and the report says which plugin.

    Stops at the first non-``None`` result (``firstresult``).

    :param ctx: as for :func:`tars_apply`.
    :returns: :class:`tars_core.ApplyResult` or ``None``.

    .. versionadded:: 1.0.1
    """


@hookspec(firstresult=True)
def tars_benchmark(ctx: Context) -> BenchmarkResult:
    """Measure the fix: before/after figures with units and the target each is judged against.

    Called by ``benchmark`` for each selected plugin. May take minutes; honours the benchmark timeout.
    Not called by ``apply``.

    Stops at the first non-``None`` result (``firstresult``).

    :param ctx: as for :func:`tars_apply`.
    :returns: :class:`tars_core.BenchmarkResult`, stored in the ledger and shown in the report.

    .. versionadded:: 1.0.1
    """


@hookspec(firstresult=True)
def tars_preflight(ctx: Context, plan: Plan) -> Judgement | None:
    """Judge whether the release may start at all (e.g. freeze it while the error budget is spent).

    Called by ``apply`` once per selected monitor (``kind="monitor"``) that implements it, after every
    selected monitor has been applied and verified (so its rules are in place) and before the first
    hotfix is applied; never under ``--dry-run``. A ``fail`` stops the release with exit 1 and nothing to
    roll back (no hotfix has changed anything); ``inconclusive`` follows ``release.on_inconclusive``. A
    hook that raises or passes ``release.timeouts.preflight`` is recorded as ``inconclusive`` with the
    error as its reason. Must not change the target.

    Stops at the first non-``None`` result (``firstresult``).

    :param ctx: the monitor's own context (its config section, targets, logger); ``ctx.phase`` is
        ``preflight``.
    :param plan: the release name, the selected plugins in apply order and whether the release is a
        reliability release (``release.reliability``).
    :returns: a :class:`tars_core.Judgement` (recorded in the ledger and the report with its
        evidence), or ``None`` to abstain (nothing recorded, the release goes on).

    .. versionadded:: 1.0.1
    """


@hookspec(firstresult=True)
def tars_observe(ctx: Context, change: Change) -> Judgement | None:
    """Watch one fix during its bake time and judge it.

    Called by ``apply`` after a hotfix's ``tars_verify`` passed, for every selected monitor that
    implements it, all of them concurrently, when the fix's bake time (``release.bake_times.<plugin>``,
    else ``release.bake_time``) is above zero; never under ``--dry-run``. The hook watches until
    ``change.bake_seconds`` have elapsed (returning early with ``fail`` is fine) and returns; the runner
    stops waiting after the bake time plus ``release.timeout_grace``. A ``fail`` is handled like a failed
    verify: that fix and the ones applied before it in the run are rolled back by policy, exit 1, the
    final line naming the monitor and its first reason; ``inconclusive`` (also what a raising or
    timed-out hook yields) follows ``release.on_inconclusive``. Must not change the target.

    Stops at the first non-``None`` result (``firstresult``).

    :param ctx: the monitor's own context; ``ctx.phase`` is ``observe``.
    :param change: the fix just applied: plugin, fix id, when its verify passed, the flags it changed,
        its canary selection and the bake time to watch for.
    :returns: a :class:`tars_core.Judgement`, or ``None`` to abstain (nothing recorded).

    .. versionadded:: 1.0.1
    """


@hookspec
def tars_report(release: Release) -> ReportSection | None:
    """Add a section to the release report.

    Called by ``report`` once per selected plugin (for that plugin alone), after the core has gathered
    the ledger's view of the release and rendered every metric table itself; a section carries only
    what is specific to the plugin (prose, extra tables, attachments).

    Not ``firstresult``: the caller takes the first non-``None`` section of the plugin's results.

    :param release: every plugin's phases, outcomes and benchmark figures, the targets (secrets
        redacted) and the report folder for attachments.
    :returns: a :class:`tars_core.ReportSection`, or ``None`` to add nothing.

    .. versionadded:: 1.0.1
    """


@hookspec(firstresult=True)
def tars_sandbox(site: SandboxSite) -> SandboxContribution | None:
    """Contribute services and config to the embedded sandbox.

    Called once per plugin when ``tars-run sandbox up`` creates (or ``reset`` recreates) the sandbox,
    after the sandbox's PostgreSQL and Redis are up and ``site.targets`` points at them (Prometheus
    starts once every contribution's scrape targets are known).
    Also called once for a plugin installed after the sandbox was created (it joins on the next
    command). The returned services are recorded in the sandbox state and restarted by later ``up``
    calls without calling this hook again.

    Stops at the first non-``None`` result (``firstresult``).

    :param site: the sandbox being built: the plugin's folder, the sandbox targets, the interpreter.
    :returns: :class:`tars_core.SandboxContribution`, or ``None`` when the plugin needs nothing.

    .. versionadded:: 1.0.1
    """


@hookspec(firstresult=True)
def tars_sandbox_seed(ctx: Context) -> Any:
    """Load the plugin's v1.0.0 baseline (schema, seed data, rule files) into a new sandbox.

    Called once per plugin, in dependency order, after every ``tars_sandbox`` contribution is known and
    before the contributed services start, with ``ctx.config`` built from the contribution's ``config``.
    Must be idempotent (``reset`` calls it again on a fresh sandbox).

    Stops at the first non-``None`` result (``firstresult``).

    :param ctx: as for :func:`tars_apply`, with the sandbox's targets.
    :returns: ignored; raise to refuse the sandbox (one line naming the plugin).

    .. versionadded:: 1.0.1
    """


@hookspec
def tars_phase_started(plugin: str, phase: str, ctx: Context) -> None:
    """Observe that a phase hook of one plugin is about to run (for timing, tracing, audit).

    Called by the runner for every implementation (of every registered plugin, observers without
    ``tars_plugin_info`` included) immediately before it awaits ``tars_<phase>`` of ``plugin``, and
    only when that hook is called: a skipped phase has neither start nor finish. Always followed by
    :func:`tars_phase_finished` for the same call, also when the hook raises, times out or is
    interrupted. May be ``async def`` (it is awaited); keep it quick, it delays the phase. An observer
    that raises is logged and ignored: it never fails the release.

    Not ``firstresult``: every implementation is called, each isolated from the others.

    :param plugin: the name of the plugin whose hook is about to run.
    :param phase: ``apply``, ``verify``, ``rollback`` or ``benchmark``.
    :param ctx: the context the phase hook receives (read it, do not change it).
    :returns: ignored.

    .. versionadded:: 1.0.1
    """


@hookspec
def tars_phase_finished(plugin: str, phase: str, outcome: str, seconds: float, error: str | None) -> None:
    """Observe how a phase hook of one plugin ended, with its duration.

    Called by the runner for every implementation immediately after the awaited ``tars_<phase>`` of
    ``plugin`` returned or raised (so ``seconds`` is the hook's real run time, async work included),
    once for each :func:`tars_phase_started`. May be ``async def``; an observer that raises is logged
    and ignored.

    Not ``firstresult``: every implementation is called, each isolated from the others.

    :param plugin: the name of the plugin whose hook ran.
    :param phase: ``apply``, ``verify``, ``rollback`` or ``benchmark``.
    :param outcome: the ledger outcome of the phase (a :class:`tars_core.model.Outcome` value: ``ok``,
        ``failed``, ``unreached``, ``interrupted``, ``unknown``, ``dry-run``).
    :param seconds: wall time of the awaited hook call.
    :param error: the one-line, redacted error when the phase did not succeed, else ``None``.
    :returns: ignored.

    .. versionadded:: 1.0.1
    """
