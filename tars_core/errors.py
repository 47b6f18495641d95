"""Every error the core raises or a plugin may raise, in one place (pytest's ``config/exceptions.py``).

The exit-code contract is decided by the class, not by the message: a :class:`UsageError` (and its
subclasses) is bad input, exit 2; a :class:`FixError` raised by a hook fails the step, exit 1, unless it
is a :class:`TargetError` (the target cannot be used as configured: exit 2); :class:`LockHeld` is exit 3;
:class:`RollbackFailed` is exit 4. Keeping the classes here, free of imports, lets any module raise them
without import cycles (``flags`` and ``model`` used to import each other for ``TargetError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tars_core.ledger import Holder


class UsageError(Exception):
    """Bad input from the user: unknown plugin, cycle, missing requirement, broken plugin (exit 2)."""


class ConfigError(UsageError):
    """The config file is unreadable, malformed or of the wrong shape (exit 2)."""


class LedgerError(UsageError):
    """The ledger cannot be opened or has an unknown schema (exit 2)."""


class SandboxError(UsageError):
    """The sandbox cannot be created or started: a missing binary, a port, a plugin's hook (exit 2).

    Raised before any fix runs, so nothing is half-applied; the message names the log to read.
    """


class FixError(Exception):
    """An expected failure of a fix (precondition not met, target in an unexpected state).

    The runner prints its message as one line, without a traceback, and treats the step as failed.
    Anything else a hook raises is an unexpected failure: same release semantics, traceback with --debug.
    """


class TargetError(FixError):
    """The target cannot be used as configured: bad DSN, connection refused, authentication failed.

    That is bad input, not a failed fix: the release stops (rolling back what this run applied, as for
    any failure) and ``tars-run`` exits 2, so scripts can tell "fix the config" from "the fix broke".
    Raised by ``tars_apply`` *before it changed anything*, it also tells the runner that the automatic
    rollback of that plugin has nothing to undo (recorded as a no-op instead of calling the hook).
    """


class TargetLost(TargetError):
    """The target went away in the middle of a step (connection lost, server restarted) and did not come
    back within the hook's own retries.

    Exit 2 like every unreachable target, but unlike a plain :class:`TargetError` from ``tars_apply`` it
    does not say "nothing changed": the step may have changed part of the target, so the runner still
    rolls it back (and a rollback that cannot reach the target leaves it as it is, exit 2, the message
    saying to run again once the target answers).
    """


class PrometheusError(FixError):
    """Prometheus refused a request or is not ready (``tars_core.prometheus``); the message names the URL
    without its credentials. A failed step, unlike :class:`PrometheusUnreachable`."""


class PrometheusUnreachable(PrometheusError, TargetLost):
    """No HTTP answer at all (bad URL, connection refused, timeout), after the client's own retries when it
    had answered before. ``prometheus.connect`` turns it into a :class:`TargetError` (fix the config);
    raised later, mid-step, it is a lost target: exit 2, and an apply is still rolled back."""


class ServiceError(FixError):
    """A server process could not be started or did not get ready; the message quotes its log.

    A :class:`FixError` because a benchmark or verify that cannot start its helper server fails that
    step; the sandbox turns it into a :class:`SandboxError` (bad input: nothing has run yet).
    """


class HookStillRunning(TimeoutError):
    """A hook's worker did not stop within the grace period after its timeout (or a cancellation).

    ``timeout`` is ``None`` when the call was cancelled (Ctrl-C) rather than timed out.
    """

    def __init__(self, hook: str, timeout: float | None, grace: float) -> None:
        self.hook = hook
        self.timeout = timeout
        self.grace = grace
        after = f"its {timeout:g}s timeout" if timeout is not None else "it was interrupted"
        super().__init__(f"{hook} did not stop within {grace:g}s after {after}")


class HookStopped(BaseException):
    """Raised in a sync hook's thread by the core's waiting helpers once the runner asked the hook to stop
    (its timeout, Ctrl-C): a thread cannot be cancelled, so it is told at its next wait instead, and the
    hook unwinds (its ``finally`` blocks run) within moments instead of the whole wait. A BaseException
    like ``KeyboardInterrupt``, so ``except Exception`` in a plugin does not swallow it."""


class WaitTimeout(TimeoutError):
    """A condition awaited with :mod:`tars_core.waiting` did not hold within the deadline; ``last`` is what
    the predicate returned last, ``error`` the last exception it raised that counted as "not yet"."""

    def __init__(self, what: str, timeout: float, last: object = None, error: BaseException | None = None) -> None:
        self.what = what
        self.timeout = timeout
        self.last = last
        self.error = error
        seen = f"; last error: {type(error).__name__}: {error}" if error is not None else ""
        super().__init__(f"{what}: not done after {timeout:g}s{seen}")


class PromtoolError(FixError):
    """promtool refused a rule or test file, or is missing; the message is promtool's own output."""


class LockHeld(Exception):
    """Another run holds the ledger lock (exit 3); the message names the holder."""

    def __init__(self, holder: Holder | None, where: str) -> None:
        self.holder = holder
        who = holder.describe() if holder else "an unknown process"
        super().__init__(f"another tars-run holds the ledger lock ({where}): {who}; wait for it to finish")


class RollbackFailed(Exception):
    """A rollback raised, or could not safely run: manual action is needed (exit 4)."""

    def __init__(self, plugins: list[str], message: str) -> None:
        self.plugins = plugins
        super().__init__(message)


class ValueRefused(ValueError):
    """A config value of the wrong kind, raised inside the structuring of a section (a cattrs hook must
    raise a ValueError to be reported with its path); its message reaches the user as is."""


__all__ = [
    "ConfigError",
    "FixError",
    "HookStillRunning",
    "HookStopped",
    "LedgerError",
    "LockHeld",
    "PrometheusError",
    "PrometheusUnreachable",
    "PromtoolError",
    "RollbackFailed",
    "SandboxError",
    "ServiceError",
    "TargetError",
    "TargetLost",
    "UsageError",
    "ValueRefused",
    "WaitTimeout",
]
