"""Hash-chained audit log: appends, reopen, tamper detection, ``engine audit verify``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from engine.cli import main
from engine.errors import AuditError
from engine.observe.audit import GENESIS, NODE_REGISTERED, TASK_ASSIGNED, AuditLog, verify


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        log.append(NODE_REGISTERED, {"node": "n1"})
        log.append(TASK_ASSIGNED, {"task": 1, "node": "n1"})
        log.append("task.completed", {"task": 1})
        log.append("budget.refused", {"tenant": "t"})
    return path


Tamper = Callable[[list[bytes]], list[bytes]]


def rewrite(path: Path, fn: Tamper) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(fn(lines)))


def test_valid_log_verifies(log_file: Path) -> None:
    s = verify(log_file)
    assert s.records == 4
    first = orjson.loads(log_file.read_bytes().splitlines()[0])
    assert first["prev"] == GENESIS and first["seq"] == 1 and first["event"] == NODE_REGISTERED


def test_reopen_continues_chain(log_file: Path) -> None:
    head = verify(log_file).head
    with AuditLog(log_file) as log:
        assert log.head == head
        h = log.append("node.rejected", {"node": "evil"})
    s = verify(log_file, head=h)
    assert s.records == 5 and s.head == h


def edit(lines: list[bytes]) -> list[bytes]:
    rec = orjson.loads(lines[1])
    rec["data"]["node"] = "n2"
    return [lines[0], orjson.dumps(rec, option=orjson.OPT_SORT_KEYS) + b"\n", *lines[2:]]


def edit_and_rehash(lines: list[bytes]) -> list[bytes]:
    import hashlib

    rec = orjson.loads(lines[1])
    rec["data"]["node"] = "n2"
    del rec["hash"]
    rec["hash"] = hashlib.sha256(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return [lines[0], orjson.dumps(rec, option=orjson.OPT_SORT_KEYS) + b"\n", *lines[2:]]


@pytest.mark.parametrize(
    ("tamper", "line", "why"),
    [
        (edit, 2, "edited"),
        (edit_and_rehash, 3, "chain broken"),
        (lambda ls: [ls[0], *ls[2:]], 2, "chain broken"),  # removed
        (lambda ls: [ls[0], ls[2], ls[1], ls[3]], 2, "chain broken"),  # reordered
        (lambda ls: [ls[0], ls[0], *ls[1:]], 2, "chain broken"),  # duplicated
        (lambda ls: [*ls[:3], ls[3][:-10]], 4, "truncated"),
        (lambda ls: [ls[0], b"not json\n", *ls[1:]], 2, "not a JSON record"),
        (lambda ls: [ls[0], b'{"seq": 2}\n', *ls[1:]], 2, "exactly the fields"),
    ],
    ids=[
        "edited",
        "edited-rehashed",
        "removed",
        "reordered",
        "duplicated",
        "torn",
        "junk",
        "shape",
    ],
)
def test_tampering_detected(log_file: Path, tamper: Tamper, line: int, why: str) -> None:
    rewrite(log_file, tamper)
    with pytest.raises(AuditError, match=why) as info:
        verify(log_file)
    assert info.value.line == line


def test_truncated_tail_needs_anchored_head(log_file: Path) -> None:
    head = verify(log_file).head
    rewrite(log_file, lambda ls: ls[:-1])
    assert verify(log_file).records == 3  # a shorter chain is still a chain ...
    with pytest.raises(AuditError, match="cut off the end"):
        verify(log_file, head=head)  # ... the anchored head catches it


def test_cli_verify(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(log_file)]) == 0
    assert "ok, 4 records" in capsys.readouterr().out
    rewrite(log_file, edit)
    assert main(["audit", "verify", str(log_file)]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "line 2" in err


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(tmp_path / "none.log")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_single_writer_enforced(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with AuditLog(path), pytest.raises(AuditError, match="already open"):
        AuditLog(path)


def test_refuses_to_continue_a_damaged_tail(log_file: Path) -> None:
    good = log_file.read_bytes()
    rewrite(log_file, lambda ls: [*ls[:3], ls[3][:-10]])
    with pytest.raises(AuditError, match="truncated"):
        AuditLog(log_file)
    log_file.write_bytes(good)
    rewrite(log_file, lambda ls: [*ls[:3], ls[3].replace(b"budget", b"bodget")])
    with pytest.raises(AuditError, match="hash does not match"):
        AuditLog(log_file)


def test_bad_appends(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "b.log")
    with pytest.raises(AuditError, match="non-empty"):
        log.append("")
    with pytest.raises(AuditError, match="JSON-serialisable"):
        log.append("x", {"obj": object()})
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.append("x")
    assert verify(tmp_path / "b.log").records == 0


def test_concurrent_appends_keep_chain(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with AuditLog(path, fsync=False) as log:
        threads = [
            threading.Thread(target=lambda i=i: [log.append("e", {"t": i}) for _ in range(50)])
            for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert verify(path).records == 200
