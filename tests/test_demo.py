"""``engine demo``: the main job, run for real in its quick form, and what its summary says.

In process (the demo inside this test process: its sockets and threads are counted before
and after) and with a real broker and two ``engine node`` processes (the demo as a child
process: afterwards no process of the run is left, no port it listened on still answers,
and it wrote nothing outside its output directory). Also: Ctrl-C and a dying broker stop
everything; a node SIGKILLed midway loses no job; pointed at an OpenAI-compatible server
(the real-socket test server, replying like a model that ignores ``response_format``) every
model call goes there. The figures are asserted against each other and against the store,
never against the clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine.cli import main
from engine.demo.brain import answer, citations, is_sloppy, norm
from engine.demo.corpus import load_corpus
from engine.demo.questions import SMALL_BUDGET, near_duplicate, questions
from engine.demo.roles import CHECK, DRAFT, LOOKUP, RESEARCH
from engine.orchestration import Plan, validate_plan
from engine.orchestration.prompts import Prompts
from tests._wait import wait_until
from tests.openai_server import OpenAIServer, ServerReply

ROOT = Path(__file__).resolve().parent.parent


# -- the pieces ----------------------------------------------------------------------------


def test_the_corpus_is_the_docs_and_the_docstrings() -> None:
    full = load_corpus()
    alone = load_corpus(docs=None)  # installed without the repository
    assert full.docs == len(list((ROOT / "docs").glob("*.md"))) and alone.docs == 0
    assert {c.source for c in alone.chunks} <= {c.source for c in full.chunks}
    assert any(c.source == "docs/llm.md" for c in full.chunks)
    assert all(0 < len(c.text) <= 1_000 for c in full.chunks)
    assert [c.id for c in full.chunks] == list(range(1, len(full) + 1))
    hold = next(s for s in full.symbols if s.name == "engine.llm.budget.Budget.hold")
    assert hold.short == "Budget.hold" and "tokens" in hold.signature
    assert not any(s.name.startswith("engine._") for s in full.symbols)  # private: no symbol


def test_questions_repeat_earlier_ones_after_a_gap() -> None:
    qs = questions(load_corpus(), 200, seed=3, gap=20)
    assert [q.index for q in qs] == list(range(200))
    again = [q for q in qs if q.kind != "new"]
    assert again and all(q.origin is not None and q.index - q.origin >= 20 for q in again)
    for q in again:
        orig = qs[q.origin]  # type: ignore[index]
        assert orig.kind == "new"
        assert (q.text == orig.text) == (q.kind == "repeat")
        assert norm(q.text) == norm(orig.text)
    assert [q.budget for q in qs if q.budget] == [SMALL_BUDGET]
    assert near_duplicate("What does X.y do?") == "what does x.y do"


def test_the_scripted_model_plans_and_plays_each_worker() -> None:
    caps = {r.capability: r.about for r in (RESEARCH, LOOKUP, DRAFT, CHECK)}
    prompts = Prompts()
    task = "What does Budget.hold do?"
    said = answer(prompts.plan(task, caps, max_subtasks=100))
    plan = msgspec.json.decode(said.text, type=Plan)
    validate_plan(plan, caps)
    assert [s.capability for s in plan.subtasks] == ["retrieve", "lookup", "draft", "check"]
    replan = answer(
        prompts.plan(task, caps, max_subtasks=100, done={"retrieve": "x"}, why="rejected")
    )
    again = msgspec.json.decode(replan.text, type=Plan)
    validate_plan(again, caps, done={"retrieve", "lookup", "draft"})
    user = f"Overall task: {task}\n\nYour subtask (s2): look it up"
    call = answer(
        [{"role": "system", "content": LOOKUP.system}, {"role": "user", "content": user}],
        ["lookup_symbol"],
    )
    assert call.tool == "lookup_symbol" and call.args == {"name": "Budget.hold"}
    draft = answer(
        [
            {"role": "system", "content": DRAFT.system},
            {
                "role": "user",
                "content": f"Overall task: {task}\n\nYour subtask (draft): "
                "Draft it\n\nResult of retrieve:\nIt holds [doc:7].",
            },
        ]
    )
    assert 7 in citations(draft.text)
    assert (len(citations(draft.text)) == 2) == is_sloppy(task)


def test_bad_arguments_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("x")
    assert main(["demo", "--out", str(afile)]) == 2
    assert main(["demo", "--chaos", "--in-process", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"engine demo: error: --out {str(afile)!r} is not a directory",
        "engine demo: error: --chaos kills a node process: it cannot run with --in-process",
    ]
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--jobs", "0"])
    assert exc.value.code == 2
    assert "expected a positive integer, got 0" in capsys.readouterr().err


# -- whole runs ----------------------------------------------------------------------------


def _summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


def _check_report(r: dict[str, Any], jobs: int) -> None:
    """What every finished run's summary must say, checked figure against figure."""
    assert r["jobs"] == jobs and r["lost"] == 0 and r["unfinished"] == 0, r["lost_reasons"]
    assert r["completed"] + r["failed"] == jobs
    assert sum(r["store"].values()) == jobs and r["store"].get("completed") == r["completed"]
    # the one small-budget job is stopped by its budget, through a refused call: audited
    # where it was refused, and counted there (a killed node's counts die with it)
    assert r["budget_stops"] == 1 and r["errors"].get("budget") == 1
    assert r["refusals"] >= 1 and r["llm"]["refused"] <= r["refusals"]
    if not any(row["killed"] for row in r["processes"]):
        assert r["llm"]["refused"] == r["refusals"]
    assert r["subtasks"] >= 4 * r["completed"]
    llm = r["llm"]
    assert llm["ok"] > 0 and llm["prompt_tokens"] > 0 and llm["completion_tokens"] > 0
    assert llm["exact"] + llm["semantic"] == llm["cached"]
    assert llm["retries"] is not None and llm["fallbacks"] is not None
    assert r["audit_records"] > 0 and r["profile_samples"] > 0
    assert r["p50"] <= r["p99"]


