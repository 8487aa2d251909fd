"""Settings: every bad value stops start-up with one line naming the variable."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.tenancy.control.clusters import Clusters, cluster_urls
from app.tenancy.errors import UnknownCluster
from config import ConfigError, load_settings
from tests.support import gunicorn_refusal

KEY = "a" * 64
VALID = {
    "APP_DATABASE_URL": "postgresql://owner:pw@127.0.0.1:5432/tenantpool",
    "APP_ENCRYPTION_KEYS": f"k1:{KEY}",
    "APP_ENCRYPTION_ACTIVE_KEY": "k1",
}


def test_config_minimal_environment_loads_with_defaults() -> None:
    settings = load_settings(VALID)
    assert settings.env == "development"
    assert settings.encryption_keys == {"k1": bytes.fromhex(KEY)}
    assert settings.bind == "127.0.0.1:8080"
    assert settings.scram_iterations == 64


def test_config_connection_budget_defaults_to_threads_plus_two() -> None:
    assert load_settings(VALID).connection_budget == 6
    assert load_settings({**VALID, "APP_THREADS": "8"}).connection_budget == 10
    explicit = {**VALID, "APP_THREADS": "8", "APP_CONNECTION_BUDGET": "3"}
    assert load_settings(explicit).connection_budget == 3


def test_config_tenant_pool_defaults_to_one_per_thread_without_overflow() -> None:
    settings = load_settings({**VALID, "APP_THREADS": "8"})
    assert (settings.tenant_pool_size, settings.tenant_max_overflow) == (8, 0)
    explicit = {**VALID, "APP_TENANT_POOL_SIZE": "2", "APP_TENANT_MAX_OVERFLOW": "1"}
    settings = load_settings(explicit)
    assert (settings.tenant_pool_size, settings.tenant_max_overflow) == (2, 1)


def test_config_io_timeout_defaults_to_statement_timeout_plus_5s() -> None:
    settings = load_settings({**VALID, "APP_TENANT_STATEMENT_TIMEOUT_MS": "2500"})
    assert settings.database_io_timeout == 7.5


def test_config_io_timeout_not_above_statement_timeout_is_refused() -> None:
    environ = {**VALID, "APP_TENANT_STATEMENT_TIMEOUT_MS": "3000", "APP_DATABASE_IO_TIMEOUT": "3"}
    with pytest.raises(ConfigError, match=r"^APP_DATABASE_IO_TIMEOUT: must be longer"):
        load_settings(environ)


def test_config_database_url_uses_psycopg2() -> None:
    assert load_settings(VALID).database_url.startswith("postgresql+psycopg2://")


def test_config_keyring_with_several_keys() -> None:
    settings = load_settings(
        {
            **VALID,
            "APP_ENCRYPTION_KEYS": f"k1:{KEY},k2:{'b' * 64}",
            "APP_ENCRYPTION_ACTIVE_KEY": "k2",
        }
    )
    assert set(settings.encryption_keys) == {"k1", "k2"}
    assert settings.encryption_active_key == "k2"


def test_config_clusters_are_parsed() -> None:
    settings = load_settings({**VALID, "APP_CLUSTERS": '{"eu1": "postgresql://o:p@h:5432/db"}'})
    urls = cluster_urls(settings.database_url, settings.clusters)
    assert urls["eu1"].host == "h"
    assert urls["default"].database == "tenantpool"


def test_config_default_cluster_may_only_route_tenants() -> None:
    """Without credentials, default's owner work goes through APP_DATABASE_URL (compose)."""
    clusters = '{"default": "postgresql://pgbouncer:5432/tenantpool"}'
    settings = load_settings({**VALID, "APP_CLUSTERS": clusters})
    assert cluster_urls(settings.database_url, settings.clusters)["default"].host == "pgbouncer"


