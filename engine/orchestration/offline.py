"""The scripted model ``engine run`` uses without ``OPENAI_API_KEY``/``OPENAI_BASE_URL``.

It is a :class:`~engine.llm.ScriptedProvider` with rules for each call kind, so a whole job
runs offline and deterministically: the plan has one subtask per capability (chained, so
each builds on the last), progress is always being made, workers echo their subtask, and
the summary lists what each subtask returned. It shows the machinery, not intelligence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from engine.orchestration.plans import Plan, Subtask
from engine.orchestration.progress import ProgressReport

__all__ = ["BANNER", "offline_llm"]

BANNER = "no OPENAI_API_KEY/OPENAI_BASE_URL: using the scripted provider (offline, deterministic)"

_TASK = re.compile(r"^Task: (.*)$", re.M)


def _task_of(text: str) -> str:
    m = _TASK.search(text)
    return m.group(1).strip() if m else text.strip()[:200]


def offline_llm(capabilities: Sequence[str]) -> Any:
    """A ScriptedProvider answering ``plan``, ``progress``, ``summarize`` and worker calls."""
    from engine.llm import Reply, Rule, ScriptedCall, ScriptedProvider

    caps = list(dict.fromkeys(capabilities)) or ["general"]

    def plan(call: ScriptedCall) -> Reply:
        task = _task_of(call.last)
        subtasks = []
        for i, cap in enumerate(caps):
            deps = [f"s{i}"] if i else []
            subtasks.append(
                Subtask(
                    id=f"s{i + 1}",
                    description=f"{cap}: work on '{task[:120]}'",
                    capability=cap,
                    depends_on=deps,
                )
            )
        if len(caps) == 1:
            subtasks.append(
                Subtask(
                    id="s2",
                    description=f"{caps[0]}: check and complete the result for '{task[:120]}'",
                    capability=caps[0],
                    depends_on=["s1"],
                )
            )
        return Reply(parsed=Plan(facts=[f"the task is: {task[:200]}"], subtasks=subtasks))

    def summarize(call: ScriptedCall) -> str:
        results = re.findall(r"^\[(\S+)\] (.*)$", call.last, re.M)
        body = "; ".join(f"{sid}: {text[:200]}" for sid, text in results)
        return f"(scripted answer) {_task_of(call.last)[:200]} -- {body}"

    def act(call: ScriptedCall) -> str:
        m = re.search(r"^Your subtask \((\S+)\): (.*)$", call.last, re.M)
        what = f"{m.group(1)} done: {m.group(2)[:200]}" if m else "done"
        return f"(scripted) {what}"

    progress = ProgressReport(
        is_request_satisfied=False,
        is_in_loop=False,
        is_progress_being_made=True,
        next_speaker="",
        instruction="continue with the plan",
    )
    return ScriptedProvider(
        [
            Rule(plan, kind="plan"),
            Rule(Reply(parsed=progress), kind="progress"),
            Rule(summarize, kind="summarize"),
        ],
        default=act,
        model="scripted",
    )
