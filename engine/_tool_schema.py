"""A tool's parameters: the msgspec Struct that validates them, and their JSON schemas.

Parameter types are whatever msgspec validates (builtins, ``Literal``, enums, msgspec
Structs, dataclasses, TypedDicts, ``Annotated[..., msgspec.Meta(...)]``) plus pydantic
models, validated by pydantic itself (``model_validate``) through msgspec's hooks, so an
error still names the field. Descriptions come from ``Meta(description=...)`` or else
from the docstring (:mod:`engine._docstrings`).

:func:`strict_schema` turns the schema into what OpenAI's strict function calling accepts
(as ``openai.pydantic_function_tool`` does): every object closed
(``additionalProperties: false``) with every property required (a parameter with a default
says it in its description instead), no keywords strict mode rejects. A parameter that may
be null stays nullable. Validation keeps the full constraints.
"""

from __future__ import annotations

import copy
import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec

from engine._docstrings import parse_docstring

__all__ = ["Parameters", "build_parameters", "strict_schema"]

#: Keywords OpenAI's strict mode refuses; our own validation still enforces them.
_NOT_STRICT: Final = frozenset(
    {
        "default",
        "minLength",
        "maxLength",
        "patternProperties",
        "unevaluatedProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "unevaluatedItems",
        "contains",
        "minContains",
        "maxContains",
        "uniqueItems",
    }
)


@dataclass(frozen=True, slots=True)
class Parameters:
    """What :class:`engine.tools.Tool` needs to validate and describe its arguments."""

    struct: type[msgspec.Struct]
    schema: dict[str, Any]
    summary: str  # the docstring's first paragraph
    optional: frozenset[str]  # defaulted fields that do not accept None
    dec_hook: Callable[[type, Any], Any] | None  # pydantic models, when any is used


def _is_pydantic(t: Any) -> bool:
    return isinstance(t, type) and hasattr(t, "model_validate") and hasattr(t, "model_fields")


def _dec_hook(t: type, obj: Any) -> Any:
    if _is_pydantic(t):
        try:
            return t.model_validate(obj)  # type: ignore[attr-defined]
        except Exception as exc:  # pydantic.ValidationError: one line, the fields named
            errors = getattr(exc, "errors", None)
            if callable(errors):
                parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors()]
                raise ValueError(f"{t.__name__}: {'; '.join(parts)}") from None
            raise ValueError(f"{t.__name__}: {exc}") from None
    raise NotImplementedError(f"unsupported type {t!r}")


def _schema_hook(t: type) -> dict[str, Any]:
    if _is_pydantic(t):
        schema: dict[str, Any] = t.model_json_schema(ref_template="#/$defs/{model}")  # type: ignore[attr-defined]
        return schema
    raise NotImplementedError(f"unsupported type {t!r}")


def _uses_pydantic(t: Any) -> bool:
    if _is_pydantic(t):
        return True
    return any(_uses_pydantic(a) for a in typing.get_args(t))


def _described(t: Any) -> bool:
    return typing.get_origin(t) is Annotated and any(
        isinstance(m, msgspec.Meta) and m.description for m in t.__metadata__
    )


