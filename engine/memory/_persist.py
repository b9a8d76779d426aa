"""Crash-safe persistence of a VectorStore: one SQLite file holding the FAISS index bytes,
the per-slot arrays (with SHA-256 checksums) and the metadata rows. The catalog and the
indexes serialise themselves (``dump``/``restore``); this module owns the file.

Written to a temporary file in the target directory, fsynced, renamed over the target and
the directory fsynced: a crash leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CorruptFileError, VectorStoreError
from engine.memory._catalog import Catalog
from engine.memory._indexes import Indexes

__all__ = ["FORMAT", "Saved", "check_meta", "read", "save"]

FORMAT = "agent-engine.vectorstore"
VERSION = 1


def check_meta(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validate one metadata entry: a JSON-serialisable mapping with str keys (or None)."""
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise VectorStoreError(f"metadata entries must be mappings, got {type(meta).__name__}")
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise VectorStoreError(f"metadata must be JSON-serialisable: {exc}") from exc
    if not all(isinstance(k, str) for k in meta):
        raise VectorStoreError("metadata keys must be str")
    return dict(meta)


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(path: Path, config: Mapping[str, Any], catalog: Catalog, indexes: Indexes) -> None:
    """Write a store (its constructor ``config``, ``catalog`` and ``indexes``) to ``path``."""
    path = path.resolve()
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    cat_sections, meta, names = catalog.dump()
    index_sections, index_info = indexes.dump()
    blobs = {**cat_sections, **index_sections}
    info = {"format": FORMAT, "version": VERSION, **config, "n": catalog.n, **index_info}
    try:
        con = sqlite3.connect(tmp)
        try:
            con.execute("PRAGMA journal_mode=OFF")
            con.execute("PRAGMA synchronous=OFF")
            con.execute("CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            con.execute("CREATE TABLE blobs (name TEXT PRIMARY KEY, data BLOB, sha256 TEXT)")
            con.execute("CREATE TABLE meta (slot INTEGER PRIMARY KEY, json TEXT NOT NULL)")
            con.execute("CREATE TABLE namespaces (code INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            con.execute("INSERT INTO info VALUES ('store', ?)", (json.dumps(info),))
            con.executemany(
                "INSERT INTO blobs VALUES (?, ?, ?)",
                [(k, v, hashlib.sha256(v).hexdigest()) for k, v in blobs.items()],
            )
            con.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [(s, json.dumps(m)) for s, m in meta.items()],
            )
            con.executemany("INSERT INTO namespaces VALUES (?, ?)", list(enumerate(names)))
            con.commit()
        finally:
            con.close()
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _read(path: Path) -> tuple[dict[str, Any], dict[str, bytes], dict[int, Any], list[str]]:
    if not path.exists():
        raise FileNotFoundError(f"no vector store at {path}")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT value FROM info WHERE key = 'store'").fetchone()
            if row is None:
                raise CorruptFileError(f"{path}: not a vector store (no info row)")
            info = json.loads(row[0])
            blobs: dict[str, bytes] = {}
            for name, data, digest in con.execute("SELECT name, data, sha256 FROM blobs"):
                data = bytes(data or b"")
                if hashlib.sha256(data).hexdigest() != digest:
                    raise CorruptFileError(f"{path}: checksum mismatch in {name!r}")
                blobs[name] = data
            meta = {int(s): json.loads(j) for s, j in con.execute("SELECT slot, json FROM meta")}
            names = [n for _, n in con.execute("SELECT code, name FROM namespaces ORDER BY code")]
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise CorruptFileError(f"{path}: not a readable vector store ({exc})") from exc
    except (ValueError, TypeError) as exc:
        raise CorruptFileError(f"{path}: malformed store ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CorruptFileError(f"{path}: not a vector store file")
    if info.get("version") != VERSION:
        raise CorruptFileError(f"{path}: unsupported store version {info.get('version')!r}")
    missing = {*Catalog.SECTIONS, *Indexes.SECTIONS} - blobs.keys()
    if missing:
        raise CorruptFileError(f"{path}: missing sections {sorted(missing)}")
    return info, blobs, meta, names


@dataclass
class Saved:
    """What :func:`read` found in a file: the constructor arguments, then the parts."""

    config: dict[str, Any]
    n: int
    sections: dict[str, bytes]
    meta: dict[int, Any]
    names: list[str]
    index_info: dict[str, Any]


def read(path: Path) -> Saved:
    """Read a file :func:`save` wrote; :class:`CorruptFileError` if it is not one."""
    info, blobs, meta, names = _read(path)
    try:
        config = {
            "dim": int(info["dim"]),
            "metric": info["metric"],
            "index": info["index"],
            "target_recall": float(info["target_recall"]),
            "promote_at": int(info["promote_at"]),
            "exact_below": int(info["exact_below"]),
            "seed": int(info["seed"]),
        }
        index_info = {"main_n": int(info["main_n"]), "main": info["main"]}
        return Saved(config, int(info["n"]), blobs, meta, names, index_info)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: malformed store ({exc})") from exc
