"""The benchmark gate, end to end on a small git repository made by the test.

The repository holds a tiny ``engine`` package, a pytest-benchmark file and hot-path probes;
the tests commit it, then change the working tree and run ``engine bench --compare HEAD``.
Verdicts the default run checks come from instruction counts; the timing mode's verdicts
on measured time are ``slow`` tests (its plumbing is checked by default).
The router acceptance test (a 20% slower path in the real router) is in
``test_cli_gate_router.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from engine.cli import _callgrind, _gate_timing, main
from engine.cli import _gate as gate

pytestmark = pytest.mark.timeout(600)  # callgrind on a busy box: a generous bound

WORK = """
def work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total
"""
SLOW = WORK.replace("range(n)", "range(n + n // 2)")  # 50% more loop iterations

BENCH = """
from engine import work


def test_work(benchmark):
    benchmark(work, 3000)
"""
HOTPATH = """
from engine import work

PROBES = {"work": lambda: (lambda k: [work(300) for _ in range(k)])}
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "engine").mkdir(parents=True)
    (root / "benches").mkdir()
    (root / "engine" / "__init__.py").write_text(WORK)
    (root / "benches" / "bench_work.py").write_text(BENCH)
    (root / "benches" / "hotpath.py").write_text(HOTPATH)
    (root / "pyproject.toml").write_text(
        # pythonpath = ["."] puts head's root first on sys.path inside pytest: the gate must
        # still measure base's code on the base side
        '[tool.pytest.ini_options]\naddopts = "-p no:cacheprovider"\npythonpath = ["."]\n'
    )
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    return root


def bench(repo: Path, *args: str) -> tuple[int, dict[str, object]]:
    report = repo.parent / "report.json"
    code = main(["bench", "--root", str(repo), "-q", "--report", str(report), *args])
    return code, orjson.loads(report.read_bytes()) if report.exists() else {}


TIMING = ("--compare", "HEAD", "--rounds", "5", "--max-time", "0.02")  # 3 flaked once under load


def test_timing_mode_pairs_rounds_and_judges_them(repo: Path) -> None:
    """The timing gate's plumbing; its verdicts on real timings are ``slow`` tests below."""
    code, report = bench(repo, *TIMING)
    (result,) = report["results"]  # type: ignore[misc]
    rounds = 5 if result["suspected"] is None else 7  # a suspect is judged again: --confirm
    assert len(result["base"]) == len(result["head"]) == rounds  # interleaved rounds
    assert all(t > 0 for t in result["base"] + result["head"])
    again = gate.judge(gate.BenchResult("work", result["base"], result["head"]), 0.1)
    assert (again.ratio, again.noise, again.verdict) == (
        result["ratio"],
        result["noise"],
        result["verdict"],
    )
    assert code == (1 if result["verdict"] == "regressed" else 0)


@pytest.mark.slow
def test_unchanged_tree_passes(repo: Path) -> None:
    code, report = bench(repo, *TIMING)
    (result,) = report["results"]  # type: ignore[misc]
    assert code == 0 and result["verdict"] == "ok"
    rounds = 5 if result["suspected"] is None else 7  # a suspect is judged again: --confirm
    assert len(result["base"]) == len(result["head"]) == rounds  # interleaved rounds
    assert 0.85 < result["ratio"] < 1.15


@pytest.mark.slow
def test_slower_head_fails(repo: Path) -> None:
    (repo / "engine" / "__init__.py").write_text(SLOW)
    code, report = bench(repo, *TIMING)
    (result,) = report["results"]  # type: ignore[misc]
    assert code == 1 and result["verdict"] == "regressed"
    assert result["ratio"] > 1.25


def test_instruction_counts_are_deterministic_and_gate(repo: Path) -> None:
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is required for the instruction gate (apt-get install valgrind)")
    args = ("--compare", "HEAD", "--instructions", "--iterations", "20")
    code, report = bench(repo, *args)
    (same,) = report["results"]  # type: ignore[misc]
    # identical trees: identical counts but for the allocator's state (paths differ; ~1e-4)
    assert code == 0 and same["verdict"] == "ok"
    assert same["ratio"] == pytest.approx(1.0, abs=1e-3)
    (repo / "engine" / "__init__.py").write_text(SLOW)
    head = gate.Side("head", repo, "working tree")
    counts, problems = gate.count_instructions(head, repo / "benches/hotpath.py", iterations=20)
    assert problems == []
    assert 1.4 < counts["work"] / same["base"][0] < 1.7  # 50% more iterations (+ int allocations)
    result = gate.judge(gate.BenchResult("work", same["base"], [counts["work"]]), 0.1, paired=False)
    assert result.verdict == "regressed"


def test_new_benchmark_is_reported_not_failed(repo: Path) -> None:
    # bench_more.py needs engine.extra, which base does not have: it cannot import there
    more = BENCH.replace("test_work", "test_more").replace("import work", "import extra, work")
    (repo / "benches" / "bench_more.py").write_text(more)
    (repo / "engine" / "__init__.py").write_text(WORK + "\nextra = 1\n")
    code, report = bench(
        repo, "-k", "more", "--compare", "HEAD", "--rounds", "1", "--max-time", "0.02"
    )
    verdicts = {r["name"]: r["verdict"] for r in report["results"]}  # type: ignore[attr-defined]
    assert verdicts == {"test_more": "new"}
    assert code == 0


