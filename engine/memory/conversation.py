"""ConversationMemory: per-conversation turns with a recent window, semantic recall of
older turns weighted by importance, and a summarisation hook for what scrolled away."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import VectorStoreError
from engine.memory.embedders import Embedder, HashingEmbedder
from engine.memory.vectors import VectorStore

__all__ = ["ConversationMemory", "Turn"]


@dataclass(frozen=True, slots=True)
class Turn:
    id: int  # unique across the memory (the vector id)
    conversation: str
    seq: int  # position within the conversation, from 0
    role: str
    content: str
    importance: float = 0.5
    at: float = field(default_factory=time.time)


#: ``summarize(previous_summary, turns) -> new_summary``
Summarizer = Callable[[str | None, Sequence[Turn]], str]


@dataclass
class _Conversation:
    turns: list[Turn] = field(default_factory=list)
    summary: str | None = None
    summarized_upto: int = 0  # turns[:summarized_upto] are folded into the summary


class ConversationMemory:
    """Turns of many conversations; each conversation is a namespace of one VectorStore.

    ``window``: how many latest turns :meth:`recent` returns (and :meth:`recall` skips).
    ``summarize`` (optional) is called once ``summarize_every`` turns have scrolled out
    of the window since the last summary, with the previous summary and those turns.
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        window: int = 20,
        summarize: Summarizer | None = None,
        summarize_every: int = 20,
        store: VectorStore | None = None,
    ) -> None:
        if window < 0 or summarize_every < 1:
            raise VectorStoreError("window must be >= 0 and summarize_every >= 1")
        self.embedder: Embedder = embedder if embedder is not None else HashingEmbedder()
        self.store = store if store is not None else VectorStore(self.embedder.dim)
        self.window = window
        self.summarize = summarize
        self.summarize_every = summarize_every
        self._convs: dict[str, _Conversation] = {}
        self._by_id: dict[int, Turn] = {}
        self._next_id = 0
        self._lock = threading.Lock()

    def append(
        self, conversation: str, role: str, content: str, *, importance: float = 0.5
    ) -> Turn:
        """Add a turn; ``importance`` in [0, 1] weights it in :meth:`recall`."""
        if not 0.0 <= importance <= 1.0:
            raise VectorStoreError(f"importance must be within [0, 1], got {importance}")
        vec = self.embedder.embed([content])
        with self._lock:
            conv = self._convs.setdefault(conversation, _Conversation())
            turn = Turn(self._next_id, conversation, len(conv.turns), role, content, importance)
            self._next_id += 1
            self.store.add([turn.id], vec, namespace=conversation)
            conv.turns.append(turn)
            self._by_id[turn.id] = turn
            pending = len(conv.turns) - self.window - conv.summarized_upto
            todo = None
            if self.summarize is not None and pending >= self.summarize_every:
                upto = len(conv.turns) - self.window
                todo = (conv.summary, conv.turns[conv.summarized_upto : upto], upto)
        if todo is not None and self.summarize is not None:
            summary = self.summarize(todo[0], todo[1])
            with self._lock:
                conv.summary = summary
                conv.summarized_upto = todo[2]
        return turn

    def recent(self, conversation: str, n: int | None = None) -> list[Turn]:
        """The last ``n`` (default ``window``) turns, oldest first."""
        conv = self._convs.get(conversation)
        if conv is None:
            return []
        n = self.window if n is None else n
        return list(conv.turns[-n:]) if n > 0 else []

    def summary(self, conversation: str) -> str | None:
        conv = self._convs.get(conversation)
        return None if conv is None else conv.summary

    def recall(
        self, conversation: str, query: str, k: int = 5, *, min_importance: float = 0.0
    ) -> list[tuple[Turn, float]]:
        """Older turns (outside the recent window) most relevant to ``query``.

        Score = cosine x (0.5 + importance / 2): an important turn outranks a slightly
        closer trivial one. Returns ``(turn, score)`` best first.
        """
        conv = self._convs.get(conversation)
        if conv is None:
            return []
        older = len(conv.turns) - self.window
        if older <= 0:
            return []
        fetch = min(len(conv.turns), 4 * k + self.window)
        ids, sims = self.store.search(self.embedder.embed([query]), k=fetch, namespace=conversation)
        out: list[tuple[Turn, float]] = []
        for i, s in zip(ids[0].tolist(), sims[0].tolist(), strict=True):
            turn = self._by_id.get(i)
            if turn is None or turn.seq >= older or turn.importance < min_importance:
                continue
            out.append((turn, float(s) * (0.5 + turn.importance / 2)))
        out.sort(key=lambda t: -t[1])
        return out[:k]

    def context(self, conversation: str, query: str, k: int = 5) -> dict[str, Any]:
        """What to put in a prompt: summary, recalled older turns, recent turns."""
        return {
            "summary": self.summary(conversation),
            "recalled": [t for t, _ in self.recall(conversation, query, k)],
            "recent": self.recent(conversation),
        }

    def forget(self, conversation: str) -> int:
        """Drop a conversation; returns how many turns were removed."""
        with self._lock:
            conv = self._convs.pop(conversation, None)
            if conv is None:
                return 0
            ids = [t.id for t in conv.turns]
            for i in ids:
                del self._by_id[i]
            self.store.remove(np.asarray(ids, np.int64))
            return len(ids)
