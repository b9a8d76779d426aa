"""The call surface every LLM shares: results, usage, tool calls, stream deltas, the protocol.

A *message* is an OpenAI-style chat message dict (``{"role": "user", "content": "..."}``);
every provider and the router take the same lists and return the same :class:`ChatResult`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import msgspec

from engine.tools import Tool, ToolRegistry

if TYPE_CHECKING:
    from engine.llm.budget import Budget
    from engine.llm.stream import ChatStream

__all__ = [
    "LLM",
    "CacheKind",
    "ChatResult",
    "Message",
    "Messages",
    "StreamDelta",
    "ToolCallDelta",
    "ToolCallRequest",
    "ToolsArg",
    "Usage",
]

#: One chat message, as the OpenAI chat API spells it.
Message = dict[str, Any]
#: What ``chat`` accepts as messages: a list of message dicts, or a str (one user message).
Messages = Sequence[Mapping[str, Any]] | str
#: ``tools=`` of ``chat``/``stream``: ``@tool`` functions, a registry, or raw OpenAI specs.
ToolsArg = ToolRegistry | Sequence[Tool | Mapping[str, Any]] | None
#: Which kind of cache hit produced a result (None: not from the cache).
CacheKind = Literal["exact", "semantic"] | None


class Usage(msgspec.Struct, frozen=True, gc=False):
    """Tokens of one call (or of a whole tool loop, summed)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def input_tokens(self) -> int:  # the OpenTelemetry GenAI name
        return self.prompt_tokens

    @property
    def output_tokens(self) -> int:
        return self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


class ToolCallRequest(msgspec.Struct, frozen=True):
    """A tool call the model asked for: ``arguments`` is the model's raw JSON text."""

    id: str
    name: str
    arguments: str = "{}"

    @classmethod
    def make(cls, name: str, arguments: Any = None, *, id: str = "") -> ToolCallRequest:
        """A call of ``name`` with ``arguments`` (a dict/Struct, encoded to JSON, or JSON text)."""
        if isinstance(arguments, str):
            text = arguments
        else:
            text = msgspec.json.encode({} if arguments is None else arguments).decode()
        return cls(id or f"call_{name}", name, text)

    def as_message(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls[i]`` entry of an assistant message."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


class ChatResult(msgspec.Struct, kw_only=True):
    """The outcome of one ``chat`` (or of a whole ``run_tools`` loop).

    ``cached`` is ``"exact"`` or ``"semantic"`` when the result came from the cache (so it
    is truthy), else None. ``cost`` is in US dollars from the price table (0.0 when the model
    has no price). ``latency`` is seconds from the call to its result. ``transcript`` lists
    the messages a tool loop added (assistant tool calls, tool results, the final answer).
    """

    text: str = ""
    tool_calls: list[ToolCallRequest] = msgspec.field(default_factory=list)
    parsed: Any = None
    usage: Usage = Usage()
    cost: float = 0.0
    model: str = ""
    provider: str = ""
    cached: CacheKind = None
    latency: float = 0.0
    finish_reason: str | None = None
    transcript: list[Message] = msgspec.field(default_factory=list)

    def message(self) -> Message:
        """This reply as an assistant message, to append to the conversation."""
        msg: Message = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            msg["tool_calls"] = [c.as_message() for c in self.tool_calls]
        return msg


class ToolCallDelta(msgspec.Struct, frozen=True, gc=False):
    """A fragment of a streamed tool call (``index`` says which call it extends)."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


class StreamDelta(msgspec.Struct, frozen=True, gc=False):
    """One streamed piece: some text, tool-call fragments, or the finish reason."""

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None


@runtime_checkable
class LLM(Protocol):
    """What every provider and the :class:`~engine.llm.ModelRouter` offer.

    ``budget`` is one :class:`~engine.llm.Budget` or several (all must allow the call);
    ``cache`` None follows the default (cache deterministic calls when a cache is set),
    True/False forces it. ``agent``/``job``/``tenant`` attribute usage and cost.
    """

    async def chat(
        self,
        messages: Messages,
        *,
        tools: ToolsArg = None,
        response_format: type[Any] | None = None,
        kind: str = "default",
        budget: Budget | Sequence[Budget] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
        cache: bool | None = None,
        agent: str | None = None,
        job: str | None = None,
        tenant: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ChatResult: ...

    def stream(
        self,
        messages: Messages,
        *,
        tools: ToolsArg = None,
        kind: str = "default",
        budget: Budget | Sequence[Budget] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
        cache: bool | None = None,
        agent: str | None = None,
        job: str | None = None,
        tenant: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ChatStream: ...

    async def run_tools(
        self,
        messages: Messages,
        *,
        tools: ToolRegistry | Sequence[Tool],
        max_steps: int = 8,
        kind: str = "default",
        budget: Budget | Sequence[Budget] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        cache: bool | None = None,
        agent: str | None = None,
        job: str | None = None,
        tenant: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ChatResult: ...