def _socket_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return n


def _refused(endpoint: str) -> bool:
    host, port = endpoint.split("://")[1].split("/")[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return False
    except OSError:
        return True


def test_demo_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "out"
    sockets, threads = _socket_fds(), threading.active_count()
    args = ["demo", "--in-process", "--jobs", "16", "--in-flight", "4", "--no-live"]
    assert main([*args, "--out", str(out)]) == 0
    r = _summary(out)
    _check_report(r, 16)
    assert r["mode"] == "in process" and r["offline"] and r["processes"] == []
    assert r["llm"]["cached"] > 0  # job 12 repeats an earlier question
    assert _socket_fds() == sockets
    wait_until(lambda: threading.active_count() <= threads, what="the demo's threads ended")
    assert all(_refused(e) for e in r["endpoints"])
    assert list(scratch.iterdir()) == []
    assert not list(out.glob("*-wal")) and not (out / "corpus.json").exists()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env.update(TMPDIR=str(scratch), PYTHONPATH=str(ROOT), **extra)
    return env


def _foreground() -> None:
    """In the child: Ctrl-C as in a terminal's foreground job. A test run started as a
    background job (`make test &`, nohup) has SIGINT ignored, children inherit that, and
    Python then rightly leaves it ignored: the demo ran to the end through the test's
    SIGINT (exit 0 after 55 s) in a loop of `make test` started so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "demo", "--out", str(tmp_path / "out"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or _env(tmp_path),
        cwd=str(tmp_path),
        preexec_fn=_foreground,
    )


def _leftovers(marker: str) -> list[int]:
    """Live processes whose environment mentions ``marker`` (the run's output dir)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in env and state != "Z":
            pids.append(int(entry))
    return pids


def _gone(tmp_path: Path, r: dict[str, Any], crashed: str = "") -> None:
    """Nothing of the run is left: processes, listening sockets, scratch files (a store
    whose process was killed keeps its WAL: that is its data, not litter)."""
    marker = str(tmp_path / "out")
    assert _leftovers(marker) == []
    for row in r["processes"]:
        with pytest.raises(ProcessLookupError):
            os.kill(row["pid"], 0)
    assert r["endpoints"] and all(_refused(e) for e in r["endpoints"])
    assert list((tmp_path / "tmp").iterdir()) == []
    out = tmp_path / "out"
    left = [p.name for p in [*out.glob("*-wal"), *out.glob("*-shm")]]
    if crashed:
        left = [n for n in left if not n.startswith(f"{crashed}-")]
    assert left == []
    assert not (out / "corpus.json").exists()


def test_demo_on_a_broker_and_two_nodes(tmp_path: Path) -> None:
    p = _demo(tmp_path, "--quick", "--in-flight", "6", "--no-live")  # 24 jobs
    stdout, stderr = p.communicate(timeout=110)
    assert p.returncode == 0, stderr[-3000:]
    assert "agent-engine demo: summary" in stdout and "0 lost" in stdout
    assert stderr.startswith("no OPENAI_API_KEY/OPENAI_BASE_URL")  # the one-line banner
    r = _summary(tmp_path / "out")
    _check_report(r, 24)
    nodes = {row["name"]: row for row in r["processes"] if row["role"] == "node"}
    assert set(nodes) == {"node-1", "node-2"}
    assert all(row["executed"] > 0 and row["calls"] > 0 for row in nodes.values())
    # every completed subtask ran on one of the two nodes
    assert sum(row["executed"] for row in nodes.values()) >= r["subtasks_completed"] > 0
    assert r["endpoints"][1].startswith("tcp://127.0.0.1:")
    assert all("127.0.0.1" in e for e in r["endpoints"])
    _gone(tmp_path, r)


def test_chaos_kills_a_node_and_loses_no_job(tmp_path: Path) -> None:
    p = _demo(tmp_path, "--jobs", "40", "--in-flight", "8", "--chaos", "--no-live")
    _, stderr = p.communicate(timeout=110)
    assert p.returncode == 0, stderr[-3000:]
    r = _summary(tmp_path / "out")
    _check_report(r, 40)
    assert r["chaos"]["killed"] == "node-1" and r["chaos"]["restarted"] == "node-1r"
    rows = {row["name"]: row for row in r["processes"]}
    assert rows["node-1"]["killed"] and not rows["node-1r"]["killed"]
    assert r["chaos"]["new_slots"] == 8  # the killed node's share of 16 slots per capability
    _gone(tmp_path, r)


def test_a_failed_scrape_does_not_put_back_older_counts(tmp_path: Path) -> None:
    """The chaos reads its victim's counts just before the kill (they die with it). A
    read the once-a-second watch started earlier, failing at the kill, must not put its
    older figures back: the one refused call counted in between would be lost."""
    import asyncio
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from engine.demo.procs import Child
    from engine.demo.workload import Demo, Options

    first_in, release_first = threading.Event(), threading.Event()
    seen: list[int] = []
    refused = 'engine_llm_calls_total{kind="draft",status="refused"} 1.0\n'

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(len(seen))
            if len(seen) == 1:  # the watch's read: held, then the process "dies"
                first_in.set()
                release_first.wait(30)
                self.close_connection = True
                return  # no reply: the read fails
            body = refused.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child = Child("node-1", "node", proc, tmp_path / "log")
        child.metrics_url = f"http://127.0.0.1:{server.server_address[1]}"
        demo = Demo(Options(out=str(tmp_path / "out")), view=None)
        demo.remote[child.name] = (child, None)

        async def race() -> tuple[bool, bool]:
            watch = asyncio.ensure_future(demo._scrape(child))
            assert await asyncio.to_thread(first_in.wait, 30)
            chaos = asyncio.ensure_future(demo._scrape(child))  # the read before the kill
            await asyncio.sleep(0)
            release_first.set()
            return await watch, await chaos

        watch_ok, chaos_ok = asyncio.run(race())
    finally:
        release_first.set()
        proc.kill()
        proc.wait()
        server.shutdown()
        server.server_close()
    assert (watch_ok, chaos_ok) == (False, True) and len(seen) == 2
    from engine.demo.stats import llm_figures

    assert llm_figures(demo.remote["node-1"][1]).refused == 1


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_chaos_loses_no_job_10_times(tmp_path: Path) -> None:
    for i in range(10):
        run = tmp_path / f"run{i}"
        run.mkdir()
        p = _demo(run, "--jobs", "200", "--chaos", "--no-live")
        _, stderr = p.communicate(timeout=140)
        assert p.returncode == 0, stderr[-3000:]
        r = _summary(run / "out")
        _check_report(r, 200)
        # the replacement took load back through the slots offered for it
        replacement = next(row for row in r["processes"] if row["name"] == "node-1r")
        assert replacement["executed"] > 0
        _gone(run, r)


def _serving(log: Path) -> bool:
    return log.exists() and "serving" in log.read_text(errors="replace")


def _wait_for_work(tmp_path: Path, p: subprocess.Popen[str]) -> None:
    """Until both nodes serve and the first jobs finished (the audit log has records)."""
    out = tmp_path / "out"
    wait_until(
        lambda: (
            p.poll() is not None
            or (
                all(_serving(out / "logs" / f"node-{i}.log") for i in (1, 2))
                and (out / "audit.log").exists()
                and b"task.completed" in (out / "audit.log").read_bytes()
            )
        ),
        timeout=60,
        what="both nodes serve and jobs run",
    )
    assert p.poll() is None


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    p = _demo(tmp_path, "--jobs", "5000", "--no-live")
    _wait_for_work(tmp_path, p)
    p.send_signal(signal.SIGINT)
    try:
        stdout, stderr = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        _, stderr = p.communicate()
        pytest.fail(f"engine demo still ran 60 s after SIGINT; its stderr ends:\n{stderr[-3000:]}")
    assert p.returncode == 130, stderr[-3000:]
    assert "interrupted" in stdout
    r = _summary(tmp_path / "out")
    assert r["interrupted"] and r["lost"] == 0 and r["unfinished"] > 0
    assert sum(r["store"].values()) >= r["completed"] + r["failed"]
    _gone(tmp_path, r)


def test_a_dying_broker_stops_the_run_with_an_error(tmp_path: Path) -> None:
    p = _demo(tmp_path, "--jobs", "5000", "--no-live")
    _wait_for_work(tmp_path, p)
    marker = str(tmp_path / "out")
    brokers = [
        pid
        for pid in _leftovers(marker)
        if b"broker" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    ]
    assert len(brokers) == 1
    os.kill(brokers[0], signal.SIGKILL)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 1
    assert f"engine demo: error: broker (pid {brokers[0]}) exited unexpectedly" in stderr
    r = _summary(tmp_path / "out")
    assert r["error"] and "broker" in r["error"]
    _gone(tmp_path, r, crashed="mesh.db")


def test_a_node_that_cannot_start_stops_the_run_with_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo in this process, its nodes hosting a class that does not exist: both exit
    before they serve; the demo says which and stops the broker it started."""
    import engine.demo.procs

    monkeypatch.setattr(engine.demo.procs, "AGENTS", "engine.demo.workers:NoSuchWorker")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    out = tmp_path / "out"
    assert main(["demo", "--quick", "--no-live", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "engine demo: error: node node-" in err and "before it was ready" in err
    r = _summary(out)
    assert r["completed"] == 0 and r["lost"] == 0 and r["unfinished"] == 24
    assert "before it was ready" in r["error"]
    roles = sorted(row["role"] for row in r["processes"])
    assert roles == ["broker", "node", "node"]
    assert _leftovers(str(out)) == []
    for row in r["processes"]:
        with pytest.raises(ProcessLookupError):
            os.kill(row["pid"], 0)
    assert r["endpoints"] and all(_refused(e) for e in r["endpoints"])
    assert not (out / "corpus.json").exists()


def _model_that_ignores_response_format(body: dict[str, Any]) -> ServerReply:
    """The demo's scripted answers, from a server that never enforces a JSON schema: its
    structured replies come as prose around a fenced JSON block."""
    tools = [t["function"]["name"] for t in body.get("tools") or ()]
    said = answer(body["messages"], tools)
    if said.tool:
        return ServerReply(tool_calls=[(said.tool, json.dumps(said.args))])
    if body.get("response_format"):
        return ServerReply(f"Sure, here it is:\n```json\n{said.text}\n```\nAnything else?")
    return ServerReply(said.text)


def test_every_model_call_goes_to_the_configured_server(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    openai_server.reply = _model_that_ignores_response_format
    env = _env(tmp_path, OPENAI_BASE_URL=openai_server.url)
    p = _demo(
        tmp_path, "--jobs", "16", "--in-flight", "4", "--model", "local-model", "--no-live", env=env
    )
    _, stderr = p.communicate(timeout=110)
    assert p.returncode == 0, stderr[-3000:]
    assert "no OPENAI_API_KEY" not in stderr
    r = _summary(tmp_path / "out")
    _check_report(r, 16)
    assert r["model"] == f"local-model at {openai_server.url}" and not r["offline"]
    # every call a model answered was a request to the server; the rest came from the cache
    assert openai_server.requests == openai_server.completed == r["llm"]["ok"]
    assert {b["model"] for b in openai_server.bodies} == {"local-model"}
    assert r["llm"]["cost"] == 0.0  # usage without cost, and the model has no list price
    nodes = [row for row in r["processes"] if row["role"] == "node"]
    assert all(row["calls"] > 0 for row in nodes)  # the nodes' workers called it too
    _gone(tmp_path, r)
