"""ScriptedProvider: deterministic replies chosen by rules, for tests, demos and offline runs.

Rules are tried in order; the first that matches a call answers it. A rule matches on the
call kind, the last message (substring, regular expression, role), the tools offered, the
response format, or any predicate; it answers with text, tool calls or a structured object
(a Struct or dict, sent back as JSON). Every call is recorded in :attr:`ScriptedProvider.calls`.
There is no latency and no network; usage is counted (prompt tokens estimated like the
budget estimate, one completion token per 4 characters) so budgets and costs apply.

::

    llm = ScriptedProvider([
        Rule(Reply.tool("get_weather", city="Paris"), tool="get_weather", role="user"),
        Rule(Reply("Sunny in Paris."), role="tool"),
    ])
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Final

import msgspec

from engine.errors import ScriptError
from engine.llm.base import ChatResult, Message, StreamDelta, ToolCallDelta, ToolCallRequest, Usage
from engine.llm.provider import Provider
from engine.llm.request import ChatRequest, estimate_tokens, text_of
from engine.llm.structured import json_schema, prompt_messages
from engine.llm.telemetry import CallSpan

__all__ = ["Reply", "Rule", "ScriptedCall", "ScriptedProvider"]

_CHUNK: Final = 8  # characters per streamed text delta
_NO_TOOLS: Final[list[str]] = []  # shared by recorded calls offering no tools (never mutated)


class Reply:
    """What a rule answers: ``text``, ``tool_calls``, or ``parsed`` (sent as JSON text).

    ``usage`` overrides the counted usage; ``finish_reason`` defaults to ``tool_calls`` when
    there are tool calls, else ``stop``.
    """

    __slots__ = ("finish_reason", "text", "tool_calls", "usage")

    def __init__(
        self,
        text: str = "",
        *,
        tool_calls: Sequence[ToolCallRequest] = (),
        parsed: Any = None,
        usage: Usage | None = None,
        finish_reason: str | None = None,
    ) -> None:
        if parsed is not None:
            if text:
                raise ValueError("a Reply has text or parsed, not both")
            text = msgspec.json.encode(parsed).decode()
        self.text = text
        self.tool_calls = list(tool_calls)
        self.usage = usage
        self.finish_reason = finish_reason or ("tool_calls" if self.tool_calls else "stop")

    @classmethod
    def tool(cls, name: str, /, _id: str = "", **arguments: Any) -> Reply:
        """A reply calling tool ``name`` with keyword ``arguments``."""
        return cls(tool_calls=[ToolCallRequest.make(name, arguments, id=_id or f"call_{name}")])

    @classmethod
    def tools(cls, *calls: tuple[str, Any]) -> Reply:
        """A reply calling several tools at once: ``Reply.tools(("a", {...}), ("b", {...}))``."""
        return cls(
            tool_calls=[
                ToolCallRequest.make(n, a, id=f"call_{i}_{n}") for i, (n, a) in enumerate(calls)
            ]
        )

    def __repr__(self) -> str:
        what = [f"{c.name}()" for c in self.tool_calls] or [repr(self.text[:40])]
        return f"Reply({', '.join(what)})"


class ScriptedCall(msgspec.Struct, frozen=True, gc=False):
    """One call the provider received, as recorded."""

    # gc=False: up to max_calls of them are kept, none refers back to anything holding it

    kind: str
    messages: list[Message]
    tools: list[str]
    response_format: type[Any] | None
    max_tokens: int | None
    temperature: float | None
    stream: bool

    @property
    def last(self) -> str:
        """The text of the last message."""
        return text_of(self.messages[-1]) if self.messages else ""


Answer = Reply | str | Callable[[ScriptedCall], "Reply | str"]


class Rule:
    """Answer with ``reply`` when every given condition holds (see the module docs).

    ``contains``/``pattern`` test the last message's text, ``role`` its role; ``tool``
    needs that tool offered; ``response_format`` that type requested; ``when`` any
    predicate of the :class:`ScriptedCall`. ``times`` limits how often the rule answers.
    ``reply`` may be a callable of the call, returning a Reply or text.
    """

    __slots__ = (
        "contains", "kind", "pattern", "reply", "response_format", "role", "times", "tool",
        "used", "when",
    )  # fmt: skip

    def __init__(
        self,
        reply: Answer,
        *,
        kind: str | None = None,
        contains: str | None = None,
        pattern: str | re.Pattern[str] | None = None,
        role: str | None = None,
        tool: str | None = None,
        response_format: type[Any] | None = None,
        when: Callable[[ScriptedCall], bool] | None = None,
        times: int | None = None,
    ) -> None:
        if times is not None and times < 1:
            raise ValueError(f"times must be a positive int or None, got {times!r}")
        self.reply = Reply(reply) if isinstance(reply, str) else reply
        self.kind = kind
        self.contains = contains
        self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        self.role = role
        self.tool = tool
        self.response_format = response_format
        self.when = when
        self.times = times
        self.used = 0

    def matches(self, call: ScriptedCall) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.kind is not None and call.kind != self.kind:
            return False
        last = call.messages[-1] if call.messages else {}
        if self.role is not None and last.get("role") != self.role:
            return False
        text = call.last
        if self.contains is not None and self.contains not in text:
            return False
        if self.pattern is not None and not self.pattern.search(text):
            return False
        if self.tool is not None and self.tool not in call.tools:
            return False
        if self.response_format is not None and call.response_format is not self.response_format:
            return False
        return self.when is None or bool(self.when(call))

    def answer(self, call: ScriptedCall) -> Reply:
        self.used += 1
        return _reply(self.reply, call)


def _reply(answer: Answer, call: ScriptedCall) -> Reply:
    """A rule's (or the default's) answer to ``call`` as a Reply (str replies are made into
    Replies once, when the rule is built)."""
    if isinstance(answer, Reply):
        return answer
    r = answer(call) if callable(answer) else answer
    return Reply(r) if isinstance(r, str) else r


class ScriptedProvider(Provider):
    """A provider that answers by rules (see the module docs); ``default`` answers the rest.

    With no matching rule and no ``default``, a call raises :class:`~engine.errors.ScriptError`
    naming the last message. ``calls`` records every call (the last ``max_calls``);
    ``rules`` may be extended with :meth:`add`.
    """

    provider_name = "scripted"
    uses_io = False

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        *,
        default: Answer | None = None,
        model: str = "scripted",
        max_calls: int = 100_000,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.rules: list[Rule] = list(rules)
        for r in self.rules:
            if not isinstance(r, Rule):
                raise TypeError(f"rules must be Rule objects, got {r!r}")
        self.default = default
        self._default = Reply(default) if isinstance(default, str) else default
        self.calls: deque[ScriptedCall] = deque(maxlen=max_calls)
        # a subclass answering in its own _complete (e.g. one that waits) goes through it
        self._direct = type(self)._complete is ScriptedProvider._complete
        self._at_once = self._direct and type(self)._send is ScriptedProvider._send

    def add(self, reply: Answer, **conditions: Any) -> Rule:
        """Append ``Rule(reply, **conditions)`` and return it."""
        rule = Rule(reply, **conditions)
        self.rules.append(rule)
        return rule

    def _record(self, req: ChatRequest, stream: bool) -> tuple[ScriptedCall, Reply]:
        messages = req.messages
        if req.response_format is not None:
            json_schema(req.response_format)
            if not self.supports_json_schema:
                messages = prompt_messages(req)
        tools = req.tools
        call = ScriptedCall(
            req.kind,
            list(messages),
            [t["function"]["name"] for t in tools] if tools else _NO_TOOLS,
            req.response_format,
            req.max_tokens,
            req.temperature,
            stream,
        )
        self.calls.append(call)
        for rule in self.rules:
            if rule.matches(call):
                return call, rule.answer(call)
        default = self._default
        if default is not None:
            # PERF: a Reply answers as itself without _reply's frame: ~400 instructions
            return call, default if isinstance(default, Reply) else _reply(default, call)
        raise ScriptError(
            f"{self.name}: no rule matches a {req.kind!r} call whose last message is "
            f"{call.last[:200]!r}"
        )

    def _result(self, req: ChatRequest, reply: Reply) -> ChatResult:
        usage = reply.usage
        calls = reply.tool_calls
        if usage is None:
            chars = len(reply.text)
            if calls:
                chars += sum(len(c.name) + len(c.arguments) for c in calls)
            usage = Usage(estimate_tokens(req), -(-chars // 4))
        return ChatResult(
            text=reply.text,
            tool_calls=list(calls) if calls else [],
            usage=usage,
            model=self.model,
            provider=self.provider_name,
            finish_reason=reply.finish_reason,
        )

    async def _complete(self, req: ChatRequest) -> ChatResult:
        _, reply = self._record(req, False)
        return self._result(req, reply)

    def _answer(self, req: ChatRequest) -> ChatResult | None:
        if not self.limits.unlimited:
            return None  # a limit may make the call wait
        _, reply = self._record(req, False)
        return self._result(req, reply)

    async def _send(self, req: ChatRequest, span: CallSpan) -> ChatResult:
        if self._direct and self.limits.unlimited:
            # PERF: the reply at once, without the _complete() coroutine (no timeout to
            # arm, no limit to wait for, ScriptError is no ProviderError to count): ~0.4 us
            # of a ~4.7 us call (thread CPU time over 100,000 calls)
            _, reply = self._record(req, False)
            return self._result(req, reply)
        return await super()._send(req, span)

    async def _stream_raw(self, req: ChatRequest) -> AsyncIterator[StreamDelta | ChatResult]:
        _, reply = self._record(req, True)
        text = reply.text
        for i in range(0, len(text), _CHUNK):
            yield StreamDelta(text=text[i : i + _CHUNK])
        if reply.tool_calls:
            yield StreamDelta(
                tool_calls=tuple(
                    ToolCallDelta(i, c.id, c.name, c.arguments)
                    for i, c in enumerate(reply.tool_calls)
                )
            )
        yield StreamDelta(finish_reason=reply.finish_reason)
        yield self._result(req, reply)
