"""What the demo shows: the live view while it runs, and the summary (table and JSON).

:class:`View` draws a rich ``Live`` panel on stderr when it is a terminal (jobs done,
subtasks per second, cache hit rate, tokens, retries, the nodes' counts, chaos events),
refreshed from the run's :class:`~engine.demo.workload.Progress` four times a second, and
prints one progress line every few seconds otherwise. :class:`Report` is the summary:
every figure comes from the run (the jobs' results, the store, the processes' metrics,
the audit log, the profiler); :func:`summary_table` renders it and ``summary.json`` keeps it.
"""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any

import msgspec

from engine.demo.stats import LLMFigures, percentile

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from engine.demo.workload import Demo, Progress

__all__ = ["Report", "Row", "View", "summary_table"]


class Row(msgspec.Struct):
    """One process of the run."""

    name: str
    role: str
    pid: int
    killed: bool = False
    executed: int | None = None
    calls: int | None = None
    cache_hits: int | None = None


class Report(msgspec.Struct, kw_only=True):
    """The summary of one run (``summary.json``)."""

    model: str
    mode: str
    offline: bool
    corpus: dict[str, int]
    questions: dict[str, int]
    jobs: int
    completed: int
    failed: int
    cancelled: int
    lost: int
    unfinished: int
    errors: dict[str, int]
    lost_reasons: list[str]
    store: dict[str, int]
    subtasks: int
    subtasks_completed: int
    attempts: int
    replans: int
    seconds: float
    p50: float
    p99: float
    llm: LLMFigures
    job_tokens: int
    budget_stops: int
    processes: list[Row]
    chaos: dict[str, Any]
    outputs: dict[str, str]
    audit_records: int
    refusals: int
    profile_samples: int
    endpoints: list[str]
    interrupted: bool = False
    error: str = ""

    @classmethod
    def of(cls, demo: Demo) -> Report:
        from engine.demo.model import configured

        p = demo.progress
        log = p.jobs if p is not None else None
        corpus = demo.corpus
        kinds: dict[str, int] = {}
        for q in demo.questions:
            kinds[q.kind] = kinds.get(q.kind, 0) + 1
        rows = []
        for child, s in demo.remote.values():
            from engine.demo.stats import executed, llm_figures

            node = s is not None and child.role == "node"
            fig = llm_figures(s) if node else None
            rows.append(
                Row(
                    child.name,
                    child.role,
                    child.pid,
                    child.killed,
                    executed(s) if node else None,
                    fig.calls if fig is not None else None,
                    fig.exact + fig.semantic if fig is not None else None,
                )
            )
        out = demo.out
        status = log.status if log is not None else {}
        return cls(
            model=p.model if p is not None else "",
            mode=p.mode if p is not None else "",
            offline=not configured(),
            corpus={
                "chunks": len(corpus) if corpus else 0,
                "docs": corpus.docs if corpus else 0,
                "modules": corpus.modules if corpus else 0,
                "symbols": len(corpus.symbols) if corpus else 0,
            },
            questions=kinds,
            jobs=len(demo.questions),
            completed=status.get("completed", 0),
            failed=status.get("failed", 0),
            cancelled=status.get("cancelled", 0),
            lost=_lost(demo),
            unfinished=(len(demo.questions) - log.finished - _lost(demo)) if log else 0,
            errors=dict(log.errors) if log is not None else {},
            lost_reasons=list(log.lost[:20]) if log is not None else [],
            store=dict(demo.store_counts),
            subtasks=log.subtasks if log is not None else 0,
            subtasks_completed=log.subtasks_ok if log is not None else 0,
            attempts=log.attempts if log is not None else 0,
            replans=log.replans if log is not None else 0,
            seconds=round(p.elapsed, 3) if p is not None else 0.0,
            p50=percentile(log.latencies, 50) if log is not None else float("nan"),
            p99=percentile(log.latencies, 99) if log is not None else float("nan"),
            llm=p.llm if p is not None else LLMFigures(),
            job_tokens=log.tokens if log is not None else 0,
            budget_stops=log.budget_stops if log is not None else 0,
            processes=rows,
            chaos=dict(demo.chaos),
            outputs={
                "dir": str(out.root),
                "store": f"sqlite:///{out.store}",
                "metrics": str(out.metrics),
                "audit": str(out.audit),
                "profile": str(out.profile),
                "logs": str(out.logs),
                "summary": str(out.summary),
            },
            audit_records=demo.audit_records,
            refusals=demo.refusals,
            endpoints=demo.endpoints(),
            profile_samples=demo.profile_samples,
            interrupted=demo.interrupted,
            error=demo.error,
        )


