"""What the demo reports, read from the run: metrics of every process, and the jobs.

Each process serves Prometheus text; :func:`llm_figures` reads a process's model calls from
it (``engine_llm_calls_total`` by status, ``engine_llm_tokens_total``,
``engine_llm_cost_total``, ``engine_llm_cache_total`` by result, and the router's
``engine_demo_llm_{retries,fallbacks,breaker_skips}_total``), :func:`executed`
a node's finished deliveries (``engine_messages_total{kind="executed"}``). The demo's own
process is read the same way, from its registry. :class:`JobLog` keeps each job's outcome
and latency as measured by the demo (submit to result).
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterable
from typing import Any

import msgspec

__all__ = [
    "JobLog",
    "LLMFigures",
    "executed",
    "llm_figures",
    "percentile",
    "samples",
    "scrape",
]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: ``(name, labels) -> value``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def scrape(url: str, timeout: float = 2.0) -> str:
    """GET ``url``/metrics (a 127.0.0.1 endpoint of a demo process)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as resp:
        body: bytes = resp.read()
    return body.decode()


def _sum(s: Samples, name: str, **match: str) -> float:
    want = set(match.items())
    return sum(v for (n, labels), v in s.items() if n == name and want <= labels)


class LLMFigures(msgspec.Struct):
    """One process's model calls (``+`` adds two processes')."""

    ok: int = 0
    cached: int = 0
    errors: int = 0
    refused: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    exact: int = 0
    semantic: int = 0
    misses: int = 0
    retries: int | None = 0
    fallbacks: int | None = 0
    breaker_skips: int | None = 0

    def __add__(self, o: LLMFigures) -> LLMFigures:
        def add(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else a + b

        return LLMFigures(
            self.ok + o.ok,
            self.cached + o.cached,
            self.errors + o.errors,
            self.refused + o.refused,
            self.prompt_tokens + o.prompt_tokens,
            self.completion_tokens + o.completion_tokens,
            self.cost + o.cost,
            self.exact + o.exact,
            self.semantic + o.semantic,
            self.misses + o.misses,
            add(self.retries, o.retries),
            add(self.fallbacks, o.fallbacks),
            add(self.breaker_skips, o.breaker_skips),
        )

    @property
    def calls(self) -> int:
        """Calls answered: by a model or from the cache."""
        return self.ok + self.cached

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def hit_rate(self) -> float:
        lookups = self.exact + self.semantic + self.misses
        return (self.exact + self.semantic) / lookups if lookups else 0.0


def llm_figures(s: Samples) -> LLMFigures:
    """A process's model-call figures from its metrics (see the module docs)."""
    counted = ("engine_demo_llm_retries_total", frozenset()) in s
    return LLMFigures(
        ok=int(_sum(s, "engine_llm_calls_total", status="ok")),
        cached=int(_sum(s, "engine_llm_calls_total", status="cached")),
        errors=int(_sum(s, "engine_llm_calls_total", status="error")),
        refused=int(_sum(s, "engine_llm_calls_total", status="refused")),
        prompt_tokens=int(_sum(s, "engine_llm_tokens_total", kind="prompt")),
        completion_tokens=int(_sum(s, "engine_llm_tokens_total", kind="completion")),
        cost=_sum(s, "engine_llm_cost_total"),
        exact=int(_sum(s, "engine_llm_cache_total", result="exact")),
        semantic=int(_sum(s, "engine_llm_cache_total", result="semantic")),
        misses=int(_sum(s, "engine_llm_cache_total", result="miss")),
        retries=int(_sum(s, "engine_demo_llm_retries_total")) if counted else None,
        fallbacks=int(_sum(s, "engine_demo_llm_fallbacks_total")) if counted else None,
        breaker_skips=int(_sum(s, "engine_demo_llm_breaker_skips_total")) if counted else None,
    )


def executed(s: Samples) -> int:
    """Deliveries a node executed (one per subtask attempt it ran)."""
    return int(_sum(s, "engine_messages_total", kind="executed"))


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class JobLog:
    """Outcomes of the demo's jobs: status, latency (s), subtasks, replans, error class."""

    def __init__(self, submitted: int = 0) -> None:
        self.total = submitted
        self.started = 0
        self.latencies: list[float] = []
        self.status: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.subtasks = 0
        self.subtasks_ok = 0
        self.attempts = 0
        self.subtasks_done = 0
        self.replans = 0
        self.tokens = 0
        self.budget_stops = 0
        self.lost: list[str] = []

    @property
    def finished(self) -> int:
        return sum(self.status.values())

    def record(self, result: Any, latency: float) -> None:
        self.latencies.append(latency)
        status = str(getattr(result.status, "value", result.status))
        self.status[status] = self.status.get(status, 0) + 1
        # in process the job fails with BudgetExceeded; a worker on a node reports it
        # through the orchestrator ("a worker's budget refused a call: ...")
        if result.error == "BudgetExceeded" or "budget refused" in result.reason:
            self.budget_stops += 1
            self.errors["budget"] = self.errors.get("budget", 0) + 1
        elif result.error:
            self.errors[result.error] = self.errors.get(result.error, 0) + 1
        self.subtasks += len(result.subtasks)
        self.subtasks_ok += sum(1 for o in result.subtasks if o.status == "completed")
        self.attempts += sum(o.attempts for o in result.subtasks)
        self.replans += result.replans
        self.tokens += result.tokens
