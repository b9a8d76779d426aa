"""The sampling profiler: sees real stacks, exports folded text and speedscope JSON."""

from __future__ import annotations

import threading
import time

import pytest

from engine.observe.sampler import Sampler, profile_for


def spin_leaf(deadline: float) -> int:
    n = 0
    while time.perf_counter() < deadline:
        n += sum(range(100))
    return n


def spin_outer(seconds: float) -> int:
    return spin_leaf(time.perf_counter() + seconds)


def test_samples_the_running_stack() -> None:
    with Sampler(hz=200) as s:
        spin_outer(0.3)
    prof = s.profile()
    assert 20 <= prof.samples <= 120  # ~60 expected at 200 Hz over 0.3 s (main thread only)
    folded = prof.folded()
    hot = [line for line in folded.splitlines() if "spin_leaf" in line]
    assert hot, folded
    assert all("spin_outer" in line.split("spin_leaf")[0] for line in hot)  # outer before leaf
    assert prof.top(1)[0][0].startswith(("spin_leaf", "<genexpr>"))
    assert "engine-sampler" not in folded  # never samples itself


def test_speedscope_shape() -> None:
    with Sampler(hz=200) as s:
        spin_outer(0.1)
    doc = s.profile().speedscope()
    frames = doc["shared"]["frames"]
    for p in doc["profiles"]:
        assert p["type"] == "sampled" and len(p["samples"]) == len(p["weights"])
        assert all(0 <= i < len(frames) for stack in p["samples"] for i in stack)
        assert p["endValue"] == pytest.approx(sum(p["weights"]))


def test_other_threads_named() -> None:
    stop = threading.Event()
    t = threading.Thread(target=lambda: stop.wait(5), name="waiter")
    t.start()
    try:
        prof = profile_for(0.15, hz=100)
    finally:
        stop.set()
        t.join()
    assert any(thread == "waiter" for thread, _ in prof.stacks)


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
    def recurse(n: int) -> None:
        if n:
            recurse(n - 1)
        else:
            spin_leaf(time.perf_counter() + 0.1)

    with Sampler(hz=200, max_depth=5) as s:
        recurse(30)
    assert max(len(stack) for _, stack in s.profile().stacks) == 5
