"""A job through the real ``openai`` client against the real-socket OpenAI-compatible server.

The server (tests/openai_server.py) plays the model: it answers the plan call from the
JSON-schema ``response_format`` it receives (so the test sees the capability enum on the
wire), makes the ReAct worker call its retrieval tool once, and answers the rest.
"""

from __future__ import annotations

import json
from typing import Any

from engine import HybridRetriever, Runtime
from engine.llm import ModelRouter, OpenAIProvider
from engine.llm.retry import RetryPolicy as LLMRetry
from engine.orchestration import Orchestrator, ReActAgent, RetrievalTool, set_default_llm
from tests.agents_for_tests import uv
from tests.openai_server import Fault, OpenAIServer, ServerReply

DOCS = HybridRetriever()
DOCS.add([1, 2], ["Paris is the capital of France.", "Rome is the capital of Italy."])


class Researcher(ReActAgent):
    capabilities = ("research",)
    tools = (RetrievalTool(DOCS, k=1).tool,)
    max_steps = 4


def model(body: dict[str, Any]) -> ServerReply:
    rf = body.get("response_format") or {}
    schema = json.dumps(rf)
    messages = body["messages"]
    if "subtasks" in schema:
        plan = {
            "facts": ["France is a country"],
            "subtasks": [
                {
                    "id": "find",
                    "description": "find the capital of France",
                    "capability": "research",
                    "depends_on": [],
                    "priority": 0,
                },
                {
                    "id": "check",
                    "description": "check the capital found",
                    "capability": "research",
                    "depends_on": ["find"],
                    "priority": 0,
                },
            ],
        }
        return ServerReply(json.dumps(plan))
    if "is_request_satisfied" in schema:
        return ServerReply(
            json.dumps(
                {
                    "is_request_satisfied": False,
                    "is_in_loop": False,
                    "is_progress_being_made": True,
                    "next_speaker": "researcher",
                    "instruction": "go on",
                    "reason": "",
                }
            )
        )
    if any(m.get("role") == "tool" for m in messages):
        return ServerReply("Paris")
    if body.get("tools"):
        return ServerReply(tool_calls=[("retrieve", '{"query": "capital of France"}')])
    return ServerReply("The capital of France is Paris.")


@uv
async def test_a_job_through_the_openai_client_and_a_real_socket() -> None:
    with OpenAIServer() as srv:
        srv.reply = model
        srv.fail(Fault.http(503))  # the first request (the plan call) fails once: retried
        provider = OpenAIProvider("test-model", base_url=srv.url, api_key="sk-test")
        llm = ModelRouter({"default": [provider]}, retry=LLMRetry(attempts=3, base=0.01))
        set_default_llm(llm)
        async with Runtime() as rt, Orchestrator(llm, rt) as orch:
            orch.add_worker(Researcher, concurrency=2)
            result = await (await orch.submit("What is the capital of France?")).result(timeout=60)
        set_default_llm(None)
        await llm.aclose()
        bodies = list(srv.bodies)
    assert result.ok, result.reason
    assert result.answer == "The capital of France is Paris."
    assert [o.output for o in result.subtasks] == ["Paris", "Paris"]
    find = result.subtasks[0]
    assert find.status == "completed" and find.tokens > 0
    plan_bodies = [b for b in bodies if "subtasks" in json.dumps(b.get("response_format"))]
    assert plan_bodies, "the plan call carried no JSON schema"
    rf = plan_bodies[0]["response_format"]
    assert rf["type"] == "json_schema"
    subtask = rf["json_schema"]["schema"]["$defs"]["Subtask"]
    assert subtask["properties"]["capability"]["enum"] == ["research"]
    tool_bodies = [b for b in bodies if b.get("tools")]
    assert tool_bodies[0]["tools"][0]["function"]["name"] == "retrieve"
    observed = [m for b in bodies for m in b["messages"] if m.get("role") == "tool"]
    assert "Paris is the capital of France." in observed[0]["content"]


def test_engine_run_uses_the_openai_server_when_configured(monkeypatch: Any, capsys: Any) -> None:
    from engine.cli import main
    from engine.orchestration.offline import BANNER

    def general(body: dict[str, Any]) -> ServerReply:
        schema = json.dumps(body.get("response_format") or {})
        if "subtasks" in schema:
            return ServerReply(
                json.dumps(
                    {
                        "facts": [],
                        "subtasks": [
                            {
                                "id": "only",
                                "description": "answer it",
                                "capability": "general",
                                "depends_on": [],
                                "priority": 0,
                            }
                        ],
                    }
                )
            )
        if "is_request_satisfied" in schema:
            return ServerReply(
                json.dumps(
                    {
                        "is_request_satisfied": True,
                        "is_in_loop": False,
                        "is_progress_being_made": True,
                    }
                )
            )
        return ServerReply(f"answered by {body['model']}")

    with OpenAIServer() as srv:
        srv.reply = general
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        try:
            code = main(["run", "say hi", "--model", "tiny-model", "--quiet"])
        finally:
            set_default_llm(None)
        requests = srv.requests
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0].startswith("job ")
    assert out.splitlines()[1] == "answered by tiny-model"
    assert BANNER not in err and requests == 4  # plan, the worker, progress, summarize
