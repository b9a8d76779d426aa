"""Crash safety with real processes: SIGKILL a writer mid-stream, reopen, check.

Every write acknowledged under ``commit`` durability must be there, every stored
checkpoint must read back exactly, and the store must take new writes. One run per
implementation in the default suite, 20 under ``-m slow``.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agents_for_tests import uv
from tests.store.conftest import Backend
from tests.store.crash_child import WRITERS, state

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0  # generous bound on the child's start and stream (never asserted as a time)


def _run_and_kill(url: str, acks_before_kill: int) -> dict[str, int]:
    """Start the child, SIGKILL it after ``acks_before_kill`` acknowledgements; the last
    acknowledged version per job (read to the end of its output, kill included)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_child", url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    acked: dict[str, int] = {}
    count = 0
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + WAIT
    try:
        while count < acks_before_kill:
            if time.monotonic() > deadline or proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"writer stopped or stalled after {count} acks: {err[-2000:]}")
            if not sel.select(timeout=1.0):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line == b"ready":
                    continue
                job, version = line.decode().split()
                acked[job] = int(version)
                count += 1
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()  # acks written before the kill landed
        for line in (buf + rest).split(b"\n"):
            if line and line != b"ready":
                job, version = line.decode().split()
                acked[job] = int(version)
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=WAIT)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


async def _check(backend: Backend, acked: dict[str, int]) -> None:
    async with backend.open(keep_checkpoints=None) as s:
        for i in range(WRITERS):
            job = f"job{i}"
            last = acked.get(job, 0)
            latest = await s.get_checkpoint(job)
            if last:
                assert latest is not None and latest.version >= last, (job, last, latest)
            if latest is None:
                continue
            # every stored version reads back exactly (deltas and their bases intact)
            listed = await s.list_checkpoints(job, limit=100_000, with_state=True)
            assert [c.version for c in listed] == list(range(latest.version, 0, -1))
            for c in listed:
                assert c.state == state(job, c.version), (job, c.version)
            ledger = await s.read_ledger(job)
            assert [e.id for e in ledger][:last] == [f"s{v}" for v in range(1, last + 1)]
        await s.put_checkpoint("job0", 10**9, b"after the crash")
        ck = await s.get_checkpoint("job0")
        assert ck is not None and ck.state == b"after the crash"
    if backend.kind == "sqlite":
        with sqlite3.connect(backend.url.removeprefix("sqlite:///")) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _crash_once(backend: Backend, seed: int) -> int:
    """Kill a writer after 40 to 400 acknowledged writes; check them all; return how many."""
    acks = random.Random(seed).randint(40, 400)
    acked = _run_and_kill(backend.url, acks)
    assert sum(acked.values()) >= acks
    uv(_check)(backend, acked)
    return sum(acked.values())


def test_sigkill_mid_stream_loses_no_acknowledged_write(sql_backend: Backend) -> None:
    assert _crash_once(sql_backend, 1) >= 40


@pytest.mark.slow
@pytest.mark.parametrize("run", range(20))
def test_sigkill_mid_stream_20_runs(sql_backend: Backend, run: int) -> None:
    assert _crash_once(sql_backend, 100 + run) >= 40
