"""Listing users: pagination, search, sort and filters, as the Rust template's clients use them."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from app.tenancy.control.provisioning import ProvisionedTenant
from tests.support import auth_headers

PEOPLE = [
    ("Ada", "Lovelace", "ada@example.com", True),
    ("Alan", "Turing", "alan@example.com", False),
    ("Grace", "Hopper", "grace@example.com", True),
    ("Edsger", "Dijkstra", None, False),
    ("Barbara", "Liskov", "barbara@example.com", True),
    ("100%", "Literal_Name", "pct@example.com", False),
]


@pytest.fixture
def people(client: FlaskClient, tenant_a: ProvisionedTenant) -> ProvisionedTenant:
    for first, last, email, confirmed in PEOPLE:
        payload: dict[str, Any] = {"first_name": first, "last_name": last, "confirmed": confirmed}
        if email:
            payload["email"] = email
        assert (
            client.post("/v1/users", json=payload, headers=auth_headers(tenant_a)).status_code
            == 201
        )
    return tenant_a


def _list(client: FlaskClient, tenant: ProvisionedTenant, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/users", query_string=params, headers=auth_headers(tenant))
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def _first_names(body: dict[str, Any]) -> list[str]:
    return [record["first_name"] for record in body["records"]]


def test_users_list_has_the_template_shape(client: FlaskClient, people: ProvisionedTenant) -> None:
    body = _list(client, people, page_size=4)
    assert set(body) == {"records", "page", "page_size", "total", "total_pages"}
    assert (body["page"], body["page_size"], body["total"], body["total_pages"]) == (1, 4, 6, 2)


def test_users_pages_do_not_overlap(client: FlaskClient, people: ProvisionedTenant) -> None:
    first = _first_names(_list(client, people, page=1, page_size=4, sort_column="first_name"))
    second = _first_names(_list(client, people, page=2, page_size=4, sort_column="first_name"))
    assert len(first) == 4
    assert len(second) == 2
    assert sorted(first + second) == sorted(p[0] for p in PEOPLE)


def test_users_page_past_the_end_is_empty(client: FlaskClient, people: ProvisionedTenant) -> None:
    body = _list(client, people, page=50)
    assert body["records"] == []
    assert body["total"] == 6


@pytest.mark.parametrize("direction", ["descending", "desc"])
def test_users_sort_descending(
    client: FlaskClient, people: ProvisionedTenant, direction: str
) -> None:
    names = _first_names(_list(client, people, sort_column="last_name", sort_direction=direction))
    assert names == ["Alan", "Ada", "100%", "Barbara", "Grace", "Edsger"]


def test_users_search_is_case_insensitive(client: FlaskClient, people: ProvisionedTenant) -> None:
    assert _first_names(_list(client, people, search="LOVE")) == ["Ada"]


def test_users_search_limited_to_columns(client: FlaskClient, people: ProvisionedTenant) -> None:
    body = _list(client, people, search="alan", search_columns="last_name")
    assert body["records"] == []


@pytest.mark.parametrize(("text", "expected"), [("%", ["100%"]), ("_", ["100%"]), ("\\", [])])
def test_users_search_wildcards_match_literally(
    client: FlaskClient, people: ProvisionedTenant, text: str, expected: list[str]
) -> None:
    assert _first_names(_list(client, people, search=text)) == expected


def test_users_filter_confirmed(client: FlaskClient, people: ProvisionedTenant) -> None:
    names = _first_names(_list(client, people, confirmed="true", sort_column="first_name"))
    assert names == ["Ada", "Barbara", "Grace"]


def test_users_filter_dates(client: FlaskClient, people: ProvisionedTenant) -> None:
    everyone = _list(client, people)["records"]
    middle = everyone[2]["created_at"]
    after = _list(client, people, date_after=middle)
    before = _list(client, people, date_before=middle)
    assert after["total"] + before["total"] == 5


@pytest.mark.parametrize(
    "params",
    [
        {"sort_column": "password"},
        {"sort_column": "tenant_id; DROP TABLE users"},
        {"sort_direction": "sideways"},
        {"search_columns": "tenant_id", "search": "x"},
        {"search_columns": "first_name"},
        {"page": "0"},
        {"page": "-1"},
        {"page": "10000000000000000000"},
        {"page": "abc"},
        {"page_size": "0"},
        {"page_size": "101"},
        {"confirmed": "maybe"},
        {"date_after": "yesterday"},
        {"search": "nul\x00byte"},
        {"unknown": "1"},
    ],
)
def test_users_bad_query_is_422_not_500(
    client: FlaskClient, tenant_a: ProvisionedTenant, params: dict[str, str]
) -> None:
    response = client.get("/v1/users", query_string=params, headers=auth_headers(tenant_a))
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert body is not None
    assert body["code"] == "validation_failed"
    assert body["errors"]


def test_users_repeated_query_parameter_is_422(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    response = client.get("/v1/users?page=1&page=2", headers=auth_headers(tenant_a))
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"last_name": "x"}, "first_name"),
        ({"first_name": "", "last_name": "x"}, "first_name"),
        ({"first_name": "x" * 51, "last_name": "x"}, "first_name"),
        ({"first_name": "a\x00b", "last_name": "x"}, "first_name"),
        ({"first_name": "a", "last_name": "x", "email": "not-an-email"}, "email"),
        ({"first_name": "a", "last_name": "x", "tenant_id": "whatever"}, "tenant_id"),
        ({"first_name": "a", "last_name": "x", "id": "whatever"}, "id"),
    ],
)
def test_users_create_invalid_is_422_per_field(
    client: FlaskClient, tenant_a: ProvisionedTenant, payload: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/users", json=payload, headers=auth_headers(tenant_a))
    assert response.status_code == 422
    assert field in response.json["errors"]  # type: ignore[index]
