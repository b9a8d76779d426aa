"""OpenAIProvider through the real ``openai`` client against a real local HTTP server."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from engine.errors import LLMError, ProviderError
from engine.llm import MaxStepsExceeded, ModelRouter, OpenAIProvider, StructuredOutputError
from engine.memory import OpenAIEmbedder
from engine.tools import tool
from tests.agents_for_tests import uv
from tests.llm_support import REPEAT
from tests.openai_server import Fault, OpenAIServer, ServerReply

KEY = "sk-test-abcdefghijklmnopqrstuvwxyz012345"


class City(msgspec.Struct):
    name: str
    population: int


@tool
def lookup(city: str) -> int:
    """Population of a city."""
    return {"Paris": 2_100_000}.get(city, 0)


def provider(srv: OpenAIServer, **kw: Any) -> OpenAIProvider:
    return OpenAIProvider("gpt-4o-mini", base_url=srv.url, api_key=KEY, **kw)


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_chat_both_transports(openai_server: OpenAIServer, transport: str) -> None:
    @uv
    async def run() -> None:
        async with provider(openai_server, transport=transport) as p:
            r = await p.chat(
                [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
                max_tokens=50,
                temperature=0.2,
                seed=7,
                stop=["\n\n"],
            )
        assert r.text == "echo: hello" and r.provider == "openai" and r.model == "gpt-4o-mini"
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
        assert r.cost > 0 and r.finish_reason == "stop"
        body = openai_server.bodies[-1]
        assert body["max_tokens"] == 50 and body["temperature"] == 0.2 and body["seed"] == 7
        assert body["stop"] == ["\n\n"] and body["model"] == "gpt-4o-mini"
        assert openai_server.auth == {f"Bearer {KEY}"}

    run()


def test_env_configuration(monkeypatch: pytest.MonkeyPatch, openai_server: OpenAIServer) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)

    @uv
    async def run() -> None:
        async with OpenAIProvider("m") as p:
            assert (await p.chat("env")).text == "echo: env"

    run()
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(LLMError, match="needs an API key"):
        OpenAIProvider("m")
    with pytest.raises(ValueError, match="transport"):
        OpenAIProvider("m", base_url="http://127.0.0.1:1/v1", transport="carrier-pigeon")


@uv
async def test_tool_calls_and_the_tool_loop(openai_server: OpenAIServer) -> None:
    def reply(body: dict[str, Any]) -> ServerReply:
        assert body["tools"][0]["function"]["name"] == "lookup"
        if body["messages"][-1]["role"] == "tool":
            return ServerReply(f"Paris has {body['messages'][-1]['content']} people")
        return ServerReply(tool_calls=[("lookup", '{"city": "Paris"}')])

    openai_server.reply = reply
    async with provider(openai_server) as p:
        r = await p.run_tools("How many people live in Paris?", tools=[lookup])
    assert r.text == "Paris has 2100000 people"
    assert [m["role"] for m in r.transcript] == ["assistant", "tool", "assistant"]
    assert r.transcript[0]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    sent = openai_server.bodies[-1]["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_0", "content": "2100000"}


@uv
async def test_json_schema_response_format(openai_server: OpenAIServer) -> None:
    openai_server.reply = lambda body: ServerReply('{"name": "Paris", "population": 2100000}')
    async with provider(openai_server) as p:
        r = await p.chat("Describe Paris", response_format=City)
    assert r.parsed == City("Paris", 2_100_000)
    rf = openai_server.bodies[-1]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "City"
    assert rf["json_schema"]["strict"] is True
    schema = rf["json_schema"]["schema"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "population"}


@uv
async def test_json_in_text_when_the_server_refuses_json_schema(
    openai_server: OpenAIServer,
) -> None:
    openai_server.always = Fault.reject_json_schema()
    openai_server.reply = lambda body: ServerReply('{"name": "Oslo", "population": 700000}')
    async with provider(openai_server) as p:
        r = await p.chat("Describe Oslo", response_format=City)
        assert r.parsed == City("Oslo", 700_000) and p.supports_json_schema is False
        await p.chat("again", response_format=City)
    assert openai_server.requests == 3  # refused once, then text mode for good
    last = openai_server.bodies[-1]
    assert "response_format" not in last and '"population"' in last["messages"][-1]["content"]


@uv
async def test_concurrent_structured_calls_all_fall_back_to_text(
    openai_server: OpenAIServer,
) -> None:
    # every call in flight when the server first refuses json_schema is asked again in
    # text, not only the one whose refusal flipped the provider's flag
    openai_server.always = Fault.reject_json_schema()
    openai_server.reply = lambda body: ServerReply('{"name": "Oslo", "population": 700000}')
    async with provider(openai_server) as p:
        results = await asyncio.gather(
            *(p.chat(f"city {i}", response_format=City) for i in range(8))
        )
    assert all(r.parsed == City("Oslo", 700_000) for r in results)
    with_schema = [b for b in openai_server.bodies if "response_format" in b]
    assert len(with_schema) >= 1 and openai_server.requests == 8 + len(with_schema)


@uv
async def test_invalid_structured_reply_repairs_then_raises(openai_server: OpenAIServer) -> None:
    openai_server.reply = lambda body: ServerReply('{"name": "X", "population": "many"}')
    async with provider(openai_server) as p:
        with pytest.raises(StructuredOutputError) as info:
            await p.chat("x", response_format=City)
    assert info.value.raw == '{"name": "X", "population": "many"}'
    assert openai_server.requests == 2
    assert "Expected `int`, got `str`" in openai_server.bodies[-1]["messages"][-1]["content"]


@uv
async def test_stream_text_tool_calls_and_usage(openai_server: OpenAIServer) -> None:
    openai_server.reply = lambda body: ServerReply(
        "streamed text here", tool_calls=[("lookup", '{"city": "Paris"}')]
    )
    async with provider(openai_server) as p:
        s = p.stream("go", tools=[lookup])
        async with s:
            deltas = [d async for d in s]
    assert "".join(d.text for d in deltas) == "streamed text here"
    r = s.result
    assert r is not None and r.text == "streamed text here"
    assert r.tool_calls[0].name == "lookup" and r.tool_calls[0].arguments == '{"city": "Paris"}'
    body = openai_server.bodies[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert r.usage.completion_tokens == len("streamed text here") // 4 + 1  # server's count
    assert r.finish_reason == "tool_calls"
    # the server counts a stream as completed after its last write returns, which can be
    # after the client has read [DONE]: wait for it rather than race it
    assert await openai_server.wait_async(lambda s: s.completed == 1)


@pytest.mark.parametrize("how", ["break", "cancel", "router"])
def test_leaving_or_cancelling_a_stream_closes_the_connection(how: str) -> None:
    with OpenAIServer(chunk=1, stream_delay=0.02) as srv:
        srv.reply = lambda body: ServerReply("x" * 500)

        @uv
        async def run() -> None:
            p: Any = provider(srv)
            if how == "router":
                p = ModelRouter({"default": [p]})
            if how in ("break", "router"):
                n = 0
                async for _ in p.stream("long"):
                    n += 1
                    if n == 3:
                        break
            else:

                async def consume() -> None:
                    async for _ in p.stream("long"):
                        pass

                task = asyncio.ensure_future(consume())
                assert await srv.wait_async(lambda s: s.requests == 1)
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert await srv.wait_async(lambda s: s.disconnects == 1, timeout=20)
            assert srv.completed == 0
            await p.aclose()

        run()


@uv
async def test_embeddings_through_the_openai_client(openai_server: OpenAIServer) -> None:
    emb = OpenAIEmbedder(
        model="text-embedding-3-small", dim=8, base_url=openai_server.url, api_key=KEY
    )
    vecs = await asyncio.to_thread(emb.embed, ["alpha", "beta", "alpha"])
    assert vecs.shape == (3, 8) and (vecs[0] == vecs[2]).all() and not (vecs[0] == vecs[1]).all()
    assert openai_server.paths["/v1/embeddings"] == 1


# -- fault injection: each gives a typed error (providers alone never retry) --------------
@REPEAT
@pytest.mark.parametrize(
    ("fault", "status", "retryable", "match"),
    [
        (Fault.http(429, retry_after=3), 429, True, "HTTP 429: injected 429"),
        (Fault.http(429), 429, True, "HTTP 429"),
        (Fault.http(500), 500, True, "HTTP 500"),
        (Fault.http(503), 503, True, "HTTP 503"),
        (Fault.http(400), 400, False, "HTTP 400"),
        (Fault.http(401), 401, False, "HTTP 401"),
        (Fault.http(403), 403, False, "HTTP 403"),
        (Fault.reset(), None, True, "connection failed"),
        (Fault.malformed(), None, True, "malformed reply"),
    ],
    ids=["429-retry-after", "429", "500", "503", "400", "401", "403", "reset", "malformed"],
)
def test_faults_give_typed_errors(
    rep: int, openai_server: OpenAIServer, fault: Fault, status: int | None, retryable: bool,
    match: str,
) -> None:  # fmt: skip
    openai_server.fail(fault)

    @uv
    async def run() -> None:
        async with provider(openai_server) as p:
            with pytest.raises(ProviderError, match=match) as info:
                await p.chat("x")
            assert info.value.status == status and info.value.retryable is retryable
            if fault.headers:
                assert info.value.retry_after == 3.0
            assert (await p.chat("after")).text == "echo: after"  # the provider recovers

    run()
    assert openai_server.requests == 2


@REPEAT
def test_slow_reply_times_out(rep: int, openai_server: OpenAIServer) -> None:
    openai_server.fail(Fault.slow(30))

    @uv
    async def run() -> None:
        async with provider(openai_server, timeout=0.2) as p:
            with pytest.raises(ProviderError, match=r"no reply within 0.2s") as info:
                await p.chat("x")
            assert info.value.timeout and info.value.retryable

    run()


@REPEAT
def test_truncated_stream_is_a_retryable_error(rep: int, openai_server: OpenAIServer) -> None:
    openai_server.reply = lambda body: ServerReply("a long reply that will be cut")
    openai_server.fail(Fault.truncate(after=3))

    @uv
    async def run() -> None:
        async with provider(openai_server) as p:
            got: list[str] = []
            with pytest.raises(ProviderError, match="connection failed") as info:
                async for d in p.stream("x"):
                    got.append(d.text)
            # at most the chunks sent before the drop (role + two 4-char deltas)
            assert info.value.retryable and "a long r".startswith("".join(got))

    run()


@REPEAT
def test_non_json_tool_arguments_are_fed_back(rep: int, openai_server: OpenAIServer) -> None:
    def reply(body: dict[str, Any]) -> ServerReply:
        if body["messages"][-1]["role"] == "tool":
            return ServerReply("recovered: " + body["messages"][-1]["content"])
        return ServerReply(tool_calls=[("lookup", '{"city": Paris')])

    openai_server.reply = reply

    @uv
    async def run() -> None:
        async with provider(openai_server) as p:
            r = await p.run_tools("x", tools=[lookup])
        assert r.text.startswith("recovered: error: arguments for tool 'lookup' are not valid")

    run()


@REPEAT
def test_a_model_that_never_stops_calling_tools(rep: int, openai_server: OpenAIServer) -> None:
    openai_server.reply = lambda body: ServerReply(tool_calls=[("lookup", '{"city": "Rome"}')])

    @uv
    async def run() -> None:
        async with provider(openai_server) as p:
            with pytest.raises(MaxStepsExceeded) as info:
                await p.run_tools("x", tools=[lookup], max_steps=4)
        assert len(info.value.result.transcript) == 8  # type: ignore[attr-defined]

    run()
    assert openai_server.requests == 4
