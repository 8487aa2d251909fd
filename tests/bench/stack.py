"""What a benchmark run stands on: its own PostgreSQL cluster, gunicorn processes, seeding.

Nothing here is shared with a running ``make run``: the cluster lives in a fresh temporary
directory (mode 0755, so the ``postgres`` user can traverse it when we are root) and every
server binds a free port on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import sqlalchemy as sa

from app.dev.cluster import LocalCluster
from app.dev.ports import free_port
from tests.support import REPO_ROOT, run_flask

OWNER = "tenantpool"
DATABASE = "tenantpool"
# The bench cluster is thrown away at the end: durability buys nothing. Its max_connections
# is set per run (tests/bench/run.py: PostgreSQL's stock 100, and 2000).
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "256MB",
}


@dataclass(frozen=True)
class Database:
    """The bench cluster and the URLs a run needs."""

    cluster: LocalCluster
    owner_url: str
    env: dict[str, str]  # the APP_* environment of the service and its commands

    @contextlib.contextmanager
    def superuser(self, database: str = DATABASE) -> Iterator[psycopg2.extensions.cursor]:
        """A superuser cursor (autocommit), only to inspect the server and set up the bench."""
        connection = psycopg2.connect(self.cluster.superuser_url(database), connect_timeout=10)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                yield cursor
        finally:
            connection.close()


@contextlib.contextmanager
def database(max_connections: int) -> Iterator[Database]:
    """A started, migrated cluster; stopped and removed on exit."""
    base = Path(tempfile.mkdtemp(prefix="tenantpool-bench-"))
    try:
        base.chmod(0o755)
        cluster = LocalCluster(base / "data")
        cluster.init(secrets.token_urlsafe(24))
        cluster.start(max_connections=max_connections, extra_settings=SERVER_SETTINGS)
        try:
            owner_url = cluster.bootstrap_owner(OWNER, secrets.token_urlsafe(24), DATABASE)
            env = {
                "APP_ENV": "production",
                "APP_DATABASE_URL": owner_url,
                "APP_ENCRYPTION_KEYS": f"bench1:{secrets.token_hex(32)}",
                "APP_ENCRYPTION_ACTIVE_KEY": "bench1",
                "APP_ADMIN_TOKEN": secrets.token_urlsafe(32),
            }
            flask(env, "db", "upgrade")
            yield Database(cluster, owner_url, env)
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def restart(db: Database, max_connections: int) -> Database:
    """The same cluster restarted with another ``max_connections``, and its URLs.

    The server may come back on another port (the old one can be held by connections in
    TIME_WAIT for a minute), so URLs made before must be made again from the new ones.
    """
    db.cluster.stop()
    db.cluster.start(max_connections=max_connections, extra_settings=SERVER_SETTINGS)
    owner_url = (
        sa.make_url(db.owner_url).set(port=db.cluster.port).render_as_string(hide_password=False)
    )
    return dataclasses.replace(
        db, owner_url=owner_url, env={**db.env, "APP_DATABASE_URL": owner_url}
    )


def newest_user(db: Database) -> str:
    """When the newest user row was created (text): rows after it are the bench's own."""
    with db.superuser() as cursor:
        cursor.execute("SELECT max(created_at)::text FROM users")
        (newest,) = cursor.fetchone()
    return str(newest)


def remove_users_after(db: Database, newest: str, databases: Sequence[str]) -> None:
    """Delete the users created after ``newest`` in ``databases``, then vacuum the table.

    A superuser's, as setup: the rows a POST run adds would otherwise make every later
    list count more rows, and more in the app that served more POSTs.
    """
    for name in databases:
        with db.superuser(name) as cursor:
            cursor.execute("DELETE FROM users WHERE created_at > %s::timestamptz", (newest,))
            cursor.execute("VACUUM ANALYZE users")


def flask(env: Mapping[str, str], *args: str) -> str:
    """Run ``flask --app wsgi ARGS`` with ``env``; its stdout, or RuntimeError with stderr."""
    result = run_flask(env, *args)
    if result.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    api_key: str


def seed(
    env: Mapping[str, str], output: Path, *, count: int, users: int
) -> tuple[list[Tenant], float]:
    """Seed ``count`` tenants with ``users`` users each; the tenants and the seconds it took."""
    started = time.perf_counter()
    flask(
        env,
        "seed-tenants",
        "--count",
        str(count),
        "--users-per-tenant",
        str(users),
        "--prefix",
        "bench",
        "--output",
        str(output),
    )
    elapsed = time.perf_counter() - started
    return [Tenant(**item) for item in json.loads(output.read_text())], elapsed


class Server:
    """One gunicorn master and its workers, started in the background on a free port."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", *args],
                cwd=REPO_ROOT,
                env={**os.environ, **env, "APP_BIND": f"127.0.0.1:{self.port}"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.log_path = log_path
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                # S310: our own server on loopback, plain http on purpose.
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response,  # noqa: S310
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer /healthz in {timeout:.0f} s")

    def worker_pids(self) -> list[int]:
        """The pids of gunicorn's workers (the master's children)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                # Fields after the command name, which is in parentheses: state, ppid, ...
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self._process.pid:
                    pids.append(int(stat.parent.name))
        return sorted(pids)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
