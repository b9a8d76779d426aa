"""The sampling profiler: sees real stacks, exports folded text and speedscope JSON."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from engine.observe.sampler import Sampler, profile_for
from tests._wait import wait_until


def spin_leaf(until: Callable[[], bool]) -> int:
    n = 0
    while not until():
        for _ in range(1000):
            n += sum(range(100))
    return n


def spin_outer(until: Callable[[], bool]) -> int:
    return spin_leaf(until)


def sampled(s: Sampler, thread: str, n: int) -> Callable[[], bool]:
    """True once ``s`` holds ``n`` samples of ``thread`` (the bound: the test's timeout)."""
    return lambda: sum(c for (name, _), c in s.profile().stacks.items() if name == thread) >= n


def test_samples_the_running_stack() -> None:
    me = threading.current_thread().name
    with Sampler(hz=200) as s:
        spin_outer(sampled(s, me, 30))  # a count of samples, however long they take
    prof = s.profile()
    mine = sum(n for (thread, _), n in prof.stacks.items() if thread == me)
    assert mine >= 30
    folded = prof.folded()
    hot = [line for line in folded.splitlines() if "spin_leaf" in line and line.startswith(me)]
    assert hot, folded
    assert all("spin_outer" in line.split("spin_leaf")[0] for line in hot)  # outer before leaf
    assert prof.top(1, thread=me)[0][0].startswith(("spin_leaf", "<genexpr>"))
    assert "engine-sampler" not in folded  # never samples itself


@pytest.mark.slow
def test_sample_rate_follows_hz() -> None:
    me = threading.current_thread().name
    with Sampler(hz=200) as s:
        end = time.perf_counter() + 0.3
        spin_outer(lambda: time.perf_counter() > end)
    mine = sum(n for (thread, _), n in s.profile().stacks.items() if thread == me)
    assert 20 <= mine <= 120  # ~60 expected at 200 Hz over 0.3 s


def test_speedscope_shape() -> None:
    with Sampler(hz=200) as s:
        spin_outer(sampled(s, threading.current_thread().name, 5))
    doc = s.profile().speedscope()
    assert doc["profiles"]
    frames = doc["shared"]["frames"]
    for p in doc["profiles"]:
        assert p["type"] == "sampled" and len(p["samples"]) == len(p["weights"])
        assert all(0 <= i < len(frames) for stack in p["samples"] for i in stack)
        assert p["endValue"] == pytest.approx(sum(p["weights"]))


def test_other_threads_named() -> None:
    stop = threading.Event()
    t = threading.Thread(target=lambda: stop.wait(60), name="waiter")
    t.start()
    try:
        with Sampler(hz=100) as s:
            wait_until(lambda: any(thread == "waiter" for thread, _ in s.profile().stacks))
        prof = profile_for(0.01, hz=100)  # the blocking form returns a profile too
    finally:
        stop.set()
        t.join()
    assert prof.hz == 100


@pytest.mark.parametrize(("hz", "depth"), [(0, 10), (-1, 10), (5000, 10), (100, 0)])
def test_bad_arguments(hz: float, depth: int) -> None:
    with pytest.raises(ValueError):
        Sampler(hz=hz, max_depth=depth)


@pytest.mark.parametrize("seconds", [0, -1, 10_000])
def test_profile_for_bounds(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        profile_for(seconds)


def test_start_twice_and_stop_idempotent() -> None:
    s = Sampler(hz=50).start()
    with pytest.raises(RuntimeError, match="already running"):
        s.start()
    first = s.stop()
    again = s.stop()
    assert first.samples == again.samples and not s.running


def test_depth_is_capped() -> None:
    def recurse(n: int, until: Callable[[], bool]) -> None:
        if n:
            recurse(n - 1, until)
        else:
            spin_leaf(until)

    with Sampler(hz=200, max_depth=5) as s:
        recurse(30, sampled(s, threading.current_thread().name, 5))
    assert max(len(stack) for _, stack in s.profile().stacks) == 5
