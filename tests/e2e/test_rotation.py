"""Credentials and the master key rotated under load, with a real gunicorn, losing nothing.

The keyring lives in files (``APP_ENCRYPTION_KEYS_FILE``, ``APP_ENCRYPTION_ACTIVE_KEY_FILE``)
and the service learns each change by a graceful reload (SIGHUP to gunicorn's master), as
docs/security.md tells operators to do: add the new key everywhere, make it active
everywhere, ``flask crypto rotate``, drop the old key.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import requests
import sqlalchemy as sa

from app.crypto import Keyring
from app.models import Tenant
from tests.conftest import FreshDatabase
from tests.e2e.conftest import SeededTenant, Service, seed, start_service, stop_service
from tests.support import connect_as, run_flask, stored_password

pytestmark = pytest.mark.e2e

LOAD_SECONDS = 15
CREDENTIAL_ROTATIONS = 5


class KeyFiles:
    """The service's keyring files; ``write`` replaces them as an operator would."""

    def __init__(self, directory: Path) -> None:
        self.keys = directory / "keys"
        self.active = directory / "active"

    def write(self, keys: dict[str, str], active: str) -> None:
        self.keys.write_text("".join(f"{kid}:{key}\n" for kid, key in keys.items()))
        self.active.write_text(active + "\n")


def _workers(master: int) -> set[int]:
    """Pids of the gunicorn master's children (its workers)."""
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces; the fields after its ')' are plain.
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                children.add(int(entry))
    return children


def _reload(service: Service, count: int) -> None:
    """SIGHUP, then wait until new workers replaced every old one and the service answers."""
    old = _workers(service.pid)
    os.kill(service.pid, signal.SIGHUP)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = _workers(service.pid)
        if len(current) == count and not current & old:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"gunicorn did not replace its workers:\n{service.log_path.read_text()}")
    assert requests.get(f"{service.url}/healthz", timeout=30).status_code == 200


@pytest.fixture
def rotating(
    fresh_database: FreshDatabase, tmp_path: Path
) -> Iterator[tuple[Service, KeyFiles, dict[str, str], list[SeededTenant]]]:
    """A service on a database of its own whose keyring is in files: k1 only, active."""
    files = KeyFiles(tmp_path)
    env = {
        name: value
        for name, value in fresh_database().items()
        if name not in ("APP_ENCRYPTION_KEYS", "APP_ENCRYPTION_ACTIVE_KEY")
    }
    env["APP_ENCRYPTION_KEYS_FILE"] = str(files.keys)
    env["APP_ENCRYPTION_ACTIVE_KEY_FILE"] = str(files.active)
    keys = {"k1": secrets.token_hex(32)}
    files.write(keys, "k1")
    tenants = seed(env, tmp_path / "tenants.json", count=3, prefix="rot")
    process, service = start_service(env, tmp_path / "gunicorn.log", workers=2, threads=4)
    try:
        yield service, files, keys, tenants
    finally:
        stop_service(process)


def test_rotation_under_load_loses_no_request(
    rotating: tuple[Service, KeyFiles, dict[str, str], list[SeededTenant]],
) -> None:
    service, files, keys, tenants = rotating
    tenant = tenants[0]
    control = sa.create_engine(service.env["APP_DATABASE_URL"])
    ring_k1 = Keyring({"k1": bytes.fromhex(keys["k1"])}, "k1")
    first_password = stored_password(control, ring_k1, uuid.UUID(tenant.id))
    admin = {"Authorization": f"Bearer {service.env['APP_ADMIN_TOKEN']}"}
    statuses: Counter[int | str] = Counter()
    stop = threading.Event()

    def hammer() -> None:
        # A new connection per request, as many clients behind a load balancer: a reload
        # closes idle keep-alive connections, which is not what this test is about.
        while not stop.is_set():
            try:
                response = requests.get(
                    f"{service.url}/v1/users",
                    headers={**tenant.headers, "Connection": "close"},
                    timeout=30,
                )
            except requests.RequestException as error:
                statuses[type(error).__name__] += 1
            else:
                statuses[response.status_code] += 1

    def rotate_credentials() -> None:
        response = requests.post(
            f"{service.url}/v1/admin/tenants/{tenant.id}/rotate-credentials",
            headers=admin,
            timeout=30,
        )
        assert response.status_code == 200, response.text

    def crypto_rotate() -> None:
        result = run_flask(service.env, "crypto", "rotate")
        assert result.returncode == 0, result.stderr

    keys["k2"] = secrets.token_hex(32)
    steps = [
        rotate_credentials,
        lambda: (files.write(keys, "k1"), _reload(service, 2)),  # 1. k2 everywhere
        rotate_credentials,
        lambda: (files.write(keys, "k2"), _reload(service, 2)),  # 2. k2 active everywhere
        rotate_credentials,
        crypto_rotate,  # 3. re-encrypt everything under k2
        rotate_credentials,
        lambda: (files.write({"k2": keys["k2"]}, "k2"), _reload(service, 2)),  # 4. drop k1
        rotate_credentials,
    ]
    assert steps.count(rotate_credentials) == CREDENTIAL_ROTATIONS

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        for number, step in enumerate(steps, start=1):
            # Spread the steps over the load period.
            time.sleep(
                max(0.0, started + number * LOAD_SECONDS / (len(steps) + 1) - time.monotonic())
            )
            step()
        time.sleep(max(0.0, started + LOAD_SECONDS - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    assert set(statuses) == {200}, f"non-200 answers during rotation: {statuses}"
    assert sum(statuses.values()) > 100
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect_as(control.url, uuid.UUID(tenant.id), first_password)
    with control.connect() as connection:
        rows = connection.execute(sa.select(Tenant.key_id, Tenant.db_password_encrypted)).all()
    control.dispose()
    assert {row.key_id for row in rows} == {"k2"}
    assert all(row.db_password_encrypted.startswith("v1:k2:") for row in rows)
    # The service now holds k2 only: every tenant still works.
    for each in tenants:
        response = requests.get(f"{service.url}/v1/users", headers=each.headers, timeout=30)
        assert response.status_code == 200
