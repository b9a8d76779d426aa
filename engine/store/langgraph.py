"""``EngineSaver``: LangGraph's checkpointer interface on this store.

Swap one line: ``graph.compile(checkpointer=EngineSaver("sqlite:///graph.db"))`` (or
``postgresql://...``, or an open :class:`~engine.store.Store`) and the graph's checkpoints
get the store's group commit, deltas, retention and PostgreSQL support. Needs the
``langgraph`` extra: ``pip install 'agent-engine-runtime[langgraph]'``.

How LangGraph's records map onto the store:

- a thread is the job ``langgraph:<thread_id>``; a checkpoint is one store checkpoint named
  ``<checkpoint_ns>\\x1f<checkpoint_id>``, its version a per-thread increasing number, its
  state the serializer's bytes (so consecutive checkpoints are stored as deltas);
- pending writes are ledger entries of that job, in the ledger named like the checkpoint;
  regular writes are idempotent by (checkpoint, task, index) as in LangGraph's savers.

Both the async methods and the sync ones work: the async ones run on the event loop that
first uses the saver (direct calls, no thread hop); sync calls from another thread hop onto
that loop; a saver first used synchronously runs a private event loop in the calling
thread, one call at a time.
Implemented: every base capability plus ``copy_thread`` and ``prune``. Not implemented:
``delete_for_runs`` and ``list(None)`` (listing across all threads).
"""

from __future__ import annotations

import asyncio
import builtins
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import msgspec
import orjson
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

import engine.store
from engine.errors import StoreClosed, StoreConflict
from engine.store import Checkpoint as StoredCheckpoint
from engine.store import LedgerEntry, Store
from engine.store._url import parse_url

__all__ = ["EngineSaver"]

T = TypeVar("T")
PREFIX = "langgraph:"
SEP = "\x1f"
PAGE = 64
MAX_THREADS_CACHED = 10_000


class _Meta(msgspec.Struct, array_like=True, gc=False):
    ns: str
    id: str
    parent: str | None
    type: str
    metadata: bytes  # JSON, as LangGraph's own savers keep it


class _Write(msgspec.Struct, array_like=True, gc=False):
    task_id: str
    task_path: str
    idx: int
    channel: str
    type: str
    value: bytes


_enc = msgspec.msgpack.Encoder()
_meta_dec = msgspec.msgpack.Decoder(_Meta)
_write_dec = msgspec.msgpack.Decoder(_Write)


def _name(ns: str, checkpoint_id: str) -> str:
    return f"{ns}{SEP}{checkpoint_id}"


def _conf(config: RunnableConfig) -> tuple[str, str, str | None]:
    c = config["configurable"]
    return str(c["thread_id"]), str(c.get("checkpoint_ns", "")), c.get("checkpoint_id")


