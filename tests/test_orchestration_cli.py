"""`engine run`, `engine jobs list|show`, `engine resume`: output contract and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.orchestration import set_default_llm
from engine.orchestration.offline import BANNER


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    yield
    set_default_llm(None)


def test_run_prints_the_job_line_first_then_the_answer_and_one_banner(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    assert main(["run", "compare tea and coffee", "--store", url, "--quiet"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("job ") and len(lines[0].split()[1]) == 16
    assert lines[1].startswith("(scripted answer) compare tea and coffee")
    assert err.count(BANNER) == 1
    job_id = lines[0].split()[1]

    assert main(["jobs", "list", "--store", url]) == 0
    listed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(j["id"], j["status"]) for j in listed] == [(job_id, "completed")]
    assert listed[0]["task"] == "compare tea and coffee"

    assert main(["jobs", "show", job_id, "--store", url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["answer"] == lines[1] and shown["checkpoint"]["status"] == "completed"
    entries = [e["entry"] for e in shown["ledger"]]
    assert entries[0] == "PlanEntry" and entries[-1] == "AnswerEntry"
    assert entries.count("StepEntry") == 2

    # a finished job resumes to its stored answer, without running anything
    assert main(["resume", job_id, "--store", url, "--quiet"]) == 0
    again = capsys.readouterr().out.splitlines()
    assert again == [f"job {job_id}", lines[1]]


def test_a_refused_budget_fails_the_run_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "spend nothing", "--budget-tokens", "10", "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("job ")
    assert "failed: budget 'job' refused the call" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "x", "--workers", "nowhere.at_all:Worker"], "cannot load worker"),
        (["run", "x", "--workers", "engine:Runtime"], "is not an engine.Agent subclass"),
        (["run", "x", "--workers", "engine.orchestration:Orchestrator"], "not an engine.Agent"),
        (["run", "x", "--llm", "engine:Runtime"], "has no chat()"),
        (["run", "   "], "task must be a non-empty str"),
        (["resume", "nope", "--store", "memory://"], "no job 'nope'"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_read_only_commands_never_create_a_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nothing.db"
    assert main(["jobs", "list", "--store", f"sqlite:///{missing}"]) == 2
    assert main(["jobs", "show", "abc", "--store", f"sqlite:///{missing}"]) == 2
    assert capsys.readouterr().err.count("no engine store at") == 2
    assert not missing.exists()
