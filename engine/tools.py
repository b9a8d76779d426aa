"""Tools: typed functions an LLM can call, with schemas, validation, timeouts and a cache.

``@tool`` turns a typed function (sync or async) into a :class:`Tool`: its parameters
become a msgspec Struct, which gives the JSON schema for function calling and strict
argument validation (errors name the field). Parameter types may be msgspec Structs,
dataclasses, TypedDicts and pydantic models; parameter descriptions come from the
docstring (Google or NumPy style); ``spec(strict=True)`` is OpenAI's strict schema.
Sync tools run in the registry's bounded thread pool so they never block the event loop.
``rt.tools`` is the :class:`ToolRegistry`: discovery by name and tag, single and parallel
calls through the runtime's middleware and hooks.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
import typing
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, Final, overload

import msgspec

from engine._tool_schema import build_parameters, strict_schema
from engine.errors import ToolError, ToolNotFound, ToolTimeout, ToolValidationError

if TYPE_CHECKING:
    from engine.runtime._hooks import Middleware, Next
    from engine.runtime._local import Runtime

__all__ = ["Tool", "ToolCache", "ToolCall", "ToolRegistry", "tool"]

_MISSING: Final = object()
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what function-calling APIs accept


class ToolCache:
    """LRU cache bounded by ``size`` entries and ``ttl`` seconds (``ttl=None``: no expiry)."""

    __slots__ = ("_data", "hits", "misses", "size", "ttl")

    def __init__(self, size: int = 256, ttl: float | None = None) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"cache size must be a positive int, got {size!r}")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"cache ttl must be positive seconds or None, got {ttl!r}")
        self.size = size
        self.ttl = ttl
        self._data: OrderedDict[bytes, tuple[float, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> Any:
        item = self._data.get(key)
        if item is None:
            self.misses += 1
            return _MISSING
        expires, value = item
        if expires and expires < time.monotonic():
            del self._data[key]
            self.misses += 1
            return _MISSING
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: bytes, value: Any) -> None:
        expires = time.monotonic() + self.ttl if self.ttl is not None else 0.0
        self._data[key] = (expires, value)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class Tool:
    """A callable tool. Calling it directly calls the wrapped function unchanged."""

    __slots__ = (
        "__wrapped__",
        "_params",
        "_strict",
        "args_type",
        "cache",
        "cacheable",
        "description",
        "fn",
        "is_async",
        "name",
        "parameters",
        "tags",
        "timeout",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        tags: Iterable[str] = (),
        timeout: float | None = None,
        cache: ToolCache | None = None,
        cacheable: bool | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@tool expects a function, got {type(fn).__name__}")
        self.fn = fn
        self.__wrapped__ = fn
        self.name: str = name if name is not None else fn.__name__
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"tool name {self.name!r} must be 1-64 ASCII letters, digits, '_' or '-'"
            )
        self._params = build_parameters(fn, self.name)
        self._strict: dict[str, Any] | None = None
        summary = self._params.summary
        self.description: str = description if description is not None else summary
        self.tags: frozenset[str] = frozenset(tags)
        if timeout is not None and not timeout > 0:
            raise ValueError(f"tool timeout must be positive seconds or None, got {timeout!r}")
        self.timeout = timeout
        self.cache = cache
        # Whether an LLM reply that offered this tool may be cached (engine.llm): only for
        # tools without side effects; a tool with a result cache says so already.
        self.cacheable: bool = cache is not None if cacheable is None else bool(cacheable)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.args_type = self._params.struct
        self.parameters: dict[str, Any] = self._params.schema

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"

    def spec(self, *, strict: bool = False) -> dict[str, Any]:
        """OpenAI-style function-calling spec: ``{"type": "function", "function": {...}}``.

        ``strict=True`` gives the schema of OpenAI's strict mode (every property required,
        optional ones nullable, objects closed) and ``"strict": true``; a parameter strict
        mode cannot express (a free-form mapping, ``Any``) raises TypeError naming it.
        """
        function: dict[str, Any] = {"name": self.name, "description": self.description}
        if strict:
            if self._strict is None:
                self._strict = strict_schema(self.parameters, self.name)
            function["parameters"] = self._strict
            function["strict"] = True
        else:
            function["parameters"] = self.parameters
        return {"type": "function", "function": function}

    def validate(self, arguments: Any) -> msgspec.Struct:
        """Check ``arguments`` (a dict, or JSON text/bytes from a model) against the schema."""
        try:
            if arguments is None:
                arguments = {}
            elif isinstance(arguments, self.args_type):
                return arguments
            hook = self._params.dec_hook
            if isinstance(arguments, (str, bytes, bytearray, memoryview)):
                if not self._params.optional:
                    return msgspec.json.decode(arguments, type=self.args_type, dec_hook=hook)
                arguments = msgspec.json.decode(arguments)
            if not isinstance(arguments, dict):
                raise ToolValidationError(
                    f"arguments for tool {self.name!r} must be an object, "
                    f"got {type(arguments).__name__}"
                )
            if self._params.optional:  # a null for an optional parameter means its default
                arguments = {
                    k: v
                    for k, v in arguments.items()
                    if v is not None or k not in self._params.optional
                }
            return msgspec.convert(arguments, self.args_type, strict=True, dec_hook=hook)
        except msgspec.ValidationError as exc:
            raise ToolValidationError(f"invalid arguments for tool {self.name!r}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ToolValidationError(
                f"arguments for tool {self.name!r} are not valid JSON: {exc}"
            ) from None

    async def run(self, args: msgspec.Struct, executor: ThreadPoolExecutor | None = None) -> Any:
        """Run with validated ``args`` (no hooks, no middleware); honours timeout and cache."""
        key = b""
        if self.cache is not None:
            key = msgspec.msgpack.encode(args)
            hit = self.cache.get(key)
            if hit is not _MISSING:
                return hit
        kwargs = {f: getattr(args, f) for f in args.__struct_fields__}
        if self.is_async:
            coro: Awaitable[Any] = self.fn(**kwargs)
        else:
            loop = asyncio.get_running_loop()
            coro = loop.run_in_executor(executor, partial(self.fn, **kwargs))
        if self.timeout is None:
            result = await coro
        else:
            try:
                async with asyncio.timeout(self.timeout):
                    result = await coro
            except TimeoutError:
                raise ToolTimeout(
                    f"tool {self.name!r} did not finish within {self.timeout}s"
                ) from None
        if self.cache is not None:
            self.cache.put(key, result)
        return result


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Iterable[str] = (),
    timeout: float | None = None,
    cache: int | None = None,
    ttl: float | None = None,
    cacheable: bool | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Iterable[str] = (),
    timeout: float | None = None,
    cache: int | None = None,
    ttl: float | None = None,
    cacheable: bool | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a typed function a :class:`Tool`.

    ``tags`` are capability tags for discovery, ``timeout`` bounds each call (seconds),
    ``cache=N`` keeps up to N results (keyed by the validated arguments) for ``ttl``
    seconds. ``cacheable=True`` says the tool has no side effects, so LLM replies that
    offered it may come from the LLM cache (default: only when ``cache`` is set).
    Parameters must be annotated; the first docstring paragraph is the description.
    """

    def make(f: Callable[..., Any]) -> Tool:
        store = ToolCache(cache, ttl) if cache is not None else None
        if store is None and ttl is not None:
            raise ValueError("ttl= needs cache=<size>")
        return Tool(
            f,
            name=name,
            description=description,
            tags=tags,
            timeout=timeout,
            cache=store,
            cacheable=cacheable,
        )

    return make(fn) if fn is not None else make


