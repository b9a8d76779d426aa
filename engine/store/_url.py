"""Store URLs: which implementation, and where.

``memory://``; ``sqlite:///relative.db`` and ``sqlite:////absolute.db`` (SQLAlchemy's
convention: the path is what follows the third slash) or a plain path; ``postgresql://``
(also ``postgres://`` and ``postgresql+psycopg://``) passed to psycopg as a conninfo URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from engine.errors import StoreURLError

__all__ = ["StoreURL", "mask", "parse_url"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SQLITE_PARAMS = {"synchronous": {"normal", "full", "extra"}}


@dataclass(frozen=True)
class StoreURL:
    """A parsed URL: ``kind`` is ``memory``, ``sqlite`` or ``postgresql``."""

    kind: str
    target: str  # the SQLite path, or the PostgreSQL conninfo URL
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str, default: str) -> str:
        return dict(self.params).get(name, default)


def mask(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and ``Store.url``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _sqlite(url: str, rest: str) -> StoreURL:
    path, _, query = rest.partition("?")
    if not path:
        raise StoreURLError(f"store URL {url!r} names no file: use sqlite:///relative.db")
    params = []
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        allowed = _SQLITE_PARAMS.get(key)
        if allowed is None:
            raise StoreURLError(f"unknown SQLite URL parameter {key!r} in {url!r}")
        if value.lower() not in allowed:
            raise StoreURLError(f"{key}={value!r} in {url!r}: expected one of {sorted(allowed)}")
        params.append((key, value.lower()))
    return StoreURL("sqlite", path, tuple(params))


def parse_url(url: object) -> StoreURL:
    """Parse a store URL; anything else raises ``StoreURLError`` naming the problem."""
    if not isinstance(url, str):
        raise StoreURLError(f"a store URL must be a str, got {type(url).__name__}")
    if not url or "\x00" in url:
        raise StoreURLError("a store URL must be a non-empty string without NUL")
    m = _SCHEME.match(url)
    if m is None:  # a plain path
        if url in ("memory:", ":memory:"):
            return StoreURL("memory", "")
        return _sqlite(url, url)
    scheme = m.group(1).lower()
    rest = url[m.end() :]
    if scheme == "memory":
        if rest:
            raise StoreURLError(f"memory:// takes no path, got {url!r}")
        return StoreURL("memory", "")
    if scheme == "sqlite":
        if not rest.startswith("/"):
            raise StoreURLError(
                f"store URL {url!r}: expected sqlite:///relative.db or sqlite:////absolute.db"
            )
        return _sqlite(url, rest[1:])
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return StoreURL("postgresql", "postgresql://" + rest)
    raise StoreURLError(
        f"unsupported store URL scheme {scheme!r} in {mask(url)!r}: "
        "expected memory://, sqlite:///PATH or postgresql://..."
    )
