"""What a benchmark run stands on: its own PostgreSQL cluster, gunicorn processes, seeding.

Nothing here is shared with a running ``make run``: the cluster lives in a fresh temporary
directory (mode 0755, so the ``postgres`` user can traverse it when we are root) and every
server binds a free port on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from app.dev.cluster import LocalCluster
from app.dev.ports import free_port
from tests.support import REPO_ROOT, run_flask

OWNER = "tenantpool"
DATABASE = "tenantpool"
# The bench cluster is thrown away at the end: durability buys nothing. max_connections is
# what a server for a thousand active tenants would be given: the service is sized from it
# (tests/bench/run.py, sized_settings).
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "256MB",
}
MAX_CONNECTIONS = 2000


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
def database(max_connections: int = MAX_CONNECTIONS) -> Iterator[Database]:
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
                self._command(args),
                cwd=REPO_ROOT,
                env={**os.environ, **env, "APP_BIND": f"127.0.0.1:{self.port}"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.log_path = log_path
        self._wait_ready()

    def _command(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "gunicorn", *args]

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


class TenantAffineProxy(Server):
    """HAProxy sending each tenant's requests to one of ``servers``, by a hash of its id.

    ``balance hdr(X-Tenant-ID)`` with ``hash-type consistent``: every request of a tenant
    reaches the same single-worker gunicorn, so its connections live in one worker only.
    """

    def __init__(self, name: str, servers: list[Server], work: Path) -> None:
        self._servers = servers
        self._config = work / f"{name}.haproxy.cfg"
        super().__init__(f"haproxy for {name}", [], {}, work / f"{name}.haproxy.log")

    def _command(self, args: list[str]) -> list[str]:
        # The config names the port Server.__init__ picked just before starting us.
        self._config.write_text(haproxy_config(self.port, [s.port for s in self._servers]))
        return [haproxy_path(), "-f", str(self._config)]


def haproxy_path() -> str:
    path = shutil.which("haproxy")
    if path is None:
        raise RuntimeError("haproxy is not installed: `apt-get install haproxy` (make bench does)")
    return path


def haproxy_config(port: int, server_ports: list[int]) -> str:
    """Listen on ``port`` on loopback; hash ``X-Tenant-ID`` over the servers, keep-alive."""
    servers = "".join(
        f"  server app{number} 127.0.0.1:{server_port}\n"
        for number, server_port in enumerate(server_ports)
    )
    return (
        "global\n"
        "  maxconn 4096\n"
        "defaults\n"
        "  mode http\n"
        "  option http-keep-alive\n"
        "  timeout connect 5s\n"
        "  timeout client 30s\n"
        "  timeout server 30s\n"
        "frontend tenants\n"
        f"  bind 127.0.0.1:{port}\n"
        "  default_backend apps\n"
        "backend apps\n"
        "  balance hdr(X-Tenant-ID)\n"
        "  hash-type consistent\n" + servers
    )
