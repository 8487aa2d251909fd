"""Shared fields refuse what the OpenAPI document says is invalid; found by schemathesis."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pytest
from marshmallow import ValidationError

from app.schemas.common import ListQuerySchema
from app.schemas.products import ProductCreateSchema
from app.schemas.users import UserCreateSchema, UserListQuerySchema, UserPatchSchema


@pytest.mark.parametrize("value", [0, 1, "true", "false", None])
def test_fields_json_boolean_takes_only_true_and_false(value: Any) -> None:
    with pytest.raises(ValidationError, match="confirmed"):
        UserPatchSchema().load({"confirmed": value}, partial=True)
    assert UserPatchSchema().load({"confirmed": False}, partial=True) == {"confirmed": False}


def test_fields_safe_string_length_counts_what_was_sent() -> None:
    with pytest.raises(ValidationError, match="first_name"):
        UserCreateSchema().load({"first_name": "\x1c" + "x" * 50, "last_name": "y"})
    loaded = UserCreateSchema().load({"first_name": " " + "x" * 48 + " ", "last_name": "y"})
    assert loaded["first_name"] == "x" * 48


@pytest.mark.parametrize("price", [12.345, 9999999999.990002, "0.001", 0.1 + 0.2])
def test_fields_money_refuses_more_than_two_decimals(price: Any) -> None:
    with pytest.raises(ValidationError, match="at most 2 decimal places"):
        ProductCreateSchema().load({"name": "x", "price": price})


@pytest.mark.parametrize(("price", "stored"), [(12.5, "12.50"), ("9999999999.99", "9999999999.99")])
def test_fields_money_keeps_exact_amounts(price: Any, stored: str) -> None:
    assert ProductCreateSchema().load({"name": "x", "price": price})["price"] == decimal.Decimal(
        stored
    )


def test_fields_utc_datetime_converts_offsets_postgresql_refuses() -> None:
    # PostgreSQL takes offsets up to 15:59; Python, and so the query string, up to 23:59.
    loaded = UserListQuerySchema().load({"date_before": "2024-01-01T00:00:00-22:21"})
    assert loaded["date_before"] == dt.datetime(2024, 1, 1, 22, 21, tzinfo=dt.UTC)


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_fields_utc_datetime_out_of_range_is_invalid(moment: str) -> None:
    with pytest.raises(ValidationError, match="date_after"):
        UserListQuerySchema().load({"date_after": moment})


class _NothingSearchable(ListQuerySchema):
    SORTABLE = ("created_at", "quantity")


def test_fields_list_query_without_searchable_columns_refuses_search() -> None:
    for query in ({"search": "x"}, {"search": "x", "search_columns": "status"}):
        with pytest.raises(ValidationError) as refused:
            _NothingSearchable().load(query)
        assert refused.value.messages == {"search": ["this resource has no searchable columns"]}
    assert {"search", "search_columns"}.isdisjoint(_NothingSearchable._declared_fields)


def test_fields_list_query_whitelists_are_each_schemas_own() -> None:
    # Declaring a schema changes none of its siblings' or its parent's whitelists.
    assert UserListQuerySchema().load({"search": "x", "search_columns": "last_name"})
    with pytest.raises(ValidationError, match="sort_column"):
        UserListQuerySchema().load({"sort_column": "quantity"})
    assert "search" not in ListQuerySchema._declared_fields
