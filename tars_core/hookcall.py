"""Running one hook as a worker that a timeout or Ctrl-C can stop waiting for, but never forgets.

A hook that passes its timeout cannot be killed: a sync hook is a thread, and an async hook that handed
blocking work to a thread (``anyio.to_thread``, ``asyncio.to_thread``) goes on in that thread after it is
cancelled. If the runner moved on at once, the rollback would run while the abandoned apply still writes
the target, and the ledger would say ``rolled_back`` over a half-applied fix. So after a timeout or a
cancellation the worker is asked to stop (an async hook is cancelled; a thread cannot be asked) and
awaited, shielded, for a bounded grace period; a worker that is still running after it is reported as
:class:`HookStillRunning`, and the caller must treat the target as in an unknown state.

What counts as the worker:

- a sync hook: the daemon thread it runs in (daemon, so a stuck one cannot hold the process open). It
  cannot be cancelled, but it is asked: the core's waiting helpers in that thread (``wait_until``,
  ``waiting.sleep``, ``check_stop``, and through them ``tars_core.prometheus``'s waits) raise
  :class:`~tars_core.errors.HookStopped` at once, so a hook waiting minutes for rules to evaluate stops
  within moments of Ctrl-C instead of holding the run (TARS-1002 lived on for 100 s);
- an async hook: its own task, cancelled through an anyio cancel scope so that anyio's
  ``to_thread.run_sync`` (which does not abandon its thread by default) finishes only with its thread;
- jobs an async hook submitted to the event loop's default executor (``asyncio.to_thread``,
  ``loop.run_in_executor(None, ...)``): cancelling the task returns at once while such a job runs on, so
  the default executor is replaced by one that notes which hook call submitted each job.

Work a hook explicitly abandons (``abandon_on_cancel=True``, its own threads or executors) is beyond
reach: a hook must not do that.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import anyio

from tars_core.errors import HookStillRunning
from tars_core.waiting import STOP

T = TypeVar("T")

_JOBS: contextvars.ContextVar[set[Future[Any]] | None] = contextvars.ContextVar("tars_hook_jobs", default=None)
_TRACKED: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_TASKS: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references to running tasks


class _TrackingExecutor(ThreadPoolExecutor):
    """The loop's default executor, remembering which hook call submitted each job (see the module doc)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        job = super().submit(fn, *args, **kwargs)
        jobs = _JOBS.get()
        if jobs is not None:
            jobs.add(job)
        return job


def _track_default_executor(loop: asyncio.AbstractEventLoop) -> None:
    if loop not in _TRACKED:
        loop.set_default_executor(_TrackingExecutor(thread_name_prefix="asyncio"))
        _TRACKED.add(loop)


async def run_hook(call: Callable[[], Any], *, in_thread: bool, hook: str, timeout: float | None, grace: float) -> Any:
    """Run ``call`` (a sync hook in a thread, or the coroutine an async hook returns) within ``timeout``.

    On timeout raises ``TimeoutError`` and on cancellation re-raises it, in both cases only once the
    worker has stopped; if it has not stopped ``grace`` seconds later (0: do not wait), raises
    :class:`HookStillRunning`. A sync hook that returns an awaitable has it awaited within the time left.
    """
    loop = asyncio.get_running_loop()
    _track_default_executor(loop)
    jobs: set[Future[Any]] = set()
    finished = anyio.Event()
    box: list[Any] = []  # [result] or [None, exception]
    scope = anyio.CancelScope()
    stop = threading.Event()  # a sync hook's thread learns at its next core wait that it must stop
    started = anyio.current_time()

    def settle(outcome: list[Any]) -> None:
        box[:] = outcome
        finished.set()

    if in_thread:

        def work() -> None:
            STOP.set(stop)
            try:
                outcome: list[Any] = [call()]
            except BaseException as exc:  # handed to the awaiting task, raised there
                outcome = [None, exc]
            try:
                loop.call_soon_threadsafe(settle, outcome)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(work,), name=f"tars {hook}", daemon=True).start()
    else:

        async def work_async() -> None:
            _JOBS.set(jobs)
            outcome: list[Any] = [None, anyio.get_cancelled_exc_class()()]
            try:
                with scope:
                    result = call()
                    while inspect.isawaitable(result):
                        result = await result
                    outcome = [result]
            except BaseException as exc:  # handed to the awaiting task, raised there
                outcome = [None, exc]
            settle(outcome)

        task = loop.create_task(work_async())
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)
    try:
        with anyio.fail_after(timeout):
            await finished.wait()
    except BaseException as exc:  # TimeoutError, or the caller's cancellation: stop the worker, wait for it
        scope.cancel()
        stop.set()
        with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
            await finished.wait()
            while any(not job.done() for job in jobs):
                await anyio.sleep(0.02)
        if not finished.is_set() or any(not job.done() for job in jobs):
            raise HookStillRunning(hook, timeout if isinstance(exc, TimeoutError) else None, grace) from None
        raise
    if len(box) > 1:
        raise box[1]
    if in_thread and inspect.isawaitable(box[0]):
        left = None if timeout is None else max(0.0, timeout - (anyio.current_time() - started))
        awaitable = box[0]
        return await run_hook(lambda: awaitable, in_thread=False, hook=hook, timeout=left, grace=grace)
    return box[0]
