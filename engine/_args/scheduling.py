"""Argument checks shared by both scheduler twins, so bad input fails identically.

The compiled twin handles the common case (an in-range ``int``/``float``) in C and calls
these helpers only for anything else, so the error types and messages are the same.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from engine.errors import SchedulerError

__all__ = [
    "I32_MAX",
    "I32_MIN",
    "I64_MAX",
    "I64_MIN",
    "MAX_WEIGHT",
    "POLICIES",
    "as_count",
    "as_deadline",
    "as_f64_array",
    "as_i64",
    "as_i64_array",
    "as_iterable",
    "as_policy",
    "as_priority",
    "as_rate",
    "as_slots",
    "as_weight",
]

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
MAX_WEIGHT = 1_000_000
POLICIES = ("cancel", "fail")


def as_i64(x: object, what: str) -> int:
    """``x`` as an int64 (task, tenant and pool ids)."""
    if isinstance(x, bool):
        raise SchedulerError(f"{what} must be an integer, got bool")
    try:
        v = operator.index(x)  # type: ignore[arg-type]
    except TypeError:
        raise SchedulerError(f"{what} must be an integer, got {type(x).__name__}") from None
    if not I64_MIN <= v <= I64_MAX:
        raise SchedulerError(f"{what} {v} is outside the int64 range")
    return v


def as_priority(x: object) -> int:
    """A priority: an int32; lower runs first."""
    v = as_i64(x, "priority")
    if not I32_MIN <= v <= I32_MAX:
        raise SchedulerError(f"priority {v} is outside the int32 range")
    return v


def as_deadline(x: object) -> float:
    """A deadline on the scheduler's clock (seconds); ``inf`` means none; NaN is refused."""
    if isinstance(x, (str, bytes, bytearray, bool)) or x is None:
        raise SchedulerError(f"deadline must be a number, got {type(x).__name__}")
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SchedulerError(f"deadline must be a number, got {type(x).__name__}") from None
    if math.isnan(v):
        raise SchedulerError("deadline is NaN")
    return v


def as_iterable(x: object) -> Iterable[object]:
    """``deps`` of ``push``: any iterable of ids."""
    if isinstance(x, (str, bytes)) or not isinstance(x, Iterable):
        raise SchedulerError(f"deps must be an iterable of ids, got {type(x).__name__}")
    return x


def as_count(x: object, what: str = "n") -> int:
    """A non-negative count (``pop_ready(n)``)."""
    v = as_i64(x, what)
    if v < 0:
        raise SchedulerError(f"{what} must be >= 0, got {v}")
    return v


def as_weight(x: object) -> int:
    """A tenant weight: an int in [1, MAX_WEIGHT] (tasks per DRR round)."""
    v = as_i64(x, "weight")
    if not 1 <= v <= MAX_WEIGHT:
        raise SchedulerError(f"weight must be in [1, {MAX_WEIGHT}], got {v}")
    return v


def as_slots(x: object) -> int:
    """Concurrency slots of a pool: ``None`` (unlimited, returned as -1) or an int >= 0."""
    if x is None:
        return -1
    v = as_i64(x, "slots")
    if not 0 <= v <= I32_MAX:
        raise SchedulerError(f"slots must be None or in [0, {I32_MAX}], got {v}")
    return v


def as_rate(rate: object, burst: object) -> tuple[float, float]:
    """Token bucket ``(rate, burst)``: ``rate`` None (no limit, returned as inf) or > 0 per
    second; ``burst`` (capacity) >= 1, default ``max(1, rate)``."""
    if rate is None:
        if burst is not None:
            raise SchedulerError("burst given without rate")
        return math.inf, math.inf
    r = as_deadline(rate) if not isinstance(rate, bool) else math.nan
    if not (r > 0 and math.isfinite(r)):
        raise SchedulerError(f"rate must be a finite number > 0, got {rate!r}")
    if burst is None:
        return r, max(1.0, r)
    b = as_deadline(burst) if not isinstance(burst, bool) else math.nan
    if not (b >= 1 and math.isfinite(b)):
        raise SchedulerError(f"burst must be a finite number >= 1, got {burst!r}")
    return r, b


def as_policy(x: object) -> str:
    """What happens to a failed task's dependents: ``"cancel"`` or ``"fail"``."""
    if x not in POLICIES:
        raise SchedulerError(f"on_dep_failure must be one of {POLICIES}, got {x!r}")
    return str(x)


def _array(x: object, what: str) -> npt.NDArray[np.generic]:
    a = np.asarray(x)
    if a.ndim != 1:
        raise SchedulerError(f"{what} must be a 1-d array, got {a.ndim} dimensions")
    return a


def as_i64_array(
    x: object, what: str, n: int | None = None, lo: int = I64_MIN, hi: int = I64_MAX
) -> npt.NDArray[np.int64]:
    """A 1-d int64 array (any integer dtype that fits), length ``n`` if given."""
    a = _array(x, what)
    if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and a.size == 0):
        raise SchedulerError(f"{what} must be an integer array, got dtype {a.dtype}")
    if n is not None and a.shape[0] != n:
        raise SchedulerError(f"{what} has length {a.shape[0]}, expected {n}")
    if a.size and (lo > I64_MIN or hi < I64_MAX or a.dtype == np.uint64):
        mn, mx = int(a.min()), int(a.max())
        if mn < lo or mx > hi:
            raise SchedulerError(f"{what} holds values outside [{lo}, {hi}]")
    return np.ascontiguousarray(a, dtype=np.int64)


def as_f64_array(x: object, what: str, n: int) -> npt.NDArray[np.float64]:
    """A 1-d float64 array of length ``n`` without NaN (deadlines)."""
    a = _array(x, what)
    if a.dtype.kind not in "iuf":
        raise SchedulerError(f"{what} must be a numeric array, got dtype {a.dtype}")
    if a.shape[0] != n:
        raise SchedulerError(f"{what} has length {a.shape[0]}, expected {n}")
    out = np.ascontiguousarray(a, dtype=np.float64)
    if np.isnan(out).any():
        raise SchedulerError(f"{what} holds NaN")
    return out
