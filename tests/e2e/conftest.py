"""A real ``gunicorn -c gunicorn.conf.py wsgi:app`` with several workers, and seeded tenants."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import requests

from app.dev.cluster import LocalCluster
from app.dev.ports import free_port
from tests.support import REPO_ROOT

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Service:
    """A running gunicorn: its base URL, master pid and log file."""

    url: str
    pid: int
    log_path: Path
    env: dict[str, str]


@dataclass(frozen=True)
class SeededTenant:
    id: str
    name: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Tenant-ID": self.id, "Authorization": f"Bearer {self.api_key}"}


def start_service(
    env: dict[str, str],
    log_path: Path,
    *,
    workers: int = 2,
    threads: int = 4,
    cwd: Path = REPO_ROOT,
) -> tuple[subprocess.Popen[bytes], Service]:
    """Start gunicorn as `make run` does (from ``cwd``); return once /healthz answers and
    every worker has loaded the app (its "worker ready" line), so a test that counts on
    several workers finds them all serving."""
    port = free_port()
    service_env = {
        **os.environ,
        **env,
        "APP_BIND": f"127.0.0.1:{port}",
        "APP_WORKERS": str(workers),
        "APP_THREADS": str(threads),
    }
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=cwd,
        env=service_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited early:\n{log_path.read_text()}", pytrace=False)
        try:
            answered = requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # a booting worker on a busy machine
            answered = False
        if answered and _ready_workers(log_path) >= workers:
            return process, Service(url, process.pid, log_path, service_env)
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"gunicorn did not answer in 30 s:\n{log_path.read_text()}", pytrace=False)


def _ready_workers(log_path: Path) -> int:
    """How many workers said they loaded the app (gunicorn.conf.py's post_worker_init)."""
    return log_path.read_text(errors="replace").count('"msg":"worker ready"')


def stop_service(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def seed(
    env: dict[str, str],
    output: Path,
    *,
    count: int,
    prefix: str,
    users_per_tenant: int = 3,
    cluster: str = "default",
) -> list[SeededTenant]:
    """Seed tenants on ``cluster`` with the real `flask seed-tenants`; read its output file."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "wsgi",
            "seed-tenants",
            "--count",
            str(count),
            "--users-per-tenant",
            str(users_per_tenant),
            "--prefix",
            prefix,
            "--output",
            str(output),
            "--cluster",
            cluster,
        ],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    return [SeededTenant(**item) for item in json.loads(output.read_text())]


def tenant_backends(superuser_url: str, tenant_id: str) -> set[str]:
    """application_name of every backend serving the tenant: ``tp:<tenant>:<worker pid>``."""
    connection = psycopg2.connect(superuser_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                (f"tp:{tenant_id}:%",),
            )
            return {row[0] for row in cursor.fetchall()}
    finally:
        connection.close()


@pytest.fixture(scope="session")
def service(
    app_env: dict[str, str], migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """gunicorn, 2 workers x 4 threads; idle engines reaped after 1 s so tests can watch it."""
    env = {**app_env, "APP_IDLE_TTL": "1", "APP_REAPER_INTERVAL": "0.2"}
    log_path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    process, running = start_service(env, log_path)
    yield running
    stop_service(process)


@pytest.fixture(scope="session")
def seeded(
    app_env: dict[str, str], migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> list[SeededTenant]:
    """Two tenants from the real `flask seed-tenants`."""
    output = tmp_path_factory.mktemp("seed") / "tenants.json"
    return seed(app_env, output, count=2, prefix="e2e")


@pytest.fixture(scope="session")
def superuser_url(pg_cluster: LocalCluster) -> str:
    """Only to inspect the server (pg_stat_activity), never to read tenant data."""
    return pg_cluster.superuser_url("tenantpool")
