"""The orchestrator's own model calls: ``plan`` (with one repair round), ``progress``,
``summarize``. Each goes out with the job's budget, and its result is what the caller
records in a ledger; a resumed job finds recorded results and does not call again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.errors import PlanError, StructuredOutputError
from engine.orchestration.ledgers import LedgerRecord, PlanEntry, ProgressEntry, digest
from engine.orchestration.plans import Plan, checked_levels, plan_type
from engine.orchestration.progress import CONTINUE, ProgressReport, Verdict

if TYPE_CHECKING:
    from engine.orchestration.execution import JobRun

__all__ = ["Answer", "call", "plan", "progress", "progress_step", "summarize"]

AGENT = "orchestrator"


class Answer:
    """One model call's outcome: parsed result, text, and what it cost."""

    __slots__ = ("cost", "finished", "input_digest", "parsed", "started", "text", "tokens")

    def __init__(
        self, parsed: Any, text: str, tokens: int, cost: float, started: float, input_digest: str
    ) -> None:
        self.parsed = parsed
        self.text = text
        self.tokens = tokens
        self.cost = cost
        self.started = started
        self.finished = time.time()
        self.input_digest = input_digest

    def record(self, action: str, body: Any, result: str) -> LedgerRecord:
        return LedgerRecord(
            agent=AGENT,
            action=action,
            input_digest=self.input_digest,
            result_digest=digest(result),
            started=self.started,
            finished=self.finished,
            tokens=self.tokens,
            cost=self.cost,
            body=body,
        )


async def call(
    run: JobRun, kind: str, messages: list[dict[str, str]], response_format: Any = None
) -> Answer:
    """One chat call of the job: its budget, its span; ``BudgetExceeded`` propagates."""
    s = run.s
    started = time.time()
    text_in = "\n".join(m["content"] for m in messages)
    kwargs: dict[str, Any] = {
        "kind": kind,
        "budget": run.budget,
        "agent": AGENT,
        "job": run.job.id,
        "tenant": run.job.tenant,
    }
    if response_format is not None:
        kwargs["response_format"] = response_format
    if s.tracer is not None:
        with s.tracer.span(f"orchestrator {kind}", run.traceparent, kind="llm"):
            res = await s.llm.chat(messages, **kwargs)
    else:
        res = await s.llm.chat(messages, **kwargs)
    tokens = res.usage.total_tokens
    run.spent(tokens, res.cost, 1)
    return Answer(res.parsed, res.text, tokens, res.cost, started, digest(text_in))


async def plan(run: JobRun, gen: int, why: str) -> Plan:
    """Ask for a valid plan for generation ``gen``: one repair round, then PlanError.

    Plan calls already recorded in the ledger (a resumed job) are reused, not repeated.
    """
    s = run.s
    caps = s.dispatcher.capabilities
    rtype = plan_type(caps)
    done = run.outputs
    failed = {sid: f"{o.error}" for sid, o in run.failures.items()}
    messages = s.prompts.plan(
        run.job.task,
        s.descriptions,
        max_subtasks=s.max_subtasks,
        done=done if why else None,
        failed=failed if why else None,
        why=why,
        facts=run.facts,
    )
    errors: list[str] = []
    raw = ""
    for attempt in (1, 2):
        if attempt == 2:
            messages = s.prompts.repair(messages, raw, errors)
        recorded = run.restored_plan_call(gen, attempt)
        if recorded is not None:
            if recorded.plan is not None and not recorded.errors:
                return recorded.plan
            errors = list(recorded.errors)
            raw = "" if recorded.plan is None else _plan_text(recorded.plan)
            continue
        try:
            ans = await call(run, "plan", messages, rtype)
        except StructuredOutputError as exc:  # the LLM layer's own repair failed too
            raise PlanError(f"the plan did not validate: {exc.error}", [exc.error]) from exc
        candidate = ans.parsed
        try:
            if not isinstance(candidate, Plan):
                raise PlanError(f"the model returned no plan (got {type(candidate).__name__})")
            levels = checked_levels(candidate, caps, max_subtasks=s.max_subtasks, done=done.keys())
            run.plan_levels = (candidate, levels)  # _push_pending orders by them
            errors = []
        except PlanError as exc:
            errors = exc.errors
        entry = PlanEntry(
            gen, attempt, candidate if isinstance(candidate, Plan) else None, errors, why
        )
        run.note([ans.record("plan", entry, ans.text)])  # rides along with the next step
        if not errors:
            assert isinstance(candidate, Plan)
            return candidate
        raw = ans.text
    raise PlanError("invalid plan after one repair round: " + "; ".join(errors[:20]), errors)


