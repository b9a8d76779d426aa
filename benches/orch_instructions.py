"""Instructions per subtask of the orchestration benchmark's engine job, under callgrind.

Deterministic (unlike wall-clock figures on a shared machine): a warm-up job, then ``K``
jobs between two ``os.sched_yield`` markers, so callgrind's second dump holds exactly them.

    valgrind --tool=callgrind --dump-before=sched_yield --callgrind-out-file=cg.out \\
        .venv/bin/python benches/orch_instructions.py   # env: N=1000 K=2 URL=sqlite|memory
    grep totals: cg.out.2    # / (K * N) = instructions per subtask

Syscalls (the SQLite store's writes) are not instructions; PYTHONHASHSEED=0 makes reruns
give the same counts.

``WAL=1`` counts instead (no valgrind) the SQLite pages each commit of ``K`` jobs writes,
by table or index: every WAL frame's page number mapped through SQLite's ``dbstat`` table.

    WAL=1 N=100 K=5 .venv/bin/python benches/orch_instructions.py
"""

from __future__ import annotations

import gc
import os
import struct
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_orchestration import _engine

import engine.store.sqlite as sqlite_store

N = int(os.environ.get("N", "1000"))
K = int(os.environ.get("K", "2"))
URL = os.environ.get("URL", "sqlite")


async def main(tmp: str) -> None:
    url = f"sqlite:///{tmp}/e.db" if URL == "sqlite" else "memory://"
    async with _engine(url, N) as run:
        await run()
        await run()
        os.sched_yield()  # callgrind dumps here: what follows is part 2
        for _ in range(K):
            await run()
        os.sched_yield()


async def wal_pages(tmp: str) -> None:
    """Pages written per commit, by table or index, over ``K`` jobs after 30 warm-ups."""
    sqlite_store.CHECKPOINT_EVERY = 1 << 30  # nothing copies the WAL back meanwhile
    async with _engine(f"sqlite:///{tmp}/e.db", N) as run:
        store: Any = next(o for o in gc.get_objects() if type(o) is sqlite_store.SQLiteStore)
        for _ in range(30):
            await run()
        await store.flush()
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        commits = store._commits
        for _ in range(K):
            await run()
        commits = store._commits - commits
        owner = {p: f"{name} {kind}" for name, p, kind in store._conn.execute(
            "SELECT name, pageno, pagetype FROM dbstat")}  # fmt: skip
        wal = Path(f"{tmp}/e.db-wal").read_bytes()
        size = struct.unpack(">I", wal[8:12])[0]
        pages = Counter(
            owner.get(struct.unpack(">I", wal[i : i + 4])[0], "?")
            for i in range(32, len(wal) - size - 23, size + 24)
        )
        print(f"{commits} commits, {sum(pages.values()) / commits:.2f} pages per commit")
        for name, n in pages.most_common():
            print(f"  {name:48} {n / commits:.2f}")


if __name__ == "__main__":
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        uvloop.run(wal_pages(tmp) if os.environ.get("WAL") else main(tmp))
