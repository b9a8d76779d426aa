"""Each documented CLI error case prints exactly one line, ``engine CMD: error: ...``, and
exits with the documented code: 2 for bad input, 1 for a failure while running. Real
commands in real subprocesses (the console script), a real port held by a real socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ENGINE = str(Path(sys.executable).parent / "engine")


def engine(*args: str, timeout: float = 60) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("ENGINE_DEBUG", "PYTHONPATH")}
    res = subprocess.run(
        [ENGINE, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=TESTS
    )
    return res.returncode, res.stderr.strip().splitlines()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that a listening socket holds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def one_line(lines: list[str], command: str, *needles: str) -> None:
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"engine {command}: error: "), lines
    assert "Traceback" not in lines[0]
    for needle in needles:
        assert needle in lines[0], lines


@pytest.mark.parametrize(
    "endpoint", ["bad-endpoint", "tcp://127.0.0.1", "tcp://127.0.0.1:70000", "udp://x:1"]
)
def test_bad_bind_is_bad_input(endpoint: str) -> None:
    code, err = engine("broker", "--bind", endpoint)
    assert code == 2
    one_line(err, "broker", "--bind", endpoint)


def test_bad_connect_is_bad_input() -> None:
    code, err = engine("node", "--connect", "127.0.0.1:5555", "--agents", "mesh_agents:Echo")
    assert code == 2
    one_line(err, "node", "--connect", "127.0.0.1:5555")


def test_busy_port_is_a_runtime_failure(busy_port: int) -> None:
    code, err = engine("broker", "--bind", f"tcp://127.0.0.1:{busy_port}")
    assert code == 1
    one_line(err, "broker", "Address already in use", str(busy_port))


def test_unreachable_broker_is_a_runtime_failure(busy_port: int) -> None:
    """Something listens there, but it is no broker: the node gives up after its timeout."""
    code, err = engine(
        "node",
        "--connect",
        f"tcp://127.0.0.1:{busy_port}",
        "--agents",
        "mesh_agents:Echo",
        "--connect-timeout",
        "0.5",
    )
    assert code == 1
    one_line(err, "node", f"tcp://127.0.0.1:{busy_port}")


def test_missing_option_is_bad_input() -> None:
    code, err = engine("node", "--agents", "mesh_agents:Echo")
    assert code == 2
    one_line(err, "node", "--connect")


def test_unknown_option_is_bad_input() -> None:
    code, err = engine("broker", "--no-such-flag")
    assert code == 2
    one_line(err, "broker", "--no-such-flag")


def test_traceback_only_on_request(busy_port: int) -> None:
    env = dict(os.environ, ENGINE_DEBUG="1")
    res = subprocess.run(
        [ENGINE, "broker", "--bind", f"tcp://127.0.0.1:{busy_port}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 1 and "Traceback" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("engine broker: error: ")


@pytest.mark.parametrize("url", ["nosuch://x", "memory://x", "sqlite://", "sqlite:///"])
def test_bad_store_url_is_bad_input(url: str) -> None:
    code, err = engine("broker", "--store", url)
    assert code == 2
    one_line(err, "broker", "--store", url)


@pytest.mark.parametrize("spec", ["mesh_agents", "mesh_agents:", ":Echo", "a b:C", "x:Y,oops"])
def test_malformed_agents_is_bad_input(spec: str) -> None:
    code, err = engine("node", "--connect", "tcp://127.0.0.1:1", "--agents", spec)
    assert code == 2
    one_line(err, "node", "--agents")


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no_such_module_for_engine:Echo", "no_such_module_for_engine"),  # not importable
        ("mesh_agents:NoSuchClass", "NoSuchClass"),  # importable, no such class
        ("broken_at_import:Agent", "ZeroDivisionError"),  # its import raises
        ("mesh_agents:PlainEcho", "PlainEcho (agent type 'plainecho') must subclass engine.Agent"),
    ],
)
def test_unloadable_agents_is_bad_input(spec: str, needle: str, tmp_path: Path) -> None:
    """A well-formed ``--agents`` whose class cannot be loaded: exit 2, one line naming it,
    before any connection is tried (nothing listens on port 1)."""
    (tmp_path / "broken_at_import.py").write_text("1 / 0\n")
    app_dir = str(tmp_path) if spec.startswith("broken") else "."  # "." holds mesh_agents
    code, err = engine(
        "node", "--connect", "tcp://127.0.0.1:1", "--agents", spec, "--app-dir", app_dir
    )
    assert code == 2
    one_line(err, "node", "--agents", needle)


def test_store_that_cannot_open_is_bad_input(tmp_path: Path) -> None:
    """A well-formed ``--store`` URL whose file cannot be opened: exit 2, one line."""
    url = f"sqlite:///{tmp_path}/no/such/folder/mesh.db"
    code, err = engine("broker", "--store", url)
    assert code == 2
    one_line(err, "broker", "mesh.db")
