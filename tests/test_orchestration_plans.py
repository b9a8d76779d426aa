"""Plans: the JSON schema's capability enum, validation of every kind of bad plan, layering."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.llm import LLMCache, ScriptedProvider
from engine.orchestration import Plan, PlanError, Subtask, plan_schema, plan_type, validate_plan
from engine.orchestration.plans import checked_levels, layers
from engine.orchestration.prompts import Prompts
from tests.agents_for_tests import uv


def s(id: str, *deps: str, cap: str = "a") -> Subtask:
    return Subtask(id=id, description=f"do {id}", capability=cap, depends_on=list(deps))


def test_schema_gives_capability_as_enum_of_offered_capabilities() -> None:
    schema = plan_schema(["write", "search", "write"])
    sub = schema["$defs"]["Subtask"]
    assert sub["properties"]["capability"] == {"enum": ["search", "write"]}
    assert set(sub["required"]) == {"id", "description", "capability"}
    assert schema["$defs"]["Plan"]["required"] == ["subtasks"]


def test_plan_type_decodes_to_plan_and_refuses_unknown_capability() -> None:
    t = plan_type(["a", "b"])
    assert plan_type(["b", "a"]) is t  # cached per set
    raw = b'{"facts": ["x"], "subtasks": [{"id": "s1", "description": "d", "capability": "a"}]}'
    p = msgspec.json.decode(raw, type=t)
    assert isinstance(p, Plan) and isinstance(p.subtasks[0], Subtask)
    with pytest.raises(msgspec.ValidationError, match="capability"):
        msgspec.json.decode(raw.replace(b'"a"', b'"zz"'), type=t)
    with pytest.raises(PlanError, match="no worker offers any capability"):
        plan_type([])


@pytest.mark.parametrize(
    ("plan", "caps", "expected"),
    [
        (Plan(subtasks=[]), ["a"], "no subtasks"),
        (Plan(subtasks=[s("x"), s("x")]), ["a"], "duplicate subtask id 'x'"),
        (Plan(subtasks=[s("x", "nope")]), ["a"], "unknown subtask 'nope'"),
        (Plan(subtasks=[s("x", "x")]), ["a"], "depends on itself"),
        (Plan(subtasks=[s("x", "y"), s("y", "x")]), ["a"], "dependency cycle: x -> y -> x"),
        (Plan(subtasks=[s("x", cap="zz")]), ["a"], "no worker offers capability 'zz'"),
        (Plan(subtasks=[s(f"t{i}") for i in range(4)]), ["a"], "more than the maximum 3"),
    ],
)
def test_validation_names_each_problem(plan: Plan, caps: list[str], expected: str) -> None:
    with pytest.raises(PlanError) as info:
        validate_plan(plan, caps, max_subtasks=3)
    assert expected in str(info.value)
    assert any(expected in e for e in info.value.errors)


def test_validation_reports_every_problem_at_once() -> None:
    plan = Plan(subtasks=[s("x", "ghost", cap="zz"), s("x")])
    with pytest.raises(PlanError) as info:
        validate_plan(plan, ["a"])
    assert len(info.value.errors) == 3  # duplicate, capability, unknown dependency


def test_replan_may_depend_on_done_subtasks_but_not_reuse_their_ids() -> None:
    validate_plan(Plan(subtasks=[s("new", "old")]), ["a"], done={"old"})
    with pytest.raises(PlanError, match="already used by a completed subtask"):
        validate_plan(Plan(subtasks=[s("old")]), ["a"], done={"old"})


def test_validation_refuses_what_is_not_a_plan() -> None:
    with pytest.raises(PlanError, match="must be a Plan"):
        validate_plan({"subtasks": []}, ["a"])  # type: ignore[arg-type]


def test_hostile_field_sizes_are_refused_by_the_type() -> None:
    t = plan_type(["a"])
    long_id = {"subtasks": [{"id": "x" * 65, "description": "d", "capability": "a"}]}
    with pytest.raises(msgspec.ValidationError, match="length"):
        msgspec.convert(long_id, t)
    huge_prio = {
        "subtasks": [{"id": "x", "description": "d", "capability": "a", "priority": 10**12}]
    }
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(huge_prio, t)


@st.composite
def dags(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(1, 30))
    subs = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, max(0, i - 1)), max_size=3, unique=True)) if i else []
        subs.append(s(f"n{i}", *(f"n{d}" for d in deps)))
    order = draw(st.permutations(subs))
    return Plan(subtasks=list(order))


@given(dags())
def test_layers_respect_every_dependency(plan: Plan) -> None:
    validate_plan(plan, ["a"])
    out = layers(plan)
    level = {st.id: i for i, layer in enumerate(out) for st in layer}
    assert sorted(level) == sorted(st.id for st in plan.subtasks)
    for sub in plan.subtasks:
        for dep in sub.depends_on:
            assert level[dep] < level[sub.id]
        if sub.depends_on:  # as early as possible: right after its latest dependency
            assert level[sub.id] == 1 + max(level[d] for d in sub.depends_on)
        else:
            assert level[sub.id] == 0


@given(dags())
def test_checked_levels_are_the_layers_the_plan_is_scheduled_by(plan: Plan) -> None:
    levels = checked_levels(plan, ["a"])
    assert [[plan.subtasks[i] for i in level] for level in levels] == layers(plan)


@given(dags(), st.data())
def test_levels_of_a_plan_in_dependency_order_are_kahns_levels(
    plan: Plan, data: st.DataObject
) -> None:
    from engine.orchestration.plans import _kahn, _levels

    ordered = [sub for layer in layers(plan) for sub in layer]  # each after its dependencies
    ids = [sub.id for sub in ordered]
    done = set(data.draw(st.lists(st.sampled_from(ids), max_size=3))) if ids else set()
    for subs in (ordered, plan.subtasks, [*ordered, s("self", "self", ids[0] if ids else "x")]):
        index = {sub.id: i for i, sub in enumerate(subs)}
        assert _levels(subs, done) == _kahn(subs, done, index.get)


@given(dags(), st.data())
def test_a_back_edge_is_always_found_as_a_cycle(plan: Plan, data: st.DataObject) -> None:
    chained = [sub for sub in plan.subtasks if sub.depends_on]
    if not chained:
        return
    child = data.draw(st.sampled_from(chained))
    parent_id = child.depends_on[0]
    subs = [
        Subtask(
            id=x.id, description=x.description, capability="a", depends_on=[*x.depends_on, child.id]
        )
        if x.id == parent_id
        else x
        for x in plan.subtasks
    ]
    with pytest.raises(PlanError, match="dependency cycle") as info:
        validate_plan(Plan(subtasks=subs), ["a"])
    cycle = str(info.value).split("dependency cycle: ")[1].split(";")[0].split(" -> ")
    assert cycle[0] == cycle[-1] and len(cycle) >= 3
    deps = {x.id: set(x.depends_on) for x in subs}
    for a, b in itertools.pairwise(cycle):
        assert b in deps[a]  # every hop of the reported cycle is a real dependency


@uv
async def test_plan_prompts_of_different_tasks_share_no_cached_plan() -> None:
    # The template (capabilities, instructions) is in the system message, matched exactly;
    # only the task is compared by meaning. Whole prompts were mostly template: two
    # unrelated questions' plan prompts sat at cosine ~0.996, above the 0.95 threshold.
    llm = ScriptedProvider(default="plan", cache=LLMCache())
    caps = {f"cap{i}": "finds, reads and summarises sources for a question " * 3 for i in range(8)}
    prompts = Prompts()
    france = prompts.plan("What is the capital of France?", caps, max_subtasks=20)
    jupiter = prompts.plan("How many moons does Jupiter have?", caps, max_subtasks=20)
    await llm.chat(france, temperature=0, kind="plan")
    assert (await llm.chat(jupiter, temperature=0, kind="plan")).cached is None
    assert (await llm.chat(france, temperature=0, kind="plan")).cached == "exact"
    near = prompts.plan("what is the capital of france", caps, max_subtasks=20)
    assert (await llm.chat(near, temperature=0, kind="plan")).cached == "semantic"
    assert len(llm.calls) == 2
