"""The messages of the orchestrator's model calls (kinds ``plan``, ``progress``, ``summarize``).

Kept in one place so they can be read, tested and replaced (``Orchestrator(prompts=...)``).
Each builder returns OpenAI-style chat messages. Texts taken from workers are cut to
``limit`` characters each so one verbose worker cannot blow the context window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from engine.orchestration.plans import Plan

__all__ = ["Prompts"]

Messages = list[dict[str, str]]

_SYSTEM: Final = (
    "You are the orchestrator of a team of worker agents. You plan, delegate subtasks to "
    "workers by capability, track progress and report the final answer."
)


def _chat(content: str) -> Messages:
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": content}]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" …[{len(text) - limit} chars cut]"


class Prompts:
    """Builds the orchestrator's chat messages; subclass to change the wording."""

    def __init__(self, *, limit: int = 2_000) -> None:
        self.limit = limit

    def plan(
        self,
        task: str,
        capabilities: Mapping[str, str],
        *,
        max_subtasks: int,
        done: Mapping[str, str] | None = None,
        failed: Mapping[str, str] | None = None,
        why: str = "",
        facts: Sequence[str] = (),
    ) -> Messages:
        """A first plan (or, with ``why``, a replan that keeps the ``done`` subtasks)."""
        caps = "\n".join(
            f"- {name}: {about}" if about else f"- {name}"
            for name, about in sorted(capabilities.items())
        )
        # What is the same for every task (the capabilities, the instructions) goes into
        # the system message and what varies (the task, a replan's news) into the user
        # message: an LLM cache matches the former exactly and the latter by meaning, so
        # two different tasks never share a plan because their prompts are mostly the same
        # template (HashingEmbedder put whole plan prompts of unrelated questions at
        # cosine 0.996).
        system = (
            f"{_SYSTEM}\n\nWorkers offer these capabilities:\n{caps}\n\n"
            "Reply with a plan: the facts you work from, and subtasks (id, description, "
            "capability, depends_on, priority; lower priority runs first). "
            f"At most {max_subtasks} subtasks; a subtask may depend on earlier ones."
        )
        lines = [f"Task: {task}"]
        if facts:
            lines.append("Known facts:\n" + "\n".join(f"- {f}" for f in facts))
        if why:
            lines.append(f"The previous plan is being replaced because: {why}")
            if done:
                lines.append(
                    "Completed subtasks (reuse their results by depending on their ids; do "
                    "not reuse these ids):\n" + self._results(done)
                )
            if failed:
                lines.append("Failed subtasks:\n" + self._results(failed))
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": "\n\n".join(lines)},
        ]

    def repair(self, messages: Messages, raw: str, errors: Iterable[str]) -> Messages:
        """One repair round: the invalid plan and every validation error."""
        problems = "\n".join(f"- {e}" for e in errors)
        return [
            *messages,
            {"role": "assistant", "content": _cut(raw, 20_000)},
            {
                "role": "user",
                "content": f"That plan is invalid:\n{problems}\nReply with a corrected plan.",
            },
        ]

    def progress(
        self, task: str, plan: Plan, steps: Mapping[str, str], *, pending: int
    ) -> Messages:
        """Update the progress ledger after ``steps`` (subtask id -> outcome) finished."""
        content = (
            f"Task: {task}\n\nPlan: {len(plan.subtasks)} subtasks, {pending} not finished.\n\n"
            f"Just finished:\n{self._results(steps)}\n\n"
            "Answer: is the request satisfied, are we in a loop, is progress being made, "
            "who should act next and with what instruction."
        )
        return _chat(content)

    def summarize(self, task: str, results: Mapping[str, str]) -> Messages:
        """The final answer from every completed subtask's result."""
        content = (
            f"Task: {task}\n\nResults of the subtasks:\n{self._results(results)}\n\n"
            "Write the final answer to the task."
        )
        return _chat(content)

    def _results(self, results: Mapping[str, str]) -> str:
        limit = self.limit
        lines = []
        for sid, text in results.items():  # PERF: no generator frame, no call per line
            if len(text) > limit:
                text = _cut(text, limit)
            lines.append(f"[{sid}] {text}")
        return "\n".join(lines)
