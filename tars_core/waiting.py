"""Waiting for a condition with a deadline, in one place, sync and async.

Every "poll until the server answers / the flag propagates / the rule records data" loop needs the same
three things: a deadline measured on the monotonic clock, an interval that does not hammer the target,
and, when time runs out, an error that says *what* was awaited and what was last seen, not a bare
``TimeoutError``. The predicate returns a truthy value when done; that value is returned.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, overload

from tars_core.errors import HookStopped

T = TypeVar("T")

#: Set by the runner in the thread of a sync hook: the event it sets when the hook must stop.
STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("tars_hook_stop", default=None)


def stop_requested() -> bool:
    """Has the runner asked the hook running in this thread to stop (its timeout, Ctrl-C)?"""
    event = STOP.get()
    return event is not None and event.is_set()


def check_stop() -> None:
    """Raise :class:`~tars_core.errors.HookStopped` if the runner asked this sync hook to stop: call it
    between long steps of your own (the core's waiting helpers already do)."""
    if stop_requested():
        raise HookStopped("the runner asked this hook to stop (its timeout or Ctrl-C)")


def sleep(seconds: float) -> None:
    """``time.sleep`` that a stop request ends at once (raising :class:`HookStopped`) in a sync hook."""
    event = STOP.get()
    if event is None:
        time.sleep(seconds)
        return
    if event.wait(seconds):
        check_stop()


class WaitTimeout(TimeoutError):
    """The condition did not hold within the deadline; ``last`` is what the predicate returned last."""

    def __init__(self, what: str, timeout: float, last: object = None, error: BaseException | None = None) -> None:
        self.what = what
        self.timeout = timeout
        self.last = last
        self.error = error
        seen = f"; last error: {type(error).__name__}: {error}" if error is not None else ""
        super().__init__(f"{what}: not done after {timeout:g}s{seen}")


class _Tries:
    """What both forms share: the deadline, what the predicate said last, and the error at the end.

    Iterating yields how long to pause before each try: 0 before the first, then ``interval`` (cut to
    the deadline), so there is always one try at the deadline itself; past it, :class:`WaitTimeout`.
    """

    def __init__(self, timeout: float, interval: float, what: str) -> None:
        self.timeout, self.interval, self.what = timeout, interval, what
        self.deadline = time.monotonic() + timeout
        self.last: object = None
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[float]:
        yield 0.0
        while (remaining := self.deadline - time.monotonic()) > 0:
            yield min(self.interval, remaining)
        raise WaitTimeout(self.what, self.timeout, self.last, self.error)

    def done(self, value: object) -> bool:
        self.last, self.error = value, None
        return bool(value)


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns a truthy value (returned) or ``timeout`` seconds pass.

    Exceptions listed in ``retry_on`` count as "not yet" (a server still starting refuses connections);
    the last one is named in the :class:`WaitTimeout`. The predicate is always tried at least once and
    once more at the deadline, so a slow machine does not lose a condition that became true meanwhile.
    In a sync hook's thread it raises :class:`~tars_core.errors.HookStopped` as soon as the runner asks
    the hook to stop, instead of waiting on to its deadline.
    """
    tries = _Tries(timeout, interval, what)
    for pause in tries:
        sleep(pause)
        check_stop()
        try:
            if tries.done(value := predicate()):
                return value
        except retry_on as exc:
            tries.error = exc
    raise AssertionError("unreachable: _Tries raises at the deadline")


@overload
async def await_until(
    predicate: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    interval: float = ...,
    what: str = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def await_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    interval: float = ...,
    what: str = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def await_until(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    retry_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """The async form of :func:`wait_until`; ``predicate`` may be sync or async. Sleeps with anyio so
    the caller's cancellation (Ctrl-C, a hook timeout) interrupts the wait at once."""
    import anyio

    tries = _Tries(timeout, interval, what)
    for pause in tries:
        await anyio.sleep(pause)
        try:
            value = predicate()
            if tries.done(value := (await value) if inspect.isawaitable(value) else value):
                return value
        except retry_on as exc:
            tries.error = exc
    raise AssertionError("unreachable: _Tries raises at the deadline")
