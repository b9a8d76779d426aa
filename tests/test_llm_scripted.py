"""ScriptedProvider, structured output and the tool loop (no network)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from engine.errors import LLMError, ToolValidationError
from engine.llm import (
    Budget,
    ChatResult,
    MaxStepsExceeded,
    Reply,
    Rule,
    ScriptedProvider,
    ScriptError,
    StructuredOutputError,
    ToolCallRequest,
    Usage,
    attribution,
)
from engine.tools import ToolRegistry, tool
from tests.agents_for_tests import uv


class Plan(msgspec.Struct):
    steps: list[str]
    done: bool = False


@tool
def get_weather(city: str) -> str:
    """The weather of a city."""
    return f"sunny in {city}"


@tool
async def add(a: int, b: int) -> int:
    """Add two ints."""
    return a + b


@uv
async def test_rules_match_on_kind_messages_tools_and_record_calls() -> None:
    llm = ScriptedProvider(
        [
            Rule(Reply("planned"), kind="plan"),
            Rule(Reply("weather tool offered"), tool="get_weather"),
            Rule(Reply("matched regex"), pattern=r"\bcolou?r\b"),
            Rule(Reply("once"), contains="once", times=1),
            Rule(lambda call: f"dynamic: {call.last.upper()}", when=lambda c: c.last == "dyn"),
        ],
        default="fallback",
    )
    assert (await llm.chat("anything", kind="plan")).text == "planned"
    assert (await llm.chat("hi", tools=[get_weather])).text == "weather tool offered"
    assert (await llm.chat("what color?")).text == "matched regex"
    assert (await llm.chat("once")).text == "once"
    assert (await llm.chat("once")).text == "fallback"  # the rule is used up
    assert (await llm.chat("dyn")).text == "dynamic: DYN"
    assert [c.kind for c in llm.calls] == [
        "plan",
        "default",
        "default",
        "default",
        "default",
        "default",
    ]
    assert llm.calls[1].tools == ["get_weather"]
    r = await llm.chat([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert r.provider == "scripted" and r.model == "scripted" and r.cached is None
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + 2
    assert r.finish_reason == "stop" and r.latency >= 0


@uv
async def test_no_matching_rule_is_a_clear_error() -> None:
    llm = ScriptedProvider([Rule(Reply("x"), kind="plan")])
    with pytest.raises(
        ScriptError, match="no rule matches a 'default' call whose last message is 'hello'"
    ):
        await llm.chat("hello")
    with pytest.raises(TypeError, match="Rule objects"):
        ScriptedProvider(["nope"])  # type: ignore[list-item]


@uv
async def test_bad_arguments_are_refused_before_any_call() -> None:
    llm = ScriptedProvider(default="x")
    with pytest.raises(ValueError, match="messages must not be empty"):
        await llm.chat([])
    with pytest.raises(ValueError, match="role 'robot'"):
        await llm.chat([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="temperature"):
        await llm.chat("x", temperature=3.0)
    with pytest.raises(ValueError, match="max_tokens"):
        await llm.chat("x", max_tokens=0)
    with pytest.raises(TypeError, match="budget must be a Budget"):
        await llm.chat("x", budget=["nope"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="tools must be"):
        await llm.chat("x", tools=[42])  # type: ignore[list-item]
    assert len(llm.calls) == 0


@uv
async def test_structured_output_parses_repairs_once_then_raises() -> None:
    llm = ScriptedProvider([Rule(Reply(parsed=Plan(["a", "b"])), response_format=Plan)])
    r = await llm.chat("plan it", response_format=Plan)
    assert r.parsed == Plan(["a", "b"]) and isinstance(r.parsed, Plan)

    # First reply invalid, the repair prompt names the error and the second reply validates.
    bad_then_good = ScriptedProvider(
        [
            Rule(Reply('{"steps": "not a list"}'), times=1),
            Rule(Reply('```json\n{"steps": ["fixed"]}\n```'), contains="does not validate"),
        ]
    )
    r = await bad_then_good.chat("plan", response_format=Plan)
    assert r.parsed == Plan(["fixed"])
    repair = bad_then_good.calls[1].last
    assert "Expected `array`, got `str`" in repair and "$.steps" in repair
    first, second = '{"steps": "not a list"}', '```json\n{"steps": ["fixed"]}\n```'
    assert r.usage.completion_tokens == -(-len(first) // 4) + -(-len(second) // 4)

    always_bad = ScriptedProvider(default='{"steps": 3}')
    with pytest.raises(StructuredOutputError, match="does not validate as Plan") as info:
        await always_bad.chat("plan", response_format=Plan)
    assert info.value.raw == '{"steps": 3}' and "Expected `array`" in info.value.error
    assert len(always_bad.calls) == 2  # one call, one repair, no more


@uv
async def test_structured_output_in_text_when_json_schema_is_unsupported() -> None:
    llm = ScriptedProvider(
        default='Sure! {"steps": ["x"], "done": true}', supports_json_schema=False
    )
    r = await llm.chat("plan", response_format=Plan)
    assert r.parsed == Plan(["x"], True)
    last = llm.calls[0].messages[-1]
    assert last["role"] == "system" and '"steps"' in last["content"]


@uv
async def test_tool_loop_runs_parallel_calls_and_feeds_errors_back() -> None:
    running = 0
    peak = 0

    @tool
    async def slow_echo(text: str) -> str:
        """Echo after a pause."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return text

    calls = Reply.tools(
        ("slow_echo", {"text": "a"}), ("slow_echo", {"text": "b"}),
        ("add", {"a": 1, "b": "two"}), ("nope", {}),
    )  # fmt: skip
    calls.usage = Usage(10, 5)
    llm = ScriptedProvider(
        [Rule(calls, role="user"), Rule(Reply("done", usage=Usage(20, 1)), role="tool")]
    )
    r = await llm.run_tools("go", tools=[slow_echo, add], max_steps=3)
    assert r.text == "done" and peak == 2  # both echoes ran at once
    roles = [m["role"] for m in r.transcript]
    assert roles == ["assistant", "tool", "tool", "tool", "tool", "assistant"]
    results = {m["tool_call_id"]: m["content"] for m in r.transcript if m["role"] == "tool"}
    assert results["call_0_slow_echo"] == "a" and results["call_1_slow_echo"] == "b"
    assert "invalid arguments for tool 'add'" in results["call_2_add"]
    assert "no tool named 'nope'" in results["call_3_nope"]
    assert r.usage == Usage(30, 6)  # summed over both steps
    # the model saw the tool results on the second step
    assert llm.calls[1].messages[-1]["role"] == "tool" and llm.calls[1].tools == [
        "slow_echo",
        "add",
    ]


