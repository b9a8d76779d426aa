"""An orchestration run: an orchestrator plans, dispatches subtasks to workers, collects.

Needs ``engine.orchestration`` (task + progress ledgers, plans, ReAct worker) with a
scripted LLM, so the profile is deterministic and offline.
"""

from __future__ import annotations

import _common

opts = _common.args()
_common.require("engine.orchestration", "orchestration")
_common.require("engine.llm", "LLM")
if opts.check:
    raise SystemExit(0)

# The orchestration subsystem's public API is not settled in this build; fail loudly rather
# than profile something that is not the orchestrator.
raise SystemExit(
    "orchestration scenario: engine.orchestration is present but this scenario has not been "
    "written against its API yet (profiles/README.md)"
)
