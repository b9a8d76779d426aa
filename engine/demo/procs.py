"""The demo's child processes: one ``engine broker`` and ``engine node`` s on 127.0.0.1.

Each child runs the real command (``python -m engine.cli broker|node ...``), writes its
output to ``LOGS/<name>.log`` (so no pipe can fill up and stall it) and is ready when its
log shows the line the command prints once it serves. Children run in their own session
(a Ctrl-C in the terminal reaches the demo only, which then stops them in order) and get
``SIGKILL`` from the kernel if the demo process dies without stopping them
(``PR_SET_PDEATHSIG``), so none outlives it. :meth:`Processes.stop` stops the nodes, then
the broker, with ``SIGTERM`` and, after a grace period, ``SIGKILL``; it is safe to call
twice and after any error.

Endpoints are explicit loopback binds: the broker binds ``tcp://127.0.0.1:*`` (the kernel
picks a free port, the broker prints it), every metrics server 127.0.0.1 on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

__all__ = ["AGENTS", "Child", "ChildError", "Processes"]

#: What every demo node hosts.
AGENTS: Final = ",".join(
    f"engine.demo.workers:{name}" for name in ("Researcher", "Analyst", "Writer", "Reviewer")
)
_URL = re.compile(r"^metrics on (http://\S+)$", re.M)
_ENDPOINT = re.compile(r"^broker listening on (tcp://\S+)", re.M)


class ChildError(RuntimeError):
    """A child process failed to start, or died when it should not have."""


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec function asking the kernel to SIGKILL the child when the demo dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before any fork
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return preexec


class Child:
    """One started command: its name, role, process, log file and what it printed."""

    def __init__(self, name: str, role: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.role = role
        self.popen = popen
        self.log = log
        self.pid = popen.pid
        self.endpoint = ""
        self.metrics_url = ""  # its /metrics (a node's: its agents' model calls too)
        self.killed = False
        self.started = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return f"<{self.role} {self.name} pid {self.pid}>"


class Processes:
    """The broker and the nodes of one demo run (see the module docs)."""

    def __init__(self, logs: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.logs = logs
        self.env = dict(os.environ if env is None else env)
        self.children: list[Child] = []
        self._preexec = _pdeathsig()

    @property
    def broker(self) -> Child | None:
        return next((c for c in self.children if c.role == "broker"), None)

    @property
    def nodes(self) -> list[Child]:
        return [c for c in self.children if c.role == "node"]

    def _spawn(self, name: str, role: str, args: Sequence[str], env: Mapping[str, str]) -> Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        e = {**self.env, **env, "PYTHONUNBUFFERED": "1"}
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", role, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=e,
                start_new_session=True,
                preexec_fn=self._preexec,  # only prctl, resolved before the fork
            )
        child = Child(name, role, popen, log)
        self.children.append(child)
        return child

    async def _ready(self, child: Child, markers: Sequence[str], timeout: float) -> str:
        """The child's log once it holds every marker (each a line it prints when ready)."""
        deadline = time.monotonic() + timeout
        while True:
            text = child.read_log()
            if all(m in text for m in markers):
                return text
            if not child.alive:
                raise ChildError(
                    f"{child.role} {child.name} exited ({child.popen.returncode}) before it "
                    f"was ready: {text.strip()[-600:]}"
                )
            if time.monotonic() > deadline:
                raise ChildError(f"{child.role} {child.name} not ready after {timeout:.0f}s")
            await asyncio.sleep(0.05)

    async def start_broker(self, store: str, audit: Path, timeout: float = 30.0) -> Child:
        """``engine broker`` on ``tcp://127.0.0.1:*`` with ``store`` and an audit log."""
        child = self._spawn(
            "broker",
            "broker",
            [
                "--bind", "tcp://127.0.0.1:*",
                "--metrics-port", "0", "--metrics-host", "127.0.0.1",
                "--store", store,
                "--audit", str(audit),
                "--heartbeat", "0.5",
            ],
            {},
        )  # fmt: skip
        text = await self._ready(child, ("broker listening on", "\nmetrics on http"), timeout)
        m = _ENDPOINT.search(text)
        if m is None:
            raise ChildError(f"broker printed no endpoint: {text.strip()[-300:]}")
        child.endpoint = m.group(1)
        self._urls(child, text)
        return child

    async def start_node(
        self, name: str, env: Mapping[str, str], *, concurrency: int = 64, timeout: float = 60.0
    ) -> Child:
        """``engine node`` named ``name`` hosting the demo's workers, connected to the broker."""
        broker = self.broker
        if broker is None or not broker.endpoint:
            raise ChildError("start the broker before the nodes")
        child = self._spawn(
            name,
            "node",
            [
                "--connect", broker.endpoint,
                "--agents", AGENTS,
                "--name", name,
                "--concurrency", str(concurrency),
                "--metrics-port", "0", "--metrics-host", "127.0.0.1",
                "--heartbeat", "0.5",
            ],
            {
                **env,
                "ENGINE_DEMO_NODE": name,
                "ENGINE_DEMO_AUDIT": str(self.logs / f"{name}.audit.log"),
            },
        )  # fmt: skip
        text = await self._ready(child, ("serving", "\nmetrics on http"), timeout)
        self._urls(child, text)
        return child

    @staticmethod
    def _urls(child: Child, text: str) -> None:
        m = _URL.search(text)
        if m is not None:
            child.metrics_url = m.group(1).removesuffix("/metrics")

    def kill(self, child: Child) -> None:
        """SIGKILL ``child`` (chaos) and reap it."""
        child.killed = True
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(signal.SIGKILL)
        child.popen.wait(10)

    def dead(self) -> list[Child]:
        """Children that exited although nobody stopped or killed them."""
        return [c for c in self.children if not c.killed and not c.alive]

    def stop(self, grace: float = 8.0) -> None:
        """Stop every child: nodes first, then the broker; SIGKILL after ``grace`` s."""
        for group in (self.nodes, [c for c in self.children if c.role != "node"]):
            live = [c for c in group if c.alive]
            for c in live:
                with contextlib.suppress(ProcessLookupError):
                    c.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for c in live:
                try:
                    c.popen.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        c.popen.send_signal(signal.SIGKILL)
                    c.popen.wait(10)
        for c in self.children:  # reap anything killed earlier
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.popen.wait(1)
