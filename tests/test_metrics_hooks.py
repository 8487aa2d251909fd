"""What the tenancy layer reports reaches the Prometheus series (in process, real database).

The cross-worker sums and the names the dashboard and rules use, through gunicorn:
tests/e2e/test_metrics.py and tests/e2e/test_observability.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from app import metrics
from app.crypto import Keyring
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving.backoff import LoginBackoff
from app.tenancy.serving.directory import TenantCredentials
from app.tenancy.serving.listener import TenantEventListener, connector
from app.tenancy.serving.observer import Observer
from tests.support import FakeClock, auth_headers


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Recorder(Observer):
    """Remembers the hooks called (a stand-in for the metrics, not for the database)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def login_backoff(self, seconds: float) -> None:
        self.calls.append(("login_backoff", seconds))

    def decrypt_failed(self) -> None:
        self.calls.append(("decrypt_failed", None))

    def listener_connected(self, connected: bool) -> None:
        self.calls.append(("listener_connected", connected))


def test_metrics_new_tenant_connection_counts_a_login(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    before = _value("tenantpool_tenant_logins_total")

    assert client.get("/v1/users", headers=auth_headers(tenant_a)).status_code == 200

    assert _value("tenantpool_tenant_logins_total") == before + 1


def test_metrics_pool_wait_is_observed_per_way(
    serving_app: Flask, make_tenant: Callable[[], ProvisionedTenant]
) -> None:
    tenant = make_tenant()
    counts = {
        way: _value("tenantpool_pool_wait_seconds_count", way=way)
        for way in ("dedicated", "shared")
    }

    assert (
        serving_app.test_client().get("/v1/users", headers=auth_headers(tenant)).status_code == 200
    )

    grown = [
        way
        for way in counts
        if _value("tenantpool_pool_wait_seconds_count", way=way) == counts[way] + 1
    ]
    expected = {"dedicated": ["dedicated"], "shared": ["shared"]}
    assert grown == expected.get(serving_app.config["SETTINGS"].serving, grown)
    assert len(grown) == 1


def test_metrics_gateway_connections_go_back_when_the_request_ends(
    shared_app: Flask, tenant_a: ProvisionedTenant
) -> None:
    assert (
        shared_app.test_client().get("/v1/products", headers=auth_headers(tenant_a)).status_code
        == 200
    )

    assert _value("tenantpool_gateway_connections_in_use") == 0
    assert _value("tenantpool_gateway_connections_open") >= 1
    assert (
        _value("tenantpool_gateway_pool_limit") >= shared_app.config["SETTINGS"].gateway_pool_size
    )


def test_metrics_backoff_is_reported_with_its_length() -> None:
    recorder = Recorder()
    backoff = LoginBackoff(base=15, cap=60, clock=FakeClock(), observer=recorder)
    tenant = uuid.uuid4()

    backoff.failed(tenant)  # forgiven: no back-off yet
    backoff.failed(tenant)
    backoff.failed(tenant)

    assert recorder.calls == [("login_backoff", 15), ("login_backoff", 30)]
    assert backoff.state(tenant)[0] == 3


def test_metrics_undecryptable_password_is_reported(tenancy: Tenancy) -> None:
    recorder = Recorder()
    tenancy.engines._observer = recorder  # this app's factory, reporting to the recorder
    foreign = Keyring({"other": os.urandom(32)}, "other")
    credentials = TenantCredentials(
        uuid.uuid4(), "t_x", foreign.encrypt("pw", b"elsewhere"), "default"
    )
    try:
        with pytest.raises(TenantUnavailable):
            tenancy.engines.password(credentials)
    finally:
        tenancy.engines._observer = tenancy.observer
    assert recorder.calls == [("decrypt_failed", None)]


def test_metrics_listener_reports_its_connection(owner_url: str) -> None:
    recorder = Recorder()
    listener = TenantEventListener(
        connector(owner_url, connect_timeout=5), lambda event: None, observer=recorder
    )
    listener.pump()
    listener.close()

    assert recorder.calls == [
        ("listener_connected", False),  # made, not connected yet
        ("listener_connected", True),
        ("listener_connected", False),
    ]


def test_metrics_listener_that_cannot_connect_stays_disconnected() -> None:
    recorder = Recorder()

    def refuse() -> psycopg2.extensions.connection:
        raise psycopg2.OperationalError("refused")

    listener = TenantEventListener(refuse, lambda event: None, observer=recorder)
    listener.pump()

    assert recorder.calls == [("listener_connected", False)]


def test_metrics_readiness_is_recorded_by_readyz_and_each_scrape(client: FlaskClient) -> None:
    metrics.set_control_plane_up(False)

    assert client.get("/readyz").status_code == 200
    assert _value("tenantpool_control_plane_up") == 1
    metrics.set_control_plane_up(False)
    assert "tenantpool_control_plane_up 1.0" in client.get("/metrics").get_data(as_text=True)


@pytest.mark.parametrize(
    ("graceful", "aborted", "how"),
    [(True, False, "graceful"), (False, False, "killed"), (True, True, "timeout")],
)
def test_metrics_worker_exit_is_told_by_how_it_went(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    graceful: bool,
    aborted: bool,
    how: str,
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    pid = os.getpid()
    (tmp_path / f"peer-{pid}.sock").touch()
    if graceful:
        metrics.worker_exiting()  # in the worker, from gunicorn's worker_exit
    before = _value("tenantpool_worker_exits_total", how=how)

    metrics.worker_exited(pid, aborted=aborted)  # in the master, from child_exit

    assert _value("tenantpool_worker_exits_total", how=how) == before + 1
    assert list(tmp_path.iterdir()) == []  # its marker and socket are gone


def test_metrics_fair_share_outcomes_are_exported_from_the_start(client: FlaskClient) -> None:
    """The 429 alert's series exists before the first rejection (at 0)."""
    text = client.get("/metrics").get_data(as_text=True)

    for outcome in ("admitted", "waited", "rejected"):
        assert f'tenantpool_fair_share_total{{outcome="{outcome}"}}' in text