def build_parameters(fn: Callable[..., Any], name: str) -> Parameters:
    """Validate ``fn``'s signature as a tool's and build its Struct and schema."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise TypeError(f"cannot resolve annotations of tool {name!r}: {exc}") from None
    summary, docs = parse_docstring(inspect.getdoc(fn))
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    defaulted: list[tuple[str, Any]] = []
    pydantic = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"tool {name!r}: parameter {p.name!r} must be a named parameter")
        if p.name not in hints:
            raise TypeError(f"tool {name!r}: parameter {p.name!r} needs a type annotation")
        t = hints[p.name]
        pydantic = pydantic or _uses_pydantic(t)
        if docs.get(p.name) and not _described(t):
            t = Annotated[t, msgspec.Meta(description=docs[p.name])]
        if p.default is p.empty:
            fields.append((p.name, t))
        else:
            fields.append((p.name, t, p.default))
            defaulted.append((p.name, t))
    try:
        struct = msgspec.defstruct(f"{name}_args", fields, forbid_unknown_fields=True)
    except TypeError as exc:
        raise TypeError(f"tool {name!r}: {exc}") from None
    hook = _dec_hook if pydantic else None
    optional = frozenset(n for n, t in defaulted if not _accepts_none(t, hook))
    return Parameters(struct, _schema(struct), summary, optional, hook)


def _accepts_none(t: Any, hook: Callable[[type, Any], Any] | None) -> bool:
    try:
        msgspec.convert(None, t, dec_hook=hook)
    except (msgspec.ValidationError, TypeError, ValueError):
        return False
    return True


def _schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    try:
        (ref,), defs = msgspec.json.schema_components(
            [struct], ref_template="#/$defs/{name}", schema_hook=_schema_hook
        )
    except (TypeError, NotImplementedError) as exc:
        raise TypeError(f"cannot build a JSON schema for {struct.__name__}: {exc}") from None
    own = ref["$ref"].rsplit("/", 1)[1]
    params = dict(defs.pop(own))
    params.pop("title", None)
    params.setdefault("properties", {})
    params.setdefault("required", [])
    params["additionalProperties"] = False
    _hoist_defs(params, defs)  # pydantic schemas carry their own $defs: one set, at the root
    if defs:
        params["$defs"] = defs
    return params


def _hoist_defs(node: Any, defs: dict[str, Any]) -> None:
    if isinstance(node, dict):
        inner = node.pop("$defs", None)
        if inner:
            for key, value in inner.items():
                _hoist_defs(value, defs)
                defs.setdefault(key, value)
        for value in node.values():
            _hoist_defs(value, defs)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, defs)


def strict_schema(schema: dict[str, Any], tool: str) -> dict[str, Any]:
    """``schema`` as OpenAI's strict mode takes it (a copy); TypeError for what strict mode
    cannot express (free-form mappings, ``Any``)."""
    out = copy.deepcopy(schema)
    _strict(out, tool, "parameters", out.get("$defs", {}))
    return out


def _strict(node: dict[str, Any], tool: str, where: str, defs: dict[str, Any]) -> None:
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:  # strict mode refuses keywords beside a $ref
        del node["$ref"]
        target = defs.get(ref.rsplit("/", 1)[-1])
        if target is None:
            raise TypeError(f"tool {tool!r}: {where} refers to {ref}, which is not defined")
        node.update({k: copy.deepcopy(v) for k, v in target.items() if k not in node})
    for key in _NOT_STRICT & node.keys():
        del node[key]
    if node.get("type") == "object" or "properties" in node:
        extra = node.get("additionalProperties", False)
        if extra not in (False, None) or ("properties" not in node and where != "parameters"):
            raise TypeError(
                f"tool {tool!r}: {where} is a free-form mapping, which OpenAI strict mode "
                "cannot express; use a Struct, dataclass or model with named fields"
            )
        props: dict[str, Any] = node.setdefault("properties", {})
        for name, sub in props.items():
            if "default" in sub:  # the model must now send a value: tell it the usual one
                said = f"default: {json.dumps(sub['default'])}"
                sub["description"] = (
                    f"{sub['description']} ({said})" if sub.get("description") else said
                )
            _strict(sub, tool, f"{where}.{name}", defs)
        node["required"] = list(props)
        node["additionalProperties"] = False
    elif not ({"type", "$ref", "anyOf", "oneOf", "allOf", "enum", "const"} & node.keys()):
        raise TypeError(f"tool {tool!r}: {where} accepts anything, which strict mode refuses")
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, sub in enumerate(node.get(key, ())):
            _strict(sub, tool, f"{where}[{i}]", defs)
    if isinstance(node.get("items"), dict):
        _strict(node["items"], tool, f"{where}[]", defs)
    for name, sub in node.get("$defs", {}).items():
        _strict(sub, tool, name, defs)
