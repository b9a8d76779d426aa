"""Eager first steps: run a coroutine at once, and make a task only if it suspends.

PERF: most deliveries from a transport finish without suspending (an idle agent's handler
that returns at once), so :func:`start_eager` runs the first step in the caller and skips
``create_task``, its ``call_soon`` and a loop iteration per delivery (benches/bench_mesh.py,
benches/mesh_seq_profile.py --python). Python 3.12's eager task factory does the same;
this is its 3.11 equivalent.

During the first step :func:`asyncio.current_task` is a :class:`_FirstStep` standing in for
the task: ``asyncio.timeout``, the runtime's deadlines and whatever else needs the current
task get one, and its ``cancel``/``uncancel``/``cancelling`` reach the real task once the
coroutine has suspended and been handed to it.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import logging

# asyncio's own bookkeeping of the current task (its C accelerator's when built), what
# Python 3.12's eager tasks use too; typed for Tasks, given the stand-in here
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["start_eager"]

log = logging.getLogger("engine.runtime")


class _FirstStep:
    """The current task of an eager first step; forwards to the real task when it exists."""

    __slots__ = ("cancels", "message", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.cancels = 0
        self.message: Any = None

    def cancel(self, msg: Any = None) -> bool:
        if self.task is not None:
            return self.task.cancel(msg)
        self.cancels += 1  # delivered to the task once the coroutine suspends
        self.message = msg
        return True

    def uncancel(self) -> int:
        if self.task is not None:
            return self.task.uncancel()
        if self.cancels:
            self.cancels -= 1
        return self.cancels

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else self.cancels

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def get_name(self) -> str:
        return self.task.get_name() if self.task is not None else "eager-first-step"


def start_eager(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> asyncio.Task[None] | None:
    """Run ``coro``'s first step now; return the task continuing it, or None if it finished.

    The first step runs in a copy of the current context, which the task then keeps:
    context variables the coroutine sets (the current span, a log context) stay with it.
    Called inside a running task (a caller's own ``await``), it makes a task at once. An
    exception is logged, as a task would.
    """
    first = _FirstStep()
    try:
        _enter_task(loop, first)  # type: ignore[arg-type]
    except RuntimeError:  # a task is running: its context is not ours to step in
        return loop.create_task(coro)
    ctx = contextvars.copy_context()
    try:
        yielded = ctx.run(coro.send, None)
    except StopIteration:
        return None
    except (KeyboardInterrupt, SystemExit):
        raise  # as a task re-raises them: a Ctrl-C in a handler stops the process
    except BaseException:
        log.exception("a delivery failed")
        return None
    finally:
        _leave_task(loop, first)  # type: ignore[arg-type]
    task = loop.create_task(_Continue(coro, yielded), context=ctx)
    first.task = task
    if first.cancels:
        task.cancel(first.message)
    return task


class _Continue(collections.abc.Coroutine[Any, Any, None]):
    """A coroutine suspended in an eager first step, handed to a task to drive on.

    The task's first ``send`` gets back what the coroutine yielded (the future it waits
    on, or None for a bare yield), which the task then waits for, as if it had run that
    step itself; every later ``send``/``throw`` goes straight to the coroutine — so a task
    cancelled before its first step throws the cancellation into the coroutine too.
    """

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self.coro = coro
        self.yielded: Any = (yielded,)

    def send(self, value: Any) -> Any:
        pending = self.yielded
        if pending is not None:
            self.yielded = None
            return pending[0]
        return self.coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        pending, self.yielded = self.yielded, None
        if pending is not None and pending[0] is not None:
            pending[0].cancel()  # what a task cancelled while waiting on it does
        if val is None and tb is None:
            return self.coro.throw(typ)
        return self.coro.throw(typ, val, tb)

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Generator[Any, None, None]:  # the ABC's; tasks use send/throw
        return self.coro.__await__()
