"""Topic and pattern syntax shared by both router twins: parsing, validation, batch inputs.

A topic is dotted segments (``"pings.eu"``); a pattern may use whole-segment wildcards,
``*`` (exactly one segment) and ``#`` (zero or more segments), AMQP style.
"""

from __future__ import annotations

import operator
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from engine.errors import RoutingError

__all__ = [
    "KIND_DIRECT",
    "KIND_TOPIC",
    "KIND_TYPE",
    "MAX_TOPIC_LENGTH",
    "POLICIES",
    "as_index",
    "as_int64",
    "as_kinds",
    "check_max_topics",
    "check_subscriber",
    "is_exact",
    "parse_pattern",
    "parse_topic",
]

#: ``route_many`` request kinds (``kinds`` array values).
KIND_DIRECT: Final = 0  # target: an agent handle (``Router.handle``)
KIND_TYPE: Final = 1  # target: a type handle (``Router.type_handle``)
KIND_TOPIC: Final = 2  # target: a topic handle (``Router.topic_handle``)

#: Load-balancing policies for by-type routing, by name (index = policy code).
POLICIES: Final = ("round_robin", "least_outstanding")

#: Longest accepted topic or pattern, in characters.
MAX_TOPIC_LENGTH: Final = 1024

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _split(text: object, what: str) -> list[str]:
    if not isinstance(text, str):
        raise RoutingError(f"{what} must be a str, got {type(text).__name__}")
    if not text:
        raise RoutingError(f"empty {what}")
    if len(text) > MAX_TOPIC_LENGTH:
        raise RoutingError(f"{what} is longer than {MAX_TOPIC_LENGTH} characters")
    segs = text.split(".")
    for i, seg in enumerate(segs):
        if not seg:
            raise RoutingError(f"{what} {text!r} has an empty segment at position {i}")
    return segs


def parse_pattern(pattern: object) -> tuple[str, ...]:
    """Split a subscription pattern into segments; ``*``/``#`` must be whole segments."""
    segs = _split(pattern, "pattern")
    for seg in segs:
        if seg not in ("*", "#") and ("*" in seg or "#" in seg):
            raise RoutingError(f"pattern {pattern!r}: wildcard inside segment {seg!r}")
    return tuple(segs)


def parse_topic(topic: object) -> tuple[str, ...]:
    """Split a published topic into segments; wildcards are not allowed in topics."""
    segs = _split(topic, "topic")
    for seg in segs:
        if "*" in seg or "#" in seg:
            raise RoutingError(f"topic {topic!r}: wildcard {seg!r} (only patterns take wildcards)")
    return tuple(segs)


def is_exact(segs: tuple[str, ...]) -> bool:
    """True when a parsed pattern has no wildcard (it names one topic)."""
    return "*" not in segs and "#" not in segs


def as_index(value: object) -> int | None:
    """``value`` as an int when it is an integer (``int``, numpy integers), never a bool."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_max_topics(max_topics: object) -> int:
    """The LRU bound on interned topics: an int in 1 .. 2**31 - 1."""
    n = as_index(max_topics)
    if n is None or not 1 <= n <= 0x7FFFFFFF:
        raise RoutingError(f"max_topics must be an int >= 1, got {max_topics!r}")
    return n


def check_subscriber(subscriber: object) -> int:
    """A subscriber is an integer that fits in int64."""
    sub = as_index(subscriber)
    if sub is None:
        raise RoutingError(f"subscriber must be an int, got {type(subscriber).__name__}")
    if not _INT64_MIN <= sub <= _INT64_MAX:
        raise RoutingError(f"subscriber {sub} does not fit in int64")
    return sub


def _as_array(values: Any, dtype: type[np.integer[Any]], name: str) -> npt.NDArray[Any]:
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise RoutingError(f"{name} is not an array of ints ({exc})") from exc
    if arr.ndim != 1:
        raise RoutingError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype != dtype:
        if arr.size == 0:
            arr = arr.astype(dtype)
        elif arr.dtype.kind not in "iu":
            raise RoutingError(f"{name} must hold integers, got dtype {arr.dtype}")
        else:
            info = np.iinfo(dtype)
            if int(arr.min()) < info.min or int(arr.max()) > info.max:
                raise RoutingError(f"{name} has values outside {np.dtype(dtype).name}")
            arr = arr.astype(dtype)
    return np.ascontiguousarray(arr)


def as_int64(values: Any, name: str = "targets") -> npt.NDArray[np.int64]:
    """Coerce a batch input to a contiguous int64 array (RoutingError if it cannot be)."""
    return _as_array(values, np.int64, name)


def as_kinds(values: Any) -> npt.NDArray[np.uint8]:
    """Coerce ``kinds`` to a contiguous uint8 array (RoutingError if it cannot be)."""
    return _as_array(values, np.uint8, "kinds")
