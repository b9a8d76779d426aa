"""Budgets: reserve before the call, refuse with no request sent, settle, release, audit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from engine.errors import BudgetExceeded, PriceUnknown, ProviderError
from engine.llm import Budget, ModelRouter, OpenAIProvider, Price, ScriptedProvider
from engine.llm.budget import reserve
from engine.observe.audit import AuditLog, verify
from tests.agents_for_tests import uv
from tests.openai_server import Fault, OpenAIServer

KEY = "sk-test-budget-0123456789abcdefghij"
PER_CALL = 18  # estimate of chat("x", max_tokens=10): 1 + 4 + 3 prompt tokens + 10


def test_reserve_settle_release_and_all_or_nothing() -> None:
    a = Budget(tokens=100, name="job:1")
    b = Budget(tokens=50, cost=1.0, calls=3, name="tenant:t")
    r1 = reserve([a, b], 40, 0.1)
    assert a.remaining()["tokens"] == 60 and b.remaining() == {
        "tokens": 10,
        "cost": 0.9,
        "calls": 2,
    }
    with pytest.raises(BudgetExceeded) as info:
        reserve([a, b], 20, 0.1)  # fits a, not b: nothing is held anywhere
    e = info.value
    assert (e.budget, e.limit_kind, e.limit, e.used, e.estimate) == (
        "tenant:t",
        "tokens",
        50,
        40,
        20,
    )
    assert "budget 'tenant:t' refused the call: tokens limit 50, 40 used or reserved, " in str(e)
    assert a.reserved_tokens == 40 and b.reserved_calls == 1
    r1.settle(25, 0.05)  # real usage below the estimate frees the rest
    r1.settle(99, 9.0)  # settling twice changes nothing
    assert (a.used_tokens, a.reserved_tokens, b.used_cost, b.used_calls) == (25, 0, 0.05, 1)
    r2 = reserve([b], 20, 0.5)
    r2.release()
    r2.release()
    assert b.remaining() == {"tokens": 25, "cost": 0.95, "calls": 2}
    grant = b.hold(tokens=20, cost=0.5, calls=2)  # a share for work done elsewhere
    with pytest.raises(BudgetExceeded, match="calls limit 3"):
        b.hold(calls=1)
    grant.settle(12, 0.25, calls=1)
    assert (b.used_tokens, b.used_calls, b.reserved_calls) == (37, 2, 0)
    assert b.used_cost == pytest.approx(0.30)
    with pytest.raises(ValueError, match="budget tokens must be a number"):
        Budget(tokens=-1)
    with pytest.raises(ValueError, match="finite"):
        Budget(cost=float("inf"))
    assert repr(b) == "<Budget tenant:t tokens=37/50 cost=0.3/1 calls=2/3>"


def test_refusal_sends_nothing_and_is_audited(openai_server: OpenAIServer, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")

    @uv
    async def run() -> None:
        async with OpenAIProvider(
            "gpt-4o-mini", base_url=openai_server.url, api_key=KEY, audit=audit
        ) as p:
            b = Budget(tokens=PER_CALL - 1, name="job:42")
            with pytest.raises(BudgetExceeded, match=r"'job:42'.*tokens limit 17.*estimate 18"):
                await p.chat("x", max_tokens=10, budget=b, job="42", tenant="acme")
            c = Budget(cost=1e-9, name="tenant:acme")
            with pytest.raises(BudgetExceeded, match="cost limit"):
                await p.chat("x", budget=c)
            assert b.used_tokens == b.reserved_tokens == 0

    run()
    audit.close()
    assert openai_server.requests == 0
    lines = [orjson.loads(x) for x in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    assert [x["event"] for x in lines] == ["budget.refused", "budget.refused"]
    d = lines[0]["data"]
    assert d["budget"] == "job:42" and d["limit"] == "tokens" and d["estimate"] == 18
    assert d["job"] == "42" and d["tenant"] == "acme" and d["model"] == "gpt-4o-mini"
    assert verify(tmp_path / "audit.jsonl").records == 2


@uv
async def test_settle_with_real_usage_and_release_on_error(openai_server: OpenAIServer) -> None:
    async with OpenAIProvider("gpt-4o-mini", base_url=openai_server.url, api_key=KEY) as p:
        b = Budget(tokens=5000, cost=1.0, calls=10)
        r = await p.chat("hello", budget=b)
        assert b.used_tokens == r.usage.total_tokens and b.reserved_tokens == 0
        assert b.used_cost == pytest.approx(r.cost) and r.cost > 0
        assert openai_server.bodies[-1]["max_tokens"] == 1024  # the reservation bounds the reply
        openai_server.fail(Fault.http(500))
        with pytest.raises(ProviderError):
            await p.chat("fails", budget=b)
        assert b.used_calls == 1 and b.reserved_tokens == 0 and b.reserved_calls == 0


@uv
async def test_cost_budget_needs_a_price() -> None:
    p = ScriptedProvider(default="x", model="local-llama")
    with pytest.raises(PriceUnknown, match="'local-llama' has no price"):
        await p.chat("x", budget=Budget(cost=1.0))
    q = ScriptedProvider(default="x", model="local-llama", prices={"local-llama": Price(0, 0)})
    assert (await q.chat("x", budget=Budget(cost=1.0))).cost == 0.0
    r = ModelRouter(
        {"default": [ScriptedProvider(default="y", model="gpt-4o", name="a"),
                     ScriptedProvider(default="y", model="gpt-4o-mini", name="b")]}
    )  # fmt: skip
    assert r._price_bound("default") == Price(2.5, 10.0)  # the dearest of the chain


@pytest.mark.parametrize(
    "budget",
    [
        Budget(tokens=PER_CALL * 50 + PER_CALL // 2, name="tokens"),
        Budget(calls=50, name="calls"),
        Budget(cost=(8 * 0.15 + 10 * 0.60) / 1e6 * 50.5, name="cost"),
    ],
    ids=["tokens", "calls", "cost"],
)
def test_thousand_concurrent_calls_race_for_the_last_of_a_budget(
    openai_server: OpenAIServer, budget: Budget
) -> None:
    @uv
    async def run() -> tuple[int, int]:
        p = OpenAIProvider("gpt-4o-mini", base_url=openai_server.url, api_key=KEY)
        r = ModelRouter({"default": [p]})
        results = await asyncio.gather(
            *(r.chat("x", max_tokens=10, budget=budget) for _ in range(1000)),
            return_exceptions=True,
        )
        await r.aclose()
        ok = sum(1 for x in results if not isinstance(x, BaseException))
        refused = sum(1 for x in results if isinstance(x, BudgetExceeded))
        return ok, refused

    ok, refused = run()
    # Every call reserves synchronously before its first await, so exactly the 50 calls the
    # limit allows get through and the server sees exactly those.
    assert ok == 50 and refused == 950
    assert openai_server.requests == ok == openai_server.completed
    assert budget.used_calls == ok and budget.reserved_calls == 0
    if budget.tokens is not None:
        assert budget.used_tokens <= budget.tokens
    if budget.cost is not None:
        assert budget.used_cost <= budget.cost


def test_one_budget_as_a_tuple_a_list_or_twice_is_reserved_once() -> None:
    b = Budget(tokens=100, calls=5, name="job:1")
    for budgets in ((b,), [b], (b, b)):
        r = reserve(budgets, 10, 0.0)
        assert r.budgets == (b,) and (b.reserved_tokens, b.reserved_calls) == (10, 1)
        r.settle(4, 0.0)
    assert (b.used_tokens, b.used_calls, b.reserved_tokens) == (12, 3, 0)
    with pytest.raises(BudgetExceeded, match="tokens limit 100"):
        reserve((b,), 89, 0.0)
    assert b.reserved_tokens == 0
