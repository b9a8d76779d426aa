"""OpenAIProvider: any OpenAI-compatible chat server through the official ``openai`` client.

The client (``openai.AsyncOpenAI``, created on first use in the running event loop) does
the transport, authentication and base URL; the provider posts the request body itself and
decodes the reply with msgspec instead of the client's pydantic models (measured: about
0.5 ms less per call, ``benches/bench_llm.py``). The client never retries
(``max_retries=0``): the :class:`~engine.llm.ModelRouter` does. Every failure becomes a
:class:`~engine.errors.ProviderError` that says whether it is retryable and never holds the
API key.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import msgspec
import orjson

from engine.errors import LLMError, ProviderError
from engine.llm.base import ChatResult, StreamDelta, ToolCallDelta, ToolCallRequest, Usage
from engine.llm.provider import Provider
from engine.llm.request import ChatRequest, estimate_tokens
from engine.llm.stream import ToolCallAccumulator
from engine.llm.structured import prompt_messages, response_format_param
from engine.observe.logs import redact

__all__ = ["OpenAIProvider", "default_transport"]

_JSON: Final = {"Content-Type": "application/json"}
_RETRYABLE: Final = frozenset({408, 409, 425, 429})
_MAX_MESSAGE: Final = 300


class _Secret:
    """Holds a credential; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


# -- the reply, as msgspec decodes it ------------------------------------------------------
class _Fn(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct, gc=False):
    id: str | None = None
    function: _Fn | None = None
    index: int = 0


class _Message(msgspec.Struct, gc=False):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct, gc=False):
    message: _Message | None = None
    delta: _Message | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completion(msgspec.Struct, gc=False):
    choices: list[_Choice] = []
    usage: _Usage | None = None


_decode = msgspec.json.Decoder(_Completion).decode


def default_transport() -> str:
    """``"aiohttp"`` when the openai package's aiohttp client is installed, else ``"httpx"``.

    Measured in ``benches/bench_llm.py::test_transport_64_in_flight`` (the result is in
    docs/performance.md): at 64 calls in flight the aiohttp-backed client serves more calls/s.
    """
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return "httpx"
    return "aiohttp"


