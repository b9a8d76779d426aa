"""The LLM cache in front of calls: keys, exact and semantic hits, defaults, tools, TTL."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from engine.llm import Budget, LLMCache, ModelRouter, OpenAIProvider, Reply, ScriptedProvider
from engine.llm.cache import cache_key
from engine.llm.request import make_request
from engine.memory.embedders import HashingEmbedder
from engine.tools import tool
from tests.agents_for_tests import uv
from tests.llm_support import FakeClock
from tests.openai_server import OpenAIServer

KEY = "sk-test-cache-0123456789abcdefghij"
Q = "What is the capital of France?"


class Answer(msgspec.Struct):
    city: str


@tool
def send_email(to: str) -> str:
    """Sends an email (a side effect)."""
    return "sent"


@tool(cacheable=True)
def lookup(term: str) -> str:
    """Looks something up (no side effects)."""
    return term


def test_the_key_covers_every_field_that_decides_the_reply() -> None:
    base: dict[str, Any] = {"temperature": 0.0}
    k0 = cache_key(make_request(Q, **base), "m")
    assert cache_key(make_request(Q, **base), "m") == k0  # stable
    variants = [
        cache_key(make_request(Q, **base), "other-model"),
        cache_key(make_request(Q + "!", **base), "m"),
        cache_key(make_request([{"role": "system", "content": "s"},
                                {"role": "user", "content": Q}], **base), "m"),
        cache_key(make_request(Q, tools=[lookup], **base), "m"),
        cache_key(make_request(Q, response_format=Answer, **base), "m"),
        cache_key(make_request(Q, temperature=0.5), "m"),
        cache_key(make_request(Q, max_tokens=5, **base), "m"),
        cache_key(make_request(Q, seed=1, **base), "m"),
        cache_key(make_request(Q, top_p=0.5, **base), "m"),
        cache_key(make_request(Q, stop="x", **base), "m"),
        cache_key(make_request(Q, extra={"logprobs": True}, **base), "m"),
    ]  # fmt: skip
    assert len({k.exact for k in [k0, *variants]}) == len(variants) + 1
    # Only the last message's text differs: same context, so a semantic hit may apply.
    assert variants[1].context == k0.context and variants[0].context != k0.context


@uv
async def test_exact_then_semantic_hits_and_no_request(openai_server: OpenAIServer) -> None:
    async with OpenAIProvider(
        "gpt-4o-mini", base_url=openai_server.url, api_key=KEY, cache=True
    ) as p:
        first = await p.chat(Q, temperature=0)
        assert first.cached is None and openai_server.requests == 1
        again = await p.chat(Q, temperature=0)
        assert again.cached == "exact" and again.text == first.text
        assert again.usage.total_tokens == 0 and again.cost == 0.0
        near = await p.chat("what is the capital of France", temperature=0)
        assert near.cached == "semantic" and near.text == first.text
        other = await p.chat("What is the capital of Spain?", temperature=0)
        assert other.cached is None and other.text == "echo: What is the capital of Spain?"
        # same question, different system prompt: the context differs, no semantic hit
        sys = [{"role": "system", "content": "answer in French"}, {"role": "user", "content": Q}]
        assert (await p.chat(sys, temperature=0)).cached is None
    assert openai_server.requests == 3
    assert p.ledger.total.cached == 2


@uv
async def test_on_by_default_only_for_deterministic_calls() -> None:
    llm = ScriptedProvider(default="x", cache=LLMCache())
    await llm.chat("a")
    assert (await llm.chat("a")).cached is None  # sampled call: not cached by default
    await llm.chat("b", seed=3)
    assert (await llm.chat("b", seed=3)).cached == "exact"  # unset temperature with a seed
    await llm.chat("c", temperature=0.7, cache=True)
    assert (await llm.chat("c", temperature=0.7, cache=True)).cached == "exact"  # opt-in
    assert (await llm.chat("c", temperature=0.7)).cached is None
    assert (await llm.chat("b", seed=3, cache=False)).cached is None  # opt-out
    assert len(llm.calls) == 6  # a, a, b, c, c sampled, b opted out


class CountingEmbedder(HashingEmbedder):
    """The default embedder, counting the texts it embeds."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def embed(self, texts: Any) -> Any:
        self.texts.extend(texts)
        return super().embed(texts)


