"""Crash-safe persistence of a VectorStore: one SQLite file holding the FAISS index bytes,
the per-slot arrays (with SHA-256 checksums) and the metadata rows.

Written to a temporary file in the target directory, fsynced, renamed over the target and
the directory fsynced: a crash leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from engine.errors import CorruptFileError, VectorStoreError
from engine.memory import _index

if TYPE_CHECKING:
    from engine.memory.vectors import VectorStore

__all__ = ["FORMAT", "check_meta", "load", "save"]

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


def save(store: VectorStore, path: Path) -> None:
    path = path.resolve()
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    main = store._main
    n = store._n
    blobs: dict[str, bytes] = {
        "ext": store._ext[:n].tobytes(),
        "ns": (
            store._ns[:n].astype(np.int32) if store._ns is not None else np.full(n, -1, np.int32)
        ).tobytes(),
        "expire": (
            store._expire[:n] if store._expire is not None else np.full(n, math.inf)
        ).tobytes(),
        "alive": store._alive[: (n + 7) // 8].tobytes(),
        "fresh": (
            faiss.rev_swig_ptr(store._fresh.get_xb(), store._fresh.ntotal * store.dim).tobytes()
            if store._fresh.ntotal
            else b""
        ),
        "main": faiss.serialize_index(main.index).tobytes() if main is not None else b"",
    }
    info = {
        "format": FORMAT,
        "version": VERSION,
        "dim": store.dim,
        "metric": store.metric,
        "index": store.index_spec,
        "target_recall": store.target_recall,
        "promote_at": store.promote_at,
        "exact_below": store.exact_below,
        "seed": store.seed,
        "n": n,
        "main_n": store._main_n,
        "main": None
        if main is None
        else {
            "kind": main.kind,
            "description": main.description,
            "params": main.params,
            "recall": main.recall,
            "trained_on": main.trained_on,
            "build_seconds": main.build_seconds,
        },
    }
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
                [(s, json.dumps(m)) for s, m in store._meta.items()],
            )
            con.executemany(
                "INSERT INTO namespaces VALUES (?, ?)", list(enumerate(store._ns_names))
            )
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
    missing = {"ext", "ns", "expire", "alive", "fresh", "main"} - blobs.keys()
    if missing:
        raise CorruptFileError(f"{path}: missing sections {sorted(missing)}")
    return info, blobs, meta, names


def load(cls: type[VectorStore], path: Path, *, background: bool = True) -> VectorStore:
    info, blobs, meta, names = _read(path)
    try:
        store = cls(
            int(info["dim"]),
            info["metric"],
            info["index"],
            float(info["target_recall"]),
            promote_at=int(info["promote_at"]),
            exact_below=int(info["exact_below"]),
            background=background,
            seed=int(info["seed"]),
        )
        n, dim = int(info["n"]), store.dim
        ext = np.frombuffer(blobs["ext"], np.int64)
        ns = np.frombuffer(blobs["ns"], np.int32)
        expire = np.frombuffer(blobs["expire"], np.float64)
        alive = np.frombuffer(blobs["alive"], np.uint8)
        fresh = np.frombuffer(blobs["fresh"], np.float32)
        if not (len(ext) == len(ns) == len(expire) == n and len(alive) == (n + 7) // 8):
            raise CorruptFileError(f"{path}: slot arrays disagree with n={n}")
        if len(fresh) % dim or int(info["main_n"]) + len(fresh) // dim != n:
            raise CorruptFileError(f"{path}: fresh vectors disagree with n={n}")
        store._grow(n)
        store._ext[:n] = ext
        if n and (int(ns.max()) >= len(names) or int(ns.min()) < -1):
            raise CorruptFileError(f"{path}: namespace codes outside the {len(names)} names")
        if names:  # also when every slot of every namespace was compacted away
            store._ns_room(len(names) - 1)[:n] = ns
        if n and np.isfinite(expire).any():
            store._expire_room()[:n] = expire
        store._alive[: len(alive)] = alive
        store._n = n
        store._main_n = int(info["main_n"])
        if len(fresh):
            store._fresh.add(fresh.reshape(-1, dim))
        if info["main"] is not None:
            try:
                index = faiss.deserialize_index(np.frombuffer(blobs["main"], np.uint8))
            except RuntimeError as exc:
                raise CorruptFileError(f"{path}: FAISS index unreadable ({exc})") from exc
            if index.ntotal != store._main_n or index.d != dim:
                raise CorruptFileError(f"{path}: FAISS index disagrees with the slot arrays")
            m = info["main"]
            store._main = _index.Built(
                index,
                m["kind"],
                m["description"],
                {k: int(v) for k, v in m["params"].items()},
                m["recall"],
                int(m["trained_on"]),
                float(m["build_seconds"]),
            )
            try:
                _index.check_graph(store._main, store.metric)
            except ValueError as exc:
                raise CorruptFileError(f"{path}: FAISS graph unusable ({exc})") from exc
            if store.index_spec == "auto" and m["kind"] != "flat":
                store._auto_kind = m["kind"]
        bits = np.unpackbits(store._alive, bitorder="little")[:n].astype(bool)
        live = np.flatnonzero(bits).astype(np.int64)
        store._dead = n - len(live)
        store._ids.put_many(store._ext, live)
        store._ns_names = list(names)
        codes, sizes = np.unique(ns, return_counts=True)
        store._ns_size = {int(c): int(z) for c, z in zip(codes, sizes, strict=True) if c >= 0}
        store._ns_codes = {name: i for i, name in enumerate(names)}
        for s, m_ in meta.items():
            if 0 <= s < n and bits[s]:
                store._index_meta(s, m_)
        live_exp = expire[live]
        store._next_expiry = float(live_exp.min()) if len(live_exp) else math.inf
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: malformed store ({exc})") from exc
    return store
