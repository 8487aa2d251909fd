"""The gateway role's password: set once, by whichever worker first needs it, kept encrypted."""

from __future__ import annotations

import threading
import uuid

import psycopg2
import pytest
import sqlalchemy as sa

from app.crypto import DecryptError, tenant_aad
from app.models import Gateway
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.clusters import Clusters
from app.tenancy.control.gateways import gateway_access
from app.tenancy.errors import UnknownCluster
from app.tenancy.serving.gateway import GatewayAccess
from tests.conftest import FreshDatabase
from tests.support import app_for


def _logs_in(access: GatewayAccess) -> str:
    connection = psycopg2.connect(
        access.url.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            row = cursor.fetchone()
        return str(row[0]) if row else ""
    finally:
        connection.close()


def test_gateways_racing_workers_set_one_password(fresh_database: FreshDatabase) -> None:
    env = fresh_database()
    with app_for(env) as app:
        tenancy = tenancy_of(app)
        results: list[GatewayAccess] = []

        def fetch() -> None:
            results.append(
                gateway_access(tenancy.clusters, tenancy.keyring, "default", scram_iterations=64)
            )

        threads = [threading.Thread(target=fetch) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with tenancy.control_engine.connect() as connection:
            rows = connection.execute(sa.select(Gateway.role)).scalars().all()
    assert len(results) == 6
    assert len({access.url.password for access in results}) == 1
    assert len({access.key for access in results}) == 1
    assert rows == [results[0].role]
    assert _logs_in(results[0]) == results[0].role


def test_gateways_role_is_per_database(fresh_database: FreshDatabase, tenancy: Tenancy) -> None:
    """Two control planes on one server never fight over one role's password."""
    env = fresh_database()
    with app_for(env) as app:
        other = tenancy_of(app)
        theirs = gateway_access(other.clusters, other.keyring, "default", scram_iterations=64)
    ours = gateway_access(tenancy.clusters, tenancy.keyring, "default", scram_iterations=64)
    assert theirs.role != ours.role
    assert theirs.key != ours.key
    assert _logs_in(ours) == ours.role
    assert _logs_in(theirs) == theirs.role


def test_gateways_password_is_bound_to_its_role(tenancy: Tenancy) -> None:
    """A gateway's ciphertext does not decrypt as a tenant's (nor under another role)."""
    access = gateway_access(tenancy.clusters, tenancy.keyring, "default", scram_iterations=64)
    with tenancy.control_engine.connect() as connection:
        token = connection.scalar(
            sa.select(Gateway.db_password_encrypted).where(Gateway.role == access.role)
        )
    assert token is not None
    assert access.url.password not in token
    with pytest.raises(DecryptError):
        tenancy.keyring.decrypt(token, tenant_aad(uuid.uuid4(), access.role))


def test_gateways_unknown_cluster_raises(tenancy: Tenancy) -> None:
    clusters = Clusters.configured(tenancy.control_engine, {})
    with pytest.raises(UnknownCluster, match="no cluster named"):
        gateway_access(clusters, tenancy.keyring, "nowhere", scram_iterations=64)


def test_gateways_same_database_name_on_two_servers_are_two_gateways(placed: Tenancy) -> None:
    """default and c2 are both a database named tenantpool, on two servers: two passwords."""
    ours = gateway_access(placed.clusters, placed.keyring, "default", scram_iterations=64)
    theirs = gateway_access(placed.clusters, placed.keyring, "c2", scram_iterations=64)
    assert ours.role == theirs.role  # named after the database...
    assert ours.url.password != theirs.url.password  # ...but one role per server
    assert _logs_in(ours) == ours.role
    assert _logs_in(theirs) == theirs.role
