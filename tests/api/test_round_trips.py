"""What a request sends to PostgreSQL: a read is one message, a write two, never a ping.

A write's second message is its ``COMMIT`` with the read of the commit's WAL position
(``X-Consistency-Token``) in the same message.
"""

from __future__ import annotations

from flask.testing import FlaskClient

from app.dev.cluster import LocalCluster
from app.tenancy.control.provisioning import ProvisionedTenant
from tests.support import auth_headers, logged_since


def test_reads_are_one_read_only_message_and_writes_two(
    pg_cluster: LocalCluster,
    client: FlaskClient,
    tenant_a: ProvisionedTenant,
    statement_logging: None,
) -> None:
    headers = auth_headers(tenant_a)
    created = client.post("/v1/users", json={"first_name": "A", "last_name": "B"}, headers=headers)
    assert created.status_code == 201  # the engine and a pooled connection exist now
    user = created.json["id"]  # type: ignore[index]
    steps = [
        ("GET", "/v1/users?page_size=20", None, 200, 1),
        ("GET", f"/v1/users/{user}", None, 200, 1),
        ("POST", "/v1/users", {"first_name": "C", "last_name": "D"}, 201, 2),
        ("PATCH", f"/v1/users/{user}", {"first_name": "E"}, 200, 2),
        ("DELETE", f"/v1/users/{user}", None, 204, 2),
    ]
    for method, path, body, status, messages in steps:
        offset = pg_cluster.log_path.stat().st_size
        response = client.open(path, method=method, json=body, headers=headers)
        assert response.status_code == status, (method, path, response.json)
        logged = logged_since(pg_cluster, offset)
        assert len(logged) == messages, (method, path, logged)
        read_only = "set_config('transaction_read_only', 'on', true)" in logged[0]
        assert read_only == (method == "GET"), logged
        assert logged[0].startswith("SELECT set_config('app.tenant_sig'")  # the signed context
        assert ("; BEGIN; " in logged[0]) == (method != "GET"), logged
        if messages == 2:
            # The commit's WAL position rides along (X-Consistency-Token): no third message.
            assert logged[1].startswith("COMMIT; SELECT "), logged
            assert "pg_current_wal_insert_lsn()" in logged[1], logged
            assert response.headers["X-Consistency-Token"].startswith("1."), method
