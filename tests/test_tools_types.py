"""@tool with pydantic models and dataclasses as parameter types, descriptions from Google
and NumPy docstrings, and OpenAI strict schemas (spec(strict=True))."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Literal

import msgspec
import pydantic
import pytest

from engine import Runtime, ToolValidationError, tool
from engine._docstrings import parse_docstring
from tests.agents_for_tests import uv


class Address(pydantic.BaseModel):
    street: str
    zip_code: int = pydantic.Field(ge=0, description="postal code")


class Customer(pydantic.BaseModel):
    name: str
    address: Address
    tier: Literal["free", "pro"] = "free"


@dataclasses.dataclass
class Window:
    start: int
    end: int = 0


@tool
def bill(customer: Customer, window: Window, amount: float, note: str | None = None) -> str:
    """Bill a customer for a period.

    Args:
        customer: Who pays.
        window (Window): The billing period, in days since
            the account opened.
        amount: In dollars.
        note: Printed on the invoice.

    Returns:
        The invoice id.
    """
    return f"{customer.name}:{customer.address.zip_code}:{window.start}-{window.end}:{amount}"


@tool
def search(query: str, k: int = 5, fields: list[str] | None = None) -> list[str]:
    """Search the catalogue.

    Parameters
    ----------
    query : str
        Words to look for.
    k : int, optional
        How many results,
        at most.
    fields : list of str
        Where to look.

    Returns
    -------
    list of str
    """
    return [query] * k


def test_descriptions_come_from_the_docstring() -> None:
    props = bill.parameters["properties"]
    assert bill.description == "Bill a customer for a period."
    assert props["customer"]["description"] == "Who pays."
    assert props["window"]["description"] == "The billing period, in days since the account opened."
    assert props["amount"] == {"type": "number", "description": "In dollars."}
    numpy = search.parameters["properties"]
    assert numpy["query"]["description"] == "Words to look for."
    assert numpy["k"]["description"] == "How many results, at most."
    assert numpy["fields"]["description"] == "Where to look."
    assert search.description == "Search the catalogue."


def test_explicit_meta_description_wins_over_the_docstring() -> None:
    @tool
    def f(x: Annotated[int, msgspec.Meta(description="from Meta")]) -> int:
        """F.

        Args:
            x: from the docstring
        """
        return x

    assert f.parameters["properties"]["x"]["description"] == "from Meta"


def test_pydantic_and_dataclass_parameters_validate_and_arrive_as_instances() -> None:
    schema = bill.parameters
    customer = schema["properties"]["customer"]  # pydantic's own schema of the model
    assert customer["properties"]["address"] == {"$ref": "#/$defs/Address"}
    assert schema["$defs"]["Address"]["properties"]["zip_code"]["minimum"] == 0
    assert "$defs" not in customer  # nested definitions hoisted to the root
    assert schema["$defs"]["Window"]["required"] == ["start"]
    args = bill.validate(
        json.dumps(
            {
                "customer": {"name": "ada", "address": {"street": "x", "zip_code": 7}},
                "window": {"start": 3, "end": 9},
                "amount": 12.5,
            }
        )
    )
    assert isinstance(args.customer, Customer) and isinstance(args.window, Window)  # type: ignore[attr-defined]
    assert args.customer.address.zip_code == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"customer": {"name": "a", "address": {"street": "x", "zip_code": -1}}}, "zip_code"),
        ({"customer": {"name": "a"}}, "address: Field required"),
        ({"customer": {"name": "a", "address": {"street": "x"}, "tier": "gold"}}, "tier"),
    ],
)
def test_pydantic_errors_name_the_field(arguments: dict[str, Any], says: str) -> None:
    arguments = {**arguments, "window": {"start": 1}, "amount": 1.0}
    with pytest.raises(ToolValidationError, match="invalid arguments for tool 'bill'") as info:
        bill.validate(arguments)
    assert says in str(info.value) and "$.customer" in str(info.value)
    assert "\n" not in str(info.value)


def test_dataclass_errors_name_the_field() -> None:
    with pytest.raises(ToolValidationError, match=r"\$\.window\.start"):
        bill.validate({"customer": {"name": "a", "address": {"street": "x", "zip_code": 1}},
                       "window": {"start": "soon"}, "amount": 1.0})  # fmt: skip


def _walk(node: Any) -> list[dict[str, Any]]:
    out = []
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            out += _walk(v)
    elif isinstance(node, list):
        for v in node:
            out += _walk(v)
    return out


def test_strict_spec_follows_openai_strict_mode() -> None:
    spec = bill.spec(strict=True)
    fn = spec["function"]
    assert fn["strict"] is True
    params = fn["parameters"]
    for node in _walk(params):
        if node.get("type") == "object":
            assert node["additionalProperties"] is False
            assert node["required"] == list(node["properties"]), node
        assert "default" not in node
    note = params["properties"]["note"]  # str | None stays nullable; its default is said
    assert note["description"] == "Printed on the invoice. (default: null)"
    assert {"type": "null"} in note["anyOf"]
    tier = params["properties"]["customer"]["properties"]["tier"]
    assert tier["enum"] == ["free", "pro"] and tier["description"] == 'default: "free"'
    assert bill.parameters["required"] == ["customer", "window", "amount"]  # unchanged
    window = params["properties"]["window"]  # a $ref with a description: inlined
    assert "$ref" not in window and window["properties"]["start"] == {"type": "integer"}
    assert window["description"].startswith("The billing period")
    assert "strict" not in bill.spec()["function"]


def test_a_null_for_a_parameter_with_a_default_means_the_default() -> None:
    args = search.validate('{"query": "tea", "k": null, "fields": null}')
    assert (args.k, args.fields) == (5, None)  # type: ignore[attr-defined]
    with pytest.raises(ToolValidationError, match=r"Expected `str`, got `null` - at `\$.query`"):
        search.validate('{"query": null}')


def test_strict_mode_refuses_what_it_cannot_express() -> None:
    @tool
    def tags(labels: dict[str, int]) -> int:
        """Count."""
        return len(labels)

    assert tags.spec()["function"]["parameters"]["properties"]["labels"]["type"] == "object"
    with pytest.raises(TypeError, match=r"tool 'tags': parameters.labels is a free-form mapping"):
        tags.spec(strict=True)

    @tool
    def anything(x: Any) -> Any:
        """Echo."""
        return x

    with pytest.raises(TypeError, match=r"parameters\.x accepts anything"):
        anything.spec(strict=True)


@uv
async def test_registry_calls_a_pydantic_tool_with_json_from_a_model() -> None:
    async with Runtime() as rt:
        rt.tools.add(bill)
        out = await rt.tools.call(
            "bill",
            '{"customer": {"name": "ada", "address": {"street": "x", "zip_code": 7}, '
            '"tier": "pro"}, "window": {"start": 1, "end": 2}, "amount": 3.0, "note": null}',
        )
    assert out == "ada:7:1-2:3.0"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("Only a summary.", ("Only a summary.", {})),
        ("", ("", {})),
        (
            "Sum.\n\n:param a: first\n:param int b: second\n    more\n",
            ("Sum.", {"a": "first", "b": "second more"}),
        ),
        (
            "Two lines\nof summary.\nArgs:\n    a: x\n    *args: rest\nRaises:\n    E: no\n",
            ("Two lines of summary.", {"a": "x", "args": "rest"}),
        ),
        (
            "S.\n\nParameters\n----------\na, b : int\n    Both.\nc\n    Untyped.\n\n"
            "Notes\n-----\nc : no\n",
            ("S.", {"a": "Both.", "b": "Both.", "c": "Untyped."}),
        ),
    ],
)
def test_docstring_styles(doc: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_docstring(doc) == expected