def _plan_text(p: Plan) -> str:
    import msgspec

    return msgspec.json.encode(p).decode()


async def progress(
    run: JobRun, steps: Mapping[str, str], pending: int
) -> tuple[ProgressReport | None, Answer | None, str]:
    """One progress call over ``steps``; (report, answer, error text if it did not parse)."""
    plan_ = run.plan
    assert plan_ is not None
    messages = run.s.prompts.progress(run.job.task, plan_, steps, pending=pending)
    try:
        ans = await call(run, "progress", messages, ProgressReport)
    except StructuredOutputError as exc:
        return None, None, exc.error
    rep = ans.parsed
    if not isinstance(rep, ProgressReport):
        return None, ans, f"no progress report (got {type(rep).__name__})"
    return rep, ans, ""


async def summarize(run: JobRun, results: Mapping[str, str]) -> Answer:
    messages = run.s.prompts.summarize(run.job.task, results)
    return await call(run, "summarize", messages)


async def progress_step(jr: JobRun, keys: list[str], epoch: int) -> None:
    """One progress evaluation over the step ``keys``; record it, fold in its verdict
    unless a replan started since it was asked for (``jr.epoch`` moved past ``epoch``)."""
    n = jr.progress_n
    jr.progress_n += 1
    try:
        steps = {}
        for key in keys:
            sid = key.partition(":")[2]
            o = jr.outcomes.get(sid)
            steps[key] = (
                (o.output if o.status == "completed" else f"FAILED: {o.error}") if o else "?"
            )
        pending = len(jr.runs)
        rep, ans, err = await progress(jr, steps, pending)
        # a report on steps of a generation replaced meanwhile is recorded, not folded in
        fold = jr.detector.report if jr.epoch == epoch else _ignore
        if rep is None:
            verdict = fold(_unreadable(err))
            entry = ProgressEntry(n, keys, False, False, False, reason=f"unreadable: {err}")
        else:
            verdict = fold(rep)
            entry = ProgressEntry(
                n,
                keys,
                rep.is_request_satisfied,
                rep.is_in_loop,
                rep.is_progress_being_made,
                rep.next_speaker,
                rep.instruction,
                rep.reason,
            )
            if rep.is_request_satisfied and jr.epoch == epoch:
                jr.satisfied = True
        rec = (
            ans.record("progress", entry, ans.text)
            if ans is not None
            else LedgerRecord(
                "orchestrator", "progress", "", "", time.time(), time.time(), 0, 0.0, entry
            )
        )
        jr.note([rec])
        jr.job.emit(
            "progress",
            data={
                "n": n,
                "steps": len(keys),
                "satisfied": entry.satisfied,
                "progress": entry.progress,
                "loop": entry.in_loop,
                "instruction": entry.instruction,
            },
        )
        if verdict.action != "continue" and jr.verdict is None:
            jr.verdict = verdict
    except Exception as exc:
        if jr.error is None:
            jr.error = exc
    finally:
        jr.progress_task = None
        jr.wake()


def _ignore(rep: ProgressReport) -> Verdict:
    return CONTINUE


def _unreadable(err: str) -> ProgressReport:
    return ProgressReport(
        is_request_satisfied=False,
        is_in_loop=False,
        is_progress_being_made=False,
        reason=f"the progress call's output did not parse: {err}"[:4_000],
    )
