"""The test PostgreSQL server never outlives the process that started it: a SIGKILLed
owner's server is stopped by its watchdog, and one whose watchdog died too is reaped by the
next server's start (tests/store/pg_server.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests._wait import wait_until
from tests.store.pg_server import find_pg_bin, reap_stale_servers

ROOT = Path(__file__).resolve().parents[2]

# A process that starts a server, says where, and waits to be killed.
_OWNER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.store.pg_server import PgServer, find_pg_bin
server = PgServer(find_pg_bin(), watchdog=sys.argv[2] == "1")
print(server.root, server.port, flush=True)
time.sleep(600)
"""


def _serving(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start_owner(watchdog: bool) -> tuple[subprocess.Popen[str], Path, int]:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(ROOT), "1" if watchdog else "0"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline().split()
    assert len(line) == 2, f"the owner did not start a server (exit {owner.poll()})"
    root, port = Path(line[0]), int(line[1])
    assert root.is_dir() and _serving(port)
    return owner, root, port


def _reap(owner: subprocess.Popen[str]) -> None:
    owner.wait()
    if owner.stdout is not None:
        owner.stdout.close()


def test_a_killed_owner_leaves_no_server_behind() -> None:
    if find_pg_bin() is None:
        pytest.skip("no PostgreSQL binaries (initdb/pg_ctl)")
    # the watchdog stops the server of an owner killed without a chance to clean up
    owner, root, port = _start_owner(watchdog=True)
    os.killpg(owner.pid, signal.SIGKILL)  # the owner's whole process group
    _reap(owner)
    wait_until(lambda: not _serving(port) and not root.exists(), what="server stopped, folder gone")

    # no watchdog either: the next start (here: the reaper it runs) stops and deletes it
    owner, root, port = _start_owner(watchdog=False)
    assert root not in reap_stale_servers()  # a live owner's server is left alone
    assert _serving(port)
    owner.kill()
    _reap(owner)
    assert _serving(port)  # nothing else stopped it
    assert root in reap_stale_servers()
    assert not _serving(port) and not root.exists()