def _run_here(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the saver's private loop in this thread.

    PERF: a SQLite operation completes without suspending, so the coroutine is first
    stepped directly with ``loop`` set as the running loop: ``run_until_complete`` costs
    ~0.1 ms per call (a task and a loop iteration), as much as the operation itself
    (benches/bench_store.py, the sync graph). When the coroutine does suspend (PostgreSQL,
    a busy queue), the loop finishes it.
    """
    asyncio.events._set_running_loop(loop)
    try:
        try:
            waiting = coro.send(None)
        except StopIteration as stop:
            result: T = stop.value
            return result
    finally:
        asyncio.events._set_running_loop(None)
    return loop.run_until_complete(_resume(coro, waiting))


async def _resume(coro: Coroutine[Any, Any, T], waiting: Any) -> T:
    """Step a coroutine that suspended on ``waiting`` (a future, or None) to its end."""
    while True:
        error: BaseException | None = None
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:  # what a task does with a yielded future: take over its blocking flag
                waiting._asyncio_future_blocking = False
                await waiting
        except BaseException as exc:  # handed to the coroutine, as a task would
            error = exc
        try:
            waiting = coro.send(None) if error is None else coro.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result


class EngineSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer on an engine store (a URL, or an open ``Store``).

    ``options`` go to :func:`engine.store.open` when a URL is given (``durability``,
    ``keep_checkpoints`` ...). Close it (``close()``/``aclose()`` or ``with``/``async with``)
    to commit and release what it opened.
    """

    def __init__(
        self,
        store: str | Store,
        *,
        serde: SerializerProtocol | None = None,
        **options: Any,
    ) -> None:
        super().__init__(serde=serde)
        if isinstance(store, str):
            parse_url(store)  # a bad URL fails here, not at the first checkpoint
            self._url: str | None = store
            self._store: Store | None = None
        else:
            self._url = None
            self._store = store
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Future[Store] | None = None
        self._private = False  # the loop is the saver's own (first use was synchronous)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one synchronous call at a time on that loop
        self._versions: OrderedDict[str, int] = OrderedDict()

    # -- where the store lives -----------------------------------------------------------

    async def _bound(self) -> Store:
        """The store, opened on the running loop (the loop this saver is bound to)."""
        if self._store is not None:
            return self._store
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_future()
            try:
                assert self._url is not None
                store = await engine.store.open(self._url, **self._options)
            except BaseException as exc:
                self._opening.set_exception(exc)
                self._opening = None
                raise
            self._store = store
            self._opening.set_result(store)
            return store
        return await asyncio.shield(self._opening)

    async def _run(self, fn: Callable[[Store], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._loop is None:
                self._loop = loop
        if self._loop is loop:
            return await fn(await self._bound())
        home = self._loop
        if not home.is_running():
            raise StoreClosed("EngineSaver: the event loop its store lives on has stopped")
        inner = asyncio.run_coroutine_threadsafe(self._on_home(fn), home)
        return await asyncio.wrap_future(inner)

    async def _on_home(self, fn: Callable[[Store], Awaitable[T]]) -> T:
        return await fn(await self._bound())

    def _sync(self, fn: Callable[[Store], Awaitable[T]]) -> T:
        with self._lock:
            if self._loop is None:  # first used synchronously: a private loop, run per call
                self._loop = asyncio.new_event_loop()
                self._private = True
        home = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is home:
            raise RuntimeError(
                "EngineSaver: called synchronously inside the event loop that owns its store; "
                "use the async API there (ainvoke/astream, aget_tuple...)"
            )
        if self._private:
            if running is not None:
                raise RuntimeError(
                    "EngineSaver: a saver first used synchronously cannot be called "
                    "synchronously from inside another event loop; use one saver per loop"
                )
            with self._sync_lock:
                return _run_here(home, self._on_home(fn))
        if not home.is_running():
            raise StoreClosed("EngineSaver: the event loop its store lives on has stopped")
        return asyncio.run_coroutine_threadsafe(self._on_home(fn), home).result()

    # -- lifecycle -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Commit and close the store this saver opened (an open ``Store`` given to it is
        left to its owner)."""
        if self._loop is None:
            return
        if self._private:
            self.close()  # its private loop is not running: close synchronously
            return
        store, self._store = (self._store, None) if self._url is not None else (None, None)
        if store is not None:
            if self._loop is asyncio.get_running_loop():
                await store.close()
            elif self._loop.is_running():
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(store.close(), self._loop)
                )
        self._loop = None
        self._opening = None

    def close(self) -> None:
        """``aclose()`` for sync code."""
        loop = self._loop
        if loop is None:
            return
        store, self._store = (self._store, None) if self._url is not None else (None, None)
        if self._private:
            with self._sync_lock:
                if store is not None:
                    loop.run_until_complete(store.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
        elif store is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(store.close(), loop).result()
        self._loop = None
        self._private = False
        self._opening = None

    def __enter__(self) -> EngineSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> EngineSaver:
        return self

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the async methods ---------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._run(lambda s: self._get_tuple(s, config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for tup in await self._run(lambda s: self._list(s, config, filter, before, limit)):
            yield tup

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._run(lambda s: self._put(s, config, checkpoint, metadata))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._run(lambda s: self._put_writes(s, config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run(lambda s: self._delete_thread(s, str(thread_id)))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._run(lambda s: self._copy_thread(s, source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._run(lambda s: self._prune(s, thread_ids, strategy))

    # -- the sync methods ----------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._sync(lambda s: self._get_tuple(s, config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        yield from self._sync(lambda s: self._list(s, config, filter, before, limit))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._sync(lambda s: self._put(s, config, checkpoint, metadata))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._sync(lambda s: self._put_writes(s, config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._sync(lambda s: self._delete_thread(s, str(thread_id)))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._sync(lambda s: self._copy_thread(s, source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._sync(lambda s: self._prune(s, thread_ids, strategy))

    # -- the work, on the store's loop ---------------------------------------------------

    def _next_version(self, job: str, at_least: int = 0) -> int:
        """Versions follow the clock (microseconds), so no read is needed to pick one."""
        last = self._versions.pop(job, 0)
        version = max(time.time_ns() // 1000, last + 1, at_least)
        self._versions[job] = version
        if len(self._versions) > MAX_THREADS_CACHED:
            self._versions.popitem(last=False)
        return version

    async def _put(
        self,
        store: Store,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
    ) -> RunnableConfig:
        thread, ns, parent = _conf(config)
        job = PREFIX + thread
        type_, blob = self.serde.dumps_typed(checkpoint)
        md = orjson.dumps(
            get_checkpoint_metadata(config, metadata),
            default=str,
            option=orjson.OPT_NON_STR_KEYS,
        )
        meta = _enc.encode(_Meta(ns, checkpoint["id"], parent, type_, md))
        name = _name(ns, checkpoint["id"])
        for attempt in range(3):
            try:
                await store.put_checkpoint(job, self._next_version(job), blob, meta=meta, name=name)
                break
            except StoreConflict:
                if attempt == 2:
                    raise
                old = await store.get_checkpoint(job, name=name)
                if old is not None:  # the same checkpoint again: it replaces the old one
                    await store.delete_checkpoints(job, [old.version])
                latest = await store.list_checkpoints(job, limit=1)
                self._next_version(job, latest[0].version + 1 if latest else 0)
        return {"configurable": {"thread_id": thread, "checkpoint_ns": ns,
                                 "checkpoint_id": checkpoint["id"]}}  # fmt: skip

    async def _put_writes(
        self,
        store: Store,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> None:
        thread, ns, checkpoint_id = _conf(config)
        if checkpoint_id is None:
            raise ValueError("put_writes needs a config with a checkpoint_id")
        replace = all(w[0] in WRITES_IDX_MAP for w in writes)
        suffix = SEP + uuid.uuid4().hex if replace else ""  # later special writes win
        entries = []
        for idx, (channel, value) in enumerate(writes):
            i = WRITES_IDX_MAP.get(channel, idx)
            type_, blob = self.serde.dumps_typed(value)
            entries.append(
                LedgerEntry(
                    id=f"{checkpoint_id}{SEP}{task_id}{SEP}{i}{suffix}",
                    ledger=_name(ns, checkpoint_id),
                    data=_enc.encode(_Write(task_id, task_path, i, channel, type_, blob)),
                )
            )
        await store.append_ledger(PREFIX + thread, entries)

    async def _writes(
        self, store: Store, job: str, name: str
    ) -> builtins.list[tuple[str, str, Any]]:
        latest: dict[tuple[str, int], _Write] = {}
        for e in await store.read_ledger(job, ledger=name):
            w = _write_dec.decode(e.data)
            latest[(w.task_id, w.idx)] = w  # in append order: a replaced special write wins
        ordered = sorted(latest.values(), key=lambda w: (w.task_path, w.task_id, w.idx))
        return [(w.task_id, w.channel, self.serde.loads_typed((w.type, w.value))) for w in ordered]

    async def _tuple(self, store: Store, thread: str, ck: StoredCheckpoint) -> CheckpointTuple:
        m = _meta_dec.decode(ck.meta)
        config: RunnableConfig = {
            "configurable": {"thread_id": thread, "checkpoint_ns": m.ns, "checkpoint_id": m.id}
        }
        parent: RunnableConfig | None = None
        if m.parent:
            parent = {
                "configurable": {
                    "thread_id": thread,
                    "checkpoint_ns": m.ns,
                    "checkpoint_id": m.parent,
                }
            }
        return CheckpointTuple(
            config,
            self.serde.loads_typed((m.type, ck.state)),
            orjson.loads(m.metadata),
            parent,
            await self._writes(store, PREFIX + thread, ck.name),
        )

    async def _get_tuple(self, store: Store, config: RunnableConfig) -> CheckpointTuple | None:
        thread, ns, checkpoint_id = _conf(config)
        job = PREFIX + thread
        if checkpoint_id:
            ck = await store.get_checkpoint(job, name=_name(ns, checkpoint_id))
            return None if ck is None else await self._tuple(store, thread, ck)
        ck = await store.get_checkpoint(job)  # usually the latest is in the namespace asked
        if ck is not None and _meta_dec.decode(ck.meta).ns != ns:
            ck = None
            before = None
            while ck is None:
                page = await store.list_checkpoints(job, before=before, limit=PAGE)
                hit = next((c for c in page if _meta_dec.decode(c.meta).ns == ns), None)
                if hit is not None:
                    ck = await store.get_checkpoint(job, hit.version)
                elif len(page) < PAGE:
                    return None
                else:
                    before = page[-1].version
        return None if ck is None else await self._tuple(store, thread, ck)

    async def _list(
        self,
        store: Store,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> builtins.list[CheckpointTuple]:
        if config is None:
            raise NotImplementedError("EngineSaver.list needs a config with a thread_id")
        thread = str(config["configurable"]["thread_id"])
        ns = config["configurable"].get("checkpoint_ns")
        only = config["configurable"].get("checkpoint_id")
        before_id = before["configurable"].get("checkpoint_id") if before else None
        job = PREFIX + thread
        out: builtins.list[CheckpointTuple] = []
        cursor = None
        while limit is None or len(out) < limit:
            page = await store.list_checkpoints(job, before=cursor, limit=PAGE, with_state=True)
            for ck in page:
                m = _meta_dec.decode(ck.meta)
                if (ns is not None and m.ns != ns) or (only and m.id != only):
                    continue
                if before_id and not m.id < before_id:
                    continue
                if filter:
                    md = orjson.loads(m.metadata)
                    if any(md.get(k) != v for k, v in filter.items()):
                        continue
                out.append(await self._tuple(store, thread, ck))
                if limit is not None and len(out) >= limit:
                    break
            if len(page) < PAGE:
                break
            cursor = page[-1].version
        return out

    async def _delete_thread(self, store: Store, thread_id: str) -> None:
        self._versions.pop(PREFIX + thread_id, None)
        await store.delete_job(PREFIX + thread_id)

    async def _all(
        self, store: Store, job: str, with_state: bool
    ) -> builtins.list[StoredCheckpoint]:
        out: builtins.list[StoredCheckpoint] = []
        before = None
        while True:
            page = await store.list_checkpoints(
                job, before=before, limit=PAGE, with_state=with_state
            )
            out += page
            if len(page) < PAGE:
                return out
            before = page[-1].version

    async def _copy_thread(self, store: Store, source: str, target: str) -> None:
        src, dst = PREFIX + str(source), PREFIX + str(target)
        for ck in reversed(await self._all(store, src, with_state=True)):
            await store.put_checkpoint(dst, ck.version, ck.state, meta=ck.meta, name=ck.name)
        entries = await store.read_ledger(src)
        for i in range(0, len(entries), 1000):
            await store.append_ledger(dst, [
                LedgerEntry(id=e.id, ledger=e.ledger, data=e.data) for e in entries[i : i + 1000]
            ])  # fmt: skip
        self._versions.pop(dst, None)

    async def _prune(self, store: Store, thread_ids: Sequence[str], strategy: str) -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: keep_latest or delete")
        for thread in thread_ids:
            job = PREFIX + str(thread)
            if strategy == "delete":
                await self._delete_thread(store, str(thread))
                continue
            seen: set[str] = set()
            drop = []
            for ck in await self._all(store, job, with_state=False):  # newest first
                ns = _meta_dec.decode(ck.meta).ns
                if ns in seen:
                    drop.append(ck.version)
                seen.add(ns)
            if drop:
                await store.delete_checkpoints(job, drop)
