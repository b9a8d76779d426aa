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
thread, one call at a time (``engine.store._lane``). A saver opened from a PostgreSQL URL
commits pending writes through a second store on the same URL (its own connection), so a
step's checkpoint never waits behind the writes LangGraph saves beside it; on SQLite, which
lets one connection write at a time anyway, both go through one connection.
Implemented: every base capability plus ``copy_thread`` and ``prune``. Not implemented:
``delete_for_runs`` and ``list(None)`` (listing across all threads).
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
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

from engine.errors import StoreConflict
from engine.store import Checkpoint as StoredCheckpoint
from engine.store import LedgerEntry, Store
from engine.store._lane import Lane
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


class _Put(msgspec.Struct, gc=False):
    """A checkpoint serialized for the store."""

    thread: str
    ns: str
    checkpoint_id: str
    blob: bytes
    meta: bytes


_enc = msgspec.msgpack.Encoder()
_meta_dec = msgspec.msgpack.Decoder(_Meta)
_write_dec = msgspec.msgpack.Decoder(_Write)


def _name(ns: str, checkpoint_id: str) -> str:
    return f"{ns}{SEP}{checkpoint_id}"


def _conf(config: RunnableConfig) -> tuple[str, str, str | None]:
    c = config["configurable"]
    return str(c["thread_id"]), str(c.get("checkpoint_ns", "")), c.get("checkpoint_id")


async def _opened(store: Store) -> None:
    """Nothing to do: reaching here opened the store."""


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
            url = parse_url(store)  # a bad URL fails here, not at the first checkpoint
            self._lane = Lane(store, None, options)
            # PERF: a task's pending writes commit on a connection of their own (a second
            # store on the same URL), so the step's checkpoint, which LangGraph waits for,
            # no longer queues behind them: the sync graph on PostgreSQL went from 351-437
            # to 469-480 checkpoints/s (best of 4 interleaved runs of benches/bench_store.py's
            # graph at a load of 6; PostgresSaver 187-211). Not on SQLite: a write on one
            # connection makes the other drop its page cache at its next transaction, and
            # SQLite lets one connection write at a time anyway; one connection there cut
            # the sync graph's saver CPU from ~700 to ~600 us per step (thread CPU time of
            # the graph's put/put_writes calls replayed in one thread) and the async
            # graph's CPU too. Two memory:// stores share nothing: one store serves both.
            self._writes_lane = (
                Lane(store, None, options) if url.kind == "postgresql" else self._lane
            )
        else:
            self._lane = self._writes_lane = Lane(None, store, options)
        self._versions: OrderedDict[str, int] = OrderedDict()

    def _run(self, fn: Callable[[Store], Awaitable[T]]) -> Awaitable[T]:
        return self._lane.run(fn)

    def _sync(self, fn: Callable[[Store], Awaitable[T]]) -> T:
        return self._lane.sync(fn)

    # -- lifecycle -----------------------------------------------------------------------

    def setup(self) -> None:
        """Open the store now (creating or migrating its schema), as LangGraph's own savers'
        ``setup()`` does; optional: otherwise the first call opens it."""
        self._sync(_opened)
        self._writes_lane.sync(_opened)

    async def asetup(self) -> None:
        """``setup()`` for async code."""
        await self._run(_opened)
        await self._writes_lane.run(_opened)

    async def aclose(self) -> None:
        """Commit and close the store this saver opened (an open ``Store`` given to it is
        left to its owner)."""
        if self._writes_lane is not self._lane:
            await self._writes_lane.aclose()
        await self._lane.aclose()

    def close(self) -> None:
        """``aclose()`` for sync code."""
        if self._writes_lane is not self._lane:
            self._writes_lane.close()
        self._lane.close()

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
        put = self._encode_put(config, checkpoint, metadata)
        return await self._run(lambda s: self._put(s, put))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        job, entries = self._encode_writes(config, writes, task_id, task_path)
        await self._writes_lane.run(lambda s: s.append_ledger(job, entries))

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
        put = self._encode_put(config, checkpoint, metadata)
        return self._sync(lambda s: self._put(s, put))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        job, entries = self._encode_writes(config, writes, task_id, task_path)
        self._writes_lane.sync(lambda s: s.append_ledger(job, entries))

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

    def _encode_put(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata
    ) -> _Put:
        """Serialize a checkpoint (pure CPU, in the caller's thread: PERF, a sync put's
        serialization then overlaps the store's round trip for the step's put_writes
        instead of queueing behind it, benches/bench_store.py's sync graph)."""
        thread, ns, parent = _conf(config)
        type_, blob = self.serde.dumps_typed(checkpoint)
        md = orjson.dumps(
            get_checkpoint_metadata(config, metadata),
            default=str,
            option=orjson.OPT_NON_STR_KEYS,
        )
        meta = _enc.encode(_Meta(ns, checkpoint["id"], parent, type_, md))
        return _Put(thread, ns, checkpoint["id"], blob, meta)

    async def _put(self, store: Store, put: _Put) -> RunnableConfig:
        job = PREFIX + put.thread
        name = _name(put.ns, put.checkpoint_id)
        for attempt in range(3):
            try:
                await store.put_checkpoint(
                    job, self._next_version(job), put.blob, meta=put.meta, name=name
                )
                break
            except StoreConflict:
                if attempt == 2:
                    raise
                old = await store.get_checkpoint(job, name=name)
                if old is not None:  # the same checkpoint again: it replaces the old one
                    await store.delete_checkpoints(job, [old.version])
                latest = await store.list_checkpoints(job, limit=1)
                self._next_version(job, latest[0].version + 1 if latest else 0)
        return {"configurable": {"thread_id": put.thread, "checkpoint_ns": put.ns,
                                 "checkpoint_id": put.checkpoint_id}}  # fmt: skip

    def _encode_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> tuple[str, builtins.list[LedgerEntry]]:
        """A task's writes as ledger entries of the thread's job (pure CPU)."""
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
        return PREFIX + thread, entries

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
