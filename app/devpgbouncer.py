"""A project-local PgBouncer in front of a local cluster, for tests and benchmarks (no Flask).

Transaction pooling, SCRAM for every client, TCP on 127.0.0.1 only. The users of
``auth_file`` are the few fixed ones (the owner, the console admin, the ``auth_query``
user); tenant roles are looked up live through ``auth_query`` (docs/operations.md says
why), so a tenant created after PgBouncer started logs in at once. PgBouncer then logs in
to PostgreSQL with the client's own SCRAM proof (it holds no tenant password).

PgBouncer refuses to run as root: when we are root it runs as the same unprivileged
account as the local PostgreSQL (``devcluster.RunAs``), which must own its files.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import encrypt_password

from app.devcluster import RunAs, free_port

AUTH_SCHEMA = "pgbouncer"
AUTH_QUERY = f"SELECT usename, passwd FROM {AUTH_SCHEMA}.get_auth($1)"
INSTALL_HINT = "pgbouncer is not installed: `apt-get install pgbouncer` (.ci/run does it when root)"
_SEARCH = "/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin"
_START_TIMEOUT = 20.0


class PgBouncerError(RuntimeError):
    """PgBouncer cannot be found, configured or started; the message is one line."""


def find_pgbouncer() -> Path | None:
    """The pgbouncer binary on PATH or in the usual sbin directories, else None."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path=_SEARCH)
    return Path(found) if found else None


def install_auth_query(superuser_dsn: str, auth_user: str, auth_password: str) -> None:
    """As a superuser, in the DSN's database: the ``auth_query`` role and function.

    The function reads ``pg_shadow`` (superuser only, hence SECURITY DEFINER owned by a
    superuser) and answers for tenant roles (``t_`` + 32 hex) only, so the auth user can
    never fetch the owner's or a superuser's verifier. Idempotent.
    """
    connection = psycopg2.connect(superuser_dsn, connect_timeout=10)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            # A verifier, not the password, so no statement log can show it.
            verifier = encrypt_password(auth_password, auth_user, connection, "scram-sha-256")
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (auth_user,))
            verb = sql.SQL("ALTER" if cursor.fetchone() else "CREATE")
            cursor.execute(
                sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD {}").format(
                    verb, sql.Identifier(auth_user), sql.Literal(verifier)
                )
            )
            cursor.execute(
                sql.SQL(
                    """
                    CREATE SCHEMA IF NOT EXISTS {schema};
                    CREATE OR REPLACE FUNCTION {schema}.get_auth(p_usename text)
                    RETURNS TABLE (usename name, passwd text)
                    LANGUAGE sql STABLE SECURITY DEFINER
                    SET search_path = pg_catalog, pg_temp
                    AS $$
                      SELECT usename, passwd FROM pg_catalog.pg_shadow
                       WHERE usename = p_usename AND usename ~ '^t_[0-9a-f]{{32}}$'
                    $$;
                    REVOKE ALL ON FUNCTION {schema}.get_auth(text) FROM PUBLIC;
                    GRANT USAGE ON SCHEMA {schema} TO {user};
                    GRANT EXECUTE ON FUNCTION {schema}.get_auth(text) TO {user};
                    GRANT CONNECT ON DATABASE {database} TO {user};
                    """
                ).format(
                    schema=sql.Identifier(AUTH_SCHEMA),
                    user=sql.Identifier(auth_user),
                    database=sql.Identifier(connection.info.dbname),
                )
            )
    finally:
        connection.close()


class LocalPgBouncer:
    """One PgBouncer process pooling one database of a local PostgreSQL server.

    ``users`` maps each ``auth_file`` user to its password (plain text or a SCRAM
    verifier). Not thread safe; ``stop()`` ends only the process ``start()`` started.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        server_port: int,
        database: str,
        users: Mapping[str, str],
        admin_user: str,
        auth_user: str | None = None,
        default_pool_size: int = 2,
        max_client_conn: int = 200,
        pool_mode: str = "transaction",
    ) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise PgBouncerError(INSTALL_HINT)
        self.binary = binary
        self.workdir = Path(workdir).absolute()
        self.server_port = server_port
        self.database = database
        self.users = dict(users)
        self.admin_user = admin_user
        self.auth_user = auth_user
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.pool_mode = pool_mode
        self._run_as = RunAs.when_root()
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise PgBouncerError("pgbouncer is not started: call start()")
        return self._port

    @property
    def log_path(self) -> Path:
        return self.workdir / "pgbouncer.log"

    def url(self, user: str, password: str, database: str | None = None) -> str:
        """A libpq URL through this PgBouncer (``database="pgbouncer"``: the admin console)."""
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@127.0.0.1:{self.port}/{quote(database or self.database, safe='')}"
        )

    def start(self) -> None:
        """Write the configuration, start PgBouncer on a free port, wait until it listens."""
        if self._process is not None:
            raise PgBouncerError("pgbouncer is started already")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            self.workdir.chmod(0o755)
            part = self._run_as.first_unenterable(self.workdir)
            if part is not None:
                raise PgBouncerError(
                    f"pgbouncer runs as user {self._run_as.name!r}, which cannot enter {part}: "
                    "use a work directory it can reach (e.g. under /tmp made by mkdtemp)"
                )
        for _attempt in range(3):
            port = free_port()
            ini = self._write_config(port)
            log = self.log_path.open("ab")
            offset = log.tell()
            process = subprocess.Popen(
                [str(self.binary), str(ini)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                **(self._run_as.subprocess_kwargs() if self._run_as else {}),
            )
            log.close()
            if self._wait_listening(process, port):
                self._process, self._port = process, port
                return
            _end(process)
            tail = self.log_path.read_bytes()[offset:].decode(errors="replace")
            if "Address already in use" not in tail:
                lines = [line for line in tail.splitlines() if line.strip()]
                raise PgBouncerError(
                    f"pgbouncer did not start (see {self.log_path}): "
                    f"{lines[-1] if lines else 'no output'}"
                )
        raise PgBouncerError("pgbouncer found no free port after 3 attempts")

    def stop(self) -> None:
        """Stop the PgBouncer this object started (immediate shutdown), if running."""
        if self._process is not None:
            _end(self._process)
            self._process = None
            self._port = None

    def _write_config(self, port: int) -> Path:
        userlist = self.workdir / "userlist.txt"
        userlist.write_text(
            "".join(f"{_quoted(user)} {_quoted(secret)}\n" for user, secret in self.users.items())
        )
        userlist.chmod(0o600)
        auth = (
            f"auth_user = {self.auth_user}\nauth_query = {AUTH_QUERY}\n" if self.auth_user else ""
        )
        ini = self.workdir / "pgbouncer.ini"
        ini.write_text(
            f"""\
[databases]
{self.database} = host=127.0.0.1 port={self.server_port} dbname={self.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
{auth}pool_mode = {self.pool_mode}
default_pool_size = {self.default_pool_size}
max_client_conn = {self.max_client_conn}
admin_users = {self.admin_user}
stats_users = {self.admin_user}
"""
        )
        if self._run_as is not None:
            for path in (userlist, ini):
                self._run_as.give(path)
        return ini

    @staticmethod
    def _wait_listening(process: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=1),
            ):
                return True
            time.sleep(0.05)
        return False


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # immediate shutdown; SIGINT would wait for clients
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
