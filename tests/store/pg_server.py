"""A real, throwaway PostgreSQL server for the tests and benchmarks.

``initdb`` into a temporary folder and ``pg_ctl start`` on a free 127.0.0.1 port, using the
machine's binaries (``/usr/lib/postgresql/*/bin``, ``pg_config --bindir`` or ``PATH``;
``ENGINE_PG_BIN`` overrides). initdb refuses to run as root, so as root the server runs as
the ``postgres`` system user (Debian's package creates it) or ``nobody``. ``stop()`` shuts it
down and deletes the folder.

A server never outlives the process that started it, however that process ends:

- ``stop()`` runs at interpreter exit too (``weakref.finalize``), for a run that ends
  without reaching the fixture's teardown (Ctrl-C, ``pytest -x`` stopping early);
- a watchdog process in its own session holds the read end of a pipe whose write end only
  the owner holds: when the owner dies in any way (SIGKILL, a pytest-timeout ``os._exit``,
  a killed process group), the pipe reaches EOF and the watchdog stops the server and
  deletes its folder;
- each server folder records its owner (pid and start time) in ``owner.json``; starting a
  server first stops and deletes any ``engine-pg-*`` server whose recorded owner is gone
  (in case the watchdog was killed too). Folders without that file (and live owners') are
  left alone.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

__all__ = ["PgServer", "find_pg_bin", "pg_server_or_skip", "reap_stale_servers"]

PREFIX = "engine-pg-"
OWNER = "owner.json"

# Run by the watchdog: wait for EOF on stdin (the owner is gone or done), then stop the
# server if it still runs and delete its folder.
_WATCHDOG = """
import shutil, subprocess, sys
from pathlib import Path
sys.stdin.buffer.read()
cmd, root = sys.argv[1:-1], Path(sys.argv[-1])
if (root / "data" / "postmaster.pid").exists():
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
shutil.rmtree(root, ignore_errors=True)
"""


def _started(pid: int) -> str | None:
    """The start time of process ``pid`` (tells a reused pid apart), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""
        return ""  # alive; no /proc to read a start time from
    return stat.rsplit(")", 1)[1].split()[19]


def _stop_command(bindir: Path, data: Path, user: str | None) -> list[str]:
    cmd = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
    if user is not None:
        pw = pwd.getpwnam(user)
        cmd = ["setpriv", f"--reuid={user}", f"--regid={pw.pw_gid}", "--clear-groups", "--", *cmd]
    return cmd


def reap_stale_servers() -> list[Path]:
    """Stop and delete the servers (folders) whose recorded owner process is gone."""
    reaped = []
    for root in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            owner = json.loads((root / OWNER).read_text())
            pid, started = int(owner["pid"]), str(owner["started"])
            bindir, user = Path(owner["bindir"]), owner["user"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours to judge
        now = _started(pid)
        if now is not None and (now == started or not now or not started):
            continue  # the owner lives
        if (root / "data" / "postmaster.pid").exists():
            subprocess.run(
                _stop_command(bindir, root / "data", user),
                capture_output=True,
                timeout=120,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


def _shutdown(
    bindir: Path,
    data: Path,
    root: Path,
    user: str | None,
    watchdog: subprocess.Popen[bytes] | None,
) -> None:
    try:
        if (data / "postmaster.pid").exists():
            res = subprocess.run(
                _stop_command(bindir, data, user), capture_output=True, text=True, timeout=120
            )
            if res.returncode != 0:
                raise RuntimeError(f"pg_ctl stop failed ({res.returncode}): {res.stderr}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if watchdog is not None:
            if watchdog.stdin is not None:
                watchdog.stdin.close()  # EOF: it finds nothing left and exits
            watchdog.wait(timeout=120)


def find_pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    env = os.environ.get("ENGINE_PG_BIN")
    if env:
        return Path(env)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgServer:
    """One running server; ``url`` reaches its ``engine`` database as superuser ``postgres``."""

    def __init__(self, bindir: Path, *, fsync: bool = False, watchdog: bool = True) -> None:
        reap_stale_servers()
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.data = self.root / "data"
        self.port = _free_port()
        self._user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
                self._user = "postgres"
            except KeyError:
                self._user = "nobody"
            pw = pwd.getpwnam(self._user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        owner = {
            "pid": os.getpid(),
            "started": _started(os.getpid()) or "",
            "bindir": str(bindir),
            "user": self._user,
        }
        (self.root / OWNER).write_text(json.dumps(owner))  # before the server exists
        self._watchdog: subprocess.Popen[bytes] | None = None
        if watchdog:  # False only in the test of the start-up reaping
            stop = _stop_command(bindir, self.data, self._user)
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, *stop, str(self.root)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # outlives a kill of the owner's process group
            )
        self._stop = weakref.finalize(
            self, _shutdown, bindir, self.data, self.root, self._user, self._watchdog
        )
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            opts = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                f"-c max_connections=200 -c fsync={'on' if fsync else 'off'}"
                + ("" if fsync else " -c full_page_writes=off")
            )
            self._run(
                "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w",
                "start",
            )  # fmt: skip
            self.base = f"postgresql://postgres@127.0.0.1:{self.port}"
            self._admin("CREATE DATABASE engine", "postgres")
        except BaseException:
            self._stop()
            raise
        self.url = f"{self.base}/engine"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self._user is not None:
            cmd = [
                "setpriv",
                f"--reuid={self._user}",
                f"--regid={pwd.getpwnam(self._user).pw_gid}",
                "--clear-groups",
                "--",
                *cmd,
            ]
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, check=False, cwd=self.root
        )
        if res.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed ({res.returncode}): {res.stderr}{tail}")

    def _admin(self, sql: str, db: str = "engine") -> None:
        import psycopg

        with psycopg.connect(f"{self.base}/{db}", autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def fresh_schema_url(self, schema: str) -> str:
        """A URL whose tables go to a new, empty schema (cheaper than a database per test)."""
        self._admin(f'CREATE SCHEMA "{schema}"')
        return f"{self.url}?options={quote(f'-csearch_path={schema}')}"

    def fresh_database_url(self, name: str) -> str:
        self._admin(f'CREATE DATABASE "{name}"', "postgres")
        return f"{self.base}/{name}"

    def stop(self) -> None:
        """Stop the server and delete its folder (also at interpreter exit)."""
        self._stop()


def pg_server_or_skip(*, fsync: bool = False) -> Iterator[PgServer]:
    """Yield a started server, then stop it. Without binaries: skip, or fail under CI."""
    bindir = find_pg_bin()
    if bindir is None:
        reason = "no PostgreSQL binaries (initdb/pg_ctl); install Debian's postgresql package"
        if os.environ.get("CI"):
            pytest.fail(reason + " — CI must run the PostgreSQL half (.ci/run installs it)")
        pytest.skip(reason)
    server = PgServer(bindir, fsync=fsync)
    try:
        yield server
    finally:
        server.stop()
