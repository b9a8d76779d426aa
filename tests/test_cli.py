"""The ``engine`` command's own behaviour: lazy help, version, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.cli import COMMANDS, build_parser, main


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
        "print(sorted(m for m in sys.modules if m.startswith('engine.cli.')))\n"
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
    url = "nosuchscheme://x"
    res = _engine("dlq", "list", "--store", url)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("engine dlq: error: ")
    assert url in lines[-1]
    debug = _engine("dlq", "list", "--store", url, env={"ENGINE_DEBUG": "1", "PATH": ""})
    assert "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == lines[-1]
