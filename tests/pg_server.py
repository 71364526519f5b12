"""A real, throw-away PostgreSQL server for tests (Debian's postgresql package, loopback only).

``initdb`` and ``pg_ctl`` run from ``/usr/lib/postgresql/<version>/bin`` in a temporary folder.
PostgreSQL refuses to run as root, and CI runs as root, so as root the server runs as the
package's unprivileged ``postgres`` account (``runuser -u postgres --``) with the folder chowned
to it. It listens on 127.0.0.1 on a free port only, its Unix socket lives in the temporary
folder, authentication is ``trust`` for local connections, and it is always stopped
(``pg_ctl stop -m immediate``) and removed at teardown. A missing PostgreSQL is an error, not a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["PgServer", "pg_server", "pg_url"]


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise pytest.UsageError("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb): "
                                "run scripts/setup.sh (apt package postgresql)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """Start with :meth:`start`, stop with :meth:`stop`; :meth:`create_database` gives a URL."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.tmp = Path(tempfile.mkdtemp(prefix="radreview-pg-"))
        self.data = self.tmp / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
        self.started = False

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        full = (["runuser", "-u", "postgres", "--"] if self.as_root else []) + list(cmd)
        return subprocess.run(full, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> "PgServer":
        r = self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                      "--no-sync", "-E", "UTF8", check=False)
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()[-500:]}")
        r = self._pg_ctl_start()
        if r.returncode:
            log = (self.tmp / "server.log").read_text()[-800:] if (self.tmp / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()[-300:]} {log}")
        self.started = True
        return self

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its ``postgresql://`` URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def halt(self) -> None:
        """Stop the server now (``-m immediate``), keeping its data, as an outage would."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def _pg_ctl_start(self) -> subprocess.CompletedProcess:
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.tmp} "
                "-c fsync=on -c max_connections=40 -c shared_buffers=16MB")
        return self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.tmp / "server.log"),
                         "-w", "-t", "60", "start", check=False)

    def resume(self) -> None:
        """Start the halted server again on the same port and data."""
        r = self._pg_ctl_start()
        if r.returncode:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()[-300:]}")

    def stop(self) -> None:
        if self.started:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
            self.started = False
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    srv = PgServer()
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


_counter = iter(range(10**6))


@pytest.fixture
def pg_url(pg_server) -> str:
    """URL of a fresh database on the session's PostgreSQL server."""
    return pg_server.create_database(f"rr_{os.getpid()}_{next(_counter)}_{int(time.time() * 1000) % 10**8}")
