"""Unknown tenants and failed keys are cheap: a per-client allowance, then 429 before any lookup.

The app here allows 30 failed authentications a minute per client (``APP_AUTH_FAILURE_LIMIT``);
the suite's own app allows a million, since every test client is 127.0.0.1. Clients get
addresses of their own through the WSGI environment.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app import create_app
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.provisioning import ProvisionedTenant
from config import Settings
from tests.support import auth_headers, eventually

LIMIT = 30
FLOODER, BYSTANDER = "203.0.113.7", "198.51.100.1"


@pytest.fixture
def strict_app(settings: Settings, migrated: None) -> Iterator[Flask]:
    application = create_app(dataclasses.replace(settings, auth_failure_limit=LIMIT))
    yield application
    tenancy_of(application).close()


@pytest.fixture
def strict(strict_app: Flask) -> Tenancy:
    return tenancy_of(strict_app)


class Queries:
    """Statements run by the control-plane engine while counting."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        self._engine = engine

    def __enter__(self) -> Queries:
        sa.event.listen(self._engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1


def _get(app: Flask, headers: dict[str, str], address: str) -> Any:
    return app.test_client().get(
        "/v1/users", headers=headers, environ_base={"REMOTE_ADDR": address}
    )


def _stranger() -> dict[str, str]:
    return {
        "X-Tenant-ID": str(uuid.uuid4()),
        "Authorization": f"Bearer tpk_{secrets.token_urlsafe(32)}",
    }


def test_unknown_tenants_2000_random_ids_cost_under_500_control_plane_queries(
    strict_app: Flask, strict: Tenancy
) -> None:
    statuses: Counter[int] = Counter()
    with Queries(strict.control_engine) as queries:
        for _ in range(2000):
            statuses[_get(strict_app, _stranger(), FLOODER).status_code] += 1

    assert set(statuses) == {401, 429}
    assert statuses[401] >= LIMIT
    assert queries.count < 500


def test_unknown_tenants_throttle_is_per_client(
    tenant_a: ProvisionedTenant, strict_app: Flask
) -> None:
    tenant = tenant_a
    for _ in range(LIMIT):
        assert _get(strict_app, _stranger(), FLOODER).status_code == 401

    refused = _get(strict_app, auth_headers(tenant), FLOODER)  # even with the right key
    served = _get(strict_app, auth_headers(tenant), BYSTANDER)

    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    assert refused.json["code"] == "too_many_auth_failures"
    assert int(refused.headers["Retry-After"]) >= 1
    assert served.status_code == 200


def test_unknown_tenants_admin_token_failures_spend_the_same_allowance(strict_app: Flask) -> None:
    client = strict_app.test_client()
    codes = [
        client.get(
            "/v1/admin/tenants",
            headers={"Authorization": "Bearer wrong-admin-token"},
            environ_base={"REMOTE_ADDR": FLOODER},
        ).status_code
        for _ in range(LIMIT + 1)
    ]
    assert codes == [401] * LIMIT + [429]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert re.search(r"^tenantpool_auth_throttled_total [1-9]", metrics, re.MULTILINE)


def test_unknown_tenants_unknown_id_and_wrong_key_answer_alike(
    tenant_a: ProvisionedTenant, strict_app: Flask, strict: Tenancy
) -> None:
    # tenant_a first: its "created" event is sent before this app listens, so no event
    # drops its cached record between the two rounds below; nor does the listener's first
    # connect (which clears the cache, events having been missed before it).
    tenant = tenant_a
    strict.start_background()
    assert strict.listener is not None
    assert eventually(lambda: strict.listener.connected)  # type: ignore[union-attr]
    wrong_key = {**auth_headers(tenant), "Authorization": f"Bearer tpk_{secrets.token_urlsafe(32)}"}
    unknown = {**auth_headers(tenant), "X-Tenant-ID": str(uuid.uuid4())}
    for headers in (wrong_key, unknown):  # both records cached now (one known, one not)
        _get(strict_app, headers, BYSTANDER)

    with Queries(strict.control_engine) as queries:
        answers = [_get(strict_app, headers, BYSTANDER) for headers in (wrong_key, unknown)]

    bodies = [{k: v for k, v in a.json.items() if k != "request_id"} for a in answers]
    assert [a.status_code for a in answers] == [401, 401]
    assert bodies[0] == bodies[1]
    assert answers[0].headers["WWW-Authenticate"] == answers[1].headers["WWW-Authenticate"]
    assert queries.count == 0  # the same path: a cached record, one constant-time comparison
