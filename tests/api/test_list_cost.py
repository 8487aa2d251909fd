"""One list request costs a bounded amount of work: capped totals, capped offsets, cursors, windows.

Big tenants are filled through their own engine with one INSERT ... SELECT (a request per row
would take minutes); everything else goes through the API.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from app.api.list_shapes import COUNT_CAP, SEARCH_SCAN, STRETCH
from app.schemas.common import MAX_OFFSET
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant, create_tenant
from tests.support import auth_headers

_NEXT = re.compile(r'\A<([^>]+)>; rel="next"\Z')


def _fill(tenancy: Tenancy, tenant: ProvisionedTenant, rows: int, name: str = "Filler") -> None:
    """``rows`` users of the tenant, written as the tenant, in one statement."""
    session = tenancy.open_session(tenant.id)
    try:
        session.execute(sa.text("SET LOCAL statement_timeout = 60000"))
        session.execute(
            sa.text(
                "INSERT INTO users (first_name, last_name, email) "
                "SELECT :name, 'Row' || g, CASE WHEN g % 3 = 0 THEN NULL "
                "ELSE 'u' || g || '@example.com' END FROM generate_series(1, :rows) AS g"
            ),
            {"name": name, "rows": rows},
        )
        session.commit()
    finally:
        session.close()
    # As autovacuum would soon: plans rely on the table's statistics.
    with tenancy.control_engine.begin() as connection:
        connection.execute(sa.text("ANALYZE users"))


def _get(client: FlaskClient, tenant: ProvisionedTenant, url: str, **params: Any) -> Any:
    response = client.get(url, query_string=params, headers=auth_headers(tenant))
    return response


def _next(response: Any) -> str | None:
    link = response.headers.get("Link")
    if link is None:
        return None
    match = _NEXT.match(link)
    assert match, link
    return match.group(1)


@pytest.fixture(scope="module")
def big(tenancy: Tenancy) -> ProvisionedTenant:
    """A tenant with more users than a total is counted to, and than a search examines."""
    tenant = create_tenant(
        tenancy.clusters, tenancy.keyring, f"big-{uuid.uuid4().hex[:8]}", tenancy.limits
    )
    _fill(tenancy, tenant, max(COUNT_CAP, SEARCH_SCAN) + 5)
    # One needle, created last: the last row in created_at order, beyond the first window.
    session = tenancy.open_session(tenant.id)
    session.execute(sa.text("INSERT INTO users (first_name, last_name) VALUES ('Needle', 'N')"))
    session.commit()
    session.close()
    return tenant


def test_list_total_is_counted_up_to_the_cap(client: FlaskClient, big: ProvisionedTenant) -> None:
    response = _get(client, big, "/v1/users", page_size=100)
    body = response.json
    assert response.status_code == 200
    assert body["total"] == COUNT_CAP
    assert body["total_capped"] is True
    assert body["total_pages"] == COUNT_CAP // 100
    assert len(body["records"]) == 100
    assert _next(response) is not None


def test_list_small_total_is_exact_and_uncapped(
    client: FlaskClient, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    _fill(tenancy, tenant_a, 7)
    body = _get(client, tenant_a, "/v1/users", page_size=5).json
    assert (body["total"], body["total_pages"]) == (7, 2)
    assert "total_capped" not in body


@pytest.mark.parametrize("rows", [STRETCH - 1, STRETCH, 2 * STRETCH + 3])
def test_list_total_is_exact_either_side_of_the_stretch(
    client: FlaskClient, tenancy: Tenancy, rows: int
) -> None:
    """A first page counts its list alone while the list ends within the stretch; a longer
    list, or a page past the end, takes the count statement: the totals agree either way."""
    tenant = create_tenant(
        tenancy.clusters, tenancy.keyring, f"stretch-{uuid.uuid4().hex[:8]}", tenancy.limits
    )
    _fill(tenancy, tenant, rows)
    last = -(-rows // 20)
    for page, size in ((1, 20), (last, 20), (last + 3, 20), (1, 100), (3, 100)):
        statements: list[str] = []

        def record(*args: Any, seen: list[str] = statements) -> None:
            seen.append(args[2])

        sa.event.listen(sa.Engine, "before_cursor_execute", record)
        try:
            body = _get(client, tenant, "/v1/users", page=page, page_size=size).json
        finally:
            sa.event.remove(sa.Engine, "before_cursor_execute", record)
        assert body["total"] == rows, (page, size)
        assert len(body["records"]) == max(0, min(size, rows - (page - 1) * size)), (page, size)
        reads = [s for s in statements if "FROM users" in s]
        counted_alone = page <= last and rows < max(STRETCH, page * size + 1)
        assert len(reads) == (1 if counted_alone else 2), (page, size, reads)


def test_list_offset_beyond_the_cap_is_422_naming_the_cursor(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    last = MAX_OFFSET // 10 + 1  # starts exactly MAX_OFFSET rows in
    assert _get(client, tenant_a, "/v1/users", page=last, page_size=10).status_code == 200
    response = _get(client, tenant_a, "/v1/users", page=last + 1, page_size=10)
    assert response.status_code == 422
    assert "after=" in response.json["errors"]["page"][0]


SORTS = [
    (column, direction)
    for column in ("created_at", "first_name", "last_name", "email")
    for direction in ("asc", "desc")
]


@pytest.fixture
def people(client: FlaskClient, tenant_a: ProvisionedTenant) -> ProvisionedTenant:
    """23 users with repeated names and some NULL emails: ties and NULLs at page edges."""
    for number in range(23):
        payload: dict[str, Any] = {"first_name": f"F{number % 4}", "last_name": f"L{number % 5}"}
        if number % 3:
            payload["email"] = f"p{number % 6}@example.com"
        response = client.post("/v1/users", json=payload, headers=auth_headers(tenant_a))
        assert response.status_code == 201
    return tenant_a


@pytest.mark.parametrize(("column", "direction"), SORTS)
def test_list_cursor_walks_every_row_once_in_order(
    client: FlaskClient, people: ProvisionedTenant, column: str, direction: str
) -> None:
    params = {"sort_column": column, "sort_direction": direction}
    everything = _get(client, people, "/v1/users", page_size=100, **params).json["records"]
    seen: list[str] = []
    response = _get(client, people, "/v1/users", page_size=4, **params)
    while True:
        assert response.status_code == 200, response.json
        seen += [record["id"] for record in response.json["records"]]
        following = _next(response)
        if following is None:
            break
        response = client.get(following, headers=auth_headers(people))
    assert seen == [record["id"] for record in everything]
    assert len(seen) == 23


def test_list_cursor_of_another_tenant_shows_only_own_rows(
    client: FlaskClient, people: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> None:
    created = client.post(
        "/v1/users", json={"first_name": "Zed", "last_name": "B"}, headers=auth_headers(tenant_b)
    )
    following = _next(_get(client, people, "/v1/users", page_size=2, sort_column="first_name"))
    assert following is not None
    body = client.get(following, headers=auth_headers(tenant_b)).json
    assert [record["id"] for record in body["records"]] == [created.json["id"]]


def _cursor(*payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(payload)).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"after": "not a cursor!"}, "gave out"),
        ({"after": "x" * 2000}, "Length"),
        ({"after": _cursor("created_at", "asc", "2024-01-01T00:00:00+00:00")}, "gave out"),
        ({"after": _cursor("last_name", "asc", "A", str(uuid.uuid4()))}, "another sort"),
        (
            {
                "after": _cursor(
                    "created_at", "desc", "2024-01-01T00:00:00+00:00", str(uuid.uuid4())
                )
            },
            "another sort",
        ),
        ({"after": _cursor("created_at", "asc", "yesterday", str(uuid.uuid4()))}, "out of range"),
        (
            {"after": _cursor("created_at", "asc", "2024-01-01T00:00:00", str(uuid.uuid4()))},
            "out of range",
        ),
        ({"after": _cursor("created_at", "asc", None, str(uuid.uuid4()))}, "always has one"),
        (
            {"after": _cursor("created_at", "asc", "2024-01-01T00:00:00+00:00", "nope")},
            "names no row",
        ),
        (
            {
                "after": _cursor("last_name", "asc", "x" * 51, str(uuid.uuid4())),
                "sort_column": "last_name",
            },
            "out of range",
        ),
        (
            {
                "after": _cursor("last_name", "asc", 7, str(uuid.uuid4())),
                "sort_column": "last_name",
            },
            "out of range",
        ),
        (
            {
                "after": _cursor(
                    "created_at", "asc", "2024-01-01T00:00:00+00:00", str(uuid.uuid4())
                ),
                "page": 2,
            },
            "leave page out",
        ),
    ],
)
def test_list_bad_cursor_is_422_naming_it(
    client: FlaskClient, tenant_a: ProvisionedTenant, params: dict[str, Any], reason: str
) -> None:
    response = _get(client, tenant_a, "/v1/users", **params)
    assert response.status_code == 422, response.json
    assert response.mimetype == "application/problem+json"
    assert reason in json.dumps(response.json["errors"])


@pytest.mark.parametrize(
    "after",
    [
        _cursor("price", "asc", "NaN", str(uuid.uuid4())),
        _cursor("price", "asc", "1e400", str(uuid.uuid4())),
        _cursor("price", "asc", "0.001", str(uuid.uuid4())),
        _cursor("stock", "asc", 2**40, str(uuid.uuid4())),
        _cursor("stock", "asc", True, str(uuid.uuid4())),
    ],
)
def test_list_cursor_values_out_of_the_column_range_are_422(
    client: FlaskClient, tenant_a: ProvisionedTenant, after: str
) -> None:
    sort = json.loads(base64.urlsafe_b64decode(after + "==="))[0]
    response = _get(client, tenant_a, "/v1/products", after=after, sort_column=sort)
    assert response.status_code == 422, response.json
    assert "after" in response.json["errors"]


def test_list_search_examines_a_bounded_stretch_and_links_the_next(
    client: FlaskClient, big: ProvisionedTenant
) -> None:
    first = _get(client, big, "/v1/users", search="needle")
    assert first.status_code == 200
    assert first.json["records"] == []
    assert first.json["total"] == 0
    assert first.json["total_capped"] is True  # rows were left unexamined
    following = _next(first)
    assert following is not None
    assert parse_qs(urlsplit(following).query)["search"] == ["needle"]

    second = client.get(following, headers=auth_headers(big))
    assert [record["first_name"] for record in second.json["records"]] == ["Needle"]
    assert second.json["total"] == 1
    assert "total_capped" not in second.json
    assert _next(second) is None


def test_list_filter_also_examines_a_bounded_stretch(
    client: FlaskClient, big: ProvisionedTenant
) -> None:
    body = _get(client, big, "/v1/users", confirmed="true", sort_column="last_name").json
    assert (body["records"], body["total"], body["total_capped"]) == ([], 0, True)