@uv
async def test_a_missed_call_is_embedded_once_and_an_exact_hit_not_at_all() -> None:
    emb = CountingEmbedder()
    llm = ScriptedProvider(default="x", cache=LLMCache(embedder=emb))
    await llm.chat("first question", temperature=0)  # miss: embedded for the put only
    assert emb.texts == ["first question"]
    await llm.chat("another question", temperature=0)  # miss: searched and put, one vector
    assert emb.texts == ["first question", "another question"]
    assert (await llm.chat("another question", temperature=0)).cached == "exact"
    assert len(emb.texts) == 2  # an exact hit embeds nothing
    assert len(llm.calls) == 2


@uv
async def test_a_budgeted_call_without_max_tokens_is_found_again() -> None:
    # the reservation fills in max_tokens; the entry is stored under the request as asked
    llm = ScriptedProvider(default="x", cache=LLMCache())
    budget = Budget(tokens=100_000)
    await llm.chat("hello", temperature=0, budget=budget)
    assert (await llm.chat("hello", temperature=0, budget=budget)).cached == "exact"
    assert len(llm.calls) == 1


@uv
async def test_tools_with_side_effects_are_never_cached() -> None:
    llm = ScriptedProvider(default="x", cache=True)
    for _ in range(2):
        r = await llm.chat("mail bob", tools=[send_email], temperature=0, cache=True)
    assert r.cached is None and len(llm.calls) == 2
    for _ in range(2):
        r = await llm.chat("look up", tools=[lookup], temperature=0)
    assert r.cached == "exact" and len(llm.calls) == 3
    raw = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    await llm.chat("raw", tools=raw, temperature=0)
    assert (await llm.chat("raw", tools=raw, temperature=0)).cached is None


@uv
async def test_ttl_bounds_and_stream_replay() -> None:
    clock = FakeClock()
    llm = ScriptedProvider(
        default=Reply("a cached answer to replay"),
        cache=LLMCache(ttl=60, max_entries=3, clock=clock),
    )
    await llm.chat("q", temperature=0)
    clock.advance(59)
    assert (await llm.chat("q", temperature=0)).cached == "exact"
    clock.advance(2)
    assert (await llm.chat("q", temperature=0)).cached is None  # expired
    s = llm.stream("q", temperature=0)
    parts = [d.text async for d in s]
    assert s.result is not None and s.result.cached == "exact"
    assert len(parts) > 1 and "".join(parts) == "a cached answer to replay"
    for i in range(6):
        await llm.chat(f"fill {i}", temperature=0)
    assert llm.cache is not None and len(llm.cache) <= 3


@uv
async def test_a_streamed_reply_fills_the_cache() -> None:
    llm = ScriptedProvider(default="streamed once", cache=True)
    assert "".join([d.text async for d in llm.stream("s", temperature=0)]) == "streamed once"
    assert (await llm.chat("s", temperature=0)).cached == "exact" and len(llm.calls) == 1


@uv
async def test_router_cache_and_structured_replies() -> None:
    llm = ScriptedProvider(default=Reply(parsed=Answer("Paris")), name="s")
    r = ModelRouter({"default": [llm]}, cache=True)
    a = await r.chat(Q, response_format=Answer, temperature=0)
    b = await r.chat(Q, response_format=Answer, temperature=0)
    assert a.parsed == b.parsed == Answer("Paris") and b.cached == "exact"
    assert len(llm.calls) == 1
    with pytest.raises(ValueError, match="ttl must be positive"):
        LLMCache(ttl=-1)
    with pytest.raises(ValueError, match="threshold"):
        LLMCache(threshold=2)
