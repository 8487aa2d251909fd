"""Bad input, table-driven, through a real gunicorn (DESIGN section 6): never a 500.

The unit tests (tests/api) cover the app's own parsing in process; these go through the
HTTP server too, where header parsing, size limits and chunked bodies happen.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app.dev.cluster import LocalCluster
from tests.e2e.conftest import SeededTenant, Service
from tests.support import child_pids

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"
MIXED_CASE_ID = "ABCDEF01-2345-6789-abcd-ef0123456789"
NIL_ID = "00000000-0000-0000-0000-000000000000"


def _raw(
    service: Service,
    method: str,
    path: str,
    headers: list[tuple[str, str | bytes]],
    body: bytes | None = None,
) -> tuple[int, str, bytes]:
    """One request with headers exactly as given (repeated, non-ASCII); status, type, body."""
    address = urlsplit(service.url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def tenant(fuzz_tenants: list[SeededTenant]) -> SeededTenant:
    return fuzz_tenants[0]


@pytest.fixture(scope="module")
def superuser_engine(pg_cluster: LocalCluster) -> Iterator[sa.Engine]:
    """Only to inspect the server (pg_stat_activity), never to read tenant data."""
    url = make_url(pg_cluster.superuser_url("tenantpool")).set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(url, pool_size=1)
    yield engine
    engine.dispose()


def _engines_of(service: Service, engine: sa.Engine) -> set[str]:
    """Tenant ids with a backend opened by one of the service's workers.

    Tenant backends are named ``tp:<tenant uuid>:<pid>``; the control plane's and the
    event listener's carry a word instead of the uuid.
    """
    query = sa.text(
        "SELECT application_name FROM pg_stat_activity WHERE application_name ~ :pattern"
    )
    pattern = r"^tp:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[0-9]+$"
    with engine.connect() as connection:
        names = connection.execute(query, {"pattern": pattern}).scalars().all()
    pids = {str(pid) for pid in child_pids(service.pid)}
    return {name.split(":")[1] for name in names if name.rsplit(":", 1)[1] in pids}


def _role_attempted(pg_cluster: LocalCluster, tenant_id: str) -> bool:
    """Whether the server log shows any connection attempt as the role of ``tenant_id``."""
    try:
        role = "t_" + uuid.UUID(tenant_id).hex
    except ValueError:
        return False
    return role in pg_cluster.log_path.read_text(errors="replace")


TENANT_HEADERS: list[tuple[str, Any, int]] = [
    ("missing", None, 400),
    ("empty", "", 400),
    ("twice", "SELF SELF", 400),
    ("braces", "{SELF}", 400),
    ("urn", "urn:uuid:SELF", 400),
    ("no-hyphens", "HEX", 400),
    ("arabic-indic-digit", "ARABIC", 400),
    ("fullwidth-digit", "FULLWIDTH", 400),
    ("nil", NIL_ID, 400),
    ("mixed-case", MIXED_CASE_ID, 400),
    ("trailing-garbage", "SELF0", 400),
    ("nul", "SELF\x00", 400),  # refused by gunicorn: an invalid header value
    ("unknown-tenant", "UNKNOWN", 401),
    ("upper-case", "UPPER", 200),
]


def _tenant_header_values(form: Any, tenant_id: str) -> list[str | bytes]:
    if form is None:
        return []
    if form == "SELF SELF":
        return [tenant_id, tenant_id]
    digit = next(ch for ch in tenant_id if ch.isdigit())
    replacements: dict[str, str | bytes] = {
        "HEX": tenant_id.replace("-", ""),
        "ARABIC": tenant_id.replace(digit, chr(0x0660 + int(digit)), 1).encode(),
        "FULLWIDTH": tenant_id.replace(digit, chr(0xFF10 + int(digit)), 1).encode(),
        "UNKNOWN": str(uuid.uuid4()),
        "UPPER": tenant_id.upper(),
    }
    if form in replacements:
        return [replacements[form]]
    return [str(form).replace("SELF", tenant_id)]


@pytest.mark.parametrize(
    ("form", "status"),
    [(form, status) for _, form, status in TENANT_HEADERS],
    ids=[name for name, _, _ in TENANT_HEADERS],
)
def test_bad_input_tenant_header_forms(
    fuzz_service: Service,
    tenant: SeededTenant,
    superuser_engine: sa.Engine,
    pg_cluster: LocalCluster,
    form: Any,
    status: int,
) -> None:
    values = _tenant_header_values(form, tenant.id)
    headers: list[tuple[str, str | bytes]] = [("X-Tenant-ID", value) for value in values]
    headers.append(("Authorization", f"Bearer {tenant.api_key}"))
    got, content_type, _ = _raw(fuzz_service, "GET", "/v1/users", headers)
    assert got == status
    if status != 200 and "\x00" not in str(form):
        assert content_type == PROBLEM
    # No engine, not even a connection attempt, for any tenant but the real one.
    assert _engines_of(fuzz_service, superuser_engine) <= {tenant.id}
    for value in values:
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if text.lower() != tenant.id:
            assert not _role_attempted(pg_cluster, text.strip("{}").removeprefix("urn:uuid:"))


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([("X-Tenant-ID", "SELF" + "0" * 9000)], 431),
        ([("Authorization", "Bearer " + "k" * 9000)], 431),
        ([(f"X-Filler-{n}", "x") for n in range(101)], 431),
    ],
    ids=["huge-tenant-header", "huge-authorization", "too-many-headers"],
)
def test_bad_input_oversized_headers_are_431(
    fuzz_service: Service, tenant: SeededTenant, headers: list[tuple[str, str]], status: int
) -> None:
    """Refused by gunicorn (limit_request_field_size, limit_request_fields), not the app."""
    own = [(name, value.replace("SELF", tenant.id)) for name, value in headers]
    names = {name for name, _ in own}
    base = [(k, v) for k, v in tenant.headers.items() if k not in names]
    got, _, _ = _raw(fuzz_service, "GET", "/v1/users", [*base, *own])
    assert got == status


def test_bad_input_oversized_request_line_is_414(
    fuzz_service: Service, tenant: SeededTenant
) -> None:
    got, _, _ = _raw(
        fuzz_service, "GET", "/v1/users?search=" + "a" * 5000, list(tenant.headers.items())
    )
    assert got == 414


def _post(
    service: Service,
    tenant: SeededTenant,
    path: str,
    body: bytes | Iterator[bytes],
    content_type: str | None = "application/json",
    method: str = "POST",
) -> requests.Response:
    headers = dict(tenant.headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return requests.request(method, service.url + path, data=body, headers=headers, timeout=30)


def _deep(depth: int) -> bytes:
    return b'{"name": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b', "price": 1}'


JSON = "application/json"
BODIES = [
    pytest.param("/v1/products", b'{"name": "x", "price": 1', JSON, 400, id="malformed"),
    pytest.param("/v1/products", b"", JSON, 400, id="empty"),
    pytest.param("/v1/products", b'"x"', JSON, 400, id="string"),
    pytest.param("/v1/products", b'{"name": "\xff\xfe", "price": 1}', JSON, 400, id="not-utf8"),
    pytest.param("/v1/products", b'{"name": "x", "price": 1}', None, 415, id="no-content-type"),
    pytest.param("/v1/products", b'{"name": "x", "price": 1}', "text/plain", 415, id="text"),
    pytest.param(
        "/v1/products", b'{"name": "x"}', "application/json-patch+json", 415, id="json-patch"
    ),
    pytest.param("/v1/products", b'{"name": "x", "price": NaN}', JSON, 400, id="nan"),
    pytest.param("/v1/products", b'{"name": "x", "price": -Infinity}', JSON, 400, id="-infinity"),
    pytest.param("/v1/products", b'{"name": "x", "price": 1e400}', JSON, 422, id="inf-overflow"),
    pytest.param(
        "/v1/products", b'{"name": "x", "price": ' + b"9" * 5000 + b"}", JSON, 400, id="5000-digits"
    ),
    pytest.param("/v1/products", b'{"name": "x", "price": "1e5000"}', JSON, 422, id="exponent"),
    pytest.param("/v1/products", b'{"name": "x", "price": 12.345}', JSON, 422, id="3-decimals"),
    pytest.param("/v1/products", b'{"name": "a\\u0000b", "price": 1}', JSON, 422, id="nul"),
    pytest.param("/v1/products", b'{"name": "\\udfff", "price": 1}', JSON, 422, id="surrogate"),
    pytest.param("/v1/products", _deep(10_000), JSON, 400, id="deep-nesting"),
    pytest.param(
        "/v1/users",
        b'{"first_name": "a", "last_name": "b", "confirmed": 0}',
        JSON,
        422,
        id="0-as-false",
    ),
    pytest.param(
        "/v1/users",
        b'{"first_name": "\\u001c' + b"x" * 50 + b'", "last_name": "b"}',
        JSON,
        422,
        id="trim-past-max",
    ),
]


@pytest.mark.parametrize(("path", "body", "content_type", "status"), BODIES)
@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_bad_input_bodies(
    fuzz_service: Service,
    tenant: SeededTenant,
    method: str,
    path: str,
    body: bytes,
    content_type: str | None,
    status: int,
) -> None:
    if method == "PATCH":
        created = _post(fuzz_service, tenant, path, json.dumps(_valid(path)).encode())
        assert created.status_code == 201
        path = f"{path}/{created.json()['id']}"
    response = _post(fuzz_service, tenant, path, body, content_type, method)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM


def _valid(path: str) -> dict[str, Any]:
    if path == "/v1/users":
        return {"first_name": "Valid", "last_name": "Body"}
    return {"name": "Valid", "price": "1.00"}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bad_input_body_over_the_limit_is_413(
    fuzz_service: Service, tenant: SeededTenant, chunked: bool
) -> None:
    payload = json.dumps({"name": "x" * (2 * 1024 * 1024), "price": 1}).encode()
    body: bytes | Iterator[bytes] = payload
    if chunked:
        body = iter([payload[i : i + 65536] for i in range(0, len(payload), 65536)])
    response = _post(fuzz_service, tenant, "/v1/products", body)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == PROBLEM


QUERIES: list[tuple[str, dict[str, str], int]] = [
    ("page-0", {"page": "0"}, 422),
    ("page-negative", {"page": "-1"}, 422),
    ("page-10e19", {"page": str(10**19)}, 422),
    ("page-text", {"page": "abc"}, 422),
    ("page-fraction", {"page": "1.5"}, 422),
    ("page-empty", {"page": ""}, 422),
    ("page-past-max", {"page": "100001"}, 422),
    ("page-max", {"page": "1001"}, 200),  # 10 000 rows in: the deepest offset
    ("page-past-offset-cap", {"page": "1002"}, 422),  # deeper pages follow after= cursors
    ("cursor-garbage", {"after": "' OR 1=1 --"}, 422),
    ("page-size-0", {"page_size": "0"}, 422),
    ("page-size-negative", {"page_size": "-1"}, 422),
    ("page-size-10e19", {"page_size": str(10**19)}, 422),
    ("page-size-text", {"page_size": "ten"}, 422),
    ("sort-injection", {"sort_column": "name; DROP TABLE products--"}, 422),
    ("sort-expression", {"sort_column": "(SELECT 1)"}, 422),
    ("sort-with-direction", {"sort_column": "price desc"}, 422),
    ("sort-hidden-column", {"sort_column": "tenant_id"}, 422),
    ("direction-injection", {"sort_direction": "asc; DROP TABLE products"}, 422),
    ("search-columns-injection", {"search": "x", "search_columns": "name,tenant_id"}, 422),
    ("search-columns-sql", {"search": "x", "search_columns": "name) OR (1=1"}, 422),
    ("search-nul", {"search": "a\x00b"}, 422),
    ("date-injection", {"date_after": "2024-01-01' OR '1'='1"}, 422),
    ("date-offset-beyond-postgres", {"date_before": "2024-01-01T00:00:00-22:21"}, 200),
    ("date-before-year-1-in-utc", {"date_after": "0001-01-01T00:00:00+14:00"}, 422),
    ("search-injection", {"search": "'; DROP TABLE products; --"}, 200),
    ("search-or-true", {"search": "%' OR '1'='1"}, 200),
    ("search-wildcards", {"search": "_%\\"}, 200),
]


@pytest.mark.parametrize(
    ("params", "status"),
    [(params, status) for _, params, status in QUERIES],
    ids=[name for name, *_ in QUERIES],
)
def test_bad_input_list_queries(
    fuzz_service: Service, tenant: SeededTenant, params: dict[str, str], status: int
) -> None:
    response = requests.get(
        fuzz_service.url + "/v1/products", params=params, headers=tenant.headers, timeout=30
    )
    assert response.status_code == status, response.text
    if status != 200:
        assert response.headers["Content-Type"] == PROBLEM
        return
    # Searches match literally: every record holds the text itself.
    search = params.get("search", "").lower()
    for record in response.json()["records"]:
        assert search in record["name"].lower() or search in record["description"].lower()


@pytest.mark.parametrize(
    ("path", "params"),
    [("/v1/users", {"confirmed": "1 OR 1=1"}), ("/v1/users", {"sort_column": "password"})],
    ids=["filter-injection", "sort-unknown"],
)
def test_bad_input_user_filters(
    fuzz_service: Service, tenant: SeededTenant, path: str, params: dict[str, str]
) -> None:
    response = requests.get(
        fuzz_service.url + path, params=params, headers=tenant.headers, timeout=30
    )
    assert response.status_code == 422
