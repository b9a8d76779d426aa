"""The scripted model's answers: what a capable model would reply to each demo prompt.

:func:`answer` reads a chat request (its messages and the tools offered) and replies as the
workload needs, from the prompts alone, so it plays the model behind any interface: the
demo's :class:`~engine.llm.ScriptedProvider` (offline) and, in the tests, the
OpenAI-compatible server the demo is pointed at. It recognises

- the orchestrator's calls by their prompts: a plan of four subtasks (retrieve and look up
  in parallel, then draft, then check), a replan after a rejected draft (revise, check
  again), progress reports, the final answer;
- each worker by its instructions (:mod:`engine.demo.roles`): call its tool with arguments
  taken from the task, then answer from the tool's observation.

Realism is deliberate in one place: for one question in :data:`SLOPPY_EVERY` the writer's
first draft cites a passage that does not exist. The reviewer's tool catches it, the check
fails, and the orchestrator replans. Everything is a pure function of the request.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from engine.demo.roles import CHECK, DRAFT, LOOKUP, RESEARCH

__all__ = ["SLOPPY_EVERY", "Said", "answer", "citations", "is_sloppy", "norm"]

#: One question in this many gets a first draft citing a passage that does not exist.
SLOPPY_EVERY: Final = 9
#: Where invented citations point: far past any real chunk id.
_INVENTED: Final = 1_000_000

_TASK = re.compile(r"^(?:Overall task|Task): (.*)$", re.M)
_SUBTASK = re.compile(r"^Your subtask \((\S+)\): (.*)$", re.M)
_INPUT = re.compile(r"^Result of (\S+):\n", re.M)
_RESULT = re.compile(r"^\[(\S+)\] ", re.M)
_CITE = re.compile(r"\[doc:(\d+)\]")
_NAME = re.compile(
    r"\b[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+\b|\b[A-Z][a-z]+[A-Z]\w*\b"
)
_QUOTED = re.compile(r'"([^"]+)"')


class Said(msgspec.Struct, frozen=True):
    """One reply: ``text``, or a call of ``tool`` with ``args``."""

    text: str = ""
    tool: str = ""
    args: dict[str, Any] = {}


def _content(m: Mapping[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts
        return "".join(p.get("text", "") for p in c if isinstance(p, Mapping))
    return ""


def norm(question: str) -> str:
    """A question with case and punctuation removed (near-duplicates share it)."""
    return " ".join(re.findall(r"\w+", question.lower()))


def is_sloppy(question: str) -> bool:
    """Whether the writer's first draft for ``question`` invents a citation."""
    return zlib.crc32(norm(question).encode()) % SLOPPY_EVERY == 0


def answer(messages: Sequence[Mapping[str, Any]], tools: Sequence[str] = ()) -> Said:
    """The reply to a chat request of the demo (see the module docs)."""
    system = "\n".join(_content(m) for m in messages if m.get("role") == "system")
    users = [_content(m) for m in messages if m.get("role") == "user"]
    first = users[0] if users else ""
    last = messages[-1] if messages else {}
    if system.startswith("You are the orchestrator"):
        if "Reply with a plan" in system or "Reply with a plan" in first:
            return Said(_plan(first))
        if "Answer: is the request satisfied" in first:
            return Said(_progress(first))
        if "Write the final answer" in first:
            return Said(_final(first))
        return Said("I can only plan, report progress and answer.")
    task = _task(first)
    observed = _content(last) if last.get("role") == "tool" else None
    if RESEARCH.system in system:
        if observed is None and RESEARCH.tool in tools:
            return Said(tool=RESEARCH.tool, args={"query": task})
        return Said(_facts(observed or "[]"))
    if LOOKUP.system in system:
        if observed is None and LOOKUP.tool in tools:
            return Said(tool=LOOKUP.tool, args={"name": _name_in(task)})
        return Said(_symbols(observed or "[]"))
    if DRAFT.system in system:
        return Said(_draft(task, first))
    if CHECK.system in system:
        if observed is None and CHECK.tool in tools:
            return Said(tool=CHECK.tool, args={"text": _last_input(first)})
        return Said(_verdict(observed or "{}"))
    return Said(f"(no role) {task[:200]}")


# -- the orchestrator's calls --------------------------------------------------------------


def _task(text: str) -> str:
    m = _TASK.search(text)
    return m.group(1).strip() if m else text.strip()[:300]


def _plan(prompt: str) -> str:
    from engine.orchestration import Plan, Subtask

    task = _task(prompt)
    gen = 1
    if "The previous plan is being replaced because" in prompt:
        done = re.findall(r"^\[(\S+)\] ", prompt.split("Completed subtasks", 1)[-1], re.M)
        gen = 2 + sum(1 for d in done if d.startswith(f"{DRAFT.capability}-"))
    # A replan researches again instead of depending on the completed research: the
    # orchestrator cannot yet start a subtask that depends on a completed subtask of an
    # earlier plan (its dependency counts as unmet; requested from its owner).
    sfx = "" if gen == 1 else f"-{gen}"
    facts = [f"the question: {task}"]
    if gen > 1:
        facts.append("the last draft cited a passage that does not exist")
    plan = Plan(
        facts=facts,
        subtasks=[
            Subtask(
                id=f"{RESEARCH.capability}{sfx}",
                description="Find the passages of the documentation that answer the question.",
                capability=RESEARCH.capability,
            ),
            Subtask(
                id=f"{LOOKUP.capability}{sfx}",
                description="Look up the engine names the question is about.",
                capability=LOOKUP.capability,
            ),
            Subtask(
                id=f"{DRAFT.capability}{sfx}",
                description=(
                    "Draft a short answer from the passages and names, with citations."
                    if gen == 1
                    else "Revise the draft: cite only passages the results name."
                ),
                capability=DRAFT.capability,
                depends_on=[f"{RESEARCH.capability}{sfx}", f"{LOOKUP.capability}{sfx}"],
            ),
            Subtask(
                id=f"{CHECK.capability}{sfx}",
                description="Check that every citation of the draft exists.",
                capability=CHECK.capability,
                depends_on=[f"{DRAFT.capability}{sfx}"],
            ),
        ],
    )
    return msgspec.json.encode(plan).decode()


