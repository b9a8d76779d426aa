"""Placeholder while the SQL stores are written on this branch (see issue 15)."""

from __future__ import annotations

from collections.abc import Callable

from engine.errors import StoreError
from engine.store._url import StoreURL
from engine.store.base import Store, StoreOptions


class PostgresStore:
    @classmethod
    async def connect(
        cls,
        url: StoreURL,
        options: StoreOptions,
        clock: Callable[[], float],
        *,
        create: bool,
        migrate: bool,
    ) -> Store:
        raise StoreError("postgres stores are not written yet on this branch")
