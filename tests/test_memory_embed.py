"""Embedders, semantic cache, conversation memory and hybrid retrieval."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from engine.errors import DimensionError, EmbeddingError, UnknownIdError, VectorStoreError
from engine.memory import (
    BM25Index,
    ConversationMemory,
    HashingEmbedder,
    HybridRetriever,
    OpenAIEmbedder,
    SemanticCache,
    SentenceTransformerEmbedder,
    rrf,
)
from engine.memory import cache as cache_mod
from engine.memory import vectors as vectors_mod
from tests._clock import FakeClock

# --------------------------------------------------------------------------- hashing


def test_hashing_embedder_is_deterministic_and_semantic() -> None:
    e = HashingEmbedder(256)
    a = e.embed(["The cat sat on the mat", "the CAT sat on the mat!", "quarterly tax filing"])
    assert a.shape == (3, 256) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert a[0] @ a[1] > 0.99  # case and punctuation do not matter
    assert a[0] @ a[2] < 0.3
    again = HashingEmbedder(256).embed(["The cat sat on the mat"])
    assert (again[0] == a[0]).all()  # same vector in another instance (no salted hash())
    assert (HashingEmbedder(256, seed=1).embed(["The cat sat on the mat"])[0] != a[0]).any()
    assert (e.embed([""]) == 0).all()
    with pytest.raises(EmbeddingError, match="sequence"):
        e.embed("one string")  # type: ignore[arg-type]
    with pytest.raises(EmbeddingError, match="not str"):
        e.embed(["ok", 3])  # type: ignore[list-item]


# --------------------------------------------------------------------------- openai


class _Server:
    """A real OpenAI-compatible /v1/embeddings endpoint on 127.0.0.1."""

    def __init__(self, dim: int = 8, fail_first: int = 0) -> None:
        self.dim = dim
        self.fail_first = fail_first
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                if self.path != "/v1/embeddings":
                    self.send_response(404)
                    self.end_headers()
                    return
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    self._json(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "10"})
                    return
                texts = body["input"]
                data = [
                    {"object": "embedding", "index": i, "embedding": outer.vector(t)}
                    for i, t in enumerate(texts)
                ][::-1]  # out of order on purpose: the client must sort by index
                self._json(
                    200,
                    {
                        "object": "list",
                        "data": data,
                        "model": body["model"],
                        "usage": {"prompt_tokens": 1, "total_tokens": 1},
                    },
                )

            def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def vector(self, text: str) -> list[float]:
        v = [float(len(text))] + [float(ord(c) % 7) for c in text[: self.dim - 1]]
        return (v + [0.5] * self.dim)[: self.dim]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_openai_embedder_batches_orders_and_retries(server: _Server) -> None:
    server.fail_first = 1
    e = OpenAIEmbedder("test-model", base_url=server.url, batch_size=2, max_retries=2)
    texts = ["alpha", "bravo", "charlie", "delta", "echo"]
    x = e.embed(texts)
    assert x.shape == (5, 8) and e.dim == 8
    expect = np.array([server.vector(t) for t in texts], np.float32)
    expect /= np.linalg.norm(expect, axis=1, keepdims=True)
    np.testing.assert_allclose(x, expect, rtol=1e-6)  # input order despite reversed replies
    sizes = [len(r["input"]) for r in server.requests]
    assert sizes == [2, 2, 2, 1]  # one 429 retried, then batches of two
    assert all(r["model"] == "test-model" for r in server.requests)


def test_openai_embedder_errors(server: _Server) -> None:
    with pytest.raises(DimensionError):
        OpenAIEmbedder("m", base_url=server.url, dim=4).embed(["x"])
    server.fail_first = 10
    e = OpenAIEmbedder("m", base_url=server.url, max_retries=1)
    with pytest.raises(EmbeddingError, match="request failed"):
        e.embed(["x"])
    with pytest.raises(EmbeddingError):
        OpenAIEmbedder("m", base_url=server.url, batch_size=0)


def test_sentence_transformer_optional() -> None:
    if importlib.util.find_spec("sentence_transformers") is None:
        with pytest.raises(ImportError, match=r"agent-engine-runtime\[embeddings\]"):
            SentenceTransformerEmbedder()
    else:  # pragma: no cover - only with the optional extra
        assert SentenceTransformerEmbedder().dim > 0


# --------------------------------------------------------------------------- cache


def test_semantic_cache_thresholds_kinds_and_counters() -> None:
    cache = SemanticCache(HashingEmbedder(128))
    cache.put("What is the capital of France?", "Paris")
    assert cache.get("What is the capital of France?") == "Paris"  # exact
    hit = cache.lookup("what is the capital of france")
    assert hit is not None and hit.value == "Paris" and not hit.exact and hit.score >= 0.85
    assert cache.get("How do I bake sourdough bread?") is None
    assert cache.get("What is the capital of France?", kind="analysis") is None  # other kind
    st = cache.stats()
    assert (st["hits"], st["misses"]) == (2, 2)
    # per-kind thresholds: analysis demands 0.95
    cache.put("sum the column", "x", kind="analysis")
    v = cache.embedder.embed(["sum the column"])[0]
    noise = np.random.default_rng(0).standard_normal(128).astype(np.float32)
    noise -= (noise @ v) * v
    noise /= np.linalg.norm(noise)
    near = v * 0.93 + noise * np.sqrt(1 - 0.93**2)  # cosine 0.93 to the cached prompt
    assert cache.lookup("q", kind="analysis", vector=near) is None
    assert cache.lookup("q", kind="response", vector=near) is None  # no response entry near
    cache.put("sum the column", "y", kind="response")
    hit = cache.lookup("q", kind="response", vector=near)
    assert hit is not None and hit.value == "y" and hit.score == pytest.approx(0.93, abs=0.01)


def test_semantic_cache_ttl_and_bound(fake_clock: Callable[..., FakeClock]) -> None:
    clock = fake_clock(cache_mod, vectors_mod)
    cache = SemanticCache(HashingEmbedder(64), ttl=30, max_entries=200)
    cache.put("short lived", 1)
    cache.put("long lived", 2, ttl=60)
    clock.advance(29)
    assert cache.get("short lived") == 1
    clock.advance(2)
    assert cache.get("short lived") is None and cache.get("long lived") == 2
    for i in range(450):
        cache.put(f"prompt number {i}", i, ttl=60)
    assert len(cache) <= 200 and cache.stats()["evictions"] > 0
    assert cache.get("prompt number 449") == 449
    old = cache.lookup("prompt number 0")  # evicted: at most a similar prompt answers
    assert old is None or (old.prompt != "prompt number 0" and not old.exact)
    with pytest.raises(VectorStoreError):
        SemanticCache(max_entries=0)
    with pytest.raises(VectorStoreError):
        cache.put("x", 1, ttl=-1)


# --------------------------------------------------------------------------- conversation


def test_conversation_memory_window_recall_importance_summary() -> None:
    summaries: list[tuple[str | None, int]] = []

    def summarize(prev: str | None, turns: Any) -> str:
        summaries.append((prev, len(turns)))
        return f"summary of {len(turns)} turns"

    mem = ConversationMemory(HashingEmbedder(256), window=3, summarize=summarize, summarize_every=4)
    topics = [
        "the deployment pipeline failed on staging",
        "lunch order for the team",
        "database migration plan for friday",
        "weather is nice today",
        "rollback the staging deployment",
        "pick a restaurant",
    ]
    for i, t in enumerate(topics):
        mem.append(
            "c1", "user" if i % 2 == 0 else "assistant", t, importance=0.9 if i == 0 else 0.3
        )
    mem.append("c2", "user", "the deployment pipeline failed on staging")
    assert [t.content for t in mem.recent("c1")] == topics[3:]
    got = mem.recall("c1", "staging deployment failure", k=2)
    assert got and got[0][0].content == topics[0]  # older turn, found by meaning
    assert all(t.conversation == "c1" and t.seq < 3 for t, _ in got)  # not from the window
    mem.append("c1", "user", "one more")
    assert summaries == [(None, 4)] and mem.summary("c1") == "summary of 4 turns"
    ctx = mem.context("c1", "deployment")
    assert ctx["summary"] and len(ctx["recent"]) == 3
    assert mem.forget("c1") == 7 and mem.recent("c1") == [] and mem.forget("c1") == 0
    assert mem.recall("c2", "anything") == []  # everything still in the window
    with pytest.raises(VectorStoreError):
        mem.append("c2", "user", "x", importance=2.0)


# --------------------------------------------------------------------------- hybrid


def test_bm25_and_rrf() -> None:
    bm = BM25Index()
    bm.add(1, "faiss vector search index")
    bm.add(2, "cooking pasta with garlic")
    bm.add(3, "vector databases and search engines search")
    res = bm.search("vector search", 3)
    assert [d for d, _ in res][:2] == [3, 1] and 2 not in [d for d, _ in res]
    bm.remove(3)
    assert [d for d, _ in bm.search("vector search", 3)] == [1]
    with pytest.raises(UnknownIdError):
        bm.remove(3)
    fused = rrf([[1, 2, 3], [3, 1]], k=60)
    assert [d for d, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_hybrid_retriever_fuses_and_reranks() -> None:
    docs = {
        10: "Error code E1234 means the disk quota was exceeded",
        11: "How to free disk space on a full volume",
        12: "Recipe for tomato soup",
        13: "The storage volume ran out of space and writes failed",
    }
    h = HybridRetriever(HashingEmbedder(256))
    h.add(list(docs), list(docs.values()), metadata=[{"n": i} for i in range(4)])
    res = h.search("E1234", k=2)
    assert res[0].id == 10  # exact keyword match wins through BM25
    res = h.search("disk space full", k=3)
    assert 12 not in [r.id for r in res[:2]]
    calls: list[int] = []

    def rerank(query: str, cands: Any) -> list[float]:
        calls.append(len(cands))
        return [1.0 if "soup" in c.text else 0.0 for c in cands]

    h.rerank = rerank
    assert h.search("soup or disk", k=1)[0].id == 12 and calls
    h.remove([12])
    assert 12 not in [r.id for r in h.search("tomato soup", k=4)]
    with pytest.raises(UnknownIdError):
        h.remove([12])
    h.rerank = lambda q, c: [1.0]
    with pytest.raises(VectorStoreError, match="rerank"):
        h.search("disk", k=2)
