"""Re-encrypting every tenant secret under a new key, in a database of its own."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from app.crypto import Keyring
from app.models import Tenant
from app.tenancy.control.clusters import Clusters
from app.tenancy.control.provisioning import create_tenant
from app.tenancy.control.rekey import count_stale, reencrypt_all
from app.tenancy.control.roles import RoleLimits
from config import load_settings
from tests.conftest import FreshDatabase
from tests.support import stored_password

LIMITS = RoleLimits(connection_limit=5, statement_timeout_ms=5000, scram_iterations=64)
TENANTS = 5
OLD = secrets.token_bytes(32)
NEW = secrets.token_bytes(32)
OLD_RING = Keyring({"old": OLD}, "old")
BOTH_RINGS = Keyring({"old": OLD, "new": NEW}, "new")
NEW_RING = Keyring({"new": NEW}, "new")


class Interrupted(Exception):
    pass


@pytest.fixture
def engine(fresh_database: FreshDatabase) -> Iterator[sa.Engine]:
    """A database of its own whose tenants are all encrypted under the old key."""
    engine = sa.create_engine(load_settings(fresh_database()).database_url)
    for number in range(TENANTS):
        create_tenant(Clusters.single(engine), OLD_RING, f"rekey-{number}", LIMITS)
    yield engine
    engine.dispose()


def _passwords(engine: sa.Engine, keyring: Keyring) -> dict[uuid.UUID, str]:
    with engine.connect() as connection:
        ids = connection.scalars(sa.select(Tenant.id)).all()
    return {tenant_id: stored_password(engine, keyring, tenant_id) for tenant_id in ids}


def _key_ids(engine: sa.Engine) -> set[str]:
    """Every key id named by a row or by its token."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(Tenant.key_id, Tenant.db_password_encrypted)).all()
    return {row.key_id for row in rows} | {row.db_password_encrypted.split(":")[1] for row in rows}


def test_rekey_moves_every_secret_under_the_active_key(engine: sa.Engine) -> None:
    before = _passwords(engine, OLD_RING)
    report = reencrypt_all(engine, BOTH_RINGS, batch_size=2)
    assert (report.pending, report.reencrypted, report.failed) == (TENANTS, TENANTS, [])
    assert _key_ids(engine) == {"new"}
    # Same passwords, now readable without the old key.
    assert _passwords(engine, NEW_RING) == before


def test_rekey_second_run_changes_nothing(engine: sa.Engine) -> None:
    reencrypt_all(engine, BOTH_RINGS)
    with engine.connect() as connection:
        tokens = set(connection.scalars(sa.select(Tenant.db_password_encrypted)))
    report = reencrypt_all(engine, BOTH_RINGS)
    assert (report.pending, report.reencrypted) == (0, 0)
    with engine.connect() as connection:
        assert set(connection.scalars(sa.select(Tenant.db_password_encrypted))) == tokens


def test_rekey_interrupted_run_keeps_its_batches_and_the_next_finishes(engine: sa.Engine) -> None:
    def interrupt(handled: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        reencrypt_all(engine, BOTH_RINGS, batch_size=2, progress=interrupt)
    assert count_stale(engine, "new") == TENANTS - 2
    report = reencrypt_all(engine, BOTH_RINGS, batch_size=2)
    assert report.reencrypted == TENANTS - 2
    assert _key_ids(engine) == {"new"}


def test_rekey_reports_progress_per_batch(engine: sa.Engine) -> None:
    seen: list[int] = []
    reencrypt_all(engine, BOTH_RINGS, batch_size=2, progress=seen.append)
    assert seen == [2, 2, 1]


def test_rekey_passes_over_secrets_it_cannot_decrypt(engine: sa.Engine) -> None:
    ring = Keyring({"lost": secrets.token_bytes(32)}, "lost")
    lost = create_tenant(Clusters.single(engine), ring, "lost", LIMITS)
    report = reencrypt_all(engine, BOTH_RINGS, batch_size=2)
    assert report.failed == [lost.id]
    assert report.reencrypted == TENANTS
    assert count_stale(engine, "new") == 1