def test_config_unknown_cluster_names_what_to_do() -> None:
    settings = load_settings(VALID)
    clusters = Clusters.configured(sa.create_engine(settings.database_url), settings.clusters)
    with pytest.raises(UnknownCluster, match="APP_CLUSTERS"):
        clusters.url("nowhere")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("APP_DATABASE_URL", ""),
        ("APP_DATABASE_URL", "mysql://u:p@h/db"),
        ("APP_DATABASE_URL", "postgresql://u:p@h:5432"),
        ("APP_DATABASE_URL", "not a url"),
        ("APP_ENCRYPTION_KEYS", ""),
        ("APP_ENCRYPTION_KEYS", "k1"),
        ("APP_ENCRYPTION_KEYS", "k1:abcd"),
        ("APP_ENCRYPTION_KEYS", f"k1:{'z' * 64}"),
        ("APP_ENCRYPTION_KEYS", f"k1:{KEY},k1:{KEY}"),
        ("APP_ENCRYPTION_KEYS", f"bad id:{KEY}"),
        ("APP_ENCRYPTION_ACTIVE_KEY", "k9"),
        ("APP_ENV", "staging"),
        ("APP_WORKERS", "0"),
        ("APP_WORKERS", "two"),
        ("APP_THREADS", "-1"),
        ("APP_POOL_TIMEOUT", "1e9"),
        ("APP_IDLE_TTL", "0"),
        ("APP_BIND", "8080"),
        ("APP_BIND", "localhost:99999"),
        ("APP_ADMIN_TOKEN", "short"),
        ("APP_CLUSTERS", "[]"),
        ("APP_CLUSTERS", '{"Bad Name": "postgresql://h/db"}'),
        ("APP_CLUSTERS", '{"eu1": "http://h/db"}'),
        ("APP_CLUSTERS", '{"eu1": "postgresql://h/db"}'),
        (
            "APP_DATABASE_URL",
            "postgresql://u:p@/db?host=h1:1&host=h2:2&target_session_attrs=standby",
        ),
        ("APP_DATABASE_URL", "postgresql://u:p@/db?host=h1:1,h2:2"),
        (
            "APP_CLUSTERS",
            '{"eu1": "postgresql://u:p@/db?host=h1&host=h2&target_session_attrs=read-only"}',
        ),
        ("APP_ADMIN_TRUSTED_CIDRS", "10.0.0.0/8,nonsense"),
        ("APP_LOG_LEVEL", "LOUD"),
        ("APP_IDEMPOTENCY_TTL", "10"),
        ("APP_IDEMPOTENCY_TTL", "a day"),
    ],
)
def test_config_bad_value_raises_one_line_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({**VALID, variable: value})
    message = str(raised.value)
    assert message.startswith(f"{variable}:")
    assert "\n" not in message


def test_config_error_never_echoes_a_key() -> None:
    secret = "c" * 63 + "g"
    with pytest.raises(ConfigError) as raised:
        load_settings({**VALID, "APP_ENCRYPTION_KEYS": f"k1:{secret}"})
    assert secret not in str(raised.value)


def test_config_production_requires_admin_token() -> None:
    with pytest.raises(ConfigError, match="APP_ADMIN_TOKEN"):
        load_settings({**VALID, "APP_ENV": "production"})


def test_config_production_requires_password_authenticated_dsn() -> None:
    environ = {
        **VALID,
        "APP_ENV": "production",
        "APP_ADMIN_TOKEN": "t" * 40,
        "APP_DATABASE_URL": "postgresql://owner@db:5432/tenantpool",
    }
    with pytest.raises(ConfigError, match="APP_DATABASE_URL"):
        load_settings(environ)


def test_config_gunicorn_refuses_to_start_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import runpy; runpy.run_path('gunicorn.conf.py')"],
        env={"PATH": "/usr/bin:/bin", "APP_DATABASE_URL": "nope"},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("tenantpool: configuration error: APP_DATABASE_URL:")
    )


DSN = {"APP_DATABASE_URL": VALID["APP_DATABASE_URL"]}


def test_config_keyring_from_files_one_key_per_line(tmp_path: Path) -> None:
    first, second = secrets.token_hex(32), secrets.token_hex(32)
    (tmp_path / "keys").write_text(f"k1:{first}\nk2:{second}\n")
    (tmp_path / "active").write_text("k2\n")
    settings = load_settings(
        {
            **DSN,
            "APP_ENCRYPTION_KEYS_FILE": str(tmp_path / "keys"),
            "APP_ENCRYPTION_ACTIVE_KEY_FILE": str(tmp_path / "active"),
        }
    )
    assert settings.encryption_keys == {"k1": bytes.fromhex(first), "k2": bytes.fromhex(second)}
    assert settings.encryption_active_key == "k2"


