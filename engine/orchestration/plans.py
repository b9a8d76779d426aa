"""Plans: what the model proposes (``Plan`` of ``Subtask``), its JSON schema, its validation.

The orchestrator asks for a plan as structured output. :func:`plan_type` builds, per set of
capabilities, a subclass of :class:`Plan` whose ``capability`` field is an enum of exactly
the capabilities the registered workers offer, so a server with constrained decoding can
only produce valid ones; :func:`plan_schema` is its JSON schema. Not every server honours a
schema, so :func:`validate_plan` checks everything again: ids, dependencies, cycles, the
size limit and the capabilities. It reports every problem at once (the repair prompt names
them all) and :func:`layers` orders a valid plan for the scheduler.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable
from typing import Annotated, Any, Final, Literal

import msgspec

from engine.errors import PlanError

__all__ = [
    "MAX_SUBTASKS",
    "Plan",
    "Subtask",
    "checked_levels",
    "layers",
    "plan_schema",
    "plan_type",
    "validate_plan",
]

#: Default bound on the subtasks of one plan (``Orchestrator(max_subtasks=...)``).
MAX_SUBTASKS: Final = 1_000
#: Hard bounds on what a model may put into one plan, whatever the configuration says.
_MAX_TEXT: Final = 8_000
_MAX_FACTS: Final = 200
_MAX_DEPS: Final = 256
_MAX_PRIORITY: Final = 1_000_000

SubtaskId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=_MAX_TEXT)]
Priority = Annotated[int, msgspec.Meta(ge=-_MAX_PRIORITY, le=_MAX_PRIORITY)]


class Subtask(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One step of a plan, run by a worker that offers ``capability``.

    ``depends_on`` names subtasks whose results this one needs (it starts after them);
    ``priority`` orders ready subtasks of one job, **lower first** (like the scheduler).
    """

    id: SubtaskId
    description: Text
    capability: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    depends_on: Annotated[list[SubtaskId], msgspec.Meta(max_length=_MAX_DEPS)] = []
    priority: Priority = 0

    # gc=False (Plan too): a plan of 1,000 subtasks lives as long as its job, and neither
    # can be part of a reference cycle (strings, lists of strings, ints); untracked, they
    # cost the collector nothing (PERF: docs/performance.md, orchestration)


