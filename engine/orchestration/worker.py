"""What travels between the orchestrator and its workers.

A worker is an ordinary :class:`engine.Agent` that declares the ``capabilities`` it offers
and handles :class:`SubtaskRequest`, returning a :class:`SubtaskResult` (or a plain
``str``). It runs in process or on a mesh node; the orchestrator reaches both through
``Runtime.send``, so both messages are tagged wire messages.

.. code-block:: python

    class Shouter(Agent):
        capabilities = ("shout",)

        @handler
        async def on_subtask(self, req: SubtaskRequest, ctx: Context) -> SubtaskResult:
            return SubtaskResult(output=req.description.upper())
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Final

import msgspec

from engine.messages import Message
from engine.orchestration import _budget
from engine.orchestration._budget import BudgetGrant

__all__ = [
    "MAX_OUTPUT",
    "BudgetGrant",
    "SubtaskRequest",
    "SubtaskResult",
    "capabilities_of",
]

#: Characters of a worker's output the orchestrator keeps (the rest is cut, with a marker).
MAX_OUTPUT: Final = 64_000

_Cap = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class SubtaskRequest(Message, tag="engine.SubtaskRequest"):
    """One subtask for a worker: its description, the job's task, and its inputs.

    ``inputs`` maps each dependency's subtask id to that subtask's output. ``attempt``
    counts from 1 (a retry after a failure, or after the orchestrator restarted).
    """

    job: str
    subtask: str
    description: str
    capability: str
    task: str = ""
    inputs: dict[str, str] = {}
    attempt: int = 1
    tenant: str = ""
    grant: BudgetGrant | None = None

    def budget(self) -> Any:
        """The ``engine.llm.Budget`` the worker's model calls must use (None: no budget).

        In the orchestrator's process that is the job's own budget; on a mesh node, a
        budget enforcing the grant the orchestrator reserved for this subtask.
        """
        if self.grant is None:
            return _budget.job_budget(self.job)
        return _budget.grant_budget(self.grant)

    def prompt(self) -> str:
        """The subtask as a user message: task, this subtask and the inputs it builds on."""
        text = f"Your subtask ({self.subtask}): {self.description}"
        if self.task:
            text = f"Overall task: {self.task}\n\n{text}"
        for sid, out in self.inputs.items():
            text = f"{text}\n\nResult of {sid}:\n{out}"
        return text


class SubtaskResult(Message, tag="engine.SubtaskResult"):
    """A worker's answer: ``output`` plus what it spent (tokens, cost, model calls).

    ``transcript`` is the worker's reasoning trace (a ReAct worker's thought → action →
    observation steps); it goes into the job's progress ledger.
    """

    output: str
    tokens: int = 0
    cost: float = 0.0
    calls: int = 0
    transcript: list[str] = []


def capabilities_of(cls: type) -> tuple[str, ...]:
    """The ``capabilities`` a worker class declares, checked (TypeError names the problem)."""
    caps: Any = getattr(cls, "capabilities", None)
    if isinstance(caps, str) or not isinstance(caps, Iterable):
        raise TypeError(
            f"{getattr(cls, '__name__', cls)!r} must declare capabilities as a tuple of "
            f"names, e.g. capabilities = ('search',); got {caps!r}"
        )
    out = tuple(caps)
    for cap in out:
        if not isinstance(cap, str) or not cap or len(cap) > 128:
            raise TypeError(f"capability names are non-empty str up to 128 chars, got {cap!r}")
    if not out:
        raise TypeError(f"{getattr(cls, '__name__', cls)!r} declares no capabilities")
    return out
