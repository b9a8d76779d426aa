"""The ``engine`` command's own behaviour: lazy help, version, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import COMMANDS, EngineParser, build_parser, main
from engine.mesh import Broker


def _engine(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_help_lists_every_command_without_importing_command_modules() -> None:
    code = (
        "import sys\n"
        "from engine.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('engine.cli.')"
        " and not m.startswith('engine.cli._')))\n"  # helpers like _errors are no commands
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for name in COMMANDS:
        assert name in res.stdout
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_module_registers_the_name_it_is_listed_under() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)  # type: ignore[arg-type]


def test_version_names_the_native_build() -> None:
    res = _engine("--version")
    assert res.returncode == 0
    assert res.stdout.startswith("engine ")
    assert "native:" in res.stdout


def test_unknown_command_is_bad_input() -> None:
    res = _engine("no-such-command")
    assert res.returncode == 2
    assert "invalid choice" in res.stderr


def test_runtime_failure_is_one_line_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["audit", "verify", "/nonexistent/engine-audit.log"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "Traceback" not in err[0]


def test_unexpected_exception_is_one_line_and_traceback_only_on_request() -> None:
    path = "/nonexistent-engine-dir/mesh.db"  # a well-formed URL whose file cannot be opened
    url = f"sqlite:///{path}"
    res = _engine("dlq", "list", "--store", url)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("engine dlq: error: ")
    assert path in lines[-1]
    debug = _engine("dlq", "list", "--store", url, env={"ENGINE_DEBUG": "1", "PATH": ""})
    assert "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == lines[-1]


def _all_parsers() -> list[argparse.ArgumentParser]:
    todo, out = [build_parser()], []
    while todo:
        p = todo.pop()
        out.append(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return out


def test_every_command_has_a_description_and_every_option_help() -> None:
    parsers = _all_parsers()
    assert len(parsers) > len(COMMANDS)  # nested subcommands (dlq list, keys generate...) too
    for p in parsers:
        assert isinstance(p, EngineParser), p.prog
        assert p.description, f"`{p.prog}` has no description"
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, (
                f"`{p.prog}` option {action.option_strings or action.dest} has no help"
            )


def test_help_shows_defaults() -> None:
    text = build_parser(only="node")._subparsers._group_actions[0].choices["node"].format_help()  # type: ignore[union-attr]
    assert "(default: 64)" in text and "(default: None)" not in text


def test_usage_errors_are_one_line_with_exit_2() -> None:
    res = _engine("node", "--connect", "tcp://127.0.0.1:1")  # --agents missing
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "engine node: error: the following arguments are required: --agents "
        "(see `engine node --help`)"
    ]


AGENT_MODULE = """
from engine import Agent, Message, handler

class AppPing(Message):
    n: int

class AppEcho(Agent):
    @handler
    async def on_ping(self, msg: AppPing, ctx: object) -> AppPing:
        return AppPing(msg.n + 1)
"""


@pytest.mark.parametrize("how", ["cwd", "app-dir"])
def test_node_imports_agents_from_the_folder_that_holds_the_app(
    how: str, tmp_path: Path, broker: Broker
) -> None:
    """The console script (which, unlike `python -m`, does not put cwd on sys.path)."""
    (tmp_path / "proj" / "app").mkdir(parents=True)
    (tmp_path / "proj" / "app" / "__init__.py").write_text("")
    (tmp_path / "proj" / "app" / "agents.py").write_text(AGENT_MODULE)
    script = Path(sys.executable).parent / "engine"
    args = [str(script), "node", "--connect", broker.endpoints[0], "--agents", "app.agents:AppEcho"]
    cwd = tmp_path / "proj"
    if how == "app-dir":
        args += ["--app-dir", "proj"]
        cwd = tmp_path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the node serves (or exits)
        assert line.startswith("node ") and " serving " in line, line
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_missing_app_dir_is_bad_input(tmp_path: Path) -> None:
    res = _engine("node", "--connect", "tcp://127.0.0.1:1", "--agents", "a:B", "--app-dir",
                  str(tmp_path / "nope"))  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"engine node: error: --app-dir {tmp_path / 'nope'}: no such directory"
    ]