class ToolCall:
    """Context of one tool call, as middleware and hooks see it (``kind == "tool"``)."""

    __slots__ = ("arguments", "call_id", "registry", "runtime", "tool")

    kind: typing.ClassVar[str] = "tool"

    def __init__(self, registry: ToolRegistry, tool: Tool, arguments: Any, call_id: str) -> None:
        self.registry = registry
        self.runtime = registry._runtime
        self.tool = tool
        self.arguments = arguments
        self.call_id = call_id

    def __repr__(self) -> str:
        return f"<ToolCall {self.tool.name} {self.call_id}>"


class ToolRegistry:
    """A runtime's tools: ``add``, ``get``, ``find`` by tag, ``specs``, ``call``, ``call_many``."""

    def __init__(self, runtime: Runtime | None = None, *, workers: int = 8) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"tool_workers must be a positive int, got {workers!r}")
        self._runtime = runtime
        self._tools: dict[str, Tool] = {}
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._chain: Next = _run_tool
        self._seq = 0

    def _rebuild(self, middleware: tuple[Middleware, ...]) -> None:
        from engine.runtime._hooks import compose

        self._chain = compose(middleware, _run_tool)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The bounded pool that runs sync tools (created on first use)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="engine-tool")
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- registry ------------------------------------------------------------------
    def add(self, fn: Tool | Callable[..., Any]) -> Tool:
        """Register a tool (a plain typed function is wrapped with ``@tool``)."""
        t = fn if isinstance(fn, Tool) else tool(fn)
        if t.name in self._tools:
            raise ValueError(f"a tool named {t.name!r} is already registered")
        self._tools[t.name] = t
        return t

    def remove(self, name: str) -> None:
        if self._tools.pop(name, None) is None:
            raise ToolNotFound(f"no tool named {name!r}")

    def get(self, name: str) -> Tool:
        t = self._tools.get(name)
        if t is None:
            known = ", ".join(sorted(self._tools)) or "none"
            raise ToolNotFound(f"no tool named {name!r} (registered: {known})")
        return t

    def find(self, tag: str) -> list[Tool]:
        """Tools carrying capability ``tag``, by name."""
        return [t for n, t in sorted(self._tools.items()) if tag in t.tags]

    def specs(self, tag: str | None = None) -> list[dict[str, Any]]:
        """Function-calling specs of all tools (or those tagged ``tag``)."""
        tools = self.find(tag) if tag is not None else [self._tools[n] for n in sorted(self._tools)]
        return [t.spec() for t in tools]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> typing.Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    # -- calls ---------------------------------------------------------------------
    async def call(self, name: str, arguments: Any = None, *, call_id: str | None = None) -> Any:
        """Validate ``arguments`` and run tool ``name`` through middleware and hooks."""
        t = self.get(name)
        args = t.validate(arguments)
        if call_id is None:
            self._seq += 1
            call_id = f"call_{self._seq}"
        call = ToolCall(self, t, args, call_id)
        hooks = self._runtime.hooks if self._runtime is not None else None
        if hooks is None:
            return await self._chain(call, args)
        try:
            for hook in hooks.pre_tool:
                hook(call, args)
            t0 = time.perf_counter()
            result = await self._chain(call, args)
            seconds = time.perf_counter() - t0
            for hook in hooks.post_tool:
                hook(call, result, seconds)
        except Exception as exc:
            if hooks.on_error:
                hooks.call("on_error", call, args, exc)
            raise
        return result

    async def call_many(
        self,
        calls: Iterable[tuple[str, Any]],
        *,
        concurrency: int = 8,
        return_exceptions: bool = True,
    ) -> list[Any]:
        """Run many ``(name, arguments)`` calls, at most ``concurrency`` at a time.

        Results come back in call order; with ``return_exceptions`` (default) a failed
        call's slot holds its exception instead of aborting the others.
        """
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
        gate = asyncio.Semaphore(concurrency)

        async def one(name: str, arguments: Any) -> Any:
            async with gate:
                return await self.call(name, arguments)

        items = list(calls)
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise ToolError(f"call_many expects (name, arguments) pairs, got {item!r}")
        return await asyncio.gather(
            *(one(n, a) for n, a in items), return_exceptions=return_exceptions
        )


async def _run_tool(call: ToolCall, args: Any) -> Any:
    return await call.tool.run(args, call.registry.executor)
