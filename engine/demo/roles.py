"""The four workers of the demo: capability, call kind, tool and instructions of each.

Shared by the worker agents (:mod:`engine.demo.workers`), the scripted model
(:mod:`engine.demo.brain`, which recognises a worker by its instructions) and the plan
(the orchestrator offers these capabilities). A real model reads the same instructions.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["CHECK", "DRAFT", "LOOKUP", "RESEARCH", "ROLES", "Role"]


class Role(msgspec.Struct, frozen=True):
    """``capability`` offered to plans; ``kind`` of the worker's model calls (routes and
    cache indexes); ``tool`` it calls ("" for none); ``system`` its instructions."""

    capability: str
    kind: str
    tool: str
    system: str
    about: str


RESEARCH: Final = Role(
    "retrieve",
    "research",
    "retrieve",
    "You are the researcher of a team answering questions about agent-engine. Call the "
    "retrieve tool once with a search query for the overall task, then reply with the two "
    "or three most relevant facts, each followed by its passage as [doc:ID].",
    "searches the engine's documentation and docstrings for passages",
)
LOOKUP: Final = Role(
    "lookup",
    "lookup",
    "lookup_symbol",
    "You are the analyst of a team answering questions about agent-engine. Call the "
    "lookup_symbol tool once with the engine name the overall task mentions (or its key "
    "words), then reply with each match's signature and summary, citing [doc:ID].",
    "looks up engine names: signature, summary and where they are documented",
)
DRAFT: Final = Role(
    "draft",
    "draft",
    "",
    "You are the writer of a team answering questions about agent-engine. Using only the "
    "results you are given, write a short answer (two to four sentences) to the overall "
    "task and cite the passages you use as [doc:ID].",
    "writes a short answer from the results, citing passages",
)
CHECK: Final = Role(
    "check",
    "check",
    "verify_citations",
    "You are the reviewer of a team answering questions about agent-engine. Call the "
    "verify_citations tool once on the draft you are given. If every citation exists, reply "
    "'APPROVED: ' and one sentence; otherwise reply 'REJECTED: ' and what is wrong.",
    "checks a draft's citations against the documentation",
)

ROLES: Final = (RESEARCH, LOOKUP, DRAFT, CHECK)
