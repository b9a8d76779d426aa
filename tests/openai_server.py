"""A real-socket, OpenAI-compatible test server with fault injection and request counters.

Serves ``POST /v1/chat/completions`` (JSON and SSE streaming, tool calls, JSON-schema
``response_format``, ``stream_options.include_usage``) and ``POST /v1/embeddings`` on
127.0.0.1, from its own thread and event loop, so any test (sync or async, any event loop)
and the real ``openai`` client can use it::

    with OpenAIServer() as srv:       # or the ``openai_server`` pytest fixture
        client = openai.AsyncOpenAI(base_url=srv.url, api_key="sk-test")
        srv.reply = lambda body: ServerReply("hello")   # what the "model" answers
        srv.fail(Fault.http(429, retry_after=1), Fault.reset())   # the next two requests
        ...
        assert srv.requests == 3 and srv.disconnects == 0

Replies: ``srv.reply`` is a function of the decoded request body returning a
:class:`ServerReply` (text, tool calls, usage) or a str; the default echoes the last
message. Faults: :meth:`OpenAIServer.fail` queues one-shot faults (one per request, in
order), :attr:`OpenAIServer.always` applies one to every request. Counters: ``requests``
(every request that reached a handler), ``completed`` (answered in full), ``disconnects``
(clients that went away mid-reply), ``bodies`` (the last 10,000 request bodies),
``arrivals`` (their ``time.monotonic()``), ``auth`` (Authorization headers seen, to prove
the key was sent).

Run it alone (``python -m tests.openai_server``) to serve from another process: it prints
its URL and serves until stdin closes (the benchmarks do this so the server does not share
the client's interpreter).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

__all__ = ["Fault", "OpenAIServer", "ServerReply", "echo", "openai_server", "serving"]


@dataclass(slots=True)
class ServerReply:
    """What the fake model answers. ``tool_calls``: ``(name, arguments_text)`` pairs."""

    text: str = ""
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    usage: tuple[int, int] | None = None  # (prompt, completion); default: counted
    finish_reason: str | None = None


@dataclass(slots=True)
class Fault:
    """One injected failure. Build with the class methods."""

    kind: str
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    after: int = 2  # truncate: SSE chunks sent before the connection drops

    @classmethod
    def http(cls, status: int, *, retry_after: float | str | None = None) -> Fault:
        """Answer with HTTP ``status`` (and a ``Retry-After`` header when given)."""
        h = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls("status", status=status, headers=h)

    @classmethod
    def reset(cls) -> Fault:
        """Drop the connection without answering."""
        return cls("reset")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer only after ``seconds`` (beyond the client's timeout)."""
        return cls("delay", delay=seconds)

    @classmethod
    def malformed(cls) -> Fault:
        """200 with a body that is not JSON."""
        return cls("malformed")

    @classmethod
    def truncate(cls, after: int = 2) -> Fault:
        """Stream ``after`` SSE chunks, then drop the connection (no ``[DONE]``)."""
        return cls("truncate", after=after)

    @classmethod
    def reject_json_schema(cls) -> Fault:
        """400 for a ``json_schema`` response_format (a server without structured output)."""
        return cls("reject_json_schema", status=400)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def echo(body: dict[str, Any]) -> ServerReply:
    """The default reply: ``echo: <last message text>``."""
    msgs = body.get("messages") or [{}]
    return ServerReply("echo: " + _text(msgs[-1].get("content")))


def _count_prompt(body: dict[str, Any]) -> int:
    chars = sum(len(_text(m.get("content"))) for m in body.get("messages") or [])
    return chars // 4 + 1


