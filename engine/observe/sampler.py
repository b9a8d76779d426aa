"""A built-in sampling profiler: a thread that reads ``sys._current_frames()`` at a fixed rate.

It aggregates folded stacks (``thread;outer;...;inner count``, the format of flamegraph.pl)
and exports them as text or as speedscope JSON (https://www.speedscope.app). The cost is
one walk over every thread's frames per sample: 0.5-2.2% measured at 100 Hz
(``benches/bench_observe.py::test_sampler_overhead_100hz``). Most of a tick (55-72 us of
sampler-thread CPU with a busy worker) is the timer wake-up and the GIL hand-off; the walk
itself is 10-25% of it (docs/performance.md, ``## observability``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any

__all__ = ["Profile", "Sampler", "profile_for"]

#: Upper bound on one on-demand profile (``/debug/profile?seconds=N``).
MAX_SECONDS = 300.0
#: Upper bound on the sampling rate.
MAX_HZ = 1000.0

Frame = tuple[str, str, int]  # (function, file, first line)


@dataclass
class Profile:
    """Aggregated samples: ``stacks[(thread, (frame, ...))] = count``, frames outermost first."""

    hz: float
    duration: float
    frames: list[Frame] = field(default_factory=list)
    stacks: Counter[tuple[str, tuple[int, ...]]] = field(default_factory=Counter)

    @property
    def samples(self) -> int:
        return sum(self.stacks.values())

    def _label(self, i: int) -> str:
        func, file, line = self.frames[i]
        return f"{func} ({file}:{line})".replace(";", ",")

    def folded(self) -> str:
        """Folded stacks, one ``thread;outer;...;inner count`` line each, heaviest first."""
        lines = []
        for (thread, stack), n in self.stacks.most_common():
            parts = [thread.replace(";", ","), *(self._label(i) for i in stack)]
            lines.append(f"{';'.join(parts)} {n}")
        return "\n".join(lines) + ("\n" if lines else "")

    def top(self, n: int = 10, thread: str | None = None) -> list[tuple[str, int]]:
        """The ``n`` leaf frames seen most often (self samples), as (label, count).

        ``thread`` restricts to the thread of that name.
        """
        leaves: Counter[str] = Counter()
        for (name, stack), count in self.stacks.items():
            if stack and (thread is None or name == thread):
                leaves[self._label(stack[-1])] += count
        return leaves.most_common(n)

    def speedscope(self, name: str = "agent-engine") -> dict[str, Any]:
        """The profile as a speedscope file: one sampled profile per thread."""
        interval = 1.0 / self.hz
        by_thread: dict[str, tuple[list[list[int]], list[float]]] = {}
        for (thread, stack), n in sorted(self.stacks.items()):
            samples, weights = by_thread.setdefault(thread, ([], []))
            samples.append(list(stack))
            weights.append(n * interval)
        return {
            "$schema": "https://www.speedscope.app/file-format-schema.json",
            "name": name,
            "exporter": "agent-engine sampler",
            "activeProfileIndex": 0,
            "shared": {
                "frames": [{"name": f, "file": file, "line": line} for f, file, line in self.frames]
            },
            "profiles": [
                {
                    "type": "sampled",
                    "name": thread,
                    "unit": "seconds",
                    "startValue": 0.0,
                    "endValue": sum(weights),
                    "samples": samples,
                    "weights": weights,
                }
                for thread, (samples, weights) in by_thread.items()
            ],
        }


class Sampler:
    """Samples every thread's Python stack ``hz`` times a second in a daemon thread.

    >>> with Sampler(hz=100) as s:
    ...     work()
    >>> print(s.profile().folded())
    """

    def __init__(self, hz: float = 100.0, *, max_depth: int = 256) -> None:
        if not 0 < hz <= MAX_HZ:
            raise ValueError(f"hz must be in (0, {MAX_HZ:g}], got {hz!r}")
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth!r}")
        self.hz = float(hz)
        self.max_depth = max_depth
        self._frames: list[Frame] = []
        self._index: dict[int, tuple[int, CodeType]] = {}
        self._stacks: Counter[tuple[str, tuple[int, ...]]] = Counter()
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._elapsed = 0.0

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> Sampler:
        if self._thread is not None:
            raise RuntimeError("sampler already running")
        self._stopping = False
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="engine-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Profile:
        """Stop sampling and return what was gathered."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            thread.join()
            self._elapsed += time.perf_counter() - self._started
        return self.profile()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def profile(self) -> Profile:
        """A copy of the samples gathered so far."""
        with self._lock:
            elapsed = self._elapsed
            if self._thread is not None:
                elapsed += time.perf_counter() - self._started
            return Profile(self.hz, elapsed, list(self._frames), Counter(self._stacks))

    def _run(self) -> None:
        interval = 1.0 / self.hz
        me = threading.get_ident()
        deadline = time.monotonic()
        refresh = 0.0
        while True:
            deadline += interval
            delay = deadline - time.monotonic()
            if delay < 0:  # fell behind (GIL held by a long C call): skip, do not burst
                deadline = time.monotonic()
                delay = 0.0
            # PERF: time.sleep wakes cheaper than Event.wait (no lock, no extra GIL round):
            # ~0.3 points less overhead at 100 Hz (benches/bench_observe.py); stop() waits
            # at most one interval.
            time.sleep(delay)
            if self._stopping:
                return
            now = time.monotonic()
            if now >= refresh:
                self._names = {t.ident: t.name for t in threading.enumerate() if t.ident}
                refresh = now + 1.0
            self._sample(me)

    def _sample(self, me: int) -> None:
        frames = sys._current_frames()
        with self._lock:
            for ident, frame in frames.items():
                if ident != me:
                    name = self._names.get(ident) or f"thread-{ident}"
                    self._stacks[(name, self._walk(frame))] += 1

    def _walk(self, frame: FrameType | None) -> tuple[int, ...]:
        # PERF: keyed by id(code): hashing a code object hashes its bytecode and constants.
        # The entry keeps the code object alive, so its id cannot be reused meanwhile.
        index, out, depth = self._index, [], self.max_depth
        while frame is not None and depth:
            code = frame.f_code
            entry = index.get(id(code))
            if entry is None:
                entry = index[id(code)] = (len(self._frames), code)
                self._frames.append((code.co_name, code.co_filename, code.co_firstlineno))
            out.append(entry[0])
            frame = frame.f_back
            depth -= 1
        out.reverse()
        return tuple(out)


def profile_for(seconds: float, hz: float = 100.0) -> Profile:
    """Sample the whole process for ``seconds`` and return the profile (blocks the caller)."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], got {seconds!r}")
    sampler = Sampler(hz).start()
    try:
        time.sleep(seconds)
    finally:
        profile = sampler.stop()
    return profile