@uv
async def test_tool_loop_with_a_registry_and_non_json_arguments() -> None:
    reg = ToolRegistry()
    reg.add(get_weather)
    llm = ScriptedProvider(
        [
            Rule(Reply(tool_calls=[ToolCallRequest("c1", "get_weather", "{not json")]), times=1),
            Rule(Reply.tool("get_weather", city="Oslo"), role="tool", times=1),
            Rule(Reply("Oslo is sunny"), role="tool"),
        ]
    )
    r = await llm.run_tools("weather?", tools=reg)
    tool_msgs = [m["content"] for m in r.transcript if m["role"] == "tool"]
    assert "are not valid JSON" in tool_msgs[0] and tool_msgs[1] == "sunny in Oslo"
    assert r.text == "Oslo is sunny" and len(r.transcript) == 5


@uv
async def test_tool_loop_stops_at_max_steps() -> None:
    llm = ScriptedProvider(default=Reply.tool("get_weather", city="Rome"))
    with pytest.raises(MaxStepsExceeded, match="max_steps=3") as info:
        await llm.run_tools("loop forever", tools=[get_weather], max_steps=3)
    last = info.value.result
    assert isinstance(last, ChatResult) and len(last.transcript) == 6 and len(llm.calls) == 3
    with pytest.raises(ValueError, match="max_steps"):
        await llm.run_tools("x", tools=[get_weather], max_steps=0)
    with pytest.raises(ValueError, match="at least one tool"):
        await llm.run_tools("x", tools=[])


@uv
async def test_stream_yields_deltas_and_settles_usage() -> None:
    llm = ScriptedProvider(
        [Rule(Reply.tool("add", a=1, b=2), tool="add"), Rule(Reply("a fairly long streamed reply"))]
    )
    texts = [d.text async for d in llm.stream("hi")]
    assert "".join(texts) == "a fairly long streamed reply" and len(texts) > 2
    s = llm.stream("hi", tools=[add])
    async with s:
        deltas = [d async for d in s]
    assert s.result is not None and s.result.tool_calls[0].name == "add"
    assert s.result.tool_calls[0].arguments == '{"a":1,"b":2}'
    assert deltas[-1].finish_reason == "tool_calls" and s.result.usage.total_tokens > 0
    with pytest.raises(LLMError, match="only once"):
        [d async for d in s]


