"""Text embedders: offline feature hashing (default), any OpenAI-compatible ``/v1/embeddings``
endpoint, and sentence-transformers models when that optional extra is installed.

Every embedder has ``dim`` and ``embed(texts) -> float32 (n, dim)`` with L2-normalised rows.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from engine._extras import require
from engine.errors import DimensionError, EmbeddingError

__all__ = ["Embedder", "HashingEmbedder", "OpenAIEmbedder", "SentenceTransformerEmbedder"]

F32 = npt.NDArray[np.float32]
_WORD = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Embedder(Protocol):
    """What the memory components need from an embedder."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> F32: ...


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise EmbeddingError("embed() takes a sequence of texts, not one str")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise EmbeddingError(f"text {i} is {type(t).__name__}, not str")
    return out


def _normalise(x: F32) -> F32:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: F32 = (x / norms).astype(np.float32)
    return out


class HashingEmbedder:
    """Deterministic, offline embeddings by signed feature hashing.

    Features: lower-cased words, word bigrams and character n-grams (``char_ngrams``) of
    each word padded with ``<``/``>``; each feature adds ±weight at ``crc32(feature) % dim``
    (the sign from another hash bit, which keeps collisions unbiased). Same text, same
    vector, on every machine and process (no salted ``hash()``).
    """

    def __init__(
        self, dim: int = 384, char_ngrams: tuple[int, ...] = (3, 4), seed: int = 0
    ) -> None:
        if not isinstance(dim, int) or dim <= 0:
            raise EmbeddingError(f"dim must be a positive int, got {dim!r}")
        self._dim = dim
        self.char_ngrams = tuple(char_ngrams)
        self._salt = seed.to_bytes(4, "little", signed=False)

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> list[tuple[bytes, float]]:
        words = _WORD.findall(text.lower())
        feats: list[tuple[bytes, float]] = []
        for w in words:
            feats.append((b"w:" + w.encode(), 1.0))
            padded = f"<{w}>"
            for n in self.char_ngrams:
                for i in range(max(1, len(padded) - n + 1)):
                    feats.append((b"c:" + padded[i : i + n].encode(), 0.5))
        for a, b in itertools.pairwise(words):
            feats.append((f"b:{a} {b}".encode(), 0.7))
        return feats

    def embed(self, texts: Sequence[str]) -> F32:
        items = _check_texts(texts)
        out = np.zeros((len(items), self._dim), np.float32)
        dim, salt = self._dim, self._salt
        for row, text in enumerate(items):
            acc: dict[int, float] = {}
            for feat, weight in self._features(text):
                h = zlib.crc32(feat, zlib.crc32(salt))
                col = h % dim
                acc[col] = acc.get(col, 0.0) + (weight if (h >> 31) & 1 else -weight)
            if acc:
                cols = np.fromiter(acc.keys(), np.int64, len(acc))
                out[row, cols] = np.fromiter(acc.values(), np.float32, len(acc))
        return _normalise(out)


class OpenAIEmbedder:
    """Embeddings from any OpenAI-compatible ``/v1/embeddings`` endpoint via the ``openai``
    client: batched (``batch_size`` texts per request), retried by the client
    (``max_retries``, honouring ``Retry-After``), rows returned in input order.
    """

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        dim: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        batch_size: int = 256,
        max_retries: int = 3,
        timeout: float = 30.0,
        client: Any = None,
    ) -> None:
        if batch_size < 1:
            raise EmbeddingError(f"batch_size must be >= 1, got {batch_size}")
        if client is None:
            openai = require("openai", extra="llm", feature="OpenAIEmbedder")
            client = openai.OpenAI(
                base_url=base_url,
                api_key=api_key or "unused",
                max_retries=max_retries,
                timeout=timeout,
            )
        self._client = client
        self.model = model
        self.batch_size = batch_size
        self._dim = dim
        self._ask_dim = dim

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: Sequence[str]) -> F32:
        openai = require("openai", extra="llm", feature="OpenAIEmbedder")
        items = _check_texts(texts)
        rows: list[list[float]] = []
        for lo in range(0, len(items), self.batch_size):
            batch = items[lo : lo + self.batch_size]
            kwargs: dict[str, Any] = {"model": self.model, "input": batch}
            kwargs["encoding_format"] = "float"
            if self._ask_dim is not None:
                kwargs["dimensions"] = self._ask_dim
            try:
                resp = self._client.embeddings.create(**kwargs)
            except openai.OpenAIError as exc:
                raise EmbeddingError(f"embedding request failed: {exc}") from exc
            data = sorted(resp.data, key=lambda d: d.index)
            if len(data) != len(batch):
                raise EmbeddingError(f"asked for {len(batch)} embeddings, got {len(data)}")
            rows.extend(list(d.embedding) for d in data)
        if not rows:
            return np.zeros((0, self._dim or 0), np.float32)
        x = np.asarray(rows, np.float32)
        if self._dim is not None and x.shape[1] != self._dim:
            raise DimensionError(self._dim, x.shape[1], "embeddings")
        if not np.isfinite(x).all():
            raise EmbeddingError("the endpoint returned NaN or infinite values")
        self._dim = x.shape[1]
        return _normalise(x)


class SentenceTransformerEmbedder:
    """A local ``sentence-transformers`` model (the ``embeddings`` extra), e.g.
    ``all-MiniLM-L6-v2`` (384-d). Raises :class:`ImportError` naming the extra when absent."""

    def __init__(
        self, model: str = "all-MiniLM-L6-v2", *, device: str = "cpu", batch_size: int = 64
    ) -> None:
        st: Any = require(
            "sentence_transformers", extra="embeddings", feature="SentenceTransformerEmbedder"
        )
        self._model = st.SentenceTransformer(model, device=device)
        self.batch_size = batch_size
        get_dim = self._model.get_sentence_embedding_dimension
        self._dim = int(get_dim() or 0)

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> F32:
        items = _check_texts(texts)
        x = self._model.encode(
            items, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.ascontiguousarray(x, np.float32).reshape(len(items), self._dim)
