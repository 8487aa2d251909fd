"""``Idempotency-Key`` on writes, in every way of serving: one write, however often it is sent.

A retry with the same key and request replays the first answer and changes nothing; the
same key with another request is a 422, while the first is still running a 409; keys are
per tenant and per end user, expire, and are bounded in length.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy import event, orm
from werkzeug.test import TestResponse

from app.idempotency import REPLAYED
from app.models.idempotency import MAX_KEY_LENGTH
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.serving import idempotency as keys
from app.tenancy.serving.consistency import parse_token
from app.tenancy.serving.context import TenantContext
from app.tenancy.serving.session import TenantSession
from tests.idp import Idp
from tests.support import auth_headers

PROBLEM = "application/problem+json"


def _keyed(tenant: ProvisionedTenant, key: str) -> dict[str, str]:
    return {**auth_headers(tenant), "Idempotency-Key": key}


def _post(client: FlaskClient, headers: dict[str, str], name: str) -> TestResponse:
    return client.post("/v1/users", json={"first_name": name, "last_name": "K"}, headers=headers)


def _named(client: FlaskClient, tenant: ProvisionedTenant, name: str) -> list[dict[str, Any]]:
    listed = client.get(
        "/v1/users", query_string={"search": name, "page_size": 100}, headers=auth_headers(tenant)
    )
    assert listed.status_code == 200, listed.json
    return [user for user in listed.json["records"] if user["first_name"] == name]


def _refused(response: TestResponse, status: int, code: str) -> None:
    assert response.status_code == status, response.json
    assert response.mimetype == PROBLEM
    assert response.json["code"] == code


def _same_answer(first: TestResponse, second: TestResponse) -> None:
    assert second.status_code == first.status_code
    assert second.get_data() == first.get_data()
    assert second.headers.get("Location") == first.headers.get("Location")
    assert second.headers["Content-Type"] == first.headers["Content-Type"]
    assert second.headers[REPLAYED] == "true"
    assert REPLAYED not in first.headers


def test_idempotency_same_post_twice_makes_one_row_and_two_identical_answers(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    name, headers = uuid.uuid4().hex, _keyed(tenant_a, "order-1")
    first, second = _post(serving_client, headers, name), _post(serving_client, headers, name)
    assert first.status_code == 201, first.json
    _same_answer(first, second)
    assert [user["id"] for user in _named(serving_client, tenant_a, name)] == [first.json["id"]]
    # The replay reads the write too: its token is at or after the first answer's.
    tokens = [parse_token([answer.headers["X-Consistency-Token"]]) for answer in (first, second)]
    assert tokens[0] is not None
    assert tokens[1] is not None
    assert tokens[1].position >= tokens[0].position


def test_idempotency_same_key_with_another_body_is_422_and_writes_nothing(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    name, other, headers = uuid.uuid4().hex, uuid.uuid4().hex, _keyed(tenant_a, "k")
    assert _post(serving_client, headers, name).status_code == 201
    _refused(_post(serving_client, headers, other), 422, "idempotency_key_reused")
    assert _named(serving_client, tenant_a, other) == []


def test_idempotency_same_key_on_another_path_is_422(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    headers = _keyed(tenant_a, "k")
    assert _post(serving_client, headers, "Ada").status_code == 201
    product = {"name": "Ada", "price": 1, "stock": 1}
    refused = serving_client.post("/v1/products", json=product, headers=headers)
    _refused(refused, 422, "idempotency_key_reused")


def test_idempotency_keys_are_per_tenant(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> None:
    name = uuid.uuid4().hex
    mine = _post(serving_client, _keyed(tenant_a, "shared-key"), name)
    theirs = _post(serving_client, _keyed(tenant_b, "shared-key"), name)
    assert mine.status_code == theirs.status_code == 201
    assert REPLAYED not in theirs.headers
    assert [u["id"] for u in _named(serving_client, tenant_b, name)] == [theirs.json["id"]]
    assert [u["id"] for u in _named(serving_client, tenant_a, name)] == [mine.json["id"]]


@pytest.mark.parametrize(
    "values",
    [["x" * (MAX_KEY_LENGTH + 1)], [""], ["a\tb"], ["één"], ["k1", "k2"], ["a,b"], ['""']],
    ids=["too-long", "empty", "control", "non-ascii", "twice", "comma", "empty-quoted"],
)
def test_idempotency_bad_key_is_400_and_writes_nothing(
    client: FlaskClient, tenant_a: ProvisionedTenant, values: list[str]
) -> None:
    name = uuid.uuid4().hex
    headers = [*auth_headers(tenant_a).items(), *(("Idempotency-Key", v) for v in values)]
    refused = client.post("/v1/users", json={"first_name": name, "last_name": "K"}, headers=headers)
    _refused(refused, 400, "invalid_idempotency_key")
    assert _named(client, tenant_a, name) == []


def test_idempotency_keyed_body_over_the_limit_is_413_and_stores_nothing(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    limit = client.application.config["MAX_CONTENT_LENGTH"]
    body = b'{"first_name": "' + b"x" * limit + b'"}'
    headers = {**_keyed(tenant_a, "big"), "Content-Type": "application/json"}
    assert client.post("/v1/users", data=body, headers=headers).status_code == 413
    assert _post(client, _keyed(tenant_a, "big"), "Ada").status_code == 201


def test_idempotency_longest_key_is_accepted(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    headers = _keyed(tenant_a, "k" * MAX_KEY_LENGTH)
    first, second = _post(client, headers, "Ada"), _post(client, headers, "Ada")
    assert first.status_code == 201, first.json
    _same_answer(first, second)


def test_idempotency_quoted_key_is_the_same_key(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    first = _post(client, _keyed(tenant_a, '"quoted"'), "Ada")
    assert first.status_code == 201, first.json
    _same_answer(first, _post(client, _keyed(tenant_a, "quoted"), "Ada"))


def _expire(tenancy: Tenancy, tenant: ProvisionedTenant, key: str) -> None:
    session = tenancy.open_session(tenant.id)
    try:
        expired = session.execute(
            sa.text(
                "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' "
                "WHERE key = :key"
            ),
            {"key": key},
        )
        assert getattr(expired, "rowcount", 0) == 1
        session.commit()
    finally:
        session.close()


def test_idempotency_expired_key_is_new(
    serving_client: FlaskClient, serving_tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    name, headers = uuid.uuid4().hex, _keyed(tenant_a, "daily")
    first = _post(serving_client, headers, name)
    _expire(serving_tenancy, tenant_a, "daily")
    again = _post(serving_client, headers, name)
    assert again.status_code == 201
    assert REPLAYED not in again.headers
    assert {u["id"] for u in _named(serving_client, tenant_a, name)} == {
        first.json["id"],
        again.json["id"],
    }
    assert _post(serving_client, headers, name).get_data() == again.get_data()  # the new one


def test_idempotency_key_lives_for_the_ttl(
    client: FlaskClient, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    assert _post(client, _keyed(tenant_a, "ttl"), "Ada").status_code == 201
    session = tenancy.open_session(tenant_a.id, read_only=True)
    try:
        lifetime = session.execute(
            sa.text("SELECT extract(epoch FROM expires_at - created_at) FROM idempotency_keys")
        ).scalar_one()
    finally:
        session.close()
    ttl = client.application.config["SETTINGS"].idempotency_ttl
    assert ttl - 5 <= float(lifetime) <= ttl + 5


def test_idempotency_failed_write_stores_nothing(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    headers = _keyed(tenant_a, "retry-me")
    failed = serving_client.post("/v1/users", json={"first_name": ""}, headers=headers)
    assert failed.status_code == 422
    name = uuid.uuid4().hex
    fixed = _post(serving_client, headers, name)  # the same key, now with a valid body
    assert fixed.status_code == 201
    assert REPLAYED not in fixed.headers


def test_idempotency_patch_and_delete_replay(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    created = _post(serving_client, auth_headers(tenant_a), "Ada").json
    item = f"/v1/users/{created['id']}"
    patch = {"json": {"last_name": "Lovelace"}, "headers": _keyed(tenant_a, "p")}
    patched, replayed = serving_client.patch(item, **patch), serving_client.patch(item, **patch)
    assert patched.status_code == 200
    _same_answer(patched, replayed)
    delete = _keyed(tenant_a, "d")
    gone, again = (
        serving_client.delete(item, headers=delete),
        serving_client.delete(item, headers=delete),
    )
    assert gone.status_code == 204
    _same_answer(gone, again)  # not the 404 a second, unkeyed delete would get
    assert serving_client.delete(item, headers=auth_headers(tenant_a)).status_code == 404


@pytest.fixture
def key_held(serving_tenancy: Tenancy, tenant_a: ProvisionedTenant) -> Iterator[str]:
    """A key claimed by a transaction left open, as by a request still running."""
    session = serving_tenancy.open_session(tenant_a.id)
    assert keys.claim(session, "busy") is None
    yield "busy"
    session.close()


def test_idempotency_same_key_while_first_runs_is_409(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, key_held: str
) -> None:
    name = uuid.uuid4().hex
    _refused(_post(serving_client, _keyed(tenant_a, key_held), name), 409, "idempotency_key_in_use")
    assert _named(serving_client, tenant_a, name) == []
    assert _post(serving_client, _keyed(tenant_a, "another"), name).status_code == 201


def test_idempotency_lock_ids_differ_per_tenant_user_and_key() -> None:
    tenant = str(uuid.uuid4())
    ids = {
        keys.lock_ids(TenantContext(tenant), "k"),
        keys.lock_ids(TenantContext(str(uuid.uuid4())), "k"),
        keys.lock_ids(TenantContext(tenant, user="u"), "k"),
        keys.lock_ids(TenantContext(tenant), "k2"),
    }
    assert len(ids) == 4


def _jwt(idp: Idp, tenant: ProvisionedTenant, user: str, key: str) -> dict[str, str]:
    token = idp.token(tenant_id=str(tenant.id), sub=user, scope="write")
    return {"Authorization": f"Bearer {token}", "Idempotency-Key": key}


def test_idempotency_keys_are_per_end_user(
    jwt_client: FlaskClient, jwt_idp: Idp, tenant_a: ProvisionedTenant
) -> None:
    name = uuid.uuid4().hex
    ada = _post(jwt_client, _jwt(jwt_idp, tenant_a, "ada", "same"), name)
    bob = _post(jwt_client, _jwt(jwt_idp, tenant_a, "bob", "same"), name)
    assert ada.status_code == bob.status_code == 201
    assert REPLAYED not in bob.headers  # bob never gets ada's answer
    assert ada.json["id"] != bob.json["id"]
    again = _post(jwt_client, _jwt(jwt_idp, tenant_a, "ada", "same"), name)
    _same_answer(ada, again)
    api_key = _post(jwt_client, _keyed(tenant_a, "same"), name)  # the tenant's own key space
    assert api_key.status_code == 201
    assert REPLAYED not in api_key.headers


@pytest.fixture
def commit_cut(tenancy: Tenancy, tenant_a: ProvisionedTenant) -> Iterator[None]:
    """The next keyed write's connection is ended by the server just before its COMMIT.

    A real failure, as a failover or a cut network makes one: another connection of the
    tenant's role terminates the backend once the write and its key are in the transaction.
    """
    fired = []

    def cut(session: orm.Session) -> None:
        if fired or "idempotency" not in session.info:
            return
        fired.append(True)
        pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        killer = tenancy.open_session(tenant_a.id)
        try:
            killer.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            killer.close()

    event.listen(TenantSession, "before_commit", cut)
    yield
    event.remove(TenantSession, "before_commit", cut)
    assert fired


def test_idempotency_write_and_key_vanish_together_when_commit_fails(
    client: FlaskClient, tenant_a: ProvisionedTenant, commit_cut: None
) -> None:
    name, headers = uuid.uuid4().hex, _keyed(tenant_a, "cut")
    lost = _post(client, headers, name)
    assert lost.status_code == 503  # the outcome is unknown to the client
    assert "Retry-After" in lost.headers
    retried = _post(client, headers, name)
    assert retried.status_code == 201, retried.json
    assert REPLAYED not in retried.headers  # nothing was stored: the write did not happen
    assert [u["id"] for u in _named(client, tenant_a, name)] == [retried.json["id"]]
