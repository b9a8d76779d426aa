"""GIL-release probe shared by the native-module tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def python_progress_during(call: Callable[[], object]) -> int:
    """How far a Python loop in this thread advanced while ``call`` ran in another thread.

    The other thread reads a counter just before and just after the single call; this
    thread spins incrementing it. A call that held the GIL would leave the counter
    unchanged across it (0), one that releases it lets it advance by thousands.
    """
    counter = [0]
    started = threading.Event()
    done = threading.Event()
    delta: list[int] = []

    def native() -> None:
        started.set()
        time.sleep(0.01)  # let the spinner start
        before = counter[0]
        call()
        delta.append(counter[0] - before)
        done.set()

    th = threading.Thread(target=native)
    th.start()
    started.wait()
    while not done.is_set():
        counter[0] += 1
    th.join()
    return delta[0]
