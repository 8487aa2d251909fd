"""List statements are built once per query shape; the shapes are a finite set."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import pytest

from app.api.list_shapes import Keyset, ListShape
from app.api.listing import ListStatements
from app.api.products import PRODUCTS
from app.api.resource import Resource
from app.api.users import USERS


def _shape(**params: object) -> ListShape:
    base: dict[str, object] = {"sort_column": "created_at", "sort_direction": "asc"}
    return ListShape.of(USERS, {**base, **params})


def _statements(resource: Resource = USERS) -> ListStatements:
    table = resource.model.__table__
    return ListStatements(table, [table.c[name] for name in resource.output.dump_fields])  # type: ignore[attr-defined]


def test_one_statement_per_shape_whatever_the_values() -> None:
    statements = _statements()
    first = _shape(search="ada", date_after=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    second = _shape(search="bob", date_after=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    assert first == second
    assert statements.page(first) is statements.page(second)
    assert statements.window_end(first) is statements.window_end(second)
    other = _shape(search="ada", sort_direction="desc")
    assert other != first
    assert statements.page(other) is not statements.page(first)


@pytest.mark.parametrize("kind", ["stretched", "windowed", "after a cursor"])
def test_pages_select_ids_as_text_but_order_by_the_uuids(kind: str) -> None:
    """Every page shape answers ids as text, the answer's spelling, with no uuid.UUID built
    per row; the order still compares the uuids."""
    shape = _shape(search="ada") if kind == "windowed" else _shape()
    if kind == "after a cursor":
        shape = dataclasses.replace(shape, keyset=Keyset.VALUE)
    assert shape.stretched == (kind == "stretched")
    assert shape.windowed == (kind == "windowed")
    sql = str(_statements().page(shape))
    select_list = sql.split(" FROM ", 1)[0]
    assert "CAST(" in select_list, select_list
    assert " AS TEXT) AS id" in select_list, select_list
    assert ".id ASC" in sql.rsplit("ORDER BY", 1)[1], sql


def test_search_text_is_escaped_for_like_and_never_in_the_sql() -> None:
    shape = _shape(search="100%_a/b")
    values = shape.values({"search": "100%_a/b"}, limit=10, offset=20)
    assert values == {"search": "100/%/_a//b", "limit": 11, "offset": 20, "scan": 10_000}
    sql = str(_statements().page(shape))
    assert "100" not in sql
    assert "ESCAPE '/'" in sql


def test_search_columns_in_any_order_are_one_shape() -> None:
    names = USERS.query.SEARCHABLE
    shapes = {
        _shape(search="x", search_columns=list(order))
        for size in range(1, len(names) + 1)
        for chosen in itertools.combinations(names, size)
        for order in itertools.permutations(chosen)
    }
    # One shape per subset of the columns, however many orders each was spelled in.
    assert len(shapes) == 2 ** len(names) - 1
    assert all(
        shape.search_columns == tuple(n for n in names if n in shape.search_columns)
        for shape in shapes
    )


@pytest.mark.parametrize("resource", [USERS, PRODUCTS], ids=lambda r: r.name)
def test_shape_space_is_finite_and_holds_every_request(resource: Resource) -> None:
    space = set(ListShape.space(resource))
    query = resource.query
    subsets = 2 ** len(query.SEARCHABLE)
    expected = len(query.SORTABLE) * 2 * subsets * 2 * 2 * 2 ** len(resource.filters) * len(Keyset)
    assert len(space) == expected
    # Every combination of parameters a request may give lands in it.
    for sort, direction, columns, after, before in itertools.product(
        query.SORTABLE,
        ("asc", "desc", "ascending", "descending"),
        [
            None,
            *(list(c) for n in range(1, 3) for c in itertools.permutations(query.SEARCHABLE, n)),
        ],
        (False, True),
        (False, True),
    ):
        params: dict[str, object] = {"sort_column": sort, "sort_direction": direction}
        if columns is not None:
            params.update(search="x", search_columns=columns)
        if after:
            params["date_after"] = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        if before:
            params["date_before"] = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
        assert ListShape.of(resource, params) in space


@pytest.mark.parametrize("resource", [USERS, PRODUCTS], ids=lambda r: r.name)
def test_every_page_statement_leads_with_the_output_columns_in_order(resource: Resource) -> None:
    """Pages are serialised by position (``row_dumper``): every shape's first columns are
    the output's fields, in the output's order."""
    statements = _statements(resource)
    fields = list(resource.output.dump_fields)
    for shape in ListShape.space(resource):
        columns = [column.name for column in statements.page(shape).selected_columns]
        assert columns[: len(fields)] == fields, shape


def test_statement_cache_is_bounded_by_the_space() -> None:
    statements = _statements()
    space = list(ListShape.space(USERS))
    for _ in range(2):
        for shape in space:
            statements.page(shape)
    assert len(statements) == len(space)  # one page statement per shape, never more
