"""A project-local PostgreSQL cluster for development and tests (no Flask).

``make run`` and the test suite start their own server instead of assuming one: initdb in
a directory of ours, TCP on 127.0.0.1 only, scram-sha-256 for every connection and no
``trust`` line anywhere, so that authentication bugs show up locally as they would on a
managed service.

Not pytest-postgresql: it re-initdbs on every start (make run keeps var/pg), no SCRAM, no root drop.

PostgreSQL refuses to run as root. When we are root (CI, containers) the server binaries
run as the ``postgres`` system user (else ``nobody``; see run_as.py), which must own the
data directory and be able to traverse every directory above it.

Nothing here logs or prints a password: the superuser password reaches initdb through a
file readable only by the server user, and role passwords reach the server as SCRAM
verifiers computed by libpq, so they never appear in a statement log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import quote

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import encrypt_password

from app.dev.errors import ClusterError, PostgresNotFound
from app.dev.pg_binaries import find_pg_bindir
from app.dev.ports import answers, free_port, port_is_free
from app.dev.run_as import RunAs

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
# The whole of pg_hba.conf: TCP on loopback with a password, nothing else (no trust,
# no peer, no Unix socket).
_PG_HBA = """\
# Written by app/dev/cluster.py: password (SCRAM) logins over loopback TCP only.
host    all    all    127.0.0.1/32    scram-sha-256
host    all    all    ::1/128         scram-sha-256
"""
_START_ATTEMPTS = 5
_PG_CTL_TIMEOUT = "60"


class LocalCluster:
    """One PostgreSQL data directory and the server running on it, if any.

    Not thread safe; one process drives a cluster at a time. ``start()`` reuses a server
    already running on the directory and reports whether it started one, so callers stop
    only what they started. Errors raise ClusterError with a one-line message.
    """

    def __init__(
        self,
        datadir: Path,
        *,
        bindir: Path | None = None,
        superuser_password: str | None = None,
    ) -> None:
        self.datadir = Path(datadir).absolute()
        self.bindir = bindir if bindir is not None else find_pg_bindir()
        self.superuser_password = superuser_password
        self._run_as = RunAs.when_root()
        self._port: int | None = None

    def __repr__(self) -> str:
        return f"LocalCluster({str(self.datadir)!r}, port={self._port})"

    @property
    def initialized(self) -> bool:
        """Whether initdb has run in the data directory."""
        return (self.datadir / "PG_VERSION").is_file()

    @property
    def port(self) -> int:
        """The TCP port of the running server; raises ClusterError before ``start()``."""
        if self._port is None:
            raise ClusterError(f"the cluster in {self.datadir} is not started: call start()")
        return self._port

    @property
    def log_path(self) -> Path:
        """The server's log file (connections, errors); appended to on every start."""
        return self.datadir / "server.log"

    def init(self, superuser_password: str) -> None:
        """Run initdb: superuser ``postgres`` with this password, UTF8, C locale, no trust.

        The data directory must not exist or be empty. The password file lives in a
        private directory beside the data directory and is removed afterwards.
        """
        if self.initialized:
            raise ClusterError(f"{self.datadir} already holds a PostgreSQL cluster")
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        self._check_traversable(self.datadir.parent)
        self.datadir.mkdir(mode=0o700, exist_ok=True)
        if any(self.datadir.iterdir()):
            raise ClusterError(
                f"{self.datadir} is not empty and holds no cluster: remove it or pick another"
            )
        self._give_to_server_user(self.datadir)
        secret_dir = Path(tempfile.mkdtemp(prefix=".initdb-", dir=self.datadir.parent))
        try:
            self._give_to_server_user(secret_dir)
            pwfile = secret_dir / "pwfile"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(superuser_password + "\n")
            self._give_to_server_user(pwfile)
            result = self._run(
                "initdb",
                "--pgdata",
                str(self.datadir),
                "--username",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
                "--auth-local=reject",
                "--auth-host=scram-sha-256",
                "--no-instructions",
            )
        finally:
            shutil.rmtree(secret_dir, ignore_errors=True)
        if result.returncode != 0:
            raise ClusterError(f"initdb failed in {self.datadir}: {_last_line(result.stderr)}")
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(_PG_HBA)
        self._give_to_server_user(hba)
        self.superuser_password = superuser_password
        log.info("initialized a PostgreSQL cluster in %s", self.datadir)

    def start(
        self,
        port: int | None = None,
        *,
        max_connections: int = 100,
        extra_settings: Mapping[str, str] | None = None,
    ) -> bool:
        """Start the server on 127.0.0.1; return False if it was already running (reused).

        ``port`` None picks a free one; a port that turns out to be taken is replaced by
        another free one (up to a few attempts). A stale ``postmaster.pid`` left by a crash
        is handled by pg_ctl. ``extra_settings`` are passed as ``-c name=value``.
        """
        if not self.initialized:
            raise ClusterError(f"no cluster in {self.datadir}: call init() first")
        if self._reuse_running():
            return False
        settings = _server_settings(max_connections, extra_settings or {})
        # Checking first keeps a FATAL out of the log in the common case; the retry
        # below covers the race with another process taking the port meanwhile.
        candidate = port if port is not None and port_is_free(port) else free_port()
        for _attempt in range(_START_ATTEMPTS):
            if self._start_on(candidate, settings):
                return True
            log.info("port %d is taken; trying another", candidate)
            candidate = free_port()
        raise ClusterError(f"PostgreSQL found no free port after {_START_ATTEMPTS} attempts")

    def _reuse_running(self) -> bool:
        """Adopt a server already running on this directory, if any; raise if it is mute."""
        running = self._running_port()
        if running is None:
            return False
        if not answers(running):
            raise ClusterError(
                f"a PostgreSQL server runs on {self.datadir} but does not answer on "
                f"127.0.0.1:{running}: stop it with `pg_ctl stop -D {self.datadir}`"
            )
        self._port = running
        log.info("reusing the PostgreSQL server on 127.0.0.1:%d", running)
        return True

    def _start_on(self, port: int, settings: Mapping[str, str]) -> bool:
        """Start the server on ``port``; False if the port is taken, ClusterError otherwise."""
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        options = " ".join(
            f"-c {shlex.quote(f'{name}={value}')}"
            for name, value in {**settings, "port": str(port)}.items()
        )
        result = self._run(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.datadir),
            "--log",
            str(self.log_path),
            "--wait",
            "--timeout",
            _PG_CTL_TIMEOUT,
            "--options",
            options,
        )
        if result.returncode == 0:
            self._port = port
            log.info("started PostgreSQL on 127.0.0.1:%d (%s)", port, self.datadir)
            return True
        new_lines = self._read_log(log_offset)
        if "could not bind" not in new_lines and "could not create any TCP/IP" not in new_lines:
            reason = _worst_line(new_lines) if new_lines.strip() else _last_line(result.stderr)
            raise ClusterError(f"PostgreSQL did not start (see {self.log_path}): {reason}")
        return False

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs (``mode``: smart, fast or immediate)."""
        if self._running_port() is None:
            self._port = None
            return
        result = self._run(
            "pg_ctl",
            "stop",
            "--pgdata",
            str(self.datadir),
            "--mode",
            mode,
            "--wait",
            "--timeout",
            _PG_CTL_TIMEOUT,
        )
        if result.returncode != 0:
            raise ClusterError(f"pg_ctl stop failed in {self.datadir}: {_last_line(result.stderr)}")
        self._port = None

    def superuser_url(self, database: str = "postgres") -> str:
        """A libpq/SQLAlchemy URL for the superuser; needs the password given at init."""
        if self.superuser_password is None:
            raise ClusterError("the superuser password of this cluster is unknown")
        return _url(SUPERUSER, self.superuser_password, self.port, database)

    def bootstrap_owner(self, owner: str, password: str, database: str) -> str:
        """Create (or update) ``owner`` and ``database`` as on a managed service; return its URL.

        The owner is a LOGIN, CREATEROLE, non-superuser role that owns ``database``.
        Idempotent: an existing role gets this password and these attributes again.
        """
        with self._superuser_connection() as conn, conn.cursor() as cur:
            verifier = encrypt_password(password, owner, conn, "scram-sha-256")
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (owner,))
            verb = sql.SQL("ALTER" if cur.fetchone() else "CREATE")
            cur.execute(
                sql.SQL(
                    "{} ROLE {} WITH LOGIN NOSUPERUSER CREATEROLE NOCREATEDB PASSWORD {}"
                ).format(verb, sql.Identifier(owner), sql.Literal(verifier))
            )
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone():
                statement = "ALTER DATABASE {} OWNER TO {}"
            else:
                statement = "CREATE DATABASE {} OWNER {}"
            cur.execute(sql.SQL(statement).format(sql.Identifier(database), sql.Identifier(owner)))
        return _url(owner, password, self.port, database)

    @contextlib.contextmanager
    def _superuser_connection(self) -> Iterator[Connection]:
        try:
            conn = psycopg2.connect(self.superuser_url(), connect_timeout=10)
        except psycopg2.OperationalError as exc:
            if "password authentication failed" in str(exc):
                raise ClusterError(
                    f"the cluster in {self.datadir} refused the superuser password: it was "
                    "initialized with another one (delete that directory to start afresh)"
                ) from None
            raise ClusterError(f"cannot connect to the cluster: {_last_line(str(exc))}") from None
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            yield conn
        finally:
            conn.close()

    def _running_port(self) -> int | None:
        """The port of a live server on this directory, or None (stale pid files included)."""
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return None
        if self._run("pg_ctl", "status", "--pgdata", str(self.datadir)).returncode != 0:
            return None
        lines = pidfile.read_text().splitlines()
        # postmaster.pid line 4 is the port (see PostgreSQL's pidfile.h).
        if len(lines) < 4 or not lines[3].strip().isdigit():
            return None
        return int(lines[3])

    def _run(self, binary: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a server binary, as the unprivileged server user when we are root."""
        # Messages we parse must be in English; PG* variables must not redirect pg_ctl.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        run_as = self._run_as
        log.debug("running %s %s", binary, args[0] if args else "")
        return subprocess.run(
            [str(self.bindir / binary), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",  # the server user may not be able to enter our working directory
            env=env,
            stdin=subprocess.DEVNULL,
            **(run_as.subprocess_kwargs() if run_as else {}),
        )

    def _give_to_server_user(self, path: Path) -> None:
        if self._run_as is not None:
            self._run_as.give(path)

    def _check_traversable(self, directory: Path) -> None:
        """Fail early, in one line, if the server user cannot reach ``directory``."""
        if self._run_as is None:
            return
        part = self._run_as.first_unenterable(directory)
        if part is not None:
            raise ClusterError(
                f"PostgreSQL runs as user {self._run_as.name!r}, which cannot enter {part}: "
                "put the data directory elsewhere, e.g. APP_PG_DATADIR=/var/tmp/tenantpool-pg"
            )

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_path.open(encoding="utf-8", errors="replace") as handle:
                handle.seek(offset)
                return handle.read()
        except OSError:
            return ""


def _server_settings(max_connections: int, extra: Mapping[str, str]) -> dict[str, str]:
    """The ``-c`` settings of every start: loopback TCP only, SCRAM, connections logged."""
    return {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": "",
        "password_encryption": "scram-sha-256",
        "logging_collector": "off",
        "log_connections": "on",
        "max_connections": str(max_connections),
        **extra,
    }


def _url(user: str, password: str, port: int, database: str) -> str:
    return (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}"
        f"@127.0.0.1:{port}/{quote(database, safe='')}"
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _worst_line(text: str) -> str:
    """The last FATAL/PANIC/ERROR line of a server log excerpt, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if any(level in line for level in ("FATAL:", "PANIC:", "ERROR:")):
            return line
    return lines[-1] if lines else "no log output"


def main(argv: list[str] | None = None) -> int:
    """``python -m app.dev.cluster stop DATADIR``: stop a cluster left running (make clean)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "stop":
        print("usage: python -m app.dev.cluster stop DATADIR", file=sys.stderr)
        return 2
    datadir = Path(args[1])
    if not (datadir / "PG_VERSION").is_file():
        return 0
    try:
        LocalCluster(datadir).stop()
    except (PostgresNotFound, ClusterError) as exc:
        print(f"devcluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
