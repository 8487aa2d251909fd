"""X-Consistency-Token at the HTTP surface: writes hand it out, reads take it back."""

from __future__ import annotations

from flask.testing import FlaskClient

from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.serving.consistency import parse_token
from tests.support import auth_headers

TOKEN = "X-Consistency-Token"


def test_consistency_token_on_every_write_that_commits(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    headers = auth_headers(tenant_a)
    created = serving_client.post(
        "/v1/users", json={"first_name": "A", "last_name": "B"}, headers=headers
    )
    path = f"/v1/users/{created.json['id']}"  # type: ignore[index]
    patched = serving_client.patch(path, json={"first_name": "C"}, headers=headers)
    deleted = serving_client.delete(path, headers=headers)
    tokens = [parse_token([r.headers[TOKEN]]) for r in (created, patched, deleted)]
    positions = [token.position for token in tokens if token is not None]
    assert len(positions) == 3
    assert positions == sorted(positions)  # later commits, later positions
    refused = serving_client.post("/v1/users", json={"first_name": ""}, headers=headers)
    assert refused.status_code == 422
    assert TOKEN not in refused.headers  # nothing committed, nothing to wait for
    assert TOKEN not in serving_client.get("/v1/users", headers=headers).headers


def test_consistency_token_sent_back_without_replicas_reads_on_the_primary(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    headers = auth_headers(tenant_a)
    created = client.post("/v1/users", json={"first_name": "A", "last_name": "B"}, headers=headers)
    read = client.get(
        f"/v1/users/{created.json['id']}",  # type: ignore[index]
        headers={**headers, TOKEN: created.headers[TOKEN]},
    )
    assert read.status_code == 200


def test_consistency_token_malformed_or_repeated_is_a_400_problem(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    headers = auth_headers(tenant_a)
    for value in ("0/16B374D8", "1.zz.00000000", "x" * 5000):
        answer = client.get("/v1/users", headers={**headers, TOKEN: value})
        assert answer.status_code == 400
        assert answer.mimetype == "application/problem+json"
        assert answer.json["code"] == "invalid_consistency_token"  # type: ignore[index]
        assert value not in answer.get_data(as_text=True)
    good = client.post("/v1/users", json={"first_name": "A", "last_name": "B"}, headers=headers)
    twice = [(TOKEN, good.headers[TOKEN]), (TOKEN, good.headers[TOKEN])]
    answer = client.get("/v1/users", headers=[*headers.items(), *twice])
    assert answer.status_code == 400


def test_consistency_token_in_the_openapi_document(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec is not None
    parameter = spec["components"]["parameters"]["ConsistencyToken"]
    assert (parameter["in"], parameter["name"]) == ("header", TOKEN)
    created = spec["paths"]["/v1/users"]["post"]["responses"]["201"]
    assert TOKEN in created["headers"]
