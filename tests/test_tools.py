"""Tools: schemas, validation, timeouts, cache, executor, registry, parallel calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import pytest

import engine.tools
from engine import (
    Runtime,
    Tool,
    ToolError,
    ToolNotFound,
    ToolRegistry,
    ToolTimeout,
    ToolValidationError,
    tool,
)
from engine.tools import ToolCache
from tests._clock import FakeClock
from tests._wait import until
from tests.agents_for_tests import uv


@tool(tags=["math"])
def add(a: int, b: int = 2) -> int:
    """Add two integers.

    Longer text that is not part of the description.
    """
    return a + b


class Point(msgspec.Struct):
    x: float
    y: float


@tool(name="dist", tags=["math", "geo"], description="Distance from the origin.")
async def distance(p: Point, scale: Annotated[float, msgspec.Meta(gt=0)] = 1.0) -> float:
    return float((p.x**2 + p.y**2) ** 0.5 * scale)


def test_schema_and_spec() -> None:
    assert isinstance(add, Tool)
    assert add(1, 5) == 6  # still callable as the function
    assert add.description == "Add two integers."
    assert add.parameters == {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 2}},
        "required": ["a"],
        "additionalProperties": False,
    }
    spec = distance.spec()
    assert spec["type"] == "function"
    fn = spec["function"]
    assert fn["name"] == "dist" and fn["description"] == "Distance from the origin."
    params = fn["parameters"]
    assert params["required"] == ["p"]
    assert params["properties"]["p"] == {"$ref": "#/$defs/Point"}
    assert params["properties"]["scale"]["exclusiveMinimum"] == 0
    assert params["$defs"]["Point"]["required"] == ["x", "y"]


def test_validation_errors_name_the_field() -> None:
    cases = [
        ({"a": "1"}, r"Expected `int`, got `str` - at `\$.a`"),
        ({}, "missing required field `a`"),
        ({"a": 1, "c": 3}, "unknown field `c`"),
        ([1, 2], "must be an object, got list"),
        ('{"a": 1.5}', r"Expected `int`, got `float` - at `\$.a`"),
        ("{not json", "not valid JSON"),
    ]
    for args, message in cases:
        with pytest.raises(ToolValidationError, match=message):
            add.validate(args)
    with pytest.raises(ToolValidationError, match=r"Expected `float` >= 0|> 0"):
        distance.validate({"p": {"x": 1, "y": 1}, "scale": -1})
    assert add.validate('{"a": 4}') == add.args_type(a=4)
    ready = add.args_type(a=1)
    assert add.validate(ready) is ready
    with pytest.raises(ToolValidationError, match="missing required field `a`"):
        add.validate(None)


def test_bad_tool_definitions() -> None:
    with pytest.raises(TypeError, match="parameter 'x' needs a type annotation"):

        @tool
        def untyped(x):  # type: ignore[no-untyped-def]
            return x

    with pytest.raises(TypeError, match="must be a named parameter"):

        @tool
        def star(*xs: int) -> int:
            return 0

    for bad in ("bad name!", "naïve", "", "x" * 65):
        with pytest.raises(ValueError, match="must be 1-64 ASCII letters"):
            tool(name=bad)(add.fn)
    with pytest.raises(ValueError, match="ttl= needs cache"):
        tool(ttl=1.0)(add.fn)
    with pytest.raises(ValueError, match="timeout must be positive"):
        tool(timeout=0)(add.fn)
    with pytest.raises(ValueError, match="cache size must be a positive int"):
        tool(cache=0)(add.fn)
    with pytest.raises(TypeError, match="expects a function"):
        Tool(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"cannot build a JSON schema|tool 'objs'"):

        @tool
        def objs(x: object, y: threading.Lock) -> None: ...


@uv
async def test_registry_discovery_and_calls() -> None:
    rt = Runtime()
    rt.tools.add(add)
    rt.tools.add(distance)
    with pytest.raises(ValueError, match="already registered"):
        rt.tools.add(add)
    assert "add" in rt.tools and len(rt.tools) == 2
    assert [t.name for t in rt.tools.find("math")] == ["add", "dist"]
    assert [t.name for t in rt.tools.find("geo")] == ["dist"]
    assert [s["function"]["name"] for s in rt.tools.specs()] == ["add", "dist"]
    assert rt.tools.specs(tag="geo") == [distance.spec()]
    assert await rt.tools.call("add", {"a": 1}) == 3
    assert await rt.tools.call("dist", '{"p": {"x": 3, "y": 4}, "scale": 2}') == 10.0
    with pytest.raises(ToolNotFound, match=r"no tool named 'sub' \(registered: add, dist\)"):
        await rt.tools.call("sub", {})
    with pytest.raises(ToolValidationError, match="invalid arguments for tool 'add'"):
        await rt.tools.call("add", {"a": "x"})
    rt.tools.remove("add")
    with pytest.raises(ToolNotFound):
        rt.tools.remove("add")
    # a plain function is wrapped on registration
    registry = ToolRegistry()

    def mul(a: int, b: int) -> int:
        return a * b

    assert registry.add(mul).name == "mul"
    assert await registry.call("mul", {"a": 6, "b": 7}) == 42
    registry.close()
    await rt.stop()


@uv
async def test_sync_tools_do_not_block_the_loop() -> None:
    together = threading.Barrier(8, timeout=30)  # broken unless 8 run at once
    loop_ran = threading.Event()  # set by the event loop while all 8 block
    blocked: list[str] = []

    @tool
    def nap() -> str:
        together.wait()
        blocked.append(threading.current_thread().name)
        if not loop_ran.wait(30):
            raise RuntimeError("the event loop was blocked while sync tools ran")
        return threading.current_thread().name

    rt = Runtime(tool_workers=8)
    rt.tools.add(nap)

    async def ticker() -> None:
        await until(lambda: len(blocked) == 8)  # the loop turns while every tool blocks
        loop_ran.set()

    t = asyncio.ensure_future(ticker())
    names = await rt.tools.call_many([("nap", {})] * 8, concurrency=8, return_exceptions=False)
    await t
    assert len(set(names)) == 8, names  # eight threads of the tool pool
    assert all(n.startswith("engine-tool") for n in names)
    await rt.stop()


@uv
async def test_call_many_limit_order_and_exceptions() -> None:
    running = 0
    peak = 0

    @tool
    async def work(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        if n == 3:
            raise RuntimeError("three")
        return n * n

    rt = Runtime()
    rt.tools.add(work)
    calls: list[tuple[str, Any]] = [("work", {"n": i}) for i in range(10)]
    calls.append(("work", {"n": "x"}))
    calls.append(("missing", {}))
    results = await rt.tools.call_many(calls, concurrency=3)
    assert peak == 3
    assert [r for i, r in enumerate(results[:10]) if i != 3] == [i * i for i in range(10) if i != 3]
    assert isinstance(results[3], RuntimeError)
    assert isinstance(results[10], ToolValidationError)
    assert isinstance(results[11], ToolNotFound)
    with pytest.raises(RuntimeError, match="three"):
        await rt.tools.call_many([("work", {"n": 3})], return_exceptions=False)
    with pytest.raises(ValueError, match="concurrency must be a positive int"):
        await rt.tools.call_many(calls, concurrency=0)
    with pytest.raises(ToolError, match="expects \\(name, arguments\\) pairs"):
        await rt.tools.call_many(["work"])  # type: ignore[list-item]
    await rt.stop()


@uv
async def test_timeout_async_and_sync() -> None:
    release = threading.Event()
    finished: list[str] = []

    @tool(timeout=0.05)
    async def hang() -> None:
        await asyncio.Event().wait()  # never set: only the timeout ends the call
        finished.append("hang")

    @tool(timeout=0.05)
    def block() -> None:
        release.wait(30)
        finished.append("block")

    rt = Runtime()
    rt.tools.add(hang)
    rt.tools.add(block)
    for name in ("hang", "block"):
        with pytest.raises(ToolTimeout, match=f"tool '{name}' did not finish within 0.05s"):
            await asyncio.wait_for(rt.tools.call(name), 30)
    assert finished == []  # both calls gave up while their tools were still blocked
    release.set()
    await rt.stop()


@uv
async def test_result_cache_size_and_ttl(fake_clock: Callable[..., FakeClock]) -> None:
    clock = fake_clock(engine.tools)
    calls = 0

    @tool(cache=2, ttl=60)
    def square(n: int) -> int:
        nonlocal calls
        calls += 1
        return n * n

    rt = Runtime()
    rt.tools.add(square)
    assert [await rt.tools.call("square", {"n": n}) for n in (2, 2, 3, 2)] == [4, 4, 9, 4]
    assert calls == 2
    await rt.tools.call("square", {"n": 5})  # evicts the least recently used (3)
    assert square.cache is not None and len(square.cache) == 2
    await rt.tools.call("square", {"n": 3})
    assert calls == 4
    clock.advance(61)  # everything expired
    await rt.tools.call("square", {"n": 3})
    assert calls == 5
    assert square.cache.hits == 2
    await rt.stop()


def test_tool_cache_bounds() -> None:
    cache = ToolCache(size=3)
    for i in range(10):
        cache.put(bytes([i]), i)
    assert len(cache) == 3
    assert cache.get(bytes([9])) == 9
    with pytest.raises(ValueError, match="ttl must be positive"):
        ToolCache(ttl=0)
    cache.clear()
    assert len(cache) == 0


@uv
async def test_tool_hooks_and_middleware() -> None:
    rt = Runtime()
    rt.tools.add(add)
    events: list[Any] = []
    rt.hooks.add("pre_tool", lambda call, args: events.append(("pre", call.tool.name, args.a)))
    rt.hooks.add("post_tool", lambda call, result, s: events.append(("post", result)))
    rt.hooks.add("on_error", lambda call, args, exc: events.append(("err", call.kind)))

    async def audit(call: Any, args: Any, call_next: Any) -> Any:
        events.append(("mw", call.kind, call.call_id))
        if call.kind == "tool" and args.a < 0:
            raise PermissionError("negative")
        return await call_next(call, args)

    rt.use(audit)
    assert await rt.tools.call("add", {"a": 1}, call_id="c1") == 3
    with pytest.raises(PermissionError):
        await rt.tools.call("add", {"a": -1}, call_id="c2")
    assert events == [
        ("pre", "add", 1),
        ("mw", "tool", "c1"),
        ("post", 3),
        ("pre", "add", -1),
        ("mw", "tool", "c2"),
        ("err", "tool"),
    ]
    with pytest.raises(ValueError, match="tool_workers must be a positive int"):
        Runtime(tool_workers=0)
    await rt.stop()
