"""Shared scaffolding of the profiling scenarios (``engine profile NAME``).

Every scenario accepts ``--check`` (exit 0 if it can run here, exit 3 with the reason if its
subsystem is not part of this build) and ``--seconds S`` (how much CPU time to work).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
from collections.abc import Callable, Iterator

NOT_AVAILABLE = 3


def args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--check", action="store_true", help="exit 0 if this scenario can run")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--scale", type=float, default=1.0, help="data size factor (tests use 0.1)")
    return p.parse_args()


def require(module: str, subsystem: str) -> None:
    """Exit with status 3 and say so when ``module`` is not in this build."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            print(f"the {subsystem} subsystem ({module}) has not landed in this build")
            sys.exit(NOT_AVAILABLE)
        raise


@contextlib.contextmanager
def profiled() -> Iterator[None]:
    """Profile only inside: ``engine profile`` starts scalene with ``--off``."""
    profiler = None
    if "scalene" in sys.modules:
        from scalene import scalene_profiler

        profiler = scalene_profiler.Scalene
    if profiler is not None:
        profiler.start()
    try:
        yield
    finally:
        if profiler is not None:
            profiler.stop()


def repeat(seconds: float, step: Callable[[], object]) -> int:
    """Call ``step`` until this process has worked ``seconds`` of CPU time (profiled);
    returns the number of calls. CPU time, not wall time: on a busy machine the profile
    still holds ``seconds`` of work for the sampler to see."""
    step()  # warm-up, not profiled
    n = 0
    with profiled():
        deadline = time.process_time() + seconds
        while time.process_time() < deadline:
            step()
            n += 1
    return n
