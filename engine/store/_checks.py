"""Argument checks shared by every store: wrong types and sizes become ``StoreInputError``.

Every text field must encode as UTF-8 without NUL (PostgreSQL's ``text`` refuses both),
so the three implementations accept exactly the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import TypeVar

from engine.errors import RecordTooLarge, StoreInputError
from engine.store.base import StoreOptions

__all__ = [
    "MAX_ID",
    "MAX_TEXT",
    "check_bytes",
    "check_flag",
    "check_id",
    "check_int",
    "check_limit",
    "check_opt_number",
    "check_options",
    "check_seq",
    "check_statuses",
    "check_text",
    "check_ttl",
]

MAX_ID = 512  # bytes of UTF-8: job ids, keys, names, owners
MAX_TEXT = 64 * 1024  # free text: error messages, dead-letter reasons

T = TypeVar("T")


def check_text(what: str, value: object, *, limit: int = MAX_ID, empty: bool = True) -> str:
    if type(value) is not str:
        if not isinstance(value, str):
            raise StoreInputError(f"{what} must be a str, got {type(value).__name__}")
        value = str(value)
    if not value and not empty:
        raise StoreInputError(f"{what} must not be empty")
    if "\x00" in value:
        raise StoreInputError(f"{what} must not contain NUL characters")
    size = len(value)
    if not value.isascii():
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise StoreInputError(f"{what} is not valid Unicode (lone surrogate)") from None
    if size > limit:
        raise StoreInputError(f"{what} is {size} bytes, the limit is {limit}")
    return value


def check_id(what: str, value: object) -> str:
    return check_text(what, value, empty=False)


def check_bytes(what: str, value: object, options: StoreOptions) -> bytes:
    if type(value) is not bytes:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise StoreInputError(f"{what} must be bytes, got {type(value).__name__}")
        value = bytes(value)
    if len(value) > options.max_value_bytes:
        raise RecordTooLarge(
            f"{what} is {len(value)} bytes, the store's max_value_bytes is "
            f"{options.max_value_bytes}"
        )
    return value


def check_int(what: str, value: object, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if type(value) is not int:
        raise StoreInputError(f"{what} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise StoreInputError(f"{what} must be in [{lo}, {hi}], got {value}")
    return value


def check_limit(value: object, hi: int = 100_000) -> int:
    return check_int("limit", value, 1, hi)


def check_flag(what: str, value: object) -> bool:
    if type(value) is not bool:
        raise StoreInputError(f"{what} must be a bool, got {type(value).__name__}")
    return value


def check_ttl(value: object, what: str = "ttl") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StoreInputError(f"{what} must be a number of seconds, got {type(value).__name__}")
    ttl = float(value)
    if not (math.isfinite(ttl) and 0 < ttl <= 10 * 365 * 86400):
        raise StoreInputError(f"{what} must be > 0 and finite, got {value!r}")
    return ttl


def check_opt_number(what: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StoreInputError(f"{what} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise StoreInputError(f"{what} must be finite, got {value!r}")
    return float(value)


def check_statuses(what: str, value: str | Collection[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (check_id(what, value),)
    if not isinstance(value, Collection) or isinstance(value, (bytes, bytearray)):
        raise StoreInputError(f"{what} must be a str or a collection of str")
    out = tuple(check_id(what, v) for v in value)
    if not out or len(out) > 64:
        raise StoreInputError(f"{what} must name 1 to 64 statuses, got {len(out)}")
    return out


def check_seq(what: str, value: object, kind: type[T], hi: int = 100_000) -> Sequence[T]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes, bytearray)):
        raise StoreInputError(f"{what} must be a sequence, got {type(value).__name__}")
    if len(value) > hi:
        raise StoreInputError(f"{what} holds {len(value)} items, the limit is {hi}")
    for item in value:
        if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
            raise StoreInputError(
                f"{what} must hold {kind.__name__} items, got {type(item).__name__}"
            )
    return value


def check_options(options: StoreOptions) -> StoreOptions:
    """Refuse option values that would break the store (negative bounds, zero TTLs)."""
    if options.durability not in ("commit", "batch"):
        raise StoreInputError(f"durability must be 'commit' or 'batch', got {options.durability!r}")
    if options.keep_checkpoints is not None:
        check_int("keep_checkpoints", options.keep_checkpoints, 1, 10**9)
    if options.checkpoint_ttl is not None:
        check_ttl(options.checkpoint_ttl, "checkpoint_ttl")
    check_flag("checkpoint_delta", options.checkpoint_delta)
    check_int("max_value_bytes", options.max_value_bytes, 1, 1 << 30)
    check_int("max_dead_letters", options.max_dead_letters, 1, 10**9)
    check_int("queue_size", options.queue_size, 1, 10**6)
    check_int("max_batch", options.max_batch, 1, 10**5)
    return options
