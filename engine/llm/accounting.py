"""Who spent what: usage and cost attributed to agent, job and tenant.

Attribution comes from ``chat(..., agent=, job=, tenant=)`` or, when those are not given,
from the ambient :func:`attribution` context (an orchestrator sets it once per task, so the
agents' own calls need not pass it). :class:`UsageLedger` keeps the totals, bounded.
"""

from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeVar

from engine.llm.base import Usage

_K = TypeVar("_K")

__all__ = ["Attribution", "Totals", "UsageLedger", "attribution", "current_attribution"]


class Attribution(NamedTuple):
    """Whom a call is charged to ("" where unknown)."""

    agent: str = ""
    job: str = ""
    tenant: str = ""


_NONE: Final = Attribution()
_current: contextvars.ContextVar[Attribution] = contextvars.ContextVar(
    "engine_llm_attribution", default=_NONE
)

#: The ambient attribution: :func:`current_attribution` with no field given, without its
#: frame (the pipeline's usual case).
ambient_attribution: Final = _current.get


@contextmanager
def attribution(
    *, agent: str | None = None, job: str | None = None, tenant: str | None = None
) -> Iterator[Attribution]:
    """Charge LLM calls made inside the block to ``agent``/``job``/``tenant`` (nested ok)."""
    old = _current.get()
    new = Attribution(
        old.agent if agent is None else agent,
        old.job if job is None else job,
        old.tenant if tenant is None else tenant,
    )
    token = _current.set(new)
    try:
        yield new
    finally:
        _current.reset(token)


def current_attribution(
    agent: str | None = None, job: str | None = None, tenant: str | None = None
) -> Attribution:
    """The ambient attribution with any given field taking precedence."""
    amb = _current.get()
    if agent is None and job is None and tenant is None:
        return amb
    return Attribution(
        amb.agent if agent is None else agent,
        amb.job if job is None else job,
        amb.tenant if tenant is None else tenant,
    )


@dataclass(slots=True)
class Totals:
    """Calls, tokens and dollars of one key (or of everything)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cached: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, usage: Usage, cost: float, cached: bool) -> None:
        self.calls += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cost += cost
        self.cached += cached


@dataclass(slots=True)
class UsageLedger:
    """Totals per attribution and per model, bounded to ``max_keys`` each (LRU).

    ``total`` always counts everything, including keys that were evicted.
    """

    max_keys: int = 10_000
    total: Totals = field(default_factory=Totals)
    _by_who: OrderedDict[Attribution, Totals] = field(default_factory=OrderedDict)
    _by_model: OrderedDict[str, Totals] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last: tuple[Attribution, str, Totals, Totals] | None = None

    def record(
        self, who: Attribution, model: str, usage: Usage, cost: float, cached: bool = False
    ) -> None:
        p, c = usage.prompt_tokens, usage.completion_tokens
        # PERF: acquire/release rather than ``with`` (~1,100 instructions less), the adds
        # unrolled and those of zero cost or uncached calls skipped (adding 0.0 or False
        # changes no total: each starts at +0.0 or 0): ~3,200 of ~8,400 instructions
        # (callgrind, benches/llm_call_instructions.py). Before: the three adds inline,
        # and the last key's totals kept (calls come in runs of one attribution and model;
        # the most recent key is already last in LRU order): ~1 us less per call.
        lock = self._lock
        lock.acquire()
        try:
            last = self._last
            if last is not None and last[0] == who and last[1] == model:
                by_who, by_model = last[2], last[3]
            else:
                by_who = _bump(self._by_who, who, self.max_keys)
                by_model = _bump(self._by_model, model, self.max_keys)
                self._last = (who, model, by_who, by_model)
            total = self.total
            total.calls += 1
            total.prompt_tokens += p
            total.completion_tokens += c
            by_who.calls += 1
            by_who.prompt_tokens += p
            by_who.completion_tokens += c
            by_model.calls += 1
            by_model.prompt_tokens += p
            by_model.completion_tokens += c
            if cost:
                total.cost += cost
                by_who.cost += cost
                by_model.cost += cost
            if cached:
                total.cached += cached
                by_who.cached += cached
                by_model.cached += cached
        finally:
            lock.release()

    def of(
        self, *, agent: str | None = None, job: str | None = None, tenant: str | None = None
    ) -> Totals:
        """Totals of every attribution matching the given fields (all of them when none)."""
        out = Totals()
        with self._lock:
            for who, t in self._by_who.items():
                if (
                    (agent is None or who.agent == agent)
                    and (job is None or who.job == job)
                    and (tenant is None or who.tenant == tenant)
                ):
                    out.calls += t.calls
                    out.prompt_tokens += t.prompt_tokens
                    out.completion_tokens += t.completion_tokens
                    out.cost += t.cost
                    out.cached += t.cached
        return out

    def by_model(self) -> dict[str, Totals]:
        with self._lock:
            return dict(self._by_model)


def _bump(table: OrderedDict[_K, Totals], key: _K, bound: int) -> Totals:
    t = table.get(key)
    if t is None:
        t = table[key] = Totals()
        if len(table) > bound:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return t
