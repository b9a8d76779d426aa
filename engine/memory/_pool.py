"""The threads that split a large batch of vector-store queries, and their owner.

One pool per process serves every store: each worker runs FAISS on one OpenMP thread, and
the batch is cut into more parts than workers so that a descheduled thread holds little
back. Dynamic scheduling beats OpenMP's static split on a shared machine, 2-4x batch QPS
(benches/memory_table.py, 2026-11).

:data:`search_pool` owns the threads: they start on the first large batch, stop with
:meth:`SearchPool.shutdown` (also at interpreter exit), and start again on the next batch.
A forked child drops its parent's pool (threads do not survive ``fork``) and makes its own.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import faiss

__all__ = ["SearchPool", "search_pool"]

T = TypeVar("T")
R = TypeVar("R")


class SearchPool:
    """A lazily started thread pool with an explicit shutdown (see the module doc)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        """True while the worker threads exist (between a batch and :meth:`shutdown`)."""
        return self._executor is not None

    def map(self, fn: Callable[[T], R], parts: Sequence[T]) -> list[R]:
        """``[fn(p) for p in parts]``, run on the pool's threads; the first error re-raised."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.workers,
                    thread_name_prefix="vectorstore-search",
                    initializer=faiss.omp_set_num_threads,
                    initargs=(1,),
                )
            futures = [self._executor.submit(fn, p) for p in parts]
        return [f.result() for f in futures]

    def shutdown(self, wait: bool = True) -> None:
        """Stop the threads (after the batches in flight when ``wait``); the next batch
        starts new ones."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait)

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's threads are not here; start afresh."""
        self._executor = None
        self._lock = threading.Lock()


#: The pool every :class:`~engine.memory.VectorStore` in this process shares.
search_pool = SearchPool()
atexit.register(search_pool.shutdown)
os.register_at_fork(after_in_child=search_pool.reset_after_fork)
