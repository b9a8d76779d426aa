"""Which checkpoints are stored whole and which as a delta (chains with a bounded length).

Per job the codec remembers the last state it stored and where its chain started. A new
state is stored as a delta against that last state when the delta is at most
:data:`DELTA_RATIO` of the state's size, the chain holds fewer than :data:`MAX_CHAIN`
deltas and all its deltas together stay under the state's size; otherwise it is stored
whole and starts a new chain. Reading a checkpoint scans its chain (one range query) and
applies at most ``MAX_CHAIN`` deltas. A job the codec does not remember (the first write
after opening, eviction, a failed write) is stored whole. Memory is bounded: the least
recently written jobs are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict

from engine.store._delta import make_delta

__all__ = ["DELTA_RATIO", "MAX_CHAIN", "CheckpointCodec"]

DELTA_RATIO = 0.5
# PERF: 64 keeps a 1,000-step ledger job at ~3 KB/checkpoint (benches/bench_store.py); reads
# of the latest checkpoint then apply up to 64 deltas of a few hundred bytes.
MAX_CHAIN = 64
MIN_DELTA_STATE = 256  # smaller states are always stored whole: nothing to win
MAX_JOBS = 4096
MAX_BYTES = 64 * 1024 * 1024


class _Chain:
    __slots__ = ("base", "length", "prev", "size", "state")

    def __init__(self, version: int, state: bytes) -> None:
        self.base = version
        self.prev = version
        self.state = state
        self.length = 0
        self.size = 0


class CheckpointCodec:
    """Chooses, per checkpoint: (chain base, previous version, delta) or whole."""

    def __init__(
        self,
        enabled: bool,
        ratio: float = DELTA_RATIO,
        max_chain: int = MAX_CHAIN,
        max_jobs: int = MAX_JOBS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.enabled = enabled
        self.ratio = ratio
        self.max_chain = max_chain
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self._chains: OrderedDict[str, _Chain] = OrderedDict()
        self._bytes = 0

    def encode(self, job_id: str, version: int, state: bytes) -> tuple[int, int, bytes | None]:
        """``(base, prev, delta)``, or ``(0, 0, None)`` when ``state`` is stored whole."""
        chain = self._chains.get(job_id) if self.enabled else None
        if (
            chain is not None
            and len(state) >= MIN_DELTA_STATE
            and chain.length < self.max_chain
            and chain.size < len(state)
        ):
            delta = make_delta(
                chain.state, state, min(int(len(state) * self.ratio), len(state) - chain.size)
            )
            if delta is not None:
                self._chains.move_to_end(job_id)
                base, prev = chain.base, chain.prev
                self._bytes += len(state) - len(chain.state)
                chain.prev, chain.state = version, state
                chain.length += 1
                chain.size += len(delta)
                self._bound()
                return base, prev, delta
        self.stored_full(job_id, version, state)
        return 0, 0, None

    def stored_full(self, job_id: str, version: int, state: bytes) -> None:
        """Start the job's chain at ``state`` (it was stored whole)."""
        if not self.enabled:
            return
        self.forget(job_id)
        if len(state) > self.max_bytes // 4:
            return  # too large to keep around: the next state is stored whole too
        self._chains[job_id] = _Chain(version, state)
        self._bytes += len(state)
        self._bound()

    def forget(self, job_id: str) -> None:
        chain = self._chains.pop(job_id, None)
        if chain is not None:
            self._bytes -= len(chain.state)

    def _bound(self) -> None:
        while self._chains and (len(self._chains) > self.max_jobs or self._bytes > self.max_bytes):
            _, old = self._chains.popitem(last=False)
            self._bytes -= len(old.state)
