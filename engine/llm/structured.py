"""Structured output: ``chat(..., response_format=SomeStruct)`` returns ``.parsed``.

Where the provider supports it the request carries an OpenAI ``json_schema`` response
format built from the type's msgspec JSON schema; elsewhere the schema goes into the prompt
and the reply's JSON is taken from its text (code fences allowed). A reply that does not
validate gets one repair prompt naming the validation error; if the repaired reply fails
too, :class:`~engine.errors.StructuredOutputError` carries the raw text.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

import msgspec

from engine.errors import StructuredOutputError
from engine.llm.base import Message
from engine.llm.request import ChatRequest

if TYPE_CHECKING:
    from engine.llm.base import ChatResult
    from engine.llm.pipeline import BaseLLM, CallContext

__all__ = ["chat_structured", "json_schema", "parse", "prompt_messages", "response_format_param"]

_FENCE: Final = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
_SCHEMAS: dict[type[Any], dict[str, Any]] = {}
_NAME: Final = re.compile(r"[^A-Za-z0-9_-]")


def json_schema(tp: type[Any]) -> dict[str, Any]:
    """The JSON schema of ``tp``, its root an object rather than a ``$ref`` (cached)."""
    s = _SCHEMAS.get(tp)
    if s is None:
        try:
            s = msgspec.json.schema(tp)
        except TypeError as exc:
            raise TypeError(f"response_format {tp!r} has no JSON schema: {exc}") from None
        ref = s.get("$ref")
        defs = s.get("$defs", {})
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs:
            s = {**defs[ref[8:]], "$defs": defs}  # OpenAI wants an object at the root
        if len(_SCHEMAS) < 1024:
            _SCHEMAS[tp] = s
    return s


def _strict(schema: dict[str, Any]) -> bool:
    """Whether OpenAI's strict mode accepts the schema (every property required, no extras)."""
    return all(_strict_obj(o) for o in [schema, *schema.get("$defs", {}).values()])


def _strict_obj(o: dict[str, Any]) -> bool:
    if o.get("type") != "object":
        return True
    props = o.get("properties", {})
    return set(o.get("required", [])) == set(props)


def response_format_param(tp: type[Any]) -> dict[str, Any]:
    """The OpenAI ``response_format`` for ``tp``: ``{"type": "json_schema", ...}``."""
    schema = json_schema(tp)
    strict = _strict(schema)
    if strict:
        schema = _closed(schema)
    return {
        "type": "json_schema",
        "json_schema": {
            "name": _NAME.sub("_", tp.__name__)[:64] or "response",
            "schema": schema,
            "strict": strict,
        },
    }


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    if out.get("type") == "object":
        out["additionalProperties"] = False
    if "$defs" in out:
        out["$defs"] = {k: _closed(v) for k, v in out["$defs"].items()}
    return out


def prompt_messages(req: ChatRequest) -> list[Message]:
    """The messages with the schema asked for in text (for servers without json_schema)."""
    assert req.response_format is not None
    schema = msgspec.json.encode(json_schema(req.response_format)).decode()
    ask = (
        "Reply with only one JSON value (no prose, no code fence) that validates against "
        f"this JSON schema:\n{schema}"
    )
    return [*req.messages, {"role": "system", "content": ask}]


def _json_text(text: str) -> str:
    m = _FENCE.search(text)
    if m:
        return m.group(1).strip()
    t = text.strip()
    if t[:1] in "{[":
        return t
    starts = [i for i in (t.find("{"), t.find("[")) if i >= 0]
    if not starts:
        return t
    start = min(starts)
    end = max(t.rfind("}"), t.rfind("]"))
    return t[start : end + 1] if end > start else t[start:]


def parse(text: str, tp: type[Any]) -> tuple[Any, str | None]:
    """``(value, None)`` when ``text`` holds JSON valid as ``tp``, else ``(None, error)``."""
    try:
        return msgspec.json.decode(_json_text(text), type=tp), None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return None, str(exc)


async def chat_structured(llm: BaseLLM, req: ChatRequest, ctx: CallContext) -> ChatResult:
    """Call, validate as ``req.response_format``, repair once, or raise."""
    tp = req.response_format
    assert tp is not None
    json_schema(tp)  # a type without a schema fails before anything is sent
    first = await llm._call(req, ctx)
    value, error = parse(first.text, tp)
    if error is None:
        first.parsed = value
        return first
    repair = req.with_messages(
        [
            *req.messages,
            {"role": "assistant", "content": first.text},
            {
                "role": "user",
                "content": (
                    f"That reply does not validate: {error}. Reply again with only the "
                    "corrected JSON value."
                ),
            },
        ]
    )
    second = await llm._call(repair, ctx)
    second.usage = first.usage + second.usage
    second.cost += first.cost
    value, error = parse(second.text, tp)
    if error is None:
        second.parsed = value
        return second
    raise StructuredOutputError(tp.__name__, second.text, error)
