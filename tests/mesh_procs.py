"""Subprocess helpers for mesh tests: brokers and nodes started through the real CLI."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies (no orphans, even on a crash)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), e.get("PYTHONPATH", "")])
    e["PYTHONUNBUFFERED"] = "1"
    return e


class Proc:
    """A child process whose first stdout line signals readiness."""

    def __init__(
        self,
        args: Sequence[str],
        ready: str,
        timeout: float = 20.0,
        prefix: Sequence[str] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        e = env()
        e.update(extra_env or {})
        self.args = list(args)
        self.popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", "engine.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=e,
            cwd=str(ROOT),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.line = self._wait_line(ready, timeout)

    def _wait_line(self, ready: str, timeout: float) -> str:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
                if ready.encode() in buf:
                    return buf.decode()
            elif self.popen.poll() is not None:
                break
        err = self.stop()
        raise RuntimeError(f"{self.args} not ready ({ready!r}): out={buf!r} err={err[-2000:]!r}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 5.0) -> str:
        """SIGTERM, then SIGKILL after ``timeout``; returns stderr."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        err = b""
        if self.popen.stderr is not None:
            err = self.popen.stderr.read() or b""
            self.popen.stderr.close()
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return err.decode(errors="replace")


def broker(port: int, *extra: str, host: str = "127.0.0.1", prefix: Sequence[str] = ()) -> Proc:
    return Proc(
        ["broker", "--bind", f"tcp://{host}:{port}", "--heartbeat", "0.2", *extra],
        "broker listening",
        prefix=prefix,
    )


def node(
    endpoint: str,
    name: str,
    *extra: str,
    agents: str = "mesh_agents:Echo",
    prefix: Sequence[str] = (),
    exec_log: Path | None = None,
) -> Proc:
    return Proc(
        [
            "node",
            "--connect",
            endpoint,
            "--agents",
            agents,
            "--name",
            name,
            "--heartbeat",
            "0.2",
            *extra,
        ],
        "serving",
        prefix=prefix,
        extra_env={"MESH_NODE_NAME": name, "MESH_EXEC_LOG": str(exec_log or "")},
    )


@contextmanager
def processes() -> Iterator[list[Proc]]:
    """Collects started processes and always stops them (no orphans)."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            p.stop(3.0)