def _progress(prompt: str) -> str:
    finished = prompt.split("Just finished:", 1)[-1]
    failed = "FAILED:" in finished
    return msgspec.json.encode(
        {
            "is_request_satisfied": False,
            "is_in_loop": False,
            "is_progress_being_made": not failed,
            "next_speaker": "",
            "instruction": "replan the failed step" if failed else "continue with the plan",
            "reason": "a step failed" if failed else "steps are completing",
        }
    ).decode()


def _sections(text: str, pattern: re.Pattern[str]) -> dict[str, str]:
    """``{id: body}`` of text cut at each line ``pattern`` matches (its group 1 is the id)."""
    marks = list(pattern.finditer(text))
    out = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out[m.group(1)] = text[m.end() : end].strip()
    return out


def _final(prompt: str) -> str:
    results = _sections(prompt.split("Results of the subtasks:", 1)[-1], _RESULT)
    drafts = [sid for sid in results if sid.split("-")[0] == DRAFT.capability]
    body: str = results[drafts[-1]] if drafts else "no draft was written"
    body = body.split("\n\nWrite the final answer", 1)[0]
    return f"{body} (reviewed: citations checked)"


# -- the workers ---------------------------------------------------------------------------


def _first_sentence(text: str, limit: int = 180) -> str:
    flat = " ".join(text.split())
    m = re.search(r"(.+?[.!?])(\s|$)", flat)
    s = m.group(1) if m else flat
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _json(text: str, default: Any) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return default


def _facts(observation: str) -> str:
    passages = _json(observation, [])
    if not isinstance(passages, list) or not passages:
        return "The documentation has no passage on this."
    facts = []
    for p in passages[:3]:
        if isinstance(p, Mapping) and "id" in p:
            text = str(p.get("text", "")).split("\n", 1)[-1] or str(p.get("text", ""))
            facts.append(f"{_first_sentence(text)} [doc:{p['id']}]")
    return " ".join(facts) or "The documentation has no passage on this."


def _name_in(task: str) -> str:
    names: list[str] = _NAME.findall(task)
    if names:
        return max(names, key=len)
    quoted: list[str] = _QUOTED.findall(task)
    if quoted:
        return quoted[0]
    words = [w for w in re.findall(r"[A-Za-z_]\w+", task) if len(w) > 3]
    return " ".join(words[-3:]) or task[:64]


def _symbols(observation: str) -> str:
    found = _json(observation, [])
    if not isinstance(found, list) or not found:
        return "No engine name matches; the question is about the documentation."
    lines = []
    for s in found[:2]:
        if isinstance(s, Mapping):
            lines.append(
                f"{s.get('short')}{s.get('signature', '')}: {s.get('summary', '')} "
                f"[doc:{s.get('chunk')}]"
            )
    return " ".join(lines)


def _last_input(prompt: str) -> str:
    inputs = _sections(prompt, _INPUT)
    return list(inputs.values())[-1] if inputs else ""


def _draft(task: str, prompt: str) -> str:
    inputs = _sections(prompt, _INPUT)
    facts = next((v for k, v in inputs.items() if k.startswith(RESEARCH.capability)), "")
    names = next((v for k, v in inputs.items() if k.startswith(LOOKUP.capability)), "")
    m = _SUBTASK.search(prompt)
    revising = m is not None and m.group(2).startswith("Revise")
    parts = [f"{task.rstrip('?')}:"]
    if names and not names.startswith("No engine name"):
        parts.append(names)
    if facts:
        parts.append(facts)
    draft = " ".join(parts)
    if not revising and is_sloppy(task):
        invented = _INVENTED + zlib.crc32(norm(task).encode()) % 1000
        draft += f" It is also covered in the design notes [doc:{invented}]."
    return draft


def _verdict(observation: str) -> str:
    report = _json(observation, {})
    if not isinstance(report, Mapping):
        return "REJECTED: the citation check returned nothing readable."
    missing = report.get("missing") or []
    cited = report.get("cited") or []
    if missing:
        cites = ", ".join(f"[doc:{i}]" for i in missing)
        return f"REJECTED: the draft cites passages that do not exist: {cites}."
    if not cited:
        return "APPROVED: the draft cites no passage, so there is nothing to contradict."
    return f"APPROVED: all {len(cited)} citations exist in the documentation."


def citations(text: str) -> list[int]:
    """The passage ids ``text`` cites as ``[doc:ID]``, in order, without repeats."""
    return list(dict.fromkeys(int(x) for x in _CITE.findall(text)))