def test_config_file_and_variable_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t" * 40)
    env = {
        **DSN,
        "APP_ENCRYPTION_KEYS": f"k1:{secrets.token_hex(32)}",
        "APP_ENCRYPTION_ACTIVE_KEY": "k1",
        "APP_ADMIN_TOKEN": "u" * 40,
        "APP_ADMIN_TOKEN_FILE": str(tmp_path / "token"),
    }
    with pytest.raises(ConfigError, match=r"^APP_ADMIN_TOKEN: set either"):
        load_settings(env)


def test_config_unreadable_file_is_one_clear_line(tmp_path: Path) -> None:
    env = {
        **DSN,
        "APP_ENCRYPTION_KEYS_FILE": str(tmp_path / "missing"),
        "APP_ENCRYPTION_ACTIVE_KEY": "k1",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert message.startswith("APP_ENCRYPTION_KEYS_FILE: cannot read ")
    assert "\n" not in message


def test_config_bad_key_in_a_file_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("k1:not-hex\n")
    env = {
        **DSN,
        "APP_ENCRYPTION_KEYS_FILE": str(tmp_path / "keys"),
        "APP_ENCRYPTION_ACTIVE_KEY": "k1",
    }
    with pytest.raises(ConfigError, match=r"^APP_ENCRYPTION_KEYS: key 'k1' must be 64 hex"):
        load_settings(env)


OWNER_DSN = "postgresql://owner:pw@127.0.0.1:5432/tenantpool"


@pytest.mark.parametrize(
    "query",
    [
        "user=owner&password=pw",
        "password=pw",
        "USER=owner",
        "passfile=/tmp/pgpass",
        "service=prod",
        "servicefile=/tmp/pg_service.conf",
        "dbname=postgresql://owner:pw@elsewhere/app",
        "dsn=host%3Delsewhere",
        "options=-c%20role%3Dtenant_base",
        "host=elsewhere",
        "port=6543",
        "hostaddr=10.0.0.9",
    ],
)
def test_config_dsn_query_overriding_login_stops_start_up(query: str) -> None:
    """libpq lets the query win over the URL: tenants would log in as whoever it names."""
    with pytest.raises(ConfigError) as raised:
        load_settings({**VALID, "APP_DATABASE_URL": f"{OWNER_DSN}?{query}"})
    message = str(raised.value)
    assert message.startswith("APP_DATABASE_URL: ?")
    assert "\n" not in message
    assert "pw" not in message.replace("password", "")  # no value is echoed


def test_config_cluster_dsn_query_overriding_login_names_variable_and_cluster() -> None:
    clusters = '{"c2": "postgresql://owner:pw@h:5432/db?user=owner&password=pw"}'
    with pytest.raises(ConfigError, match=r"^APP_CLUSTERS: cluster 'c2': \?password= is not"):
        load_settings({**VALID, "APP_CLUSTERS": clusters})


@pytest.mark.parametrize(
    "dsn",
    [
        f"{OWNER_DSN}?sslmode=require&connect_timeout=3&target_session_attrs=read-write",
        "postgresql://owner:pw@/tenantpool?host=db1:5432&host=db2:5432",
        "postgresql://owner:pw@/tenantpool?host=/var/run/postgresql",
    ],
)
def test_config_dsn_transport_options_and_multi_host_are_accepted(dsn: str) -> None:
    assert load_settings({**VALID, "APP_DATABASE_URL": dsn}).database_url


def test_config_gunicorn_refuses_dsn_with_credentials_in_query() -> None:
    env = {**VALID, "APP_DATABASE_URL": f"{OWNER_DSN}?user=owner&password=pw"}
    assert gunicorn_refusal(env) == [
        "tenantpool: configuration error: APP_DATABASE_URL: ?password= is not allowed in the "
        "query string: credentials belong before the host (postgresql://user:password@host/db)"
    ]


def test_config_tenant_thread_share_defaults_to_half_the_threads() -> None:
    assert load_settings({**VALID, "APP_THREADS": "8"}).tenant_thread_share == 4
    assert load_settings({**VALID, "APP_THREADS": "1"}).tenant_thread_share == 1
    explicit = {**VALID, "APP_THREADS": "4", "APP_TENANT_THREAD_SHARE": "99"}
    assert load_settings(explicit).tenant_thread_share == 99  # at or above threads: no cap
    with pytest.raises(ConfigError, match=r"^APP_TENANT_THREAD_SHARE:"):
        load_settings({**VALID, "APP_TENANT_THREAD_SHARE": "0"})


def test_config_tenant_node_share_defaults_to_the_cores() -> None:
    assert load_settings(VALID).tenant_node_share == max(1, os.cpu_count() or 1)
    assert load_settings({**VALID, "APP_TENANT_NODE_SHARE": "3"}).tenant_node_share == 3
    with pytest.raises(ConfigError, match=r"^APP_TENANT_NODE_SHARE:"):
        load_settings({**VALID, "APP_TENANT_NODE_SHARE": "0"})


def test_config_idempotency_ttl_defaults_to_a_day() -> None:
    assert load_settings(VALID).idempotency_ttl == 86_400
    assert load_settings({**VALID, "APP_IDEMPOTENCY_TTL": "3600"}).idempotency_ttl == 3600


def test_config_several_hosts_get_read_write_said_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listed = "postgresql://owner:pw@/tenantpool?host=h1:5432&host=h2:5432"
    eu = "postgresql://o:pw@/db?host=e1:5432&host=e2:5432"

    with caplog.at_level(logging.WARNING, logger="config.settings"):
        settings = load_settings(
            {**VALID, "APP_DATABASE_URL": listed, "APP_CLUSTERS": json.dumps({"eu": eu})}
        )

    for url in (settings.database_url, settings.clusters["eu"]):
        assert sa.make_url(url).query["target_session_attrs"] == "read-write"
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("APP_DATABASE_URL lists 2 hosts without target_session_attrs")
    assert lines[1].startswith("APP_CLUSTERS['eu'] lists 2 hosts")
    assert all("pw" not in line for line in lines)


def test_config_target_session_attrs_of_the_operator_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listed = "postgresql://owner:pw@/tenantpool?host=h1&host=h2&target_session_attrs=primary"

    with caplog.at_level(logging.WARNING, logger="config.settings"):
        settings = load_settings({**VALID, "APP_DATABASE_URL": listed})

    assert sa.make_url(settings.database_url).query["target_session_attrs"] == "primary"
    assert caplog.records == []


def test_config_one_host_gets_no_target_session_attrs() -> None:
    settings = load_settings(VALID)

    assert "target_session_attrs" not in sa.make_url(settings.database_url).query


def test_config_read_replicas_are_parsed_with_their_lag_bound() -> None:
    replicas = '{"default": ["postgresql://r1:5432/tenantpool", "postgresql://r2/tenantpool"]}'
    settings = load_settings({**VALID, "APP_READ_REPLICAS": replicas, "APP_REPLICA_MAX_LAG": "2.5"})
    assert [sa.make_url(dsn).host for dsn in settings.read_replicas["default"]] == ["r1", "r2"]
    assert settings.replica_max_lag == 2.5
    assert load_settings(VALID).read_replicas == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["postgresql://r1/db"]', "must be a JSON object"),
        ('{"default": "postgresql://r1/db"}', "must be a JSON object"),
        ('{"default": ["postgresql://u:secret@r1/db"]}', "leave out the user and password"),
        ('{"default": ["postgresql://r1"]}', "replica 1: names no database"),
        ('{"default": ["postgresql://r1/db?user=owner"]}', r"replica 1: \?user= is not allowed"),
        ('{"default": ["postgresql://r1/db", "postgresql://r1/db"]}', "lists a replica twice"),
        ('{"eu9": ["postgresql://r1/db"]}', "cluster 'eu9' is not in APP_CLUSTERS"),
    ],
)
def test_config_bad_read_replicas_name_the_variable_without_secrets(
    value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=f"^APP_READ_REPLICAS: .*{message}") as raised:
        load_settings({**VALID, "APP_READ_REPLICAS": value})
    assert "secret" not in str(raised.value)


def test_config_replica_max_lag_is_bounded() -> None:
    with pytest.raises(ConfigError, match=r"^APP_REPLICA_MAX_LAG"):
        load_settings({**VALID, "APP_REPLICA_MAX_LAG": "0.1"})
