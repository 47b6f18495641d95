"""The hooks a T.A.R.S. plugin may implement.

Every hook may be a plain function or an ``async def``: the runner awaits whatever is awaitable. The
phase hooks (``tars_apply``, ``tars_verify``, ``tars_rollback``, ``tars_benchmark``) are called for one
plugin at a time, through ``PluginManager.subset_hook_caller``, so a release applies fixes in dependency
order and a plugin that only wraps hooks (``hookwrapper=True``/``wrapper=True``, e.g. for timing or
tracing) still wraps each call. A hook signals failure by raising; ``tars_core.FixError`` is the expected
kind and is shown as one line.

Writing a plugin: docs/plugins.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from tars_core.model import (
        ApplyResult,
        BenchmarkResult,
        Context,
        PluginInfo,
        Release,
        ReportSection,
        SandboxContribution,
        SandboxSite,
        VerifyResult,
    )

hookspec = pluggy.HookspecMarker("tars")
hookimpl = pluggy.HookimplMarker("tars")


@hookspec(firstresult=True)
def tars_plugin_info() -> PluginInfo:
    """Describe the plugin: name, title, kind, fix id, requirements and config class.

    Called once per plugin right after discovery, for that plugin alone. Every release plugin must
    implement it; a registered object without it is treated as a pure wrapper (it wraps other plugins'
    hooks and is never sequenced itself).

    :returns: a :class:`tars_core.PluginInfo` whose ``name`` equals the entry-point name.
    """


@hookspec(firstresult=True)
def tars_apply(ctx: Context) -> ApplyResult | None:
    """Put the fix in place on ``ctx.targets``.

    Called once per plugin in dependency order by ``apply``, unless the ledger says the fix is applied
    with the same version and config and ``tars_verify`` confirms it. Must be idempotent: applying twice
    changes nothing the second time (return ``ApplyResult(changed=False)``). With ``ctx.dry_run`` the
    hook must change nothing and log what it would do. A fix that changes running code turns its feature
    flag on (``ctx.flags``) only after checking that the fixed code is what runs.

    :param ctx: the plugin's config section (``ctx.config``), targets, logger, flags and state folder.
    :returns: :class:`tars_core.ApplyResult` or ``None``; raise to fail the step.
    """


@hookspec(firstresult=True)
def tars_verify(ctx: Context) -> VerifyResult:
    """Check that the fix is in place *and* the running system behaves as fixed.

    Called after each apply, by ``verify``, when an idempotent re-run decides whether to skip, and when
    a run finds a phase interrupted by a crash. Must not change the target. Checks behaviour, never only
    a flag or a file.

    :returns: :class:`tars_core.VerifyResult`; ``ok=False`` fails the step (release rolls back), and
        after a rollback verify must report ``ok=False`` (not applied).
    """


@hookspec(firstresult=True)
def tars_rollback(ctx: Context) -> ApplyResult | None:
    """Undo the fix, restoring the target to its state before ``tars_apply``.

    Called in reverse order for the failed plugin and every plugin applied earlier in the same run, by
    ``rollback``, and when a crashed run is resolved. Must be idempotent: rolling back what is not
    applied logs a warning and returns ``ApplyResult(changed=False)``. Raising here means manual action
    is needed: the run exits 4 and the report says which plugin.
    """


@hookspec(firstresult=True)
def tars_benchmark(ctx: Context) -> BenchmarkResult:
    """Measure the fix: before/after figures with units and the target each is judged against.

    Called by ``benchmark`` for each selected plugin. May take minutes; honours the benchmark timeout.
    Not called by ``apply``.

    :returns: :class:`tars_core.BenchmarkResult`.
    """


@hookspec
def tars_report(release: Release) -> ReportSection | None:
    """Add a section to the release report.

    Called by ``report`` once per selected plugin (for that plugin alone), after the core has gathered
    the ledger's view of the release. ``release`` gives every plugin's phases, outcomes and benchmark
    figures, the targets (secrets redacted) and the report folder for attachments.

    :returns: a :class:`tars_core.ReportSection`, or ``None`` to add nothing.
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

    :returns: :class:`tars_core.SandboxContribution`, or ``None`` when the plugin needs nothing.
    """


@hookspec(firstresult=True)
def tars_sandbox_seed(ctx: Context) -> Any:
    """Load the plugin's v1.0.0 baseline (schema, seed data, rule files) into a new sandbox.

    Called once per plugin, in dependency order, after every ``tars_sandbox`` contribution is known and
    before the contributed services start, with ``ctx.config`` built from the contribution's ``config``.
    Must be idempotent (``reset`` calls it again on a fresh sandbox).
    """
