"""The process the crash test SIGKILLs: a stream of checkpoint writes under ``commit``.

``python -m tests.store.crash_child URL`` runs four writer tasks (so commits are grouped),
each appending a ledger entry and putting a growing checkpoint per step, and prints
``JOB VERSION`` after each write is acknowledged. It never stops on its own.
"""

from __future__ import annotations

import asyncio
import sys

import msgspec

import engine.store
from engine.store import LedgerEntry

WRITERS = 4


def state(job: str, version: int) -> bytes:
    """The checkpoint a job has at ``version`` (the parent recomputes it to compare)."""
    entries = [{"step": i, "job": job, "note": "n" * 30} for i in range(1, version + 1)]
    return msgspec.msgpack.encode({"version": version, "ledger": entries})


async def writer(store: engine.store.Store, job: str) -> None:
    version = 0
    while True:
        version += 1
        await store.append_ledger(job, [LedgerEntry(id=f"s{version}", data=b"%d" % version)])
        await store.put_checkpoint(job, version, state(job, version))
        sys.stdout.write(f"{job} {version}\n")
        sys.stdout.flush()


async def main(url: str) -> None:
    store = await engine.store.open(url, durability="commit", keep_checkpoints=None)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.gather(*[writer(store, f"job{i}") for i in range(WRITERS)])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
