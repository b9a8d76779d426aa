"""GIL-release probe shared by the native-module and frame-socket tests."""

from __future__ import annotations

import threading
from collections.abc import Callable


def python_progress_during(call: Callable[[], object], attempts: int = 50) -> int:
    """How far a Python loop in this thread advanced while ``call`` ran in another thread.

    The other thread reads a counter just before and just after one call; this thread
    spins incrementing it. A call that holds the GIL leaves the counter unchanged across
    it: exactly 0, every time, however loaded the machine. One that releases it lets the
    spinner in, unless the OS happened not to run this thread during that call, so the
    call is repeated (up to ``attempts`` times) until the counter moves. Returns the first
    non-zero advance, or 0 when no call let Python run.
    """
    counter = [0]
    done = threading.Event()
    delta: list[int] = []

    def native() -> None:
        while counter[0] == 0:  # the spinner is running
            done.wait(0.001)
        for _ in range(attempts):
            before = counter[0]
            call()
            moved = counter[0] - before
            if moved:
                delta.append(moved)
                break
        done.set()

    th = threading.Thread(target=native)
    th.start()
    while not done.is_set():
        counter[0] += 1
    th.join()
    return delta[0] if delta else 0
