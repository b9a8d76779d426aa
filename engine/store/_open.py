"""``engine.store.open(url)``: await it for a store, or use it as ``async with``."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any

from engine.errors import StoreInputError
from engine.store._url import parse_url
from engine.store.base import Store, StoreOptions

__all__ = ["migrate", "open"]


async def _open(
    url: str,
    create: bool,
    migrate: bool,
    clock: Callable[[], float],
    options: StoreOptions,
) -> Store:
    parsed = parse_url(url)
    if parsed.kind == "memory":
        from engine.store.memory import MemoryStore

        return MemoryStore("memory://", options, clock)
    if parsed.kind == "sqlite":
        from engine.store.sqlite import SQLiteStore

        return await SQLiteStore.connect(parsed, options, clock, create=create, migrate=migrate)
    from engine.store.postgres import PostgresStore

    return await PostgresStore.connect(parsed, options, clock, create=create, migrate=migrate)


class _Opening:
    """What :func:`open` returns: awaitable, and an async context manager that closes."""

    def __init__(self, coro_args: tuple[Any, ...]) -> None:
        self._args = coro_args
        self._store: Store | None = None

    def __await__(self) -> Generator[Any, None, Store]:
        return _open(*self._args).__await__()

    async def __aenter__(self) -> Store:
        self._store = await _open(*self._args)
        return self._store

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._store is not None:
            await self._store.close()


def open(
    url: str,
    *,
    create: bool = True,
    migrate: bool = True,
    clock: Callable[[], float] | None = None,
    **options: Any,
) -> _Opening:
    """Open the store at ``url``: ``store = await open(url)`` or ``async with open(url) as s``.

    - ``create=False`` opens an existing store only: a missing SQLite file, or a
      PostgreSQL database without the engine's tables, raises ``StoreNotFound`` (what
      read-only commands use); an older schema raises ``SchemaVersionError`` then.
    - ``migrate=False`` refuses a store whose schema is older than this code instead of
      migrating it (``engine store migrate URL`` does it explicitly).
    - ``clock``: where times come from (``time.time``); tests pass a fake one.
    - ``options``: the fields of :class:`StoreOptions` (``durability="batch"``,
      ``keep_checkpoints=10``...).

    A schema newer than this code always raises ``SchemaVersionError``; an unknown
    scheme raises ``StoreURLError``.
    """
    try:
        opts = StoreOptions(**options)
    except TypeError as exc:
        raise StoreInputError(f"unknown store option: {exc}") from None
    parse_url(url)  # a bad URL fails here, before anything is awaited
    return _Opening((url, bool(create), bool(migrate) and bool(create), clock or time.time, opts))


async def migrate(url: str) -> tuple[int, int]:
    """Create or migrate the store at ``url`` to this code's schema: ``(before, after)``.

    ``before`` is 0 for a store that did not exist. A newer schema raises
    ``SchemaVersionError``. What ``engine store migrate URL`` runs.
    """
    from engine.store.migrations import LATEST

    store = await open(url)
    try:
        before = int(getattr(store, "schema_before", LATEST))
        return before, await store.schema_version()
    finally:
        await store.close()
