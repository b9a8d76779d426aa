"""One chat request as the pipeline carries it, and the checks that build it.

Everything a caller passes is checked here once (messages shape, tools, sampling
parameters), so providers and the router see only well-formed requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from engine.llm.base import Message, Messages, ToolsArg
from engine.tools import Tool

__all__ = ["ChatRequest", "estimate_tokens", "make_request"]

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
#: Tokens an OpenAI chat message costs beyond its text (role and separators).
_PER_MESSAGE: Final = 4


class ChatRequest(msgspec.Struct, kw_only=True, gc=False):
    """A checked request. ``tools`` are OpenAI specs; ``tool_objs`` the ``Tool`` objects."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    tool_objs: dict[str, Tool] | None = None
    response_format: type[Any] | None = None
    kind: str = "default"
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    extra: dict[str, Any] | None = None
    #: Set by structured output: "json_schema" (native) or "text" (schema in the prompt).
    json_mode: str | None = None

    @property
    def deterministic(self) -> bool:
        """Temperature 0, or unset with a seed: the same request gives the same reply."""
        return self.temperature == 0 or (self.temperature is None and self.seed is not None)

    @property
    def cacheable_tools(self) -> bool:
        """No tools, or only tools that declare their calls free of side effects."""
        if not self.tools:
            return True
        if self.tool_objs is None or len(self.tool_objs) != len(self.tools):
            return False  # raw specs: nothing says they are side-effect free
        return all(t.cacheable for t in self.tool_objs.values())

    def with_messages(self, messages: list[Message]) -> ChatRequest:
        return msgspec.structs.replace(self, messages=messages)


def make_request(
    messages: Messages,
    *,
    tools: ToolsArg = None,
    response_format: type[Any] | None = None,
    kind: str = "default",
    max_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    top_p: float | None = None,
    stop: str | Sequence[str] | None = None,
    timeout: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ChatRequest:
    """Check every argument of ``chat`` and build the request (``ValueError``/``TypeError``)."""
    return checked_request(
        messages, tools, response_format, kind, max_tokens, temperature, seed, top_p, stop,
        timeout, extra,
    )  # fmt: skip


def checked_request(
    messages: Messages,
    tools: ToolsArg,
    response_format: type[Any] | None,
    kind: str,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
    top_p: float | None,
    stop: str | Sequence[str] | None,
    timeout: float | None,
    extra: Mapping[str, Any] | None,
) -> ChatRequest:
    """:func:`make_request` with positional arguments, for the pipeline's calls.

    PERF: ~700 instructions per call fewer than passing eleven keywords
    (benches/llm_call_instructions.py).
    """
    # PERF: a str prompt and no tools (a worker's usual call) skip the helpers' frames:
    # ~800 instructions per call (benches/llm_call_instructions.py)
    if isinstance(messages, str):
        msgs: list[Message] = [{"role": "user", "content": messages}]
    else:
        msgs = _messages(messages)
    specs, objs = (None, None) if tools is None else _tools(tools)
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise ValueError(f"kind must be a non-empty str of at most 64 chars, got {kind!r}")
    if (
        specs is None
        and response_format is None
        and max_tokens is None
        and temperature is None
        and seed is None
        and top_p is None
        and stop is None
        and timeout is None
        and extra is None
    ):
        # PERF: nothing else to check or convert, and every other field its default:
        # ~700 instructions per call (benches/llm_call_instructions.py)
        return ChatRequest(messages=msgs, kind=kind)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    if temperature is not None and not _number_in(temperature, 0.0, 2.0):
        raise ValueError(f"temperature must be within [0, 2] or None, got {temperature!r}")
    if top_p is not None and not _number_in(top_p, 0.0, 1.0):
        raise ValueError(f"top_p must be within [0, 1] or None, got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    if timeout is not None and not (_number_in(timeout, 1e-9, 86400.0 * 365)):
        raise ValueError(f"timeout must be positive seconds or None, got {timeout!r}")
    if response_format is not None and not isinstance(response_format, type):
        raise TypeError(
            f"response_format must be a type (a msgspec Struct), got {type(response_format)}"
        )
    stops: list[str] | None = None
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else list(stop)
        if not all(isinstance(s, str) for s in stops) or len(stops) > 4:
            raise ValueError("stop must be a str or up to 4 strs")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a mapping of request fields, got {type(extra).__name__}")
    return ChatRequest(
        messages=msgs,
        tools=specs,
        tool_objs=objs,
        response_format=response_format,
        kind=kind,
        max_tokens=max_tokens,
        temperature=None if temperature is None else float(temperature),
        seed=seed,
        top_p=None if top_p is None else float(top_p),
        stop=stops,
        timeout=None if timeout is None else float(timeout),
        extra=dict(extra) if extra else None,
    )


def _number_in(v: object, lo: float, hi: float) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        return False
    return lo <= v <= hi


def _messages(messages: Messages) -> list[Message]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or isinstance(messages, bytes | bytearray):
        raise TypeError(f"messages must be a list of dicts or a str, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages must not be empty")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        role = m.get("role")
        if role not in _ROLES:
            raise ValueError(f"messages[{i}] has role {role!r}; expected one of {sorted(_ROLES)}")
        out.append(m if isinstance(m, dict) else dict(m))
    return out


def _tools(tools: ToolsArg) -> tuple[list[dict[str, Any]] | None, dict[str, Tool] | None]:
    if tools is None:
        return None, None
    items: list[Tool | Mapping[str, Any]] = list(tools)
    if not items:
        return None, None
    specs: list[dict[str, Any]] = []
    objs: dict[str, Tool] = {}
    for t in items:
        if isinstance(t, Tool):
            if t.name in objs:
                raise ValueError(f"two tools are named {t.name!r}")
            objs[t.name] = t
            specs.append(t.spec())
        elif isinstance(t, Mapping) and isinstance(t.get("function"), Mapping):
            specs.append(dict(t))
        else:
            raise TypeError(f"tools must be @tool functions or OpenAI tool specs, got {t!r}")
    return specs, objs or None


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return str(content)


def estimate_tokens(req: ChatRequest) -> int:
    """A cautious estimate of the prompt's tokens: one per 3 characters, plus overheads.

    Real tokenizers average about 4 characters per token on English text, so this errs
    high; the reservation is settled with the server's real count afterwards.
    """
    chars = 0
    for m in req.messages:
        content = m.get("content")
        # PERF: plain text content without tool calls (nearly every message) skips the
        # generic walk: ~0.4 us less per call (cProfile of 50,000 scripted calls)
        chars += len(content) if type(content) is str else len(_text_of(content))
        calls = m.get("tool_calls")
        if not calls:
            continue
        for call in calls:
            fn = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(fn, Mapping):
                chars += len(str(fn.get("name", ""))) + len(str(fn.get("arguments", "")))
    n = -(-chars // 3) + _PER_MESSAGE * len(req.messages) + 3
    if req.tools:
        n += -(-len(msgspec.json.encode(req.tools)) // 3)
    return n


def text_of(message: Mapping[str, Any]) -> str:
    """The text of a message's ``content`` (content parts joined)."""
    return _text_of(message.get("content"))
