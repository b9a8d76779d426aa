"""Instructions per subtask of the orchestration benchmark's engine job, under callgrind.

Deterministic (unlike wall-clock figures on a shared machine): a warm-up job, then ``K``
jobs between two ``os.sched_yield`` markers, so callgrind's second dump holds exactly them.

    valgrind --tool=callgrind --dump-before=sched_yield --callgrind-out-file=cg.out \\
        .venv/bin/python benches/orch_instructions.py   # env: N=1000 K=2 URL=sqlite|memory
    grep totals: cg.out.2    # / (K * N) = instructions per subtask

Syscalls (the SQLite store's writes) are not instructions; PYTHONHASHSEED=0 makes reruns
give the same counts.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_orchestration import _engine

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


if __name__ == "__main__":
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        uvloop.run(main(tmp))
