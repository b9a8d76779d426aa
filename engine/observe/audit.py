"""A hash-chained, append-only audit log of security-relevant events.

One JSON object per line::

    {"data":{...},"event":"node.registered","prev":"<sha256 of previous record>","seq":7,
     "ts":1763712000.25,"hash":"<sha256 of this record without 'hash'>"}

``hash`` is the SHA-256 of the record's canonical JSON (sorted keys, no ``hash`` field);
``prev`` is the previous record's ``hash`` (64 zeros for the first). :func:`verify` (and
``engine audit verify FILE``) recomputes the chain and reports the first line that was
edited, removed, inserted or moved. Cutting records off the *end* leaves a valid shorter
chain: anchor the head elsewhere (``AuditLog.head``, ``verify(..., head=...)``) to catch it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from engine.errors import AuditError

__all__ = [
    "BUDGET_REFUSED",
    "GENESIS",
    "NODE_REGISTERED",
    "NODE_REJECTED",
    "TASK_ASSIGNED",
    "TASK_COMPLETED",
    "AuditLog",
    "AuditSummary",
    "verify",
]

GENESIS: Final = "0" * 64
NODE_REGISTERED: Final = "node.registered"
NODE_REJECTED: Final = "node.rejected"
TASK_ASSIGNED: Final = "task.assigned"
TASK_COMPLETED: Final = "task.completed"
BUDGET_REFUSED: Final = "budget.refused"

_FIELDS: Final = frozenset({"seq", "ts", "event", "data", "prev", "hash"})
_MAX_LINE: Final = 1 << 20


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditSummary:
    """A verified log: how many records, and the hash of the last one (the head)."""

    records: int
    head: str


class AuditLog:
    """Appends chained records to ``path``; one writer per file (enforced with ``flock``).

    Reopening an existing log continues its chain. ``fsync=True`` makes every append
    durable before :meth:`append` returns (slower; the default only flushes to the OS).
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise AuditError(
                f"{self.path} is already open for writing by another AuditLog"
            ) from None
        try:
            self._seq, self._head = _tail(self.path)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def head(self) -> str:
        """Hash of the last record (``GENESIS`` if empty): anchor it to detect truncation."""
        return self._head

    def append(self, event: str, data: Mapping[str, Any] | None = None) -> str:
        """Append one record and return its hash."""
        if not isinstance(event, str) or not event:
            raise AuditError("event must be a non-empty string")
        with self._lock:
            if self._fd < 0:
                raise AuditError("audit log is closed")
            body = {
                "seq": self._seq + 1,
                "ts": time.time(),
                "event": event,
                "data": dict(data or {}),
                "prev": self._head,
            }
            try:
                h = _digest(body)
            except TypeError as exc:
                raise AuditError(f"audit data is not JSON-serialisable: {exc}") from None
            line = orjson.dumps({**body, "hash": h}, option=orjson.OPT_SORT_KEYS) + b"\n"
            os.write(self._fd, line)
            if self._fsync:
                os.fsync(self._fd)
            self._seq += 1
            self._head = h
            return h

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tail(path: Path) -> tuple[int, str]:
    """(seq, hash) of the last record, checking that record against itself."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0, GENESIS
        f.seek(max(0, size - _MAX_LINE))
        chunk = f.read()
    if not chunk.endswith(b"\n"):
        raise AuditError(f"{path}: last record is truncated (no newline); repair or rotate it")
    last = chunk.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    record = _check_shape(last, 0)
    if _digest({k: v for k, v in record.items() if k != "hash"}) != record["hash"]:
        raise AuditError(f"{path}: last record's hash does not match its content")
    return int(record["seq"]), str(record["hash"])


def _check_shape(line: bytes, lineno: int) -> dict[str, Any]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise AuditError(f"not a JSON record ({exc})", lineno) from None
    if not isinstance(record, dict) or set(record) != _FIELDS:
        raise AuditError(f"record must have exactly the fields {sorted(_FIELDS)}", lineno)
    if not isinstance(record["seq"], int) or not isinstance(record["hash"], str):
        raise AuditError("record has a non-integer seq or non-string hash", lineno)
    return record


def records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a log, unverified (use :func:`verify` first)."""
    with Path(path).open("rb") as f:
        for lineno, line in enumerate(f, 1):
            yield _check_shape(line, lineno)


def verify(path: str | os.PathLike[str], *, head: str | None = None) -> AuditSummary:
    """Recompute the chain of ``path``; :class:`AuditError` names the first bad line.

    ``head`` (a hash anchored elsewhere) additionally requires the log to end at that record,
    catching records cut off the end.
    """
    expected_prev, seq = GENESIS, 0
    try:
        f = Path(path).open("rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise AuditError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                raise AuditError("truncated record (no trailing newline)", lineno)
            record = _check_shape(line, lineno)
            body = {k: v for k, v in record.items() if k != "hash"}
            if _digest(body) != record["hash"]:
                raise AuditError("record was edited: its hash does not match its content", lineno)
            if record["prev"] != expected_prev:
                raise AuditError(
                    "chain broken: prev does not match the previous record's hash "
                    "(a record was removed, inserted or reordered)",
                    lineno,
                )
            if record["seq"] != seq + 1:
                raise AuditError(f"sequence jumps from {seq} to {record['seq']}", lineno)
            expected_prev, seq = record["hash"], record["seq"]
    if head is not None and head != expected_prev:
        raise AuditError(
            f"log ends at {expected_prev[:16]}..., expected head {head[:16]}... "
            "(records were cut off the end)"
        )
    return AuditSummary(seq, expected_prev)
