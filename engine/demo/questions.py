"""The questions the demo asks: generated from the corpus, with repeats and near-duplicates.

Most questions are new: about a public engine name (``What does Budget.hold do?``) or a
documentation section (``What does the documentation say about "Budgets and accounting"
(llm)?``). One in :data:`REPEAT_EVERY` jobs asks an earlier question again: as the same
text (an exact repeat) or as a near-duplicate (other case and punctuation), at least
``gap`` jobs (default :data:`GAP`) after the original, so the original has usually finished
(the demo uses twice the jobs it runs at once). Those are what the LLM cache answers. One
job, in the middle, gets a deliberately small token budget (:data:`SMALL_BUDGET`).

Everything is drawn from ``random.Random(seed)``: the same corpus and seed give the same
questions in the same order.
"""

from __future__ import annotations

import random
import re
from typing import Final, Literal

import msgspec

from engine.demo.corpus import Corpus

__all__ = [
    "GAP",
    "REPEAT_EVERY",
    "SMALL_BUDGET",
    "Question",
    "near_duplicate",
    "questions",
]

#: One job in this many asks an earlier question again (after the warm-up).
REPEAT_EVERY: Final = 6
#: A repeat comes at least this many jobs after its original (and none comes before).
GAP: Final = 64
#: Tokens of the one job given a deliberately small budget: enough for its plan call,
#: not for the workers' calls that follow.
SMALL_BUDGET: Final = 900

Kind = Literal["new", "repeat", "near-duplicate"]


class Question(msgspec.Struct, frozen=True):
    """Job ``index`` asks ``text``; a repeat names the ``origin`` job it repeats."""

    index: int
    text: str
    kind: Kind = "new"
    origin: int | None = None
    budget: int | None = None


def near_duplicate(text: str) -> str:
    """The same question with other case and punctuation (what a user retyping it sends)."""
    bare = re.sub(r"[?!.]+$", "", text.strip())
    return bare.lower() if bare != bare.lower() else bare.upper()


def _topics(corpus: Corpus) -> list[str]:
    """Every question the corpus can answer, in corpus order, without duplicates."""
    out: dict[str, None] = {}
    for sym in corpus.symbols:
        if not sym.summary or len(sym.short) < 6 or sym.short.startswith(("register", "run")):
            continue
        if sym.short[:1].isupper() and "." not in sym.short:
            out[f"What is {sym.short} for, and how is it used?"] = None
        else:
            out[f"What does {sym.short} do?"] = None
    for chunk in corpus.chunks:
        if not chunk.source.startswith("docs/") or ">" not in chunk.title:
            continue
        heading = chunk.title.rsplit(">", 1)[-1].strip()
        doc = chunk.source.removeprefix("docs/").removesuffix(".md")
        if heading and heading.lower() not in ("(top)", "quick start"):
            out[f'What does the documentation say about "{heading}" ({doc})?'] = None
    return list(out)


def questions(corpus: Corpus, n: int, *, seed: int = 7, gap: int = GAP) -> list[Question]:
    """``n`` questions for ``n`` jobs (see the module docs); a repeat comes at least ``gap``
    jobs after its original (and none before job ``gap``)."""
    if n < 1:
        raise ValueError(f"the demo needs at least one job, got {n}")
    rng = random.Random(seed)
    pool = _topics(corpus)
    if not pool:
        raise ValueError("the corpus has nothing to ask about")
    rng.shuffle(pool)
    out: list[Question] = []
    fresh = iter(pool * (n // len(pool) + 1))
    small = n // 2 if n >= 3 else None
    for i in range(n):
        earlier = [q for q in out[: max(0, i - gap)] if q.kind == "new" and q.budget is None]
        if i >= gap and i != small and i % REPEAT_EVERY == 0 and earlier:
            orig = rng.choice(earlier)
            if rng.random() < 0.5:
                out.append(Question(i, orig.text, "repeat", orig.index))
            else:
                out.append(Question(i, near_duplicate(orig.text), "near-duplicate", orig.index))
            continue
        text = next(fresh)
        out.append(Question(i, text, budget=SMALL_BUDGET if i == small else None))
    return out
