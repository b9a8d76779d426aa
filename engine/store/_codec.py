"""Which checkpoints are stored whole and which as a delta (keyframes).

Per job the codec remembers the last state it stored whole (the *base*). A new state is
stored as a delta against that base when the delta is at most :data:`DELTA_RATIO` of the
state's size; otherwise it is stored whole and becomes the new base. So reading any
checkpoint costs at most two rows (base + delta), and deleting one never rewrites others.
A job the codec does not remember (first write after opening, cache eviction) is stored
whole. The memory is bounded: the least recently written jobs are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict

from engine.store._delta import make_delta

__all__ = ["DELTA_RATIO", "CheckpointCodec"]

# PERF: 0.5 keeps appends as deltas for ~2x the state's growth between full copies
# (benches/bench_store.py::test_delta_ratio measures 0.1-0.5 on the ledger workload).
DELTA_RATIO = 0.5
MIN_DELTA_STATE = 256  # smaller states are always stored whole: nothing to win
MAX_JOBS = 4096
MAX_BYTES = 64 * 1024 * 1024


class CheckpointCodec:
    """Chooses (base version, stored bytes) for each checkpoint of each job."""

    def __init__(
        self,
        enabled: bool,
        ratio: float = DELTA_RATIO,
        max_jobs: int = MAX_JOBS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.enabled = enabled
        self.ratio = ratio
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self._bases: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._bytes = 0

    def encode(self, job_id: str, version: int, state: bytes) -> tuple[int, bytes | None]:
        """``(base_version, delta)``, or ``(0, None)`` when ``state`` is to be stored whole."""
        if self.enabled and len(state) >= MIN_DELTA_STATE:
            known = self._bases.get(job_id)
            if known is not None:
                self._bases.move_to_end(job_id)
                delta = make_delta(known[1], state, int(len(state) * self.ratio))
                if delta is not None:
                    return known[0], delta
        self.stored_full(job_id, version, state)
        return 0, None

    def stored_full(self, job_id: str, version: int, state: bytes) -> None:
        """Remember ``state`` as the job's base (it was stored whole)."""
        if not self.enabled:
            return
        self.forget(job_id)
        if len(state) > self.max_bytes // 4:
            return  # too large to keep around: the next state is stored whole too
        self._bases[job_id] = (version, state)
        self._bytes += len(state)
        while len(self._bases) > self.max_jobs or self._bytes > self.max_bytes:
            _, (_, old) = self._bases.popitem(last=False)
            self._bytes -= len(old)

    def forget(self, job_id: str) -> None:
        known = self._bases.pop(job_id, None)
        if known is not None:
            self._bytes -= len(known[1])
