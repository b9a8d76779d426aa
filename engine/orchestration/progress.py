"""Progress evaluation and stall/loop detection.

After steps finish, the orchestrator asks the model (call kind ``progress``) for a
:class:`ProgressReport` over them: is the request satisfied, are we in a loop, is progress
being made, who should act next and with what instruction. **Batching**: a job has at most
one progress call in flight; steps that finish while it runs are folded into the next call,
and one call covers at most ``max_batch`` steps. So a fan-out of 1,000 subtasks finishing
together costs a handful of calls, not 1,000, and a slow model gets fewer, larger calls.

:class:`StallDetector` turns reports and delegations into a verdict: ``stalls`` counts
reports of no progress or of a loop (a report of progress lowers it again, as in
Magentic-One); the same delegation (capability + description) made ``max_repeats`` times
counts as a loop. At ``max_stalls`` the job replans, at most ``max_replans`` times.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

__all__ = ["MAX_BATCH", "ProgressReport", "StallDetector", "Verdict"]

#: Steps one progress call covers at most.
MAX_BATCH: Final = 256

_Text = Annotated[str, msgspec.Meta(max_length=4_000)]


class ProgressReport(msgspec.Struct, kw_only=True, frozen=True):
    """The model's progress ledger update (structured output of a ``progress`` call)."""

    is_request_satisfied: bool
    is_in_loop: bool
    is_progress_being_made: bool
    next_speaker: Annotated[str, msgspec.Meta(max_length=128)] = ""
    instruction: _Text = ""
    reason: _Text = ""


class Verdict(msgspec.Struct, frozen=True):
    """What to do after an update: ``"continue"``, ``"replan"`` or ``"fail"`` (``why``)."""

    action: str
    why: str = ""


CONTINUE: Final = Verdict("continue")


class StallDetector:
    """Counts stalls and repeated delegations for one job (state survives a resume)."""

    __slots__ = ("_seen", "max_repeats", "max_replans", "max_stalls", "replans", "stalls")

    def __init__(self, *, max_stalls: int = 3, max_replans: int = 2, max_repeats: int = 3) -> None:
        for name, value in (
            ("max_stalls", max_stalls),
            ("max_replans", max_replans),
            ("max_repeats", max_repeats),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if max_stalls < 1 or max_repeats < 1:
            raise ValueError("max_stalls and max_repeats must be >= 1")
        self.max_stalls = max_stalls
        self.max_replans = max_replans
        self.max_repeats = max_repeats
        self.stalls = 0
        self.replans = 0
        self._seen: dict[tuple[str, str], int] = {}

    def delegated(self, capability: str, description: str) -> Verdict:
        """One subtask handed to a worker (first attempts only; retries do not count)."""
        key = (capability, description)
        n = self._seen.get(key, 0) + 1
        if len(self._seen) < 100_000 or key in self._seen:  # bounded per job
            self._seen[key] = n
        if n >= self.max_repeats:
            return self._stall(
                f"the same delegation repeated {n} times ({capability}: {description[:80]!r})",
                force=True,
            )
        return CONTINUE

    def report(self, rep: ProgressReport) -> Verdict:
        """Fold in one progress report."""
        if rep.is_in_loop or not rep.is_progress_being_made:
            why = "the model reports a loop" if rep.is_in_loop else "no progress is being made"
            if rep.reason:
                why += f" ({rep.reason[:200]})"
            return self._stall(why)
        if self.stalls:
            self.stalls -= 1
        return CONTINUE

    def failed(self, why: str) -> Verdict:
        """Subtasks failed for good: replan if allowed, else fail."""
        return self._stall(why, force=True)

    def _stall(self, why: str, *, force: bool = False) -> Verdict:
        self.stalls = self.max_stalls if force else self.stalls + 1
        if self.stalls < self.max_stalls:
            return CONTINUE
        if self.replans >= self.max_replans:
            return Verdict("fail", f"{why}; gave up after {self.replans} replan(s) (max_replans)")
        return Verdict("replan", why)

    def replanned(self) -> None:
        self.replans += 1
        self.stalls = 0  # repeated delegations stay counted across generations
