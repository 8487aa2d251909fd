"""Header parsing and API key checks: pure functions, table-driven."""

from __future__ import annotations

import uuid

import pytest

from app.tenancy.errors import AuthenticationFailed, InvalidTenantHeader
from app.tenancy.serving.resolve import (
    check_api_key,
    generate_api_key,
    hash_api_key,
    parse_bearer,
    parse_tenant_id,
)

TENANT = "1b7db059-91bc-42d6-9d0e-93ca03d644a8"


@pytest.mark.parametrize("value", [TENANT, TENANT.upper()])
def test_parse_tenant_id_accepts_canonical_forms(value: str) -> None:
    assert parse_tenant_id([value]) == uuid.UUID(TENANT)


@pytest.mark.parametrize(
    "values",
    [
        [],
        [""],
        [TENANT, TENANT],
        ["{" + TENANT + "}"],
        ["urn:uuid:" + TENANT],
        [TENANT.replace("-", "")],
        [TENANT[:-1] + "٣"],  # Arabic-Indic digit three: uuid.UUID would accept it
        [TENANT.replace("1b7db059", "1B7db059")],  # mixed case
        [" " + TENANT],
        [TENANT + "\n"],
        ["00000000-0000-0000-0000-000000000000"],
        ["not-a-uuid"],
        [TENANT + "0"],
    ],
    ids=[
        "missing",
        "empty",
        "twice",
        "braces",
        "urn",
        "no-hyphens",
        "non-ascii-digit",
        "mixed-case",
        "leading-space",
        "trailing-newline",
        "nil",
        "garbage",
        "too-long",
    ],
)
def test_parse_tenant_id_rejects_everything_else(values: list[str]) -> None:
    with pytest.raises(InvalidTenantHeader):
        parse_tenant_id(values)


@pytest.mark.parametrize(
    "values",
    [[], ["Basic abc"], ["Bearer"], ["Bearer short"], ["bearer " + "a" * 40], ["Bearer a b"]],
)
def test_parse_bearer_rejects_malformed_headers(values: list[str]) -> None:
    with pytest.raises(AuthenticationFailed):
        parse_bearer(values)


def test_parse_bearer_returns_the_key() -> None:
    key = generate_api_key()
    assert parse_bearer([f"Bearer {key}"]) == key


def test_check_api_key_accepts_the_matching_key() -> None:
    key = generate_api_key()
    check_api_key(key, hash_api_key(key))


def test_check_api_key_rejects_another_key() -> None:
    with pytest.raises(AuthenticationFailed):
        check_api_key(generate_api_key(), hash_api_key(generate_api_key()))


def test_check_api_key_rejects_unknown_tenant_even_for_the_dummy_hash_input() -> None:
    with pytest.raises(AuthenticationFailed):
        check_api_key("no tenant has this key", None)


def test_generate_api_key_is_random_and_long() -> None:
    keys = {generate_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(key) >= 40 for key in keys)