class OpenAIServer:
    """See the module docs. ``chunk`` is characters per streamed delta, ``stream_delay``
    seconds between deltas (to cancel a stream mid-way)."""

    def __init__(
        self,
        *,
        model: str = "test-model",
        chunk: int = 4,
        stream_delay: float = 0.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.model = model
        self.chunk = chunk
        self.stream_delay = stream_delay
        self.host = host
        self.port = 0
        self.reply: Callable[[dict[str, Any]], ServerReply | str] = echo
        self.always: Fault | None = None
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self.requests = 0
        self.completed = 0
        self.disconnects = 0
        self.paths: dict[str, int] = {}
        self.bodies: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.arrivals: deque[float] = deque(maxlen=10_000)  # time.monotonic() per request
        self.auth: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- control ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The ``base_url`` for the openai client."""
        return f"http://{self.host}:{self.port}/v1"

    def fail(self, *faults: Fault) -> None:
        """Apply ``faults`` to the next requests, one each, in order."""
        with self._lock:
            self._faults.extend(faults)

    def reset_counters(self) -> None:
        with self._lock:
            self.requests = self.completed = self.disconnects = 0
            self.paths.clear()
            self.bodies.clear()
            self._faults.clear()

    def wait(self, predicate: Callable[[OpenAIServer], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate(self)`` holds (True) or ``timeout`` passes (False)."""
        end = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > end:
                return False
            time.sleep(0.002)
        return True

    async def wait_async(
        self, predicate: Callable[[OpenAIServer], bool], timeout: float = 10.0
    ) -> bool:
        """:meth:`wait` for coroutines (does not block the caller's event loop)."""
        end = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.002)
        return True

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> OpenAIServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # surfaced by start()
                errors.append(exc)
                loop.run_until_complete(self._stop())
                loop.close()
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="openai-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("test server did not start within 10 s")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        app = web.Application(client_max_size=8 << 20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        sockets = site._server.sockets if site._server is not None else ()  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        for t in list(self._handlers):
            t.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- handlers --------------------------------------------------------------------------
    def _admit(self, request: web.Request) -> Fault | None:
        with self._lock:
            self.requests += 1
            self.arrivals.append(time.monotonic())
            self.paths[request.path] = self.paths.get(request.path, 0) + 1
            auth = request.headers.get("Authorization")
            if auth is not None and len(self.auth) < 64:
                self.auth.add(auth)
            return self._faults.popleft() if self._faults else self.always

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "request body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be an object")
        with self._lock:
            self.bodies.append(body)
        return body

    async def _fault(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        if fault.kind == "status":
            return _error(fault.status, f"injected {fault.status}", fault.headers)
        if fault.kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay)
            return None
        if fault.kind == "malformed":
            return web.Response(
                status=200, body=b'{"id": "x", "choices": [', content_type="application/json"
            )
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await self._chat_inner(request)
        finally:
            self._handlers.discard(task)

    async def _chat_inner(self, request: web.Request) -> web.StreamResponse:
        fault = self._admit(request)
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        if fault is not None:
            if fault.kind == "reject_json_schema":
                rf = body.get("response_format") or {}
                if rf.get("type") == "json_schema":
                    return _error(400, "response_format json_schema is not supported")
            else:
                resp = await self._fault(fault, request)
                if resp is not None:
                    return resp
        r = self.reply(body)
        reply = ServerReply(r) if isinstance(r, str) else r
        usage = reply.usage or (_count_prompt(body), len(reply.text) // 4 + 1)
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        if body.get("stream"):
            truncate = fault.after if fault is not None and fault.kind == "truncate" else None
            return await self._stream(request, body, reply, usage, finish, truncate)
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
                for i, (n, a) in enumerate(reply.tool_calls)
            ]
        out = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(usage),
        }
        with self._lock:
            self.completed += 1
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        reply: ServerReply,
        usage: tuple[int, int],
        finish: str,
        truncate: int | None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        model = body.get("model", self.model)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            c = {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return b"data: " + orjson.dumps(c) + b"\n\n"

        pieces = [chunk({"role": "assistant", "content": ""})]
        t = reply.text
        pieces += [chunk({"content": t[i : i + self.chunk]}) for i in range(0, len(t), self.chunk)]
        for i, (name, args) in enumerate(reply.tool_calls):
            head = {"index": i, "id": f"call_{i}", "type": "function"}
            pieces.append(chunk({"tool_calls": [{**head, "function": {"name": name}}]}))
            half = len(args) // 2
            for part in (args[:half], args[half:]):
                pieces.append(
                    chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
                )
        pieces.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            u = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0,
                 "model": model, "choices": [], "usage": _usage(usage)}  # fmt: skip
            pieces.append(b"data: " + orjson.dumps(u) + b"\n\n")
        pieces.append(b"data: [DONE]\n\n")
        try:
            for n, piece in enumerate(pieces):
                if truncate is not None and n >= truncate:
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                await resp.write(piece)
                if self.stream_delay:
                    await asyncio.sleep(self.stream_delay)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            with self._lock:
                self.disconnects += 1
            raise
        with self._lock:
            self.completed += 1
        return resp

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        fault = self._admit(request)
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        if fault is not None and fault.kind not in ("reject_json_schema", "truncate"):
            resp = await self._fault(fault, request)
            if resp is not None:
                return resp
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        dim = int(body.get("dimensions") or 8)
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(str(t), dim)}
            for i, t in enumerate(texts)
        ]
        out = {
            "object": "list",
            "data": data,
            "model": body.get("model", self.model),
            "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
        }
        with self._lock:
            self.completed += 1
        return web.Response(body=orjson.dumps(out), content_type="application/json")


def _usage(u: tuple[int, int]) -> dict[str, int]:
    return {"prompt_tokens": u[0], "completion_tokens": u[1], "total_tokens": u[0] + u[1]}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "test_error", "code": str(status)}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _vector(text: str, dim: int) -> list[float]:
    raw = hashlib.blake2b(text.encode(), digest_size=max(8, min(64, dim))).digest()
    v = [(raw[i % len(raw)] - 127.5) / 127.5 for i in range(dim)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


@contextlib.contextmanager
def serving(**options: Any) -> Iterator[OpenAIServer]:
    """``with serving() as srv:`` — a started server, stopped on exit."""
    srv = OpenAIServer(**options).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A started :class:`OpenAIServer` for one test (registered in tests/conftest.py)."""
    with serving() as srv:
        yield srv


def main() -> None:  # pragma: no cover - used by the benchmarks as a subprocess
    srv = OpenAIServer().start()
    print(srv.url, flush=True)
    try:
        sys.stdin.read()
    finally:
        srv.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
