"""Sequencing a release: apply then verify each plugin in dependency order, roll back on failure."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from tars_core.config import TarsConfig, config_digest, converter, plugin_config
from tars_core.errors import FixError, RollbackFailed, TargetError
from tars_core.flags import FeatureFlags
from tars_core.ledger import Ledger
from tars_core.model import Context
from tars_core.plugins import LoadedPlugin, PluginHost
from tars_core.redact import Redactor

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


@attrs.define
class Step:
    """What one phase of one plugin did in this run (the runner's answer, printed and reported)."""

    plugin: str
    phase: str
    outcome: str  # ok | failed | skipped | interrupted | dry-run | resolved
    seconds: float = 0.0
    error: str | None = None
    detail: str | None = None
    checks: dict[str, str] = attrs.field(factory=dict)  # VerifyResult.checks: which property held


class Interrupted(Exception):
    pass


@attrs.define
class Outcome:
    exit_code: int
    steps: list[Step]
    rolled_back: list[str] = attrs.field(factory=list)
    message: str = ""


class Runner:
    """Runs one command over the selected plugins with the ledger held; see docs/plugins.md.

    The ledger is written before and after each hook call (``running`` then the outcome), so the
    ledger is consistent at every instant a SIGKILL may hit: at worst a phase stays ``running`` and
    the next run resolves it (``resolve_crashed``).
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
        self.tick_every = cfg.release.progress_every
        self._contexts: dict[tuple[str, str], Context] = {}
        self._digests: dict[str, str] = {}

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

    def context(self, plugin: LoadedPlugin, phase: str) -> Context:
        ctx = build_context(plugin, self.cfg, root=self.root, phase=phase, dry_run=self.dry_run)
        self._digests.setdefault(plugin.name, config_digest(plugin.info, ctx.config, self.cfg.targets))
        return ctx

    def digest(self, plugin: LoadedPlugin) -> str:
        if plugin.name not in self._digests:
            self.context(plugin, "digest")
        return self._digests[plugin.name]

    def _error_text(self, exc: BaseException, hook: str, timeout: float) -> str:
        if isinstance(exc, TimeoutError):
            return f"{hook} timed out after {timeout:g}s (release.timeouts / release.plugin_timeouts)"
        if isinstance(exc, FixError):
            return self.redact(str(exc))
        text = f"{type(exc).__name__}: {exc}"
        return self.redact(text.splitlines()[0] if text.strip() else type(exc).__name__)

    async def phase(self, plugin: LoadedPlugin, phase: str, *, record: bool = True) -> tuple[Step, Any]:
        """Call one hook of one plugin with its timeout, ledger rows around it, progress on stderr."""
        hook = f"tars_{phase}"
        timeout = self.cfg.timeout(plugin.name, phase)
        if self.interrupted and phase != "rollback":
            step = Step(plugin.name, phase, "interrupted", error="not started: the run was interrupted")
            self.steps.append(step)
            return step, None
        ctx = self.context(plugin, phase)
        phase_id = None
        if record and not self.dry_run:
            phase_id = await self.ledger.phase_start(
                self.run_id, self.release, plugin.name, phase, plugin.version, self.digest(plugin)
            )
        start = time.monotonic()
        self.progress(f"[{start - self._t0:7.2f}s] {plugin.name}: {phase} ...")
        result: Any = None
        error: str | None = None
        outcome = "ok"
        try:
            if not self.host.has_hook(plugin.name, hook):
                if phase in ("apply", "rollback", "verify"):
                    raise FixError(f"plugin {plugin.name} does not implement {hook}")
                outcome = "skipped"
            else:
                with anyio.CancelScope() as scope:
                    # A rollback is never cancelled by Ctrl-C: it is what Ctrl-C asks for.
                    self._scope = scope if phase != "rollback" else None
                    result = await self._with_ticker(
                        f"{plugin.name}: {phase}",
                        start,
                        lambda: self.host.call(plugin.name, hook, timeout=timeout, ctx=ctx),
                    )
                self._scope = None
                if scope.cancelled_caught:
                    outcome, error = "interrupted", f"{hook} interrupted by the user"
                elif phase == "verify" and not getattr(result, "ok", False):
                    outcome = "failed"
                    error = self.redact(getattr(result, "detail", "") or "verify reported the fix is not in place")
        except Exception as exc:
            self._scope = None
            outcome, error = "failed", self._error_text(exc, hook, timeout)
            if isinstance(exc, TargetError):
                self.bad_target = True
            if self.debug:
                log.exception("%s %s failed", plugin.name, hook)
        finally:
            await ctx.flags.aclose()
        seconds = time.monotonic() - start
        detail = self.redact(getattr(result, "detail", "") or "") or None
        if self.dry_run and outcome == "ok":
            outcome = "dry-run"
        if phase_id is not None:
            with anyio.CancelScope(shield=True):
                await self.ledger.phase_end(phase_id, outcome, error, detail)
        checks = {str(k): self.redact(str(v)) for k, v in (getattr(result, "checks", None) or {}).items()}
        step = Step(plugin.name, phase, outcome, seconds, error, detail, checks)
        self.steps.append(step)
        tail = f"{outcome} ({seconds:.2f}s)" + (f": {error}" if error else "")
        self.progress(f"[{time.monotonic() - self._t0:7.2f}s] {plugin.name}: {phase} {tail}")
        return step, result

    async def _with_ticker(self, label: str, start: float, call: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``call`` while printing a "still running" line every ``tick_every`` seconds.

        A silent terminal during a ten-minute index build looks like a hang; SREs Ctrl-C hangs.
        """
        result: Any = None
        error: Exception | None = None

        async def tick() -> None:
            while True:
                await anyio.sleep(self.tick_every)
                self.progress(
                    f"[{time.monotonic() - self._t0:7.2f}s] {label} still running ({time.monotonic() - start:.0f}s)"
                )

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

    async def set_state(self, plugin: LoadedPlugin, state: str) -> None:
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
            await self.ledger.phase_end(phase_id, "interrupted", "the run died during this phase")
            plugin = self.host.plugins.get(rec.plugin)
            if plugin is None:
                said.append(f"{rec.plugin}: {rec.phase} was interrupted; plugin not installed, left as is")
                continue
            if rec.phase == "benchmark":
                said.append(f"{rec.plugin}: benchmark was interrupted by a crash; nothing to undo")
                continue
            if rec.phase in ("apply", "verify"):
                step, _ = await self.phase(plugin, "verify")
                if step.outcome == "ok":
                    await self.set_state(plugin, "applied")
                    said.append(
                        f"{rec.plugin}: {rec.phase} was interrupted by a crash; verify says the fix is "
                        "in place, recorded as applied"
                    )
                    continue
            step, _ = await self.phase(plugin, "rollback")
            if step.outcome != "ok":
                await self.set_state(plugin, "rollback_failed")
                raise RollbackFailed(
                    [rec.plugin], f"{rec.plugin}: resolving a crashed {rec.phase} failed: {step.error}"
                )
            await self.set_state(plugin, "rolled_back")
            said.append(
                f"{rec.plugin}: {rec.phase} was interrupted by a crash and the fix is not in place; rolled back"
            )
        if dead and not said:
            said.append(f"found {len(dead)} run(s) that died between phases; nothing was in flight")
        for line in said:
            self.progress(f"tars: recovered: {line}")
        return said

    async def apply(self, plugins: Sequence[LoadedPlugin]) -> Outcome:
        applied: list[LoadedPlugin] = []
        states = await self.ledger.states(self.release)
        for plugin in plugins:
            st = states.get(plugin.name)
            if (
                st
                and st["state"] == "applied"
                and st["version"] == plugin.version
                and st["config_digest"] == self.digest(plugin)
            ):
                step, _ = await self.phase(plugin, "verify")
                if step.outcome in ("ok", "dry-run"):
                    self.steps.append(
                        Step(plugin.name, "apply", "skipped", 0.0, detail="already applied and still verified")
                    )
                    self.progress(f"{plugin.name}: apply skipped (already applied and verified)")
                    continue
                if self.interrupted:
                    return await self._fail(plugin, applied, "interrupted")
            step, _ = await self.phase(plugin, "apply")
            if step.outcome not in ("ok", "dry-run"):
                return await self._fail(plugin, applied, step.error or step.outcome)
            if self.dry_run:
                continue
            await self.set_state(plugin, "applying")
            step, _ = await self.phase(plugin, "verify")
            if step.outcome != "ok":
                return await self._fail(plugin, applied, step.error or step.outcome)
            await self.set_state(plugin, "applied")
            applied.append(plugin)
        return Outcome(0, self.steps)

    def _failure_code(self) -> int:
        return 130 if self.interrupted else 2 if self.bad_target else 1

    async def _fail(self, failed: LoadedPlugin, applied: list[LoadedPlugin], why: str) -> Outcome:
        code = self._failure_code()
        if self.dry_run:
            return Outcome(1, self.steps, message=f"{failed.name}: {why}")
        if not self.rollback_policy:
            await self.set_state(failed, "failed")
            return Outcome(code, self.steps, message=f"{failed.name} failed ({why}); --no-rollback: left as is")
        order = [failed, *reversed(applied)]
        with anyio.CancelScope(shield=True):
            out = await self._rollback_all(order)
        out.exit_code = 4 if out.exit_code else code
        out.message = f"{failed.name} failed ({why}); " + out.message
        return out

    async def _rollback_all(self, plugins: Sequence[LoadedPlugin]) -> Outcome:
        done, broken = [], []
        for plugin in plugins:
            step, _ = await self.phase(plugin, "rollback")
            if step.outcome == "ok":
                await self.set_state(plugin, "rolled_back")
                done.append(plugin.name)
            else:
                await self.set_state(plugin, "rollback_failed")
                broken.append(f"{plugin.name} ({step.error})")
        if broken:
            msg = f"rollback FAILED for {', '.join(broken)}: manual action needed"
            return Outcome(4, self.steps, done, msg)
        return Outcome(0, self.steps, done, f"rolled back {', '.join(done) or 'nothing'}")

    async def rollback(self, plugins: Sequence[LoadedPlugin]) -> Outcome:
        out = await self._rollback_all(list(reversed(plugins)))
        if out.exit_code == 0 and self.interrupted:
            out.exit_code = 130
        return out

    async def verify(self, plugins: Sequence[LoadedPlugin]) -> Outcome:
        failed = []
        for plugin in plugins:
            step, _ = await self.phase(plugin, "verify")
            if step.outcome not in ("ok", "dry-run"):
                failed.append(f"{plugin.name} ({step.error})")
            if self.interrupted:
                return Outcome(130, self.steps, message="interrupted")
        if failed:
            return Outcome(self._failure_code(), self.steps, message=f"verify failed: {', '.join(failed)}")
        return Outcome(0, self.steps)

    async def benchmark(self, plugins: Sequence[LoadedPlugin]) -> Outcome:
        failed = []
        for plugin in plugins:
            step, result = await self.phase(plugin, "benchmark")
            if step.outcome == "failed":
                failed.append(f"{plugin.name} ({step.error})")
            elif result is not None and not self.dry_run:
                data = converter.unstructure(result)
                await self.ledger.save_benchmark(self.release, plugin.name, self.run_id, self.redact.data(data))
                for m in getattr(result, "metrics", ()):
                    before = "n/a" if m.before is None else f"{m.before:g}"
                    verdict = "" if m.met is None else (" (target met)" if m.met else " (TARGET MISSED)")
                    self.progress(f"    {m.name}: {before} -> {m.after:g} {m.unit}; target {m.target}{verdict}")
            if self.interrupted:
                return Outcome(130, self.steps, message="interrupted")
        if failed:
            return Outcome(self._failure_code(), self.steps, message=f"benchmark failed: {', '.join(failed)}")
        return Outcome(0, self.steps)
