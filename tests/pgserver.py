"""A real PostgreSQL server for the tests: Debian's server binaries, a throw-away cluster in a temp
dir, on a free loopback port, stopped by pid.

Debian keeps initdb/pg_ctl/postgres in /usr/lib/postgresql/<version>/bin, off PATH. initdb and
postgres refuse to run as root (as CI does), so as root they run as the `postgres` user the
package creates, in a temp dir owned by that user (pytest's own temp dirs are 0700 root's).
The cluster trusts local connections (a test server only) and skips fsync: tests need no
durability across power loss, and fsync on a loaded machine would make them slow.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from .support import free_port, require, require_interop_marker

SUPERUSER = "lfsserve"


def find_bin(name: str) -> str | None:
    """`name` from the newest /usr/lib/postgresql/<version>/bin, else from PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return found[-1] if found else shutil.which(name)


class PgServer:
    """One cluster. `url(db)` is a DSN for database `db`; `create_database()` makes a fresh one."""

    def __init__(self) -> None:
        require_interop_marker("a PostgreSQL server")
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        require(initdb is not None and pg_ctl is not None,
                "PostgreSQL server binaries not found (apt-get install -y postgresql)")
        self._initdb, self._pg_ctl = str(initdb), str(pg_ctl)
        self._as: list[str] = []
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                require(False, "running as root and there is no `postgres` user to run PostgreSQL as")
            self._as = ["runuser", "-u", "postgres", "--"]
            self._owner = (user.pw_uid, user.pw_gid)
        self.base = Path(tempfile.mkdtemp(prefix="lfsserve-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sock"
        self.sockets.mkdir()
        if self._owner is not None:
            for p in (self.base, self.sockets):
                os.chown(p, *self._owner)
        self.port = 0
        self._run([self._initdb, "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                   "--locale", "C.UTF-8", "--no-sync"])

    def _run(self, cmd: list[str]) -> None:
        result = subprocess.run(self._as + cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                               f"\n{self.log()[-3000:]}")

    def log(self) -> str:
        p = self.base / "server.log"
        return p.read_text(errors="replace") if p.exists() else ""

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def start(self) -> None:
        """Start (again, on the same port once it has one); returns when it accepts connections."""
        for _ in range(4):
            port = self.port or free_port()
            opts = (f"-k {self.sockets} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            try:
                self._run([self._pg_ctl, "-D", str(self.data), "-l", str(self.base / "server.log"),
                           "-w", "-t", "60", "-o", opts, "start"])
            except RuntimeError:
                if self.port or "could not bind" not in self.log():
                    raise
                continue  # that free port was taken meanwhile: another one
            self.port = port
            return
        raise RuntimeError("PostgreSQL: every free port tried was taken")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> None:
        """Stop by pid: SIGINT is PostgreSQL's fast shutdown (clients are disconnected)."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres") -> None:
        """Run SQL through the server's own client (no driver in the test process)."""
        psql = find_bin("psql")
        assert psql is not None
        subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url(db), "-c", sql],
                       check=True, capture_output=True, timeout=60)

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