class Plan(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """The model's plan: the ``facts`` it works from, and the ``subtasks`` to run."""

    facts: Annotated[list[Text], msgspec.Meta(max_length=_MAX_FACTS)] = []
    subtasks: list[Subtask]


@functools.lru_cache(maxsize=64)
def _plan_type(capabilities: tuple[str, ...]) -> type[Plan]:
    enum: Any = Literal.__getitem__(capabilities)
    sub: Any = msgspec.defstruct(
        "Subtask", [("capability", enum)], bases=(Subtask,), kw_only=True, frozen=True
    )
    plan: Any = msgspec.defstruct(
        "Plan", [("subtasks", list[sub])], bases=(Plan,), kw_only=True, frozen=True
    )
    plan.__doc__ = Plan.__doc__
    out: type[Plan] = plan
    return out


def plan_type(capabilities: Iterable[str]) -> type[Plan]:
    """A :class:`Plan` subclass whose ``capability`` is an enum of ``capabilities``.

    Decoded plans are instances of :class:`Plan` (and their subtasks of :class:`Subtask`).
    Types are cached per set of capabilities (at most 64 sets).
    """
    caps = tuple(sorted(set(capabilities)))
    if not caps:
        raise PlanError("no worker offers any capability: register workers before planning")
    return _plan_type(caps)


def plan_schema(capabilities: Iterable[str]) -> dict[str, Any]:
    """The JSON schema of :func:`plan_type` (``capability`` as an enum)."""
    return msgspec.json.schema(plan_type(capabilities))


def validate_plan(
    plan: Plan,
    capabilities: Collection[str],
    *,
    max_subtasks: int = MAX_SUBTASKS,
    done: Collection[str] = (),
) -> None:
    """Raise :class:`PlanError` listing every problem of ``plan``, or return.

    Checks: at least one subtask and at most ``max_subtasks``; unique ids; every dependency
    names a subtask of the plan or one already ``done`` (earlier plans of a replanned job);
    no id reuses a ``done`` one; no cycle; every capability is in ``capabilities``.
    """
    checked_levels(plan, capabilities, max_subtasks=max_subtasks, done=done)


def checked_levels(
    plan: Plan,
    capabilities: Collection[str],
    *,
    max_subtasks: int = MAX_SUBTASKS,
    done: Collection[str] = (),
) -> list[list[int]]:
    """:func:`validate_plan`, returning the plan's dependency levels (indices into
    ``plan.subtasks``, as :func:`layers` orders them with nothing done), so a plan about
    to run is ordered once, not once to check it and again to schedule it."""
    if not isinstance(plan, Plan):
        raise PlanError(f"a plan must be a Plan, got {type(plan).__name__}")
    errors: list[str] = []
    subtasks = plan.subtasks
    if not subtasks:
        errors.append("the plan has no subtasks")
    if len(subtasks) > max_subtasks:
        errors.append(
            f"the plan has {len(subtasks)} subtasks, more than the maximum {max_subtasks}"
        )
    ids: dict[str, int] = {}  # id -> plan index (the last one of a duplicate id)
    for i, st in enumerate(subtasks):
        if st.id in ids:
            errors.append(f"duplicate subtask id {st.id!r}")
        elif st.id in done:
            errors.append(f"subtask id {st.id!r} is already used by a completed subtask")
        ids[st.id] = i
    offered = set(capabilities)
    for st in subtasks:
        if st.capability not in offered:
            known = ", ".join(sorted(offered)) or "none"
            errors.append(
                f"subtask {st.id!r}: no worker offers capability {st.capability!r} "
                f"(offered: {known})"
            )
        for dep in st.depends_on:
            if dep == st.id:
                errors.append(f"subtask {st.id!r} depends on itself")
            elif dep not in ids and dep not in done:
                errors.append(f"subtask {st.id!r} depends on unknown subtask {dep!r}")
    levels: list[list[int]] = []
    if not errors:
        levels = _levels(subtasks, index=ids)
        if sum(map(len, levels)) != len(subtasks):
            errors.append("dependency cycle: " + " -> ".join(_find_cycle(subtasks)))
    if errors:
        shown = errors[:20]
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        raise PlanError("invalid plan: " + "; ".join(shown) + more, errors)
    return levels


def _levels(
    subtasks: list[Subtask], done: Collection[str] = (), index: dict[str, int] | None = None
) -> list[list[int]]:
    """Kahn's algorithm by levels over plan indices: O(subtasks + dependencies).

    Level 0 holds the subtasks whose dependencies are all outside the plan (``done`` ones
    or unknown ones, which validation reports); each next level those whose last open
    dependency is in the previous one; plan order within a level. Subtasks on a cycle (or
    depending on one) are in no level. ``index`` maps each id to its plan index (made
    here when not given).
    """
    # PERF: list-indexed rather than dict-keyed by id: 1,000 subtasks with 2,000
    # dependencies in ~0.25 ms instead of ~0.5 ms (_acyclic) + ~0.75 ms (layers), best of
    # 20 in-process timings of the benchmark's plan. A plan about to run is ordered once
    # (checked_levels), not once to validate it and again to schedule it.
    if index is None:  # id -> plan index (checked_levels has it already)
        index = {st.id: i for i, st in enumerate(subtasks)}
    get = index.get
    # PERF: a plan listing each subtask after its dependencies (what the plan prompt asks
    # for) is levelled in one pass: Kahn's levels are the longest-path depths (one more
    # than the deepest dependency's), plan order within each. 122 -> 90 bytecodes per
    # subtask of the benchmark's plan (sys.settrace opcode counts).
    depth: list[int] = []
    out: list[list[int]] = []
    for i, st in enumerate(subtasks):
        d = 0
        for dep in st.depends_on:
            j = get(dep)
            if j is None or j == i or dep in done:
                continue
            if j > i:
                return _kahn(subtasks, done, get)  # a dependency listed later
            if depth[j] >= d:
                d = depth[j] + 1
        depth.append(d)
        if d == len(out):
            out.append([i])
        else:
            out[d].append(i)
    return out


def _kahn(
    subtasks: list[Subtask], done: Collection[str], get: Callable[[str], int | None]
) -> list[list[int]]:
    """:func:`_levels` of any plan (``get``: subtask id -> plan index)."""
    waiting = [0] * len(subtasks)
    children: list[list[int]] = [[] for _ in subtasks]
    for i, st in enumerate(subtasks):
        for dep in st.depends_on:
            j = get(dep)
            if j is not None and j != i and dep not in done:
                waiting[i] += 1
                children[j].append(i)
    level = [i for i, n in enumerate(waiting) if n == 0]
    out: list[list[int]] = []
    while level:
        out.append(level)
        nxt: list[int] = []
        for i in level:
            for c in children[i]:
                waiting[c] -= 1
                if not waiting[c]:
                    nxt.append(c)
        nxt.sort()
        level = nxt
    return out


def _find_cycle(subtasks: list[Subtask]) -> list[str]:
    """One cycle among ``subtasks`` (first id == last), or [] (iterative DFS, 3 colours)."""
    deps = {st.id: [d for d in st.depends_on if d != st.id] for st in subtasks}
    colour: dict[str, int] = {}  # 1 on the stack, 2 done
    for root in deps:
        if root in colour:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        colour[root] = 1
        while stack:
            node, i = stack[-1]
            children = [d for d in deps[node] if d in deps]
            if i < len(children):
                stack[-1] = (node, i + 1)
                child = children[i]
                state = colour.get(child)
                if state == 1:
                    return [*path[path.index(child) :], child]
                if state is None:
                    colour[child] = 1
                    stack.append((child, 0))
                    path.append(child)
            else:
                colour[node] = 2
                stack.pop()
                path.pop()
    return []


def layers(plan: Plan, done: Collection[str] = ()) -> list[list[Subtask]]:
    """A valid plan's subtasks in dependency layers (each depends only on earlier layers).

    Dependencies on ``done`` subtasks count as met; within a layer, plan order is kept.
    Kahn's algorithm by levels: O(subtasks + dependencies).
    """
    subtasks = plan.subtasks
    out = [[subtasks[i] for i in level] for level in _levels(subtasks, done)]
    if sum(map(len, out)) != len(subtasks):
        placed = {st.id for level in out for st in level}
        stuck = sorted(st.id for st in subtasks if st.id not in placed)
        raise PlanError("dependency cycle among: " + ", ".join(stuck[:20]))
    return out