class OpenAIProvider(Provider):
    """One model on an OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, ...).

    ``base_url`` and ``api_key`` default to ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``; a
    server reached through ``base_url`` needs no key (a placeholder is sent). ``transport``
    is ``"aiohttp"`` or ``"httpx"`` (default: :func:`default_transport`); ``client`` is a
    ready ``openai.AsyncOpenAI`` to use instead (its own retries are then yours to turn off).
    ``max_tokens_param`` names the reply limit field (``max_completion_tokens`` for OpenAI's
    reasoning models). Other keywords: see :class:`~engine.llm.Provider`.
    """

    provider_name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        transport: str | None = None,
        client: Any = None,
        default_headers: Mapping[str, str] | None = None,
        max_tokens_param: str = "max_tokens",
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key and client is None:
            if base_url is None:
                raise LLMError(
                    "OpenAIProvider needs an API key: pass api_key= or set OPENAI_API_KEY "
                    "(or base_url= for a local server)"
                )
            key = "none"  # local OpenAI-compatible servers ignore it
        self.base_url = base_url
        self._key = _Secret(key or "")
        self._org = organization
        self._project = project
        self.transport = transport or default_transport()
        if self.transport not in ("aiohttp", "httpx"):
            raise ValueError(f"transport must be 'aiohttp' or 'httpx', got {self.transport!r}")
        self._headers = dict(default_headers or {})
        self.max_tokens_param = max_tokens_param
        self._client: Any = client
        self._own_client = client is None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        where = f" at {self.base_url}" if self.base_url else ""
        return f"<OpenAIProvider {self.name}{where}>"

    # -- the client ------------------------------------------------------------------------
    def _get_client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and (not self._own_client or self._loop is loop):
            return self._client
        import openai

        http: Any = None
        if self.transport == "aiohttp":
            http = openai.DefaultAioHttpClient(timeout=self.timeout + 5)
        self._client = openai.AsyncOpenAI(
            api_key=self._key.get(),
            base_url=self.base_url,
            organization=self._org,
            project=self._project,
            max_retries=0,
            timeout=self.timeout + 5,  # the provider's own timeout fires first
            default_headers=self._headers or None,
            http_client=http,
        )
        self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client (connections); the provider reopens one if used again."""
        client, self._client = self._client, None
        if client is not None and self._own_client:
            await client.close()

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests --------------------------------------------------------------------------
    def _body(self, req: ChatRequest, *, stream: bool = False) -> bytes:
        messages = req.messages
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if req.response_format is not None:
            if self.supports_json_schema:
                body["response_format"] = response_format_param(req.response_format)
            else:
                body["messages"] = prompt_messages(req)
        if req.tools:
            body["tools"] = req.tools
        if req.max_tokens is not None:
            body[self.max_tokens_param] = req.max_tokens
        if req.temperature is not None:
            body["temperature"] = req.temperature
        if req.top_p is not None:
            body["top_p"] = req.top_p
        if req.seed is not None:
            body["seed"] = req.seed
        if req.stop:
            body["stop"] = req.stop
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if req.extra:
            body.update(req.extra)
        try:
            return orjson.dumps(body)
        except TypeError as exc:
            raise ValueError(f"the request is not JSON-serialisable: {exc}") from None

    async def _post(self, req: ChatRequest, *, stream: bool) -> Any:
        import httpx2

        client = self._get_client()
        try:
            return await client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                content=self._body(req, stream=stream),
                options={"headers": _JSON},
                stream=stream,
            )
        except Exception as exc:
            raise self._error(exc) from None

    async def _complete(self, req: ChatRequest) -> ChatResult:
        sent_schema = self._sends_schema(req)
        try:
            resp = await self._post(req, stream=False)
        except ProviderError as exc:
            if sent_schema and self._schema_refused(req, exc):
                resp = await self._post(req, stream=False)
            else:
                raise
        try:
            content = await resp.aread()
        except Exception as exc:
            raise self._error(exc) from None
        try:
            c = _decode(content)
            msg = c.choices[0].message
            if msg is None:
                raise IndexError
        except (msgspec.DecodeError, msgspec.ValidationError, IndexError):
            raise ProviderError(
                "malformed reply (not a chat completion)",
                provider=self.provider_name,
                model=self.model,
                status=None,
                retryable=True,
            ) from None
        calls = [
            ToolCallRequest(
                tc.id or f"call_{i}",
                (tc.function.name if tc.function else None) or "",
                (tc.function.arguments if tc.function else None) or "{}",
            )
            for i, tc in enumerate(msg.tool_calls or ())
        ]
        text = msg.content or ""
        u = c.usage
        usage = (
            Usage(u.prompt_tokens, u.completion_tokens)
            if u is not None
            else Usage(estimate_tokens(req), -(-len(text) // 4))
        )
        return ChatResult(
            text=text,
            tool_calls=calls,
            usage=usage,
            model=self.model,
            provider=self.provider_name,
            finish_reason=c.choices[0].finish_reason,
        )

    def _sends_schema(self, req: ChatRequest) -> bool:
        """Whether the body built for ``req`` now carries a json_schema response format."""
        return req.response_format is not None and self.supports_json_schema

    def _schema_refused(self, req: ChatRequest, exc: ProviderError) -> bool:
        """A 400 about ``response_format`` to a request that sent json_schema: this server
        lacks it; ask in text (from now on, and this request again). Decided by what this
        request sent, not by the shared flag: calls in flight when the first refusal
        flipped it are asked again too, instead of failing with the 400."""
        if (
            exc.status == 400
            and req.response_format is not None
            and ("response_format" in str(exc) or "json_schema" in str(exc))
        ):
            self.supports_json_schema = False
            return True
        return False

    async def _stream_raw(self, req: ChatRequest) -> AsyncIterator[StreamDelta | ChatResult]:
        sent_schema = self._sends_schema(req)
        try:
            resp = await self._post(req, stream=True)
        except ProviderError as exc:
            if sent_schema and self._schema_refused(req, exc):
                resp = await self._post(req, stream=True)
            else:
                raise
        parts: list[str] = []
        calls = ToolCallAccumulator()
        usage: Usage | None = None
        finish: str | None = None
        done = False
        try:
            lines = resp.aiter_lines()
            while True:
                try:
                    line = await anext(lines)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    raise self._error(exc) from None
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = _decode(data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    raise self._malformed("malformed stream chunk") from None
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for ch in chunk.choices[:1]:
                    d = ch.delta
                    deltas: tuple[ToolCallDelta, ...] = ()
                    if d is not None and d.tool_calls:
                        deltas = tuple(
                            ToolCallDelta(
                                tc.index,
                                tc.id or "",
                                (tc.function.name if tc.function else None) or "",
                                (tc.function.arguments if tc.function else None) or "",
                            )
                            for tc in d.tool_calls
                        )
                        for td in deltas:
                            calls.add(td)
                    text = (d.content if d is not None else None) or ""
                    if ch.finish_reason:
                        finish = ch.finish_reason
                    if text or deltas or ch.finish_reason:
                        if text:
                            parts.append(text)
                        yield StreamDelta(text, deltas, ch.finish_reason)
        finally:
            await resp.aclose()
        if not done and finish is None:
            raise self._malformed("the stream ended before the reply finished")
        text = "".join(parts)
        if usage is None:
            usage = Usage(estimate_tokens(req), -(-len(text) // 4))
        yield ChatResult(
            text=text,
            tool_calls=calls.calls(),
            usage=usage,
            model=self.model,
            provider=self.provider_name,
            finish_reason=finish,
        )

    # -- errors ----------------------------------------------------------------------------
    def _malformed(self, what: str) -> ProviderError:
        return ProviderError(what, provider=self.provider_name, model=self.model, retryable=True)

    def _clean(self, text: str) -> str:
        key = self._key.get()
        if key and len(key) >= 4:
            text = text.replace(key, "[REDACTED]")
        return redact(text)[:_MAX_MESSAGE]

    def _error(self, exc: BaseException) -> ProviderError:
        """Map a client/transport exception to a ProviderError without leaking the key."""
        import openai

        p, m = self.provider_name, self.model
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = ""
            body = exc.body
            if isinstance(body, Mapping):
                err = body.get("error", body)
                detail = str(err.get("message", "")) if isinstance(err, Mapping) else str(err)
            msg = f"HTTP {status}" + (f": {self._clean(detail)}" if detail else "")
            return ProviderError(
                msg,
                provider=p,
                model=m,
                status=status,
                retryable=status in _RETRYABLE or status >= 500,
                retry_after=_retry_after(exc.response.headers),
            )
        if isinstance(exc, openai.APITimeoutError) and not _dropped(exc):
            return ProviderError(
                "request timed out", provider=p, model=m, retryable=True, timeout=True
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = type(_root(exc)).__name__
            return ProviderError(
                f"connection failed ({cause})", provider=p, model=m, retryable=True
            )
        if isinstance(exc, openai.OpenAIError):
            return ProviderError(
                f"{type(exc).__name__}: {self._clean(str(exc))}", provider=p, model=m
            )
        if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in (
            "httpx2",
            "httpcore2",
            "aiohttp",
        ):
            return ProviderError(
                f"connection failed ({type(exc).__name__})", provider=p, model=m, retryable=True
            )
        return ProviderError(
            f"unexpected {type(exc).__name__}: {self._clean(str(exc))}",
            provider=p,
            model=m,
            retryable=True,
        )


def _root(exc: BaseException) -> BaseException:
    """The innermost cause of ``exc`` (bounded walk)."""
    for _ in range(8):
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def _dropped(exc: BaseException) -> bool:
    """A "timeout" that was really a dropped connection (the aiohttp transport maps
    ``ServerDisconnectedError`` to ``ConnectTimeout``)."""
    root = _root(exc)
    return isinstance(root, ConnectionError) or type(root).__name__ in (
        "ServerDisconnectedError",
        "ClientOSError",
        "ClientConnectionResetError",
        "ClientPayloadError",
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            v = float(ms) / 1000.0
            return v if v >= 0 and v == v else None
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra is None:
        return None
    try:
        v = float(ra)
        return v if v >= 0 and v == v and v != float("inf") else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())
