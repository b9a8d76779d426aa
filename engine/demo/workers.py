"""The demo's workers: four ReAct agents and their tools, in process or on ``engine node``.

``engine node --agents engine.demo.workers:Researcher,engine.demo.workers:Analyst,...``
hosts them on a mesh node; the orchestrator reaches them by type name. Each is a
:class:`~engine.orchestration.ReActAgent` with the instructions of its
:mod:`~engine.demo.roles` entry:

- :class:`Researcher` (``retrieve``): a :class:`~engine.orchestration.RetrievalTool` over
  the corpus (BM25 + vectors);
- :class:`Analyst` (``lookup``): ``lookup_symbol``, the corpus's table of public names;
- :class:`Writer` (``draft``): no tool, one model call;
- :class:`Reviewer` (``check``): ``verify_citations``; a draft it rejects fails the subtask
  (:class:`DraftRejected`), which makes the orchestrator replan.

What a worker needs is set up once per process (:func:`state`): the corpus (read from the
file ``ENGINE_DEMO_CORPUS`` names, else from the sources), its retriever and the model
(:func:`engine.demo.model.demo_model`, configured from the environment, its metrics on the
process's :func:`~engine.observe.metrics.default_metrics`, which ``engine node
--metrics-port`` serves). The demo process installs its own with :func:`install`. With
``ENGINE_DEMO_NODE`` set (the demo sets it on the nodes it starts), importing this module
starts that set-up in a thread, so the first subtask does not wait for it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec

from engine.agents import Context, handler
from engine.demo.brain import citations
from engine.demo.corpus import Corpus, load_corpus
from engine.demo.roles import CHECK, DRAFT, LOOKUP, RESEARCH, Role
from engine.orchestration import ReActAgent, RetrievalTool, SubtaskRequest, SubtaskResult
from engine.tools import Tool, tool

__all__ = [
    "WORKERS",
    "Analyst",
    "DraftRejected",
    "Researcher",
    "Reviewer",
    "State",
    "Writer",
    "install",
    "state",
]


class DraftRejected(Exception):
    """The reviewer rejected a draft (the subtask fails; the orchestrator replans)."""


class SymbolInfo(msgspec.Struct, frozen=True):
    short: str
    name: str
    signature: str
    summary: str
    chunk: int


class CitationReport(msgspec.Struct, frozen=True):
    cited: list[int]
    missing: list[int]
    ok: bool


class State:
    """What the workers of one process share: corpus, tools and model."""

    def __init__(self, corpus: Corpus, model: Any, retriever: Any = None) -> None:
        self.corpus = corpus
        self.model = model
        self.retriever = retriever if retriever is not None else corpus.retriever()
        self.tools: dict[str, Tool] = _tools(corpus, self.retriever)


def _tools(corpus: Corpus, retriever: Any) -> dict[str, Tool]:
    retrieve = RetrievalTool(retriever, k=3, max_chars=600).tool
    retrieve.cacheable = True  # a search has no side effects: replies may come from the cache
    ids = {c.id for c in corpus.chunks}
    by_short: dict[str, list[SymbolInfo]] = {}
    infos = [SymbolInfo(s.short, s.name, s.signature, s.summary, s.chunk) for s in corpus.symbols]
    for info in infos:
        by_short.setdefault(info.short.lower(), []).append(info)

    @tool(cacheable=True)
    def lookup_symbol(name: str) -> list[SymbolInfo]:
        """Find engine names (classes, functions, methods): signature, summary, passage id."""
        key = name.strip().strip("`").lower()
        if not key:
            return []
        found = list(by_short.get(key, ()))
        if not found:
            tail = key.rsplit(".", 1)[-1]
            found = [i for i in infos if i.name.lower().endswith(key)]
            found = found or [i for i in infos if tail and tail in i.short.lower()]
        if not found:
            words = {w for w in key.replace(".", " ").split() if len(w) > 3}
            scored = [(sum(w in i.name.lower() for w in words), i) for i in infos]
            found = [i for s, i in sorted(scored, key=lambda t: -t[0]) if s > 0]
        return found[:3]

    @tool(cacheable=True)
    def verify_citations(text: str) -> CitationReport:
        """Check that every passage a text cites as [doc:ID] exists in the documentation."""
        cited = citations(text)
        missing = [i for i in cited if i not in ids]
        return CitationReport(cited, missing, not missing)

    return {
        RESEARCH.tool: retrieve,
        LOOKUP.tool: lookup_symbol,
        CHECK.tool: verify_citations,
    }


_state: State | None = None
_lock = threading.Lock()


def _audit() -> Any:
    """The node's audit log (``ENGINE_DEMO_AUDIT``): its refused model calls, written as
    they happen, so that they outlive the node (a SIGKILL loses its metrics)."""
    path = os.environ.get("ENGINE_DEMO_AUDIT")
    if not path:
        return None
    from engine.observe.audit import AuditLog

    return AuditLog(path)


def install(s: State | None) -> None:
    """Use ``s`` for this process's workers (the demo does, running them in process)."""
    global _state
    with _lock:
        _state = s


def state() -> State:
    """This process's :class:`State`, set up on first use (see the module docs)."""
    global _state
    with _lock:
        if _state is None:
            from engine.demo.model import demo_model

            path = os.environ.get("ENGINE_DEMO_CORPUS")
            corpus = Corpus.load(path) if path else load_corpus()
            _state = State(corpus, demo_model(audit=_audit()))
        return _state


class _Worker(ReActAgent):
    """A demo worker: its capability, call kind and instructions come from its ``role``."""

    role: ClassVar[Role] = RESEARCH
    max_steps = 3

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.capabilities = (cls.role.capability,)
        cls.kind = cls.role.kind
        cls.system_prompt = cls.role.system

    @handler
    async def on_subtask(self, req: SubtaskRequest, ctx: Context) -> SubtaskResult:
        s = _state if _state is not None else await asyncio.to_thread(state)
        cls = type(self)
        if cls.llm is not s.model:  # first subtask of this class in this process
            cls.llm = s.model
            cls.tools = (s.tools[cls.role.tool],) if cls.role.tool else ()
        return await super().on_subtask(req, ctx)


class Researcher(_Worker):
    """Searches the engine's documentation and docstrings for passages."""

    role = RESEARCH


class Analyst(_Worker):
    """Looks up engine names: signature, summary and where they are documented."""

    role = LOOKUP


class Writer(_Worker):
    """Writes a short answer from the results, citing passages."""

    role = DRAFT


class Reviewer(_Worker):
    """Checks a draft's citations against the documentation."""

    role = CHECK

    @handler
    async def on_subtask(self, req: SubtaskRequest, ctx: Context) -> SubtaskResult:
        result = await super().on_subtask(req, ctx)
        if result.output.lstrip().upper().startswith("REJECTED"):
            raise DraftRejected(result.output[:500])
        return result


#: The worker classes, in plan order.
WORKERS: Sequence[type[_Worker]] = (Researcher, Analyst, Writer, Reviewer)


def _warm_up() -> None:
    """On a demo node: set up in the background while the node connects."""
    threading.Thread(target=state, name="demo-setup", daemon=True).start()


if os.environ.get("ENGINE_DEMO_NODE"):
    _warm_up()
