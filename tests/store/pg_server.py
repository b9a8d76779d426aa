"""A real, throwaway PostgreSQL server for the tests and benchmarks.

``initdb`` into a temporary folder and ``pg_ctl start`` on a free 127.0.0.1 port, using the
machine's binaries (``/usr/lib/postgresql/*/bin``, ``pg_config --bindir`` or ``PATH``;
``ENGINE_PG_BIN`` overrides). initdb refuses to run as root, so as root the server runs as
the ``postgres`` system user (Debian's package creates it) or ``nobody``. ``stop()`` shuts it
down and deletes the folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

__all__ = ["PgServer", "find_pg_bin", "pg_server_or_skip"]


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

    def __init__(self, bindir: Path, *, fsync: bool = False) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="engine-pg-"))
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
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start"
        )
        self.base = f"postgresql://postgres@127.0.0.1:{self.port}"
        self._admin("CREATE DATABASE engine", "postgres")
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
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


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
