"""Sequencing a release: apply then verify each plugin in dependency order, roll back on failure."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import anyio
import anyio.lowlevel
import attrs

from tars_core.config import TarsConfig, config_digest, converter, plugin_config
from tars_core.errors import FixError, HookStillRunning, RollbackFailed, TargetError, TargetLost
from tars_core.flags import FeatureFlags, fraction
from tars_core.ledger import Ledger, now
from tars_core.model import (
    Change,
    Context,
    Evidence,
    ExitCode,
    GateKind,
    Judgement,
    JudgementRecord,
    Outcome,
    Plan,
    PluginState,
    Verdict,
)
from tars_core.plugins import LoadedPlugin, PluginHost
from tars_core.redact import Redactor
from tars_core.report import metric_line

log = logging.getLogger("tars")


def build_context(
    plugin: LoadedPlugin,
    cfg: TarsConfig,
    *,
    root: Path,
    phase: str,
    dry_run: bool = False,
    section: object | None = None,
) -> Context:
    """The ``ctx`` a phase hook receives; ``section`` overrides the structured config section."""
    state_dir = root / ".tars" / "plugins" / plugin.name
    state_dir.mkdir(parents=True, exist_ok=True)
    return Context(
        plugin=plugin.info,
        config=section if section is not None else plugin_config(plugin.info, cfg),
        targets=cfg.targets,
        log=logging.getLogger(f"tars.{plugin.name}"),
        dry_run=dry_run,
        flags=FeatureFlags(cfg.targets.redis, cfg.targets.flags_key),
        state_dir=state_dir,
        release=cfg.release.name,
        phase=phase,
    )


NOT_STARTED = "not started: the run was interrupted"
NOTHING_TO_UNDO = "apply never reached the target; nothing to undo"
_DONE = (Outcome.OK, Outcome.DRY_RUN)


@attrs.define
class Step:
    """What one phase of one plugin did in this run (the runner's answer, printed and reported)."""

    plugin: str
    phase: str
    outcome: Outcome
    seconds: float = 0.0
    error: str | None = None
    detail: str | None = None
    checks: dict[str, str] = attrs.field(factory=dict)  # VerifyResult.checks: which property held


@attrs.define
class RunResult:
    """What a command did: its exit code, every step, what was rolled back, and one line for people."""

    exit_code: ExitCode
    steps: list[Step]
    rolled_back: list[str] = attrs.field(factory=list)
    message: str = ""


class Runner:
    """Runs one command over the selected plugins with the ledger held; see docs/plugins.md.

    The ledger is written before and after each hook call (``running`` then the outcome), so the
    ledger is consistent at every instant a SIGKILL may hit: at worst a phase stays ``running`` and
    the next run resolves it (``resolve_crashed``).

    A hook that does not stop within ``release.timeout_grace`` after its timeout or Ctrl-C leaves its
    plugin ``unknown`` and the run stops there, exit 4, rolling back nothing at all: the stuck hook may
    still be writing the target, and rollbacks run in reverse dependency order, so undoing the fixes
    applied before it would pull the ground from under a plugin that is still changing things. Whoever
    checks the target decides; ``tars-run rollback`` then undoes everything in order.
    """

    def __init__(
        self,
        host: PluginHost,
        cfg: TarsConfig,
        ledger: Ledger,
        redactor: Redactor,
        *,
        root: Path,
        dry_run: bool = False,
        rollback_policy: bool = True,
        progress: Callable[[str], None] | None = None,
        debug: bool = False,
    ) -> None:
        self.host = host
        self.cfg = cfg
        self.ledger = ledger
        self.redact = redactor
        self.root = root
        self.dry_run = dry_run
        self.rollback_policy = rollback_policy and cfg.release.rollback
        self.progress = progress or (lambda line: None)
        self.debug = debug
        self.run_id = uuid.uuid4().hex[:12]
        self.release = cfg.release.name
        self.steps: list[Step] = []
        self._t0 = time.monotonic()
        self._scope: anyio.CancelScope | None = None
        self.interrupted = False
        self.final_message = ""
        self.bad_target = False  # a hook raised TargetError: the run ends with exit 2 (bad input)
        self.unreached: set[str] = set()  # apply raised TargetError in this run: its rollback is a no-op
        # plugins whose last rollback in this run could not reach the target: left as they are, exit 2
        self.rollback_unreachable: set[str] = set()
        self.stuck: list[str] = []  # plugins whose hook would not stop: the process must not wait for them
        self.tick_every = cfg.release.progress_every
        self.grace = cfg.release.timeout_grace
        self._digests: dict[str, str] = {}
        self.judgements: list[JudgementRecord] = []  # every gate judgement of this run, as recorded
        ledger.on_wait = self._ledger_waiting
        ledger.on_wait_every = self.tick_every

    # -- plumbing --------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Ctrl-C/SIGTERM: cancel the step in flight; the release loop then rolls back by policy."""
        if self.interrupted:
            self.progress("tars: interrupt received again; finishing the rollback, please wait")
            return
        self.interrupted = True
        self.progress("tars: interrupted; stopping the step in flight and rolling back by policy")
        if self._scope is not None:
            self._scope.cancel()

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self._t0:7.2f}s]"

    def _ledger_waiting(self, waited: float) -> None:
        self.progress(
            f"{self._stamp()} waiting for the ledger {self.ledger.location}: another process holds its "
            f"write lock ({waited:.0f}s)"
        )

    def context(self, plugin: LoadedPlugin, phase: str) -> Context:
        return build_context(plugin, self.cfg, root=self.root, phase=phase, dry_run=self.dry_run)

    def digest(self, plugin: LoadedPlugin) -> str:
        """What the plugin is applied with (see ``config_digest``); ``plan``/``status`` ask without a phase."""
        if plugin.name not in self._digests:
            section = plugin_config(plugin.info, self.cfg)
            self._digests[plugin.name] = config_digest(plugin.info, section, self.cfg.targets)
        return self._digests[plugin.name]

    def _error_text(self, exc: BaseException, hook: str, timeout: float) -> str:
        if isinstance(exc, TimeoutError):
            return f"{hook} timed out after {timeout:g}s (release.timeouts / release.plugin_timeouts)"
        if isinstance(exc, FixError):
            return self.redact(str(exc))
        text = f"{type(exc).__name__}: {exc}"
        return self.redact(text.splitlines()[0] if text.strip() else type(exc).__name__)

    def _note(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    async def phase(self, plugin: LoadedPlugin, phase: str, *, record: bool = True) -> tuple[Step, Any]:
        """Call one hook of one plugin with its timeout, ledger rows around it, progress on stderr.

        The row written ``running`` before the call is closed on every way out of this method (a
        cancellation of the whole run, an error of the runner itself): only a process that died may
        leave a ``running`` row, which is what the next run takes it for.
        """
        if self.interrupted and phase != "rollback":
            return self._note(Step(plugin.name, phase, Outcome.INTERRUPTED, error=NOT_STARTED)), None
        if phase == "rollback" and plugin.name in self.unreached:
            return await self._nothing_to_undo(plugin), None
        ctx = self.context(plugin, phase)
        phase_id = None
        closed = False
        start = time.monotonic()
        try:
            if record and not self.dry_run:
                phase_id = await self.ledger.phase_start(
                    self.run_id, self.release, plugin.name, phase, plugin.version, self.digest(plugin)
                )
            self.progress(f"{self._stamp()} {plugin.name}: {phase} ...")
            try:
                outcome, error, result = await self._invoke(plugin, phase, ctx)
            finally:
                with anyio.CancelScope(shield=True):
                    await ctx.flags.aclose()
            seconds = time.monotonic() - start
            detail = self.redact(getattr(result, "detail", "") or "") or None
            if phase_id is not None:
                with anyio.CancelScope(shield=True):
                    await self.ledger.phase_end(phase_id, outcome, error, detail)
            closed = True
        finally:
            if phase_id is not None and not closed:
                with anyio.CancelScope(shield=True):
                    await self.ledger.phase_end(phase_id, Outcome.INTERRUPTED, f"tars_{phase} interrupted")
        checks = {str(k): self.redact(str(v)) for k, v in (getattr(result, "checks", None) or {}).items()}
        step = self._note(Step(plugin.name, phase, outcome, seconds, error, detail, checks))
        tail = f"{outcome} ({seconds:.2f}s)" + (f": {error}" if error else "")
        self.progress(f"{self._stamp()} {plugin.name}: {phase} {tail}")
        return step, result

    async def _invoke(self, plugin: LoadedPlugin, phase: str, ctx: Context) -> tuple[Outcome, str | None, Any]:
        """The awaited hook call, with the observer hooks right around it; every ending becomes an outcome."""
        hook = f"tars_{phase}"
        if not self.host.has_hook(plugin.name, hook):
            if phase in ("apply", "rollback", "verify"):
                return Outcome.FAILED, f"plugin {plugin.name} does not implement {hook}", None
            return Outcome.SKIPPED, None, None
        # Ctrl-C, or a cancellation of the whole run, that came while the ``running`` row was written: the
        # hook is not started (an async hook's body runs up to its first await as soon as it is called)
        if self.interrupted and phase != "rollback":
            return Outcome.INTERRUPTED, f"{hook} interrupted by the user", None
        await anyio.lowlevel.checkpoint()
        timeout = self.cfg.timeout(plugin.name, phase)
        outcome, result = Outcome.INTERRUPTED, None
        error: str | None = f"{hook} interrupted"
        await self.host.notify("tars_phase_started", plugin=plugin.name, phase=phase, ctx=ctx)
        start = time.monotonic()
        try:
            with anyio.CancelScope() as scope:
                # A rollback is never cancelled by Ctrl-C: it is what Ctrl-C asks for.
                self._scope = scope if phase != "rollback" else None
                result = await self._with_ticker(
                    f"{plugin.name}: {phase}",
                    start,
                    lambda: self.host.call(plugin.name, hook, timeout=timeout, grace=self.grace, ctx=ctx),
                )
            if scope.cancelled_caught:
                outcome, error = Outcome.INTERRUPTED, f"{hook} interrupted by the user"
            elif phase == "verify" and not getattr(result, "ok", False):
                detail = getattr(result, "detail", "") or "verify reported the fix is not in place"
                outcome, error = Outcome.FAILED, self.redact(detail)
            else:
                outcome, error = (Outcome.DRY_RUN if self.dry_run else Outcome.OK), None
        except HookStillRunning as exc:
            outcome, error = Outcome.UNKNOWN, self._stuck(plugin, phase, exc)
        except Exception as exc:
            outcome, error = self._failure(plugin, phase, exc, timeout)
        finally:
            self._scope = None
            seconds = time.monotonic() - start
            with anyio.CancelScope(shield=True):
                await self.host.notify(
                    "tars_phase_finished",
                    plugin=plugin.name,
                    phase=phase,
                    outcome=str(outcome),
                    seconds=seconds,
                    error=error,
                )
        return outcome, error, result

    def _failure(self, plugin: LoadedPlugin, phase: str, exc: Exception, timeout: float) -> tuple[Outcome, str]:
        """A hook that raised: ``unreached`` when apply stopped at an unusable target, else ``failed``.

        Any :class:`TargetError` makes the run's exit code 2. One from a rollback means the target could
        not be reached to undo anything: the plugin is left as the ledger has it (see ``_rollback_all``).
        """
        if self.debug:
            log.exception("%s tars_%s failed", plugin.name, phase)
        error = self._error_text(exc, f"tars_{phase}", timeout)
        if not isinstance(exc, TargetError):
            return Outcome.FAILED, error
        if phase == "rollback":  # tried again; the exit code is ``_rollback_all``'s to decide
            self.rollback_unreachable.add(plugin.name)
            return Outcome.FAILED, error
        self.bad_target = True
        if phase != "apply" or isinstance(exc, TargetLost):
            return Outcome.FAILED, error  # a lost target mid-apply may have changed something: roll back
        self.unreached.add(plugin.name)  # TargetError from apply: raised before it changed anything
        return Outcome.UNREACHED, error

    def _stuck(self, plugin: LoadedPlugin, phase: str, exc: HookStillRunning) -> str:
        self.stuck.append(plugin.name)
        after = f"its {exc.timeout:g}s timeout" if exc.timeout is not None else "it was interrupted"
        undone = "nothing more rolled back" if phase == "rollback" else "not rolled back"
        return (
            f"{plugin.name}: {phase} did not stop within {exc.grace:g}s after {after}; state unknown, {undone}: "
            "check the target, then run tars-run rollback"
        )

    async def _nothing_to_undo(self, plugin: LoadedPlugin) -> Step:
        """The rollback of a plugin whose apply never reached the target: recorded, the hook not called."""
        if not self.dry_run:
            phase_id = await self.ledger.phase_start(
                self.run_id, self.release, plugin.name, "rollback", plugin.version, self.digest(plugin)
            )
            await self.ledger.phase_end(phase_id, Outcome.SKIPPED, None, NOTHING_TO_UNDO)
        self.progress(f"{self._stamp()} {plugin.name}: rollback {Outcome.SKIPPED}: {NOTHING_TO_UNDO}")
        return self._note(Step(plugin.name, "rollback", Outcome.SKIPPED, detail=NOTHING_TO_UNDO))

    async def _with_ticker(self, label: str, start: float, call: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``call`` while printing a "still running" line every ``tick_every`` seconds.

        A silent terminal during a ten-minute index build looks like a hang; SREs Ctrl-C hangs.
        """
        result: Any = None
        error: Exception | None = None

        async def tick() -> None:
            while True:
                await anyio.sleep(self.tick_every)
                self.progress(f"{self._stamp()} {label} still running ({time.monotonic() - start:.0f}s)")

        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            try:
                result = await call()
            except Exception as exc:  # re-raised below, outside the task group (no ExceptionGroup)
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error
        return result

    async def set_state(self, plugin: LoadedPlugin, state: PluginState) -> None:
        if not self.dry_run:
            await self.ledger.set_state(
                self.release, plugin.name, state, plugin.version, self.digest(plugin), self.run_id
            )

    # -- commands --------------------------------------------------------------------------------
    async def resolve_crashed(self) -> list[str]:
        """Resolve phases a killed run left ``running``: verify decides between finishing and rolling back."""
        said: list[str] = []
        dead = await self.ledger.close_dead_runs(self.run_id)
        for phase_id, rec, _release in await self.ledger.unfinished():
            await self.ledger.phase_end(phase_id, Outcome.INTERRUPTED, "the run died during this phase")
            plugin = self.host.plugins.get(rec.plugin)
            if plugin is None:
                said.append(f"{rec.plugin}: {rec.phase} was interrupted; plugin not installed, left as is")
                continue
            if rec.phase == "benchmark":
                said.append(f"{rec.plugin}: benchmark was interrupted by a crash; nothing to undo")
                continue
            if rec.phase in ("apply", "verify"):
                step, _ = await self.phase(plugin, "verify")
                if step.outcome == Outcome.OK:
                    await self.set_state(plugin, PluginState.APPLIED)
                    said.append(
                        f"{rec.plugin}: {rec.phase} was interrupted by a crash; verify says the fix is "
                        "in place, recorded as applied"
                    )
                    continue
                if step.outcome == Outcome.UNKNOWN:
                    await self.set_state(plugin, PluginState.UNKNOWN)
                    raise RollbackFailed([rec.plugin], step.error or "")
            step = await self._rollback_one(plugin)
            if step.outcome != Outcome.OK and rec.plugin in self.rollback_unreachable:
                raise TargetError(
                    f"{rec.plugin}: resolving a crashed {rec.phase}: {step.error}; left as it is: run tars-run "
                    "again once the target answers"
                )
            if step.outcome != Outcome.OK:
                unknown = step.outcome == Outcome.UNKNOWN
                await self.set_state(plugin, PluginState.UNKNOWN if unknown else PluginState.ROLLBACK_FAILED)
                raise RollbackFailed(
                    [rec.plugin], f"{rec.plugin}: resolving a crashed {rec.phase} failed: {step.error}"
                )
            await self.set_state(plugin, PluginState.ROLLED_BACK)
            said.append(
                f"{rec.plugin}: {rec.phase} was interrupted by a crash and the fix is not in place; rolled back"
            )
        if dead and not said:
            said.append(f"found {len(dead)} run(s) that died between phases; nothing was in flight")
        for line in said:
            self.progress(f"tars: recovered: {line}")
        return said

    async def _still_applied(self, plugin: LoadedPlugin, st: dict[str, str] | None) -> Step | None:
        """For a plugin the ledger records as applied with this version and config: its verify step."""
        if not st or st["state"] != PluginState.APPLIED:
            return None
        if st["version"] != plugin.version or st["config_digest"] != self.digest(plugin):
            return None
        step, _ = await self.phase(plugin, "verify")
        return step

    async def apply(self, plugins: Sequence[LoadedPlugin]) -> RunResult:
        """Monitors first (their rules must be in place to judge), then the preflight gate, then each
        hotfix: apply, verify, observe for its bake time; the first failure rolls back by policy."""
        monitors = [p for p in plugins if p.info.kind == "monitor"]
        fixes = [p for p in plugins if p.info.kind != "monitor"]
        hotfixes = {f.name for f in fixes}
        tangled = [f"{m.name} requires {r}" for m in monitors for r in m.info.requires if r in hotfixes]
        if tangled:
            why = ", ".join(tangled)
            msg = f"a monitor must not require a hotfix ({why}): monitors are applied first; fix its requires"
            return RunResult(ExitCode.BAD_INPUT, self.steps, message=msg)
        applied: list[LoadedPlugin] = []
        states = await self.ledger.states(self.release)
        for plugin in monitors:
            stop = await self._apply_one(plugin, states, applied, observers=[])
            if stop is not None:
                return stop
        if not self.dry_run:
            stop = await self._preflight([*monitors, *fixes], self._gates(monitors, "preflight"))
            if stop is not None:
                return stop
        observers = self._gates(monitors, "observe")
        for plugin in fixes:
            stop = await self._apply_one(plugin, states, applied, observers)
            if stop is not None:
                return stop
        return RunResult(ExitCode.OK, self.steps)

    async def _apply_one(
        self,
        plugin: LoadedPlugin,
        states: dict[str, dict[str, str]],
        applied: list[LoadedPlugin],
        observers: Sequence[LoadedPlugin],
    ) -> RunResult | None:
        """Apply, verify and (with observers and a bake time) observe one plugin; a result means stop."""
        check = await self._still_applied(plugin, states.get(plugin.name))
        if check is not None and check.outcome in _DONE:
            self._note(Step(plugin.name, "apply", Outcome.SKIPPED, detail="already applied and still verified"))
            self.progress(f"{plugin.name}: apply skipped (already applied and verified)")
            return None
        if check is not None and check.outcome == Outcome.UNKNOWN:
            return await self._fail(plugin, applied, check)
        bake = self.cfg.bake(plugin.name) if observers and not self.dry_run else 0.0
        flags_before = await self._flag_values() if bake else {}
        step, _ = await self.phase(plugin, "apply")
        if step.outcome not in _DONE:
            return await self._fail(plugin, applied, step)
        if self.dry_run:
            return None
        await self.set_state(plugin, PluginState.APPLYING)
        step, _ = await self.phase(plugin, "verify")
        if step.outcome != Outcome.OK:
            return await self._fail(plugin, applied, step)
        if bake:
            change = await self._change(plugin, bake, flags_before)
            stopped = await self._observe(plugin, observers, change)
            if stopped is not None:
                return await self._fail(plugin, applied, stopped)
        await self.set_state(plugin, PluginState.APPLIED)
        applied.append(plugin)
        return None

    # -- release gates ---------------------------------------------------------------------------
    def _gates(self, monitors: Sequence[LoadedPlugin], kind: GateKind) -> list[LoadedPlugin]:
        return [m for m in monitors if self.host.has_hook(m.name, f"tars_{kind}")]

    async def _preflight(self, order: Sequence[LoadedPlugin], monitors: Sequence[LoadedPlugin]) -> RunResult | None:
        """Ask every monitor whether the release may start; a result means it may not (nothing applied yet)."""
        if not monitors:
            return None
        plan = Plan(self.release, [p.info for p in order], self.cfg.release.reliability)
        records = await self._judge(monitors, "preflight", None, plan=plan)
        if records is None:
            self._note(
                Step("release", "preflight", Outcome.INTERRUPTED, error="tars_preflight interrupted by the user")
            )
            msg = "interrupted during preflight; no hotfix applied, nothing rolled back"
            return RunResult(ExitCode.INTERRUPTED, self.steps, message=msg)
        blocking = self._blocking(records)
        if blocking is None:
            return None
        why = self._why(blocking)
        self._note(Step(blocking.monitor, "preflight", Outcome.FAILED, error=why))
        return RunResult(
            ExitCode.FAILED, self.steps, message=f"preflight: {why}; no hotfix applied, nothing rolled back"
        )

    async def _observe(self, plugin: LoadedPlugin, monitors: Sequence[LoadedPlugin], change: Change) -> Step | None:
        """Every monitor watches ``plugin`` at once for its bake time; a step means the fix failed its bake."""
        names = ", ".join(m.name for m in monitors)
        self.progress(f"{self._stamp()} {plugin.name}: observed by {names} for {change.bake_seconds:g}s")
        records = await self._judge(monitors, "observe", plugin.name, change=change)
        if records is None:
            return self._note(
                Step(plugin.name, "observe", Outcome.INTERRUPTED, error="tars_observe interrupted by the user")
            )
        blocking = self._blocking(records)
        if blocking is None:
            return None
        return self._note(Step(plugin.name, "observe", Outcome.FAILED, error=self._why(blocking)))

    def _blocking(self, records: Sequence[JudgementRecord]) -> JudgementRecord | None:
        """The judgement that stops the release: the first ``fail``, else the first ``inconclusive`` when
        ``release.on_inconclusive`` is ``fail``; an inconclusive that passes is shown, not hidden."""
        for record in records:
            if record.verdict == "fail":
                return record
        for record in records:
            if record.verdict == "inconclusive":
                if self.cfg.release.on_inconclusive == "fail":
                    return record
                self.progress(f"tars: {self._why(record)}; going on (release.on_inconclusive: pass)")
        return None

    @staticmethod
    def _why(record: JudgementRecord) -> str:
        reason = record.reasons[0] if record.reasons else "no reason given"
        if record.verdict == "fail":
            return f"monitor {record.monitor} judged it fail: {reason}"
        return f"monitor {record.monitor} was inconclusive: {reason}"

    async def _judge(
        self, monitors: Sequence[LoadedPlugin], kind: GateKind, plugin: str | None, **kwargs: Any
    ) -> list[JudgementRecord] | None:
        """Call ``tars_<kind>`` of every monitor concurrently and record each judgement (``None``: the user
        interrupted). A hook that raises, times out or answers nonsense is an ``inconclusive`` judgement
        with the error as its reason: a monitor that cannot see must not pass a release silently."""
        if self.interrupted:
            return None
        hook = f"tars_{kind}"
        bake = kwargs["change"].bake_seconds if kind == "observe" else 0.0
        answers: dict[str, tuple[Judgement, str, str]] = {}

        async def one(monitor: LoadedPlugin) -> None:
            ctx = self.context(monitor, kind)
            limit = bake + self.grace if kind == "observe" else self.cfg.timeout(monitor.name, kind)
            started = now()
            try:
                result = await self.host.call(monitor.name, hook, timeout=limit, grace=self.grace, ctx=ctx, **kwargs)
                judgement = _as_judgement(result, hook)
            except HookStillRunning as exc:
                self.stuck.append(monitor.name)  # it only reads, but the process must not wait for it at exit
                judgement = Judgement("inconclusive", (str(exc),))  # says "after its timeout" or "interrupted"
            except TimeoutError:
                where = (
                    f"its bake time {bake:g}s + release.timeout_grace"
                    if kind == "observe"
                    else "release.timeouts.preflight"
                )
                judgement = Judgement("inconclusive", (f"{hook} did not return within {limit:g}s ({where})",))
            except Exception as exc:
                if self.debug:
                    log.exception("%s %s failed", monitor.name, hook)
                judgement = Judgement("inconclusive", (self._error_text(exc, hook, limit),))
            finally:
                with anyio.CancelScope(shield=True):
                    await ctx.flags.aclose()
            if judgement is not None:
                answers[monitor.name] = (judgement, started, now())

        with anyio.CancelScope() as scope:
            self._scope = scope
            try:
                async with anyio.create_task_group() as tg:
                    for monitor in monitors:
                        tg.start_soon(one, monitor)
            finally:
                self._scope = None
        records = [self._record(m.name, kind, plugin, *answers[m.name]) for m in monitors if m.name in answers]
        with anyio.CancelScope(shield=True):
            for record in records:
                if not self.dry_run:
                    await self.ledger.save_judgement(self.release, record)
                self.judgements.append(record)
                what = f"{kind} of {plugin}" if plugin else kind
                reason = f": {record.reasons[0]}" if record.reasons else ""
                self.progress(f"{self._stamp()} {record.monitor}: {what} {record.verdict}{reason}")
        return None if scope.cancelled_caught else records

    def _record(
        self, monitor: str, kind: GateKind, plugin: str | None, judgement: Judgement, started: str, ended: str
    ) -> JudgementRecord:
        """The ledger row of a judgement, every text redacted (a monitor may quote a DSN in a reason)."""
        evidence = tuple(
            Evidence(self.redact(e.query), e.value, e.at, self.redact(e.detail)) for e in judgement.evidence
        )
        reasons = tuple(self.redact(str(r)) for r in judgement.reasons)
        return JudgementRecord(
            self.run_id, monitor, plugin, kind, judgement.verdict, reasons, evidence, judgement.score, started, ended
        )

    async def _flag_values(self) -> dict[str, str]:
        """The feature flags as they are now, to tell a monitor which flags a fix changed (``{}`` when
        ``targets.redis`` is not set or cannot be read: observing must not fail a fix on Redis's account)."""
        if not self.cfg.targets.redis:
            return {}
        flags = FeatureFlags(self.cfg.targets.redis, self.cfg.targets.flags_key)
        try:
            return await flags.all()
        except TargetError as exc:
            self.progress(f"tars: cannot read the feature flags for the monitors: {self.redact(str(exc))}")
            return {}
        finally:
            with anyio.CancelScope(shield=True):
                await flags.aclose()

    async def _change(self, plugin: LoadedPlugin, bake: float, before: dict[str, str]) -> Change:
        after = await self._flag_values() if self.cfg.targets.redis else {}
        changed = {k: v for k, v in after.items() if before.get(k) != v}
        canary = ", ".join(f"{k}={v}" for k, v in changed.items() if 0.0 < fraction(v) < 1.0) or None
        return Change(plugin.name, plugin.info.fix_id, now(), changed, canary, bake)

    def _failure_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.BAD_INPUT if self.bad_target else ExitCode.FAILED

    async def _fail(self, failed: LoadedPlugin, applied: list[LoadedPlugin], step: Step) -> RunResult:
        """Stop the release at ``step`` of ``failed`` and roll back by policy (nothing if a hook is stuck)."""
        why = step.error or str(step.outcome)
        if step.outcome == Outcome.UNKNOWN:
            await self.set_state(failed, PluginState.UNKNOWN)
            left = f" (also left as they are: {', '.join(p.name for p in reversed(applied))})" if applied else ""
            return RunResult(ExitCode.MANUAL_ACTION, self.steps, message=why + left)
        code = self._failure_code()
        started = step.error != NOT_STARTED  # a phase that never started has nothing of this run to undo
        what = f"{failed.name} failed ({why})" if started else f"interrupted before {failed.name} started"
        if self.dry_run:  # nothing was changed, so nothing to roll back; the exit code is the real run's
            return RunResult(code, self.steps, message=f"{failed.name}: {why}")
        if not self.rollback_policy:
            if started:
                await self.set_state(failed, PluginState.FAILED)
            return RunResult(code, self.steps, message=f"{what}; --no-rollback: left as is")
        order = [failed, *reversed(applied)] if started else list(reversed(applied))
        with anyio.CancelScope(shield=True):
            out = await self._rollback_all(order)
        if out.exit_code == ExitCode.OK:
            out.exit_code = code
        out.message = f"{what}; {out.message}"
        return out

    async def _rollback_all(self, plugins: Sequence[LoadedPlugin]) -> RunResult:
        """Roll back ``plugins`` in this order; stop at a rollback that would not stop (see the class doc).

        A rollback that could not reach its target (it raised :class:`TargetError`) is tried again,
        ``release.rollback_retries`` times, ``rollback_retry_delay`` x the try apart (rollbacks are
        idempotent): a dependency that restarted or paused mid-release is usually back by then. One that
        still cannot reach it leaves the plugin as the ledger has it and ends the run with exit 2: nothing
        could be undone, and the next ordinary run (apply or rollback) does it once the target answers.
        Exit 4 stays for what really needs a person: a rollback that reached the target and failed.
        """
        done: list[str] = []
        broken: list[str] = []
        nothing: list[str] = []
        away: list[str] = []
        for i, plugin in enumerate(plugins):
            step = await self._rollback_one(plugin)
            if step.outcome in _DONE:
                await self.set_state(plugin, PluginState.ROLLED_BACK)
                done.append(plugin.name)
            elif step.outcome == Outcome.SKIPPED:
                nothing.append(plugin.name)  # apply never reached the target: its state row stays as it was
            elif step.outcome == Outcome.UNKNOWN:
                await self.set_state(plugin, PluginState.UNKNOWN)
                rest = [p.name for p in plugins[i + 1 :]]
                left = f" (also left as they are: {', '.join(rest)})" if rest else ""
                return RunResult(ExitCode.MANUAL_ACTION, self.steps, done, (step.error or "") + left)
            elif plugin.name in self.rollback_unreachable:
                away.append(f"{plugin.name} ({step.error})")
            else:
                await self.set_state(plugin, PluginState.ROLLBACK_FAILED)
                broken.append(f"{plugin.name} ({step.error})")
        if broken:
            msg = f"rollback FAILED for {', '.join(broken)}: manual action needed"
            return RunResult(ExitCode.MANUAL_ACTION, self.steps, done, msg)
        msg = f"rolled back {', '.join(done) or 'nothing'}"
        if nothing:
            msg += f"; nothing to undo for {', '.join(nothing)} (apply never reached the target)"
        if away:
            msg += (
                f"; could not reach the target to roll back {', '.join(away)}: left as it is; "
                "run tars-run rollback (or apply) again once the target answers"
            )
            return RunResult(ExitCode.BAD_INPUT, self.steps, done, msg)
        return RunResult(ExitCode.OK, self.steps, done, msg)

    async def _rollback_one(self, plugin: LoadedPlugin) -> Step:
        """The rollback phase of ``plugin``, tried again after a failure (see ``_rollback_all``)."""
        tries = 1 + self.cfg.release.rollback_retries
        for attempt in range(1, tries + 1):
            self.rollback_unreachable.discard(plugin.name)
            step, _ = await self.phase(plugin, "rollback")
            if plugin.name not in self.rollback_unreachable or attempt == tries:
                return step
            delay = self.cfg.release.rollback_retry_delay * attempt
            self.progress(
                f"{self._stamp()} {plugin.name}: rollback could not reach the target (try {attempt}/{tries}); "
                f"trying again in {delay:g}s"
            )
            with anyio.CancelScope(shield=True):
                await anyio.sleep(delay)
        return step

    async def rollback(self, plugins: Sequence[LoadedPlugin]) -> RunResult:
        await self._recall_unreached(plugins)
        out = await self._rollback_all(list(reversed(plugins)))
        if out.exit_code == ExitCode.OK and self.interrupted:
            out.exit_code = ExitCode.INTERRUPTED
        return out

    async def _recall_unreached(self, plugins: Sequence[LoadedPlugin]) -> None:
        """An explicit ``rollback`` of a fix whose last apply never reached the target, and which the
        ledger does not record as applied, has nothing to undo: record a no-op instead of calling a
        hook that would fail the same way while the target is still down (exit 4 for nothing)."""
        states = await self.ledger.states(self.release)
        last_apply: dict[str, str] = {}
        for rec in await self.ledger.phases(self.release):
            if rec.phase == "apply":
                last_apply[rec.plugin] = rec.outcome
        for plugin in plugins:
            state = states.get(plugin.name, {}).get("state")
            if state in (None, PluginState.ROLLED_BACK) and last_apply.get(plugin.name) == Outcome.UNREACHED:
                self.unreached.add(plugin.name)

    async def verify(self, plugins: Sequence[LoadedPlugin]) -> RunResult:
        return await self._each(plugins, "verify")

    async def benchmark(self, plugins: Sequence[LoadedPlugin]) -> RunResult:
        return await self._each(plugins, "benchmark", keep=self._save_benchmark)

    async def _each(
        self,
        plugins: Sequence[LoadedPlugin],
        phase: str,
        keep: Callable[[LoadedPlugin, Any], Awaitable[None]] | None = None,
    ) -> RunResult:
        """One phase for every plugin, going on past failures (a read-only command reports them all);
        ``keep`` stores what each successful hook returned. A plugin without a benchmark is skipped."""
        passing = (*_DONE, Outcome.SKIPPED) if phase == "benchmark" else _DONE
        failed = []
        for plugin in plugins:
            step, result = await self.phase(plugin, phase)
            if step.outcome == Outcome.UNKNOWN:
                return RunResult(ExitCode.MANUAL_ACTION, self.steps, message=step.error or "")
            if step.outcome not in passing:
                failed.append(f"{plugin.name} ({step.error})")
            elif keep is not None and result is not None and not self.dry_run:
                await keep(plugin, result)
            if self.interrupted:
                return RunResult(ExitCode.INTERRUPTED, self.steps, message="interrupted")
        if failed:
            return RunResult(self._failure_code(), self.steps, message=f"{phase} failed: {', '.join(failed)}")
        return RunResult(ExitCode.OK, self.steps)

    async def _save_benchmark(self, plugin: LoadedPlugin, result: Any) -> None:
        data = converter.unstructure(result)
        await self.ledger.save_benchmark(self.release, plugin.name, self.run_id, self.redact.data(data))
        for m in getattr(result, "metrics", ()):
            self.progress(f"    {metric_line(m)}")


def _as_judgement(result: Any, hook: str) -> Judgement | None:
    """The hook's answer as a Judgement: ``None`` abstains, anything malformed is inconclusive."""
    if result is None:
        return None
    if not isinstance(result, Judgement):
        return Judgement("inconclusive", (f"{hook} returned {type(result).__name__}, not a tars_core.Judgement",))
    if result.verdict not in get_args(Verdict):
        return Judgement(
            "inconclusive", (f"{hook} returned verdict {result.verdict!r}; use pass, fail or inconclusive",)
        )
    return result
