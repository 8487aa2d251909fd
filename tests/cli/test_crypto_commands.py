"""``flask crypto generate-key|rotate`` on a database of its own."""

from __future__ import annotations

import re
import secrets

import psycopg2
import sqlalchemy as sa
from flask import Flask

from app.models import Gateway, Tenant
from app.tenancy import tenancy_of
from app.tenancy.control.gateways import gateway_access
from app.tenancy.control.roles import RoleLimits
from config import load_settings
from tests.conftest import FreshDatabase
from tests.support import app_for, invoke

LIMITS = RoleLimits(connection_limit=5, statement_timeout_ms=5000, scram_iterations=64)


def test_crypto_generate_key_prints_a_keyring_entry(app: Flask) -> None:
    result = invoke(app, "crypto", "generate-key", "--key-id", "k2")
    assert result.exit_code == 0
    line = result.stdout.strip()
    assert re.fullmatch(r"k2:[0-9a-f]{64}", line)
    env = {**_minimal_env(), "APP_ENCRYPTION_KEYS": line, "APP_ENCRYPTION_ACTIVE_KEY": "k2"}
    assert load_settings(env).encryption_keys["k2"] == bytes.fromhex(line[3:])


def _minimal_env() -> dict[str, str]:
    return {"APP_DATABASE_URL": "postgresql://u:p@localhost/db"}


def test_crypto_generate_key_refuses_a_bad_key_id(app: Flask) -> None:
    result = invoke(app, "crypto", "generate-key", "--key-id", "no spaces")
    assert result.exit_code == 2
    assert "key ids must be" in result.output


def test_crypto_generate_key_makes_a_new_key_each_time(app: Flask) -> None:
    first = invoke(app, "crypto", "generate-key").stdout
    assert first != invoke(app, "crypto", "generate-key").stdout


def test_crypto_rotate_reencrypts_every_secret_and_then_has_nothing_to_do(
    fresh_database: FreshDatabase,
) -> None:
    env = fresh_database()
    old = env["APP_ENCRYPTION_KEYS"]
    with app_for(env) as app:
        for number in range(3):
            assert invoke(app, "tenants", "create", f"crypto-{number}").exit_code == 0
        tenancy = tenancy_of(app)
        # The gateway's password is set (and stored) when first needed: a fourth secret.
        gateway_access(tenancy.clusters, tenancy.keyring, "default", scram_iterations=64)
    rotated_env = {
        **env,
        "APP_ENCRYPTION_KEYS": f"{old},k2:{secrets.token_hex(32)}",
        "APP_ENCRYPTION_ACTIVE_KEY": "k2",
    }
    with app_for(rotated_env) as app:
        first = invoke(app, "crypto", "rotate", "--batch-size", "2")
        again = invoke(app, "crypto", "rotate")
    assert first.exit_code == 0, first.output
    assert "re-encrypting secrets under 'k2': 4/4 (100%) done" in first.stderr
    assert "4 secret(s) re-encrypted under key 'k2'" in first.stdout
    assert again.exit_code == 0
    assert "0 secret(s) re-encrypted" in again.stdout
    engine = sa.create_engine(env["APP_DATABASE_URL"])
    try:
        with engine.connect() as connection:
            assert set(connection.scalars(sa.select(Tenant.key_id))) == {"k2"}
            assert set(connection.scalars(sa.select(Gateway.key_id))) == {"k2"}
    finally:
        engine.dispose()
    with app_for(rotated_env) as app:  # the gateway's password decrypts under the new key
        tenancy = tenancy_of(app)
        access = gateway_access(tenancy.clusters, tenancy.keyring, "default", scram_iterations=64)
    connection = psycopg2.connect(
        access.url.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    connection.close()


def test_crypto_rotate_exits_non_zero_naming_what_it_cannot_decrypt(
    fresh_database: FreshDatabase,
) -> None:
    env = fresh_database()
    with app_for(env) as app:
        assert invoke(app, "tenants", "create", "kept").exit_code == 0
    # The tenant's key is left out of the ring: its secret cannot be re-encrypted.
    other_env = {
        **env,
        "APP_ENCRYPTION_KEYS": f"k3:{secrets.token_hex(32)}",
        "APP_ENCRYPTION_ACTIVE_KEY": "k3",
    }
    with app_for(other_env) as app:
        result = invoke(app, "crypto", "rotate")
    assert result.exit_code == 1
    assert "cannot decrypt its secret" in result.output
    assert "put the key they name back" in result.output
