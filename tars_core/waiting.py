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

from tars_core.errors import HookStopped, WaitTimeout

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


def _pauses(
    deadline: float, interval: float, *, backoff: float = 1.0, max_interval: float | None = None, first: bool = True
) -> Iterator[float]:
    """How long to pause before each try until ``deadline`` (monotonic): 0 before the first (``first``),
    then ``interval`` growing ``backoff``-fold up to ``max_interval``, each cut to the deadline, so there
    is always one try at the deadline itself."""
    if first:
        yield 0.0
    step, tried = interval, first
    while (remaining := deadline - time.monotonic()) > 0:
        yield min(step, remaining)
        tried = True
        step = step * backoff if max_interval is None else min(step * backoff, max_interval)
    if not tried:  # the deadline passed before the first pause (a slow connect): the try at it is still due
        yield 0.0


class _Tries:
    """What both forms share: the deadline, what the predicate said last, and the error at the end.

    Iterating yields how long to pause before each try (see :func:`_pauses`), calling ``on_retry`` with
    the pause before each retry; past the deadline, :class:`WaitTimeout`.
    """

    def __init__(
        self,
        timeout: float,
        interval: float,
        what: str,
        backoff: float = 1.0,
        max_interval: float | None = None,
        on_retry: Callable[[float, BaseException | None], object] | None = None,
    ) -> None:
        self.timeout, self.interval, self.what = timeout, interval, what
        self.backoff, self.max_interval, self.on_retry = backoff, max_interval, on_retry
        self.deadline = time.monotonic() + timeout
        self.last: object = None
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[float]:
        pauses = _pauses(self.deadline, self.interval, backoff=self.backoff, max_interval=self.max_interval)
        yield next(pauses)
        for pause in pauses:
            if self.on_retry is not None:
                self.on_retry(pause, self.error)
            yield pause
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
    backoff: float = 1.0,
    max_interval: float | None = None,
    on_retry: Callable[[float, BaseException | None], object] | None = None,
) -> T:
    """Call ``predicate`` until it returns a truthy value (returned) or ``timeout`` seconds pass.

    Exceptions listed in ``retry_on`` count as "not yet" (a server still starting refuses connections);
    the last one is named in the :class:`WaitTimeout`. The predicate is always tried at least once and
    once more at the deadline, so a slow machine does not lose a condition that became true meanwhile.
    In a sync hook's thread it raises :class:`~tars_core.errors.HookStopped` as soon as the runner asks
    the hook to stop, instead of waiting on to its deadline.

    ``backoff`` multiplies the pause after each try (reconnecting to a server that went away: 0.5 s, 1 s,
    2 s ...), up to ``max_interval``. ``on_retry(pause, error)`` is called before each pause after a try
    that was not done, with the last ``retry_on`` error (None if the predicate only returned falsy), so
    the caller can say what it waits for ("reconnecting in 2.0 s") without a loop of its own.
    """
    tries = _Tries(timeout, interval, what, backoff, max_interval, on_retry)
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
    backoff: float = ...,
    max_interval: float | None = ...,
    on_retry: Callable[[float, BaseException | None], object] | None = ...,
) -> T: ...


@overload
async def await_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    interval: float = ...,
    what: str = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
    backoff: float = ...,
    max_interval: float | None = ...,
    on_retry: Callable[[float, BaseException | None], object] | None = ...,
) -> T: ...


async def await_until(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    retry_on: tuple[type[BaseException], ...] = (),
    backoff: float = 1.0,
    max_interval: float | None = None,
    on_retry: Callable[[float, BaseException | None], object] | None = None,
) -> Any:
    """The async form of :func:`wait_until`; ``predicate`` may be sync or async. Sleeps with anyio so
    the caller's cancellation (Ctrl-C, a hook timeout) interrupts the wait at once."""
    import anyio

    tries = _Tries(timeout, interval, what, backoff, max_interval, on_retry)
    for pause in tries:
        await anyio.sleep(pause)
        try:
            value = predicate()
            if tries.done(value := (await value) if inspect.isawaitable(value) else value):
                return value
        except retry_on as exc:
            tries.error = exc
    raise AssertionError("unreachable: _Tries raises at the deadline")


class rounds:  # lower case: it reads like a function, ``for n in rounds(...)``
    """Rounds of a fixed span (a bake, a warm-up) where the work decides, not a predicate: iterate it to
    do one round every ``interval`` seconds until ``timeout`` seconds after it was *made*, and break or
    return when the round settles the question; when time runs out the loop just ends (no error).

    ``for n in rounds(...)`` in sync code (pauses are :func:`sleep`, so a sync hook stops at once when the
    runner asks: :class:`~tars_core.errors.HookStopped`); ``async for n in rounds(...)`` in async code
    (pauses are ``anyio.sleep``: cancellation interrupts them). ``n`` counts rounds from 0. The first round
    is at once (``first=False``: after the first interval, e.g. one judgement at the end of a bake with
    ``interval=timeout``), each pause is cut to the deadline, and the last round is at the deadline itself.
    The deadline is fixed when the object is made, so make it where the span starts (before connecting).
    """

    def __init__(self, timeout: float, interval: float, *, first: bool = True) -> None:
        self.timeout, self.interval, self.first = timeout, interval, first
        self.deadline = time.monotonic() + timeout

    def _pauses(self) -> Iterator[float]:
        return _pauses(self.deadline, self.interval, first=self.first)

    def __iter__(self) -> Iterator[int]:
        for n, pause in enumerate(self._pauses()):
            sleep(pause)
            check_stop()
            yield n

    def __aiter__(self) -> _AsyncRounds:
        return _AsyncRounds(self._pauses())


class _AsyncRounds:
    """The async iterator of :class:`rounds` (a class, not an async generator: a loop that returns early
    leaves nothing to finalise)."""

    def __init__(self, pauses: Iterator[float]) -> None:
        self._pauses = enumerate(pauses)

    def __aiter__(self) -> _AsyncRounds:
        return self

    async def __anext__(self) -> int:
        import anyio

        try:
            n, pause = next(self._pauses)
        except StopIteration:
            raise StopAsyncIteration from None
        await anyio.sleep(pause)
        return n


__all__ = [
    "STOP",
    "HookStopped",
    "WaitTimeout",
    "await_until",
    "check_stop",
    "rounds",
    "sleep",
    "stop_requested",
    "wait_until",
]
