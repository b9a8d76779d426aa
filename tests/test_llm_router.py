"""ModelRouter: retries, fallback, circuit breakers and limits, against real local servers.

Backoff and cool-downs run on a fake clock (the router's ``clock``/``sleep``), so no test
here waits or asserts wall-clock time except the one marked ``slow``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from engine.errors import AllProvidersFailed, ProviderError
from engine.llm import (
    BreakerPolicy,
    ChatResult,
    CircuitBreaker,
    Limits,
    ModelRouter,
    OpenAIProvider,
    Provider,
    RetryPolicy,
    ScriptedProvider,
    StreamDelta,
    Usage,
)
from engine.llm.request import ChatRequest
from engine.llm.retry import RetryState
from tests.agents_for_tests import uv
from tests.llm_support import REPEAT, FakeClock
from tests.openai_server import Fault, OpenAIServer, ServerReply, serving

KEY = "sk-test-router-0123456789abcdefghij"


@pytest.fixture
def backup_server() -> Iterator[OpenAIServer]:
    with serving() as srv:
        srv.reply = lambda body: ServerReply("from backup")
        yield srv


def router(
    primary: OpenAIServer,
    backup: OpenAIServer | None = None,
    clock: FakeClock | None = None,
    **kw: Any,
) -> ModelRouter:
    chain = [OpenAIProvider("primary", base_url=primary.url, api_key=KEY)]
    if backup is not None:
        chain.append(OpenAIProvider("backup", base_url=backup.url, api_key=KEY))
    clock = clock or FakeClock()
    return ModelRouter(
        {"default": chain}, clock=clock, sleep=clock.sleep, rng=random.Random(7), **kw
    )


# -- the breaker and the retry policy as state machines -------------------------------------
def test_breaker_opens_probes_and_closes() -> None:
    clock = FakeClock()
    moves: list[tuple[str, str]] = []
    b = CircuitBreaker(
        "p", BreakerPolicy(failures=3, cooldown=10), clock=clock,
        on_change=lambda n, s: moves.append((n, s)),
    )  # fmt: skip
    for _ in range(2):
        b.failure()
    assert b.state == "closed" and b.allow()
    b.success()  # a success resets the consecutive count
    for _ in range(3):
        b.failure()
    assert b.state == "open" and not b.allow()
    clock.advance(9.9)
    assert not b.allow()
    clock.advance(0.2)
    assert b.allow() and b.state == "half_open"  # the probe
    assert not b.allow()  # only one probe at a time
    b.failure()
    assert b.state == "open" and not b.allow()
    clock.advance(10)
    assert b.allow()
    b.neutral()  # cancelled probe: the next call may probe
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()
    assert [s for _, s in moves] == ["open", "half_open", "open", "half_open", "closed"]


def test_breaker_opens_on_error_rate() -> None:
    clock = FakeClock()
    b = CircuitBreaker("p", BreakerPolicy(failures=100, error_rate=0.5, window=10, min_calls=10),
                       clock=clock)  # fmt: skip
    for i in range(20):
        b.success() if i % 3 else b.failure()  # 7 of 20 failed: 35%
    assert b.state == "closed"
    clock.advance(11)  # the window forgets them
    for i in range(11):
        b.failure() if i % 3 else b.success()  # the 11th ends 7 of 11 failed: 64%
    assert b.state == "open"
    with pytest.raises(ValueError, match="error_rate"):
        BreakerPolicy(error_rate=0)


def test_full_jitter_backoff_and_retry_after() -> None:
    policy = RetryPolicy(attempts=6, base=0.25, cap=1.0, fallback_within=2.0)
    rng = random.Random(1)
    for n in range(1, 6):
        bound = min(1.0, 0.25 * 2 ** (n - 1))
        delays = [policy.backoff(n, rng) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays) and max(delays) > bound * 0.9
    err = ProviderError("x", status=500, retryable=True)
    s = RetryState(policy, has_fallback=False)
    assert [s.next_delay(err, 0.0, rng) is not None for _ in range(6)] == [True] * 5 + [False]
    limited = ProviderError("x", status=429, retryable=True, retry_after=1.5)
    s = RetryState(policy, has_fallback=False)
    assert s.next_delay(limited, 0.0, rng) == 1.5
    s = RetryState(policy, has_fallback=True)  # 1.5 s fits in the 2 s window; 3 s does not
    assert s.next_delay(limited, 0.0, rng) == 1.5
    assert s.next_delay(limited, 1.5, rng) is None
    too_long = ProviderError("x", status=429, retryable=True, retry_after=61)
    assert RetryState(policy, has_fallback=False).next_delay(too_long, 0, rng) is None
    fatal = ProviderError("x", status=400, retryable=False)
    assert RetryState(policy, has_fallback=False).next_delay(fatal, 0, rng) is None


def test_router_configuration_errors() -> None:
    p = ScriptedProvider(default="x")
    with pytest.raises(ValueError, match='"default" route'):
        ModelRouter({"plan": [p]})
    with pytest.raises(ValueError, match="has no provider"):
        ModelRouter({"default": []})
    with pytest.raises(TypeError, match="is not a provider"):
        ModelRouter({"default": ["gpt"]})  # type: ignore[list-item]
    with pytest.raises(ValueError, match="names one provider twice"):
        ModelRouter({"default": [p, p]})
    with pytest.raises(ValueError, match="two different providers are named"):
        ModelRouter({"default": [p], "plan": [ScriptedProvider(default="y")]})


@uv
async def test_routes_by_kind_and_default() -> None:
    plan = ScriptedProvider(default="planned", model="big", name="big")
    small = ScriptedProvider(default="small", model="small", name="small")
    r = ModelRouter({"default": [small], "plan": [plan, small]})
    assert (await r.chat("x", kind="plan")).text == "planned"
    assert (await r.chat("x", kind="summarize")).text == "small"  # no route: default
    assert (await r.chat("x")).model == "small"
    assert "ModelRouter" in repr(r) and [p.name for p in r.providers] == ["small", "big"]


# -- faults through the router (real servers, fake clock) ----------------------------------
@REPEAT
@pytest.mark.parametrize(
    "fault",
    [Fault.http(500), Fault.http(503), Fault.http(429), Fault.reset(), Fault.malformed()],
    ids=["500", "503", "429", "reset", "malformed"],
)
def test_retryable_faults_are_retried_with_backoff(
    rep: int, openai_server: OpenAIServer, fault: Fault
) -> None:
    openai_server.fail(fault, fault)
    clock = FakeClock()

    @uv
    async def run() -> None:
        async with router(openai_server, clock=clock) as r:
            res = await r.chat("hello")
        assert res.text == "echo: hello" and res.model == "primary"

    run()
    assert openai_server.requests == 3
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.25 and 0 <= clock.sleeps[1] <= 0.5  # full jitter bounds


@REPEAT
def test_retry_after_is_honoured(rep: int, openai_server: OpenAIServer) -> None:
    openai_server.fail(Fault.http(429, retry_after=1.5), Fault.http(503, retry_after=0))
    clock = FakeClock()

    @uv
    async def run() -> None:
        async with router(openai_server, clock=clock) as r:
            assert (await r.chat("x")).text == "echo: x"

    run()
    assert clock.sleeps == [1.5, 0.0] and openai_server.requests == 3


@REPEAT
@pytest.mark.parametrize("status", [400, 401, 403])
def test_client_errors_are_never_retried_nor_fallen_back(
    rep: int, openai_server: OpenAIServer, backup_server: OpenAIServer, status: int
) -> None:
    openai_server.fail(Fault.http(status))
    clock = FakeClock()

    @uv
    async def run() -> None:
        async with router(openai_server, backup_server, clock=clock) as r:
            with pytest.raises(ProviderError, match=f"HTTP {status}"):
                await r.chat("x")
            assert r.breakers["openai/primary"].state == "closed"

    run()
    assert openai_server.requests == 1 and backup_server.requests == 0 and clock.sleeps == []


@REPEAT
def test_fallback_happens_within_two_seconds_of_the_primary_failing(
    rep: int, openai_server: OpenAIServer, backup_server: OpenAIServer
) -> None:
    openai_server.always = Fault.http(503)
    clock = FakeClock()

    @uv
    async def run() -> None:
        async with router(
            openai_server, backup_server, clock=clock, retry=RetryPolicy(attempts=50)
        ) as r:
            res = await r.chat("x")
        assert res.text == "from backup" and res.model == "backup"

    run()
    # Fake time moves only in the router's sleeps: their sum is the time from the primary's
    # first failure to the fallback request.
    assert clock.sleeps and sum(clock.sleeps) < 2.0
    assert openai_server.requests >= 2 and backup_server.requests == 1


def test_retries_and_fallbacks_are_counted_in_metrics(
    openai_server: OpenAIServer, backup_server: OpenAIServer
) -> None:
    from engine.observe.metrics import Metrics

    openai_server.always = Fault.http(503)
    clock = FakeClock()
    metrics = Metrics()

    @uv
    async def run() -> str:
        async with router(
            openai_server, backup_server, clock=clock, metrics=metrics,
            retry=RetryPolicy(attempts=3),
        ) as r:  # fmt: skip
            assert (await r.chat("x")).model == "backup"
            return r.providers[0].name

    primary = run()
    value = metrics.registry.get_sample_value
    assert value("engine_llm_retries_total", {"provider": primary}) == len(clock.sleeps) >= 1
    assert value("engine_llm_fallbacks_total", {"from": primary}) == 1
    assert openai_server.requests == len(clock.sleeps) + 1 and backup_server.requests == 1


@REPEAT
def test_open_breaker_falls_back_at_once_and_probes_after_cooldown(
    rep: int, openai_server: OpenAIServer, backup_server: OpenAIServer
) -> None:
    openai_server.always = Fault.http(500)
    clock = FakeClock()

    @uv
    async def run() -> None:
        async with router(
            openai_server, backup_server, clock=clock,
            retry=RetryPolicy(attempts=1), breaker=BreakerPolicy(failures=3, cooldown=30),
        ) as r:  # fmt: skip
            for _ in range(3):
                assert (await r.chat("x")).model == "backup"
            assert r.breakers["openai/primary"].state == "open"
            before = openai_server.requests
            for _ in range(5):
                assert (await r.chat("x")).model == "backup"
            assert openai_server.requests == before == 3  # not one request while open
            openai_server.always = None
            clock.advance(31)
            assert (await r.chat("probe")).model == "primary"  # half-open probe succeeded
            assert r.breakers["openai/primary"].state == "closed"

    run()


@REPEAT
def test_slow_primary_times_out_and_falls_back(
    rep: int, openai_server: OpenAIServer, backup_server: OpenAIServer
) -> None:
    openai_server.always = Fault.slow(30)

    @uv
    async def run() -> None:
        async with router(openai_server, backup_server, timeout=0.2) as r:
            res = await r.chat("x")
        assert res.model == "backup"

    run()
    assert backup_server.requests == 1


@REPEAT
def test_every_provider_failing_names_each(
    rep: int, openai_server: OpenAIServer, backup_server: OpenAIServer
) -> None:
    openai_server.always = Fault.http(500)
    backup_server.always = Fault.reset()

    @uv
    async def run() -> None:
        async with router(openai_server, backup_server, retry=RetryPolicy(attempts=2)) as r:
            with pytest.raises(AllProvidersFailed) as info:
                await r.chat("x")
        msg = str(info.value)
        assert "openai/primary: openai/primary: HTTP 500" in msg
        assert "openai/backup: openai/backup: connection failed" in msg
        assert [n for n, _ in info.value.errors] == ["openai/primary", "openai/backup"]

    run()
    assert openai_server.requests == 2 and backup_server.requests == 2


@REPEAT
def test_stream_retries_before_the_first_delta_and_falls_back(
    rep: int, openai_server: OpenAIServer, backup_server: OpenAIServer
) -> None:
    openai_server.fail(Fault.truncate(after=0), Fault.http(500))
    openai_server.reply = lambda body: ServerReply("primary stream")

    @uv
    async def run() -> None:
        async with router(openai_server, backup_server) as r:
            s = r.stream("x")
            text = "".join([d.text async for d in s])
            assert text == "primary stream" and s.result is not None
            assert s.result.model == "primary"
            openai_server.always = Fault.http(503)
            text = "".join([d.text async for d in r.stream("y")])
            assert text == "from backup"

    run()


@REPEAT
def test_stream_cut_after_deltas_is_an_error_not_a_retry(
    rep: int, openai_server: OpenAIServer, backup_server: OpenAIServer
) -> None:
    openai_server.reply = lambda body: ServerReply("x" * 200)
    openai_server.fail(Fault.truncate(after=4))

    @uv
    async def run() -> None:
        async with router(openai_server, backup_server) as r:
            got: list[str] = []
            with pytest.raises(ProviderError, match="connection failed"):
                async for d in r.stream("x"):
                    got.append(d.text)
            assert got  # deltas reached the caller, so the call could not be replayed

    run()
    assert openai_server.requests == 1 and backup_server.requests == 0


@pytest.mark.slow
def test_fallback_within_two_seconds_in_real_time(
    openai_server: OpenAIServer, backup_server: OpenAIServer
) -> None:
    """Primary fails once, then hangs: the retry's timeout is cut to the fallback window."""

    @uv
    async def run() -> None:
        p = OpenAIProvider("p", base_url=openai_server.url, api_key=KEY)
        b = OpenAIProvider("b", base_url=backup_server.url, api_key=KEY)
        await p.chat("warm up")  # connections and imports are not part of the measure
        await b.chat("warm up")
        openai_server.fail(Fault.http(503))
        openai_server.always = Fault.slow(30)
        r = ModelRouter({"default": [p, b]}, retry=RetryPolicy(attempts=5), timeout=30)
        assert (await r.chat("x")).model == "b"
        await r.aclose()

    run()
    failed_at = openai_server.arrivals[1]  # the 503 (answered at once)
    fallback_at = backup_server.arrivals[-1]
    assert openai_server.requests >= 3  # it did retry within the window
    assert fallback_at - failed_at < 2.2  # the 2 s window plus scheduling slack