def _rel(path: str) -> str:
    """``path`` relative to the working directory when it lies inside it."""
    import os

    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _lost(demo: Demo) -> int:
    """Jobs without a result: all unfinished ones; after an interruption or an error,
    those that failed to give one (the others were stopped, not lost)."""
    log = demo.progress.jobs if demo.progress is not None else None
    if log is None:
        return 0
    stopped = demo.interrupted or bool(demo.error)
    return len(log.lost) if stopped else len(demo.questions) - log.finished


def _n(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _s(x: float) -> str:
    if x != x:  # NaN: no job finished
        return "n/a"
    return f"{x * 1000:,.0f} ms" if x < 1 else f"{x:,.2f} s"


def summary_table(r: Report) -> RenderableType:
    """The summary as a rich table (what ``engine demo`` prints last)."""
    from rich.table import Table

    t = Table(title="agent-engine demo: summary", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("measured")
    t.add_row("model", r.model)
    where = r.mode
    nodes = [row for row in r.processes if row.role == "node"]
    if nodes:
        where += ": " + ", ".join(
            f"{row.name} ran {_n(row.executed)} subtasks"
            + (" (killed)" if row.killed else "")
            + (" (replacement)" if row.name == r.chaos.get("restarted") else "")
            for row in nodes
        )
    t.add_row("processes", where)
    c, q = r.corpus, r.questions
    t.add_row(
        "memory",
        f"{c['chunks']:,} chunks: {c['docs']} docs/ files, docstrings of {c['modules']} modules",
    )
    t.add_row(
        "questions",
        f"{r.jobs:,}: {q.get('new', 0):,} new, {q.get('repeat', 0)} repeated, "
        f"{q.get('near-duplicate', 0)} retyped (other case and punctuation)",
    )
    failed = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items()))
    t.add_row(
        "jobs",
        f"{r.completed:,} completed · {r.failed:,} failed"
        + (f" ({failed})" if failed else "")
        + f" · [bold]{r.lost} lost[/bold]"
        + (f" · {r.unfinished:,} not run (stopped)" if r.unfinished else ""),
    )
    t.add_row("subtasks", f"{r.subtasks:,} · {r.replans:,} replans")
    secs = max(r.seconds, 1e-9)
    done = r.completed + r.failed
    t.add_row(
        "throughput",
        f"{done:,} jobs in {r.seconds:,.1f} s · {done / secs:,.1f} jobs/s · "
        f"{r.subtasks / secs:,.0f} subtasks/s",
    )
    t.add_row("job latency", f"p50 {_s(r.p50)} · p99 {_s(r.p99)} (submit to result)")
    llm = r.llm
    t.add_row(
        "model calls",
        f"{llm.calls:,} · cache hit rate {llm.hit_rate:.1%} ({llm.exact:,} exact, "
        f"{llm.semantic:,} semantic)",
    )
    no_price = not r.offline and llm.cost == 0 and llm.tokens
    t.add_row(
        "tokens · cost",
        f"{llm.tokens:,} ({llm.prompt_tokens:,} prompt) · ${llm.cost:,.4f}"
        + (" (the model has no list price)" if no_price else ""),
    )
    t.add_row(
        "retries · fallbacks",
        f"{_n(llm.retries)} retries · {_n(llm.fallbacks)} fallbacks"
        + (f" ({llm.breaker_skips:,} with a circuit breaker open)" if llm.breaker_skips else "")
        + f" · {llm.errors:,} calls failed",
    )
    t.add_row(
        "budget refusals",
        f"{r.refusals:,} calls refused (BudgetExceeded) · {r.budget_stops} "
        + ("job stopped by its budget" if r.budget_stops == 1 else "jobs stopped by their budget"),
    )
    if r.chaos:
        t.add_row(
            "chaos",
            f"SIGKILL {r.chaos.get('killed')} (pid {r.chaos.get('pid')}) after "
            f"{r.chaos.get('after_jobs')} jobs; {r.chaos.get('restarted', 'no')} restarted"
            + (
                f" with {r.chaos['new_slots']} new slots per capability"
                if r.chaos.get("new_slots")
                else ""
            )
            + f"; {r.lost} jobs lost",
        )
    if r.store:
        t.add_row(
            "store",
            f"sqlite:///{_rel(r.outputs['store'].removeprefix('sqlite:///'))}: "
            + ", ".join(f"{v:,} {k}" for k, v in sorted(r.store.items())),
        )
    t.add_row("metrics", f"{_rel(r.outputs['metrics'])}/*.prom (every process, at the end)")
    t.add_row(
        "audit log", f"{_rel(r.outputs['audit'])} ({r.audit_records:,} records, chain verified)"
    )
    t.add_row(
        "profile", f"{_rel(r.outputs['profile'])} ({r.profile_samples:,} samples, speedscope)"
    )
    if r.interrupted:
        t.add_row("[red]interrupted[/red]", "stopped early: the figures cover what finished")
    if r.error:
        t.add_row("[red]error[/red]", r.error)
    return t


