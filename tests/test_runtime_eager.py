"""Eager first steps (engine/runtime/_eager.py): no task unless the coroutine suspends, and
a current task that works for ``asyncio.timeout``, cancellation and context variables."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from engine.runtime._eager import start_eager
from tests._wait import until

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="")


def in_callback(fn: object) -> asyncio.Future[object]:
    """Run ``fn()`` from a loop callback (no task running), as a transport's reader does."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[object] = loop.create_future()

    def call() -> None:
        fut.set_result(fn())  # type: ignore[operator]

    loop.call_soon(call)
    return fut


def test_a_coroutine_that_does_not_suspend_gets_no_task() -> None:
    seen: list[object] = []

    async def quick() -> None:
        seen.append(asyncio.current_task())
        VAR.set("quick")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = await in_callback(lambda: start_eager(loop, quick()))
        assert task is None and len(seen) == 1
        current = seen[0]
        assert current is not None and not current.done()  # a stand-in, not None
        assert VAR.get() == ""  # its context variables stayed with it

    asyncio.run(main())


def test_asyncio_timeout_and_suspension_work_in_the_first_step() -> None:
    outcome: list[str] = []

    async def bounded() -> None:
        VAR.set("mine")
        try:
            async with asyncio.timeout(0.01):  # needs a current task: the stand-in
                await asyncio.sleep(30)
        except TimeoutError:
            outcome.append(f"timed out, still {VAR.get()}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = await in_callback(lambda: start_eager(loop, bounded()))
        assert isinstance(task, asyncio.Task)  # it suspended: a task continues it
        await task
        assert outcome == ["timed out, still mine"] and VAR.get() == ""

    asyncio.run(main())


async def _held(outcome: list[str]) -> None:
    """Wait until cancelled, and say so."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        outcome.append("cancelled")
        raise


def test_cancelling_the_task_reaches_the_coroutine() -> None:
    outcome: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = await in_callback(lambda: start_eager(loop, _held(outcome)))
        assert isinstance(task, asyncio.Task)
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert outcome == ["cancelled"]

    asyncio.run(main())


def test_a_cancel_asked_for_in_the_first_step_reaches_the_task() -> None:
    outcome: list[str] = []

    async def cancels_itself() -> None:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()  # before the coroutine has a task of its own
        await _held(outcome)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = await in_callback(lambda: start_eager(loop, cancels_itself()))
        assert isinstance(task, asyncio.Task)
        await asyncio.gather(task, return_exceptions=True)
        assert outcome == ["cancelled"] and task.cancelled()

    asyncio.run(main())


def test_inside_a_running_task_it_makes_a_task_and_a_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("bug in a delivery")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inside = start_eager(loop, fails())  # a task is running (main's): no eager step
        assert isinstance(inside, asyncio.Task)
        with pytest.raises(RuntimeError):
            await inside
        assert await in_callback(lambda: start_eager(loop, fails())) is None
        await until(lambda: "a delivery failed" in caplog.text)

    asyncio.run(main())


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_or_exit_in_a_first_step_is_not_swallowed(exc: type[BaseException]) -> None:
    """A task re-raises KeyboardInterrupt and SystemExit; so does an eager first step (it
    logged them as a failed delivery and carried on)."""

    async def stops() -> None:
        raise exc

    def step() -> object:
        try:
            return start_eager(asyncio.get_running_loop(), stops())
        except exc as caught:
            return caught

    async def main() -> object:
        return await in_callback(step)

    assert isinstance(asyncio.run(main()), exc)
