"""A project-local PgBouncer in front of a local cluster, for tests and benchmarks (no Flask).

TCP on 127.0.0.1 only; the rest of its configuration (pool mode, authentication, pool sizes)
is the caller's, e.g. docker/compose.yaml's, so tests run PgBouncer as deployed. PgBouncer
refuses to run as root: when we are root it runs as the same unprivileged account as the
local PostgreSQL (``app.dev.run_as.RunAs``), which must be able to reach its files.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from app.dev.ports import answers, free_port
from app.dev.run_as import RunAs

INSTALL_HINT = "pgbouncer is not installed: `apt-get install pgbouncer` (.ci/run does it when root)"
TRANSACTION_POOLING = {"auth_type": "scram-sha-256", "pool_mode": "transaction"}
_SEARCH = "/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin"
_START_TIMEOUT = 20.0


class PgBouncerError(RuntimeError):
    """PgBouncer cannot be found, configured or started; the message is one line."""


def find_pgbouncer() -> Path | None:
    """The pgbouncer binary on PATH or in the usual sbin directories, else None."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path=_SEARCH)
    return Path(found) if found else None


class LocalPgBouncer:
    """One PgBouncer process pooling one database of a local PostgreSQL server.

    ``users`` maps each ``auth_file`` user to its password (plain text or a SCRAM
    verifier); ``settings`` are the ``[pgbouncer]`` settings besides where it listens and
    its ``auth_file``. Not thread safe; ``stop()`` ends only the process ``start()`` started.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        server_port: int,
        database: str,
        users: Mapping[str, str],
        settings: Mapping[str, str] = TRANSACTION_POOLING,
    ) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise PgBouncerError(INSTALL_HINT)
        self.binary = binary
        self.workdir = Path(workdir).absolute()
        self.server_port = server_port
        self.database = database
        self.users = dict(users)
        self.settings = dict(settings)
        self._run_as = RunAs.when_root()
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    def __enter__(self) -> LocalPgBouncer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

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
        settings = "".join(f"{key} = {value}\n" for key, value in self.settings.items())
        ini = self.workdir / "pgbouncer.ini"
        ini.write_text(
            f"""\
[databases]
{self.database} = host=127.0.0.1 port={self.server_port} dbname={self.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_file = {userlist}
{settings}"""
        )
        if self._run_as is not None:
            for path in (userlist, ini):
                self._run_as.give(path)
        return ini

    @staticmethod
    def _wait_listening(process: subprocess.Popen[bytes], port: int) -> bool:
        """Whether PgBouncer listens on ``port`` within the start timeout (False once it exits)."""
        poll = Retrying(
            stop=stop_after_delay(_START_TIMEOUT),
            wait=wait_fixed(0.05),
            retry=retry_if_result(lambda listening: listening is None),
            retry_error_callback=lambda _state: False,
        )
        return bool(poll(_listening, process, port))


def _listening(process: subprocess.Popen[bytes], port: int) -> bool | None:
    """True once ``port`` accepts a connection, False if the process has exited, else None."""
    if process.poll() is not None:
        return False
    return True if answers(port, timeout=1) else None


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