class View:
    """The live display (see the module docs); ``live=False`` prints lines instead."""

    def __init__(self, *, live: bool | None = None, err: IO[str] | None = None) -> None:
        from rich.console import Console

        stream = err or sys.stderr
        self.live_ok = stream.isatty() if live is None else live
        self.err: Console = Console(file=stream, stderr=err is None)
        self._live: Any = None
        self._progress: Progress | None = None
        self._last_line = 0.0
        self._rate: list[tuple[float, int]] = []

    def banner(self, text: str) -> None:
        print(text, file=self.err.file, flush=True)

    def start(self, progress: Progress) -> None:
        self._progress = progress
        if self.live_ok:
            from rich.live import Live

            self._live = Live(
                get_renderable=self._panel, console=self.err, refresh_per_second=4, transient=True
            )
            self._live.start()

    def tick(self) -> None:
        """Without a live panel: one line every five seconds."""
        p = self._progress
        if self._live is not None or p is None:
            return
        now = time.monotonic()
        if now - self._last_line >= 5.0:
            self._last_line = now
            self.err.print(self._line(p), markup=False, highlight=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _subtask_rate(self, p: Progress) -> float:
        now = time.monotonic()
        self._rate.append((now, p.jobs.subtasks_done))
        while len(self._rate) > 2 and now - self._rate[0][0] > 3.0:
            self._rate.pop(0)
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def _line(self, p: Progress) -> str:
        j = p.jobs
        return (
            f"demo: {j.finished}/{p.total} jobs done, {j.subtasks_done} subtasks, "
            f"cache hit rate {p.llm.hit_rate:.0%}, {p.llm.tokens:,} tokens, {p.elapsed:.0f} s"
        )

    def _panel(self) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        p = self._progress
        assert p is not None
        j = p.jobs
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        t.add_row("model", p.model)
        t.add_row("mode", p.mode)
        t.add_row("jobs", f"{j.finished}/{p.total} done · {j.started - j.finished} running")
        t.add_row("subtasks", f"{j.subtasks_done:,} done · {self._subtask_rate(p):,.0f}/s")
        llm = p.llm
        t.add_row(
            "model calls",
            f"{llm.calls:,} · cache hit rate {llm.hit_rate:.0%} · {llm.tokens:,} tokens · "
            f"{_n(llm.retries)} retries · {_n(llm.fallbacks)} fallbacks",
        )
        if p.nodes:
            t.add_row("nodes", " · ".join(f"{k} {v:,}" for k, v in p.nodes.items()))
        t.add_row("elapsed", f"{p.elapsed:.1f} s")
        bar = ProgressBar(total=max(1, p.total), completed=j.finished, width=60)
        events = [Text(e, no_wrap=True, overflow="ellipsis", style="dim") for e in p.events[-4:]]
        return Group(bar, t, *events)

    def report(self, r: Report, out: Console | None = None) -> None:
        from rich.console import Console

        console = out or Console()
        console.print(summary_table(r))