# -- limits ----------------------------------------------------------------------------------
class _Gate(Provider):
    """A provider whose calls wait for an event; counts calls in flight."""

    provider_name = "gate"

    def __init__(self, **kw: Any) -> None:
        super().__init__("gate", **kw)
        self.release = asyncio.Event()
        self.in_flight = 0
        self.peak = 0

    async def _complete(self, req: ChatRequest) -> ChatResult:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await self.release.wait()
        self.in_flight -= 1
        return ChatResult(text="ok", usage=Usage(10, 10), model=self.model, provider="gate")

    async def _stream_raw(self, req: ChatRequest) -> AsyncIterator[StreamDelta | ChatResult]:
        yield await self._complete(req)


@uv
async def test_concurrency_limit_queues_calls() -> None:
    p = _Gate(max_concurrency=3)
    r = ModelRouter({"default": [p]})
    tasks = [asyncio.ensure_future(r.chat(f"{i}")) for i in range(10)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert p.in_flight == 3
    p.release.set()
    results = await asyncio.gather(*tasks)
    assert all(x.text == "ok" for x in results) and p.peak == 3


@uv
async def test_rate_limits_queue_on_a_fake_clock() -> None:
    clock = FakeClock(0.0)
    p = ScriptedProvider(
        default="ok", limits=Limits(rpm=2, tpm=1000, clock=clock, sleep=clock.sleep)
    )
    for _ in range(2):
        await p.chat("x")
    assert clock.sleeps == []
    await p.chat("x")  # the third request in a minute waits for a token (30 s at 2/min)
    assert sum(clock.sleeps) == pytest.approx(30.0)
    clock.sleeps.clear()
    big = "y" * 2400  # ~800 estimated prompt tokens: needs most of the token bucket
    await p.chat(big, max_tokens=100)
    await p.chat(big, max_tokens=100)
    assert sum(clock.sleeps) > 0  # the token bucket made it wait
    assert len(p.calls) == 5  # queued, never refused