@uv
async def test_budget_applies_to_scripted_calls_and_attribution() -> None:
    llm = ScriptedProvider(default=Reply("ok", usage=Usage(10, 5)))
    b = Budget(calls=2, name="job:7")
    with attribution(job="7", tenant="acme"):
        await llm.chat("a", budget=b)
        await llm.chat("b", budget=b, agent="planner")
    with pytest.raises(Exception, match="budget 'job:7' refused the call: calls limit 2"):
        await llm.chat("c", budget=b)
    assert len(llm.calls) == 2 and b.used_calls == 2 and b.used_tokens == 30
    assert llm.ledger.of(tenant="acme").total_tokens == 30
    assert llm.ledger.of(agent="planner").calls == 1
    assert llm.ledger.total.calls == 2


def test_tool_validation_error_type_is_exported() -> None:
    with pytest.raises(ToolValidationError):
        get_weather.validate({"city": 3})


@uv
async def test_usage_ledger_totals_across_alternating_attributions_and_models() -> None:
    a = ScriptedProvider(default=Reply("ok", usage=Usage(2, 1)), model="m-a")
    b = ScriptedProvider(default=Reply("ok", usage=Usage(4, 1)), model="m-b", ledger=a.ledger)
    for i in range(6):
        llm = a if i % 3 else b
        await llm.chat("x", agent=f"agent{i % 2}")
    ledger = a.ledger
    assert ledger.total.calls == 6 and ledger.total.prompt_tokens == 2 * 4 + 4 * 2
    assert ledger.of(agent="agent0").calls == 3 and ledger.of(agent="agent1").calls == 3
    assert ledger.by_model()["m-a"].calls == 4 and ledger.by_model()["m-b"].calls == 2


@uv
async def test_answers_at_once_only_where_send_would_answer_the_same() -> None:
    from engine.llm.request import ChatRequest
    from engine.llm.telemetry import CallSpan

    class Counting(ScriptedProvider):
        """Sends its own way: every call must still reach this _send."""

        sent = 0

        async def _send(self, req: ChatRequest, span: CallSpan) -> ChatResult:
            self.sent += 1
            return await super()._send(req, span)

    plain = ScriptedProvider(default=Reply("ok", usage=Usage(3, 1)))
    counting = Counting(default=Reply("ok", usage=Usage(3, 1)))
    limited = ScriptedProvider(default=Reply("ok", usage=Usage(3, 1)), max_concurrency=1)
    results = [await llm.chat("hi", kind="act") for llm in (plain, counting, limited)]
    assert counting.sent == 1
    assert limited.limits.concurrency == 1 and len(limited.calls) == 1
    same = {(r.text, r.usage, r.model, r.provider, r.finish_reason, r.cost) for r in results}
    assert same == {("ok", Usage(3, 1), "scripted", "scripted", "stop", 0.0)}


@uv
async def test_ledger_totals_of_free_priced_and_cached_calls() -> None:
    from engine.llm import LLMCache

    free = ScriptedProvider(default=Reply("ok", usage=Usage(10, 2)))
    priced = ScriptedProvider(
        default=Reply("ok", usage=Usage(10, 2)),
        prices={"scripted": (1.0, 2.0)},
        ledger=free.ledger,
        cache=LLMCache(),
    )
    await free.chat("a")
    paid = await priced.chat("b", temperature=0)  # deterministic: cached afterwards
    hit = await priced.chat("b", temperature=0)
    assert paid.cost == pytest.approx(14e-6) and hit.cached == "exact" and hit.cost == 0.0
    total = free.ledger.total
    assert (total.calls, total.prompt_tokens, total.completion_tokens, total.cached) == (
        3,
        20,
        4,
        1,
    )
    assert type(total.cost) is float and total.cost == paid.cost
    assert type(total.cached) is int
    assert free.ledger.by_model()["scripted"].cost == paid.cost


def test_a_request_with_defaults_equals_one_built_field_by_field() -> None:
    from engine.llm.request import ChatRequest, make_request

    plain = make_request("hi", kind="act")
    assert plain == ChatRequest(messages=[{"role": "user", "content": "hi"}], kind="act")
    assert make_request("hi", kind="act", extra={}, tools=[]) == plain  # the general path
    with pytest.raises(ValueError, match="kind must be"):
        make_request("hi", kind="")
