"""The demo workload behind ``engine demo`` (``make demo``): the engine doing its real job.

A broker and mesh nodes on 127.0.0.1, ReAct workers with tools and retrieval over the
engine's own documentation, an orchestrator planning a few hundred questions into
subtasks, a live view and a summary table measured from the run. One idea per module:

- :mod:`~engine.demo.corpus` — the documentation and docstrings, chunked, and the
  retriever over them;
- :mod:`~engine.demo.questions` — the questions asked, with repeats and near-duplicates;
- :mod:`~engine.demo.roles` — the four workers' capabilities, tools and instructions;
- :mod:`~engine.demo.brain` — the scripted model: what a model would answer to each
  prompt of the workload (also what tests' OpenAI-compatible server answers);
- :mod:`~engine.demo.model` — the model the demo uses: an OpenAI-compatible server when
  configured, else the scripted one behind a router with retries and a fallback;
- :mod:`~engine.demo.workers` — the worker agents and their tools (``engine node`` loads
  them);
- :mod:`~engine.demo.procs` — starting, killing and stopping the broker and the nodes;
- :mod:`~engine.demo.stats` — what the summary reports, read from the run;
- :mod:`~engine.demo.display` — the live view and the summary table;
- :mod:`~engine.demo.workload` — submitting the jobs and watching them.

See ``docs/demo.md``.
"""

from __future__ import annotations

__all__: list[str] = []