def test_unknown_ref(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--root", str(repo), "--compare", "no-such-ref"]) == 2
    assert "'no-such-ref' is not a commit" in capsys.readouterr().err
    assert main(["bench", "--root", str(repo), "--compare=--upload-pack=x"]) == 2


def test_missing_benchmark_path(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--root", str(repo), "benches/nope.py"]) == 2
    assert "no such benchmark path" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--threshold", "0"], ["--threshold", "-5%"], ["--rounds", "0"]])
def test_bad_options(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", *argv])


def test_plain_run_writes_pytest_benchmark_json(repo: Path) -> None:
    out = repo.parent / "plain.json"
    argv = ["bench", "--root", str(repo), "--json", str(out), "--max-time", "0.02", "benches"]
    assert main(argv) == 0
    doc = orjson.loads(out.read_bytes())
    assert [b["name"] for b in doc["benchmarks"]] == ["test_work"]
    assert doc["benchmarks"][0]["stats"]["rounds"] >= 1


def test_judge_rules() -> None:
    r = gate.judge(gate.BenchResult("x", [1.0, 1.0, 1.0], [1.3, 1.31, 1.29]), 0.1)
    assert r.verdict == "regressed" and r.noise < 0.02
    noisy = gate.judge(gate.BenchResult("y", [1.0, 1.0, 1.0], [1.05, 1.6, 1.12]), 0.1)
    assert noisy.verdict == "ok" and noisy.ratio == pytest.approx(1.12)
    unpaired = gate.judge(gate.BenchResult("u", [1.0, 2.0], [3.0]), 0.1, paired=False)
    assert unpaired.ratio == 2.0 and unpaired.noise == 0.0
    assert gate.judge(gate.BenchResult("z", [], [1.0]), 0.1).verdict == "new"
    assert gate.judge(gate.BenchResult("w", [1.0], []), 0.1).verdict == "missing"
    assert gate.judge(gate.BenchResult("v", [1.0], [0.5]), 0.1).verdict == "improved"


class _ScriptedWorker:
    """Stands in for the gate's pytest process: the head side of benchmark ``a`` is 1.5x
    slower in the first pass (the whole selection); run alone (node ids), it is as
    ``alone_ratio`` says. ``b`` never changes."""

    alone_ratio = 1.0
    started: list[list[str]] = []

    def __init__(self, side: gate.Side, paths: list[Path], log_path: Path, **_: object) -> None:
        self.side, self.log_path = side, log_path
        self.alone = all("::" in str(p) for p in paths)
        self.nodeids: dict[str, str] = {}
        _ScriptedWorker.started.append([str(p) for p in paths])

    def run(self, out: Path) -> tuple[dict[str, dict[str, float]], bool]:
        ratio = self.alone_ratio if self.alone else 1.5
        a = ratio if self.side.name == "head" else 1.0
        self.nodeids = {"a[py]": "benches/bench_x.py::a[py]", "b": "benches/bench_x.py::b"}
        return {"a[py]": {"min": a}, "b": {"min": 1.0}}, False

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("alone_ratio", "verdict"), [(1.0, "ok"), (1.5, "regressed")])
def test_a_suspect_is_judged_again_on_rounds_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alone_ratio: float, verdict: str
) -> None:
    """A burst of load that made one benchmark look slower passes once the benchmark runs
    again alone; a benchmark that is slower alone too fails. No time is measured here."""
    monkeypatch.setattr(_ScriptedWorker, "alone_ratio", alone_ratio)
    monkeypatch.setattr(_ScriptedWorker, "started", [])
    monkeypatch.setattr(_gate_timing, "_Worker", _ScriptedWorker)
    sides = [gate.Side(name, tmp_path, name) for name in ("base", "head")]
    report = _gate_timing.compare_timing(
        *sides, [tmp_path], rounds=5, package=None, confirm=3, log=lambda _: None
    )
    a, b = report.results
    assert (a.name, a.verdict, a.suspected) == ("a[py]", verdict, 1.5)
    assert len(a.base) == len(a.head) == 3 and a.ratio == alone_ratio  # the second pass
    assert (b.verdict, len(b.base)) == ("ok", 5) and b.suspected != b.suspected  # nan
    assert report.failed == (verdict == "regressed") and not report.errors
    # two workers for the whole selection, then two for the suspect alone, by node id
    assert _ScriptedWorker.started[2:] == [["benches/bench_x.py::a[py]"]] * 2


def test_no_second_pass_when_confirm_is_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ScriptedWorker, "started", [])
    monkeypatch.setattr(_gate_timing, "_Worker", _ScriptedWorker)
    sides = [gate.Side(name, tmp_path, name) for name in ("base", "head")]
    report = _gate_timing.compare_timing(
        *sides, [tmp_path], rounds=5, package=None, confirm=0, log=lambda _: None
    )
    assert [r.verdict for r in report.results] == ["regressed", "ok"]
    assert len(_ScriptedWorker.started) == 2


def test_build_inputs_comparison(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "ext").mkdir(parents=True)
        (root / "ext" / "_x.pyx").write_text("cdef int x = 1\n")
        (root / "setup.py").write_text("pass\n")
    (a / "ext" / "_x.c").write_text("generated, ignored")
    assert gate._inputs_identical(a, b)
    (b / "ext" / "_x.pyx").write_text("cdef int x = 2\n")
    assert not gate._inputs_identical(a, b)


def test_instruction_counts_fall_back_when_instrumentation_cannot_start_late(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("valgrind") is None:
        pytest.fail("valgrind is required for the instruction gate (apt-get install valgrind)")
    head = gate.Side("head", repo, "working tree")
    hotpath = repo / "benches/hotpath.py"
    # machine code that returns -1 without a client request: callgrind never switches on
    monkeypatch.setattr(_callgrind, "_late_request", lambda: "48c7c0ffffffffc3")
    counts, problems = gate.count_instructions(head, hotpath, iterations=5)
    assert problems == [] and counts["work"] > 1000  # counted with instrumentation from start
