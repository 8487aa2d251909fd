"""List statements are built once per query shape; their values are bound parameters."""

from __future__ import annotations

import datetime as dt

from app.api.resource import ListShape, ListStatements
from app.api.users import USERS
from app.models import User


def _shape(**params: object) -> ListShape:
    base: dict[str, object] = {"sort_column": "created_at", "sort_direction": "asc"}
    return ListShape.of(USERS, {**base, **params})


def test_one_statement_per_shape_whatever_the_values() -> None:
    table = User.__table__
    statements = ListStatements(table, [table.c.id])  # type: ignore[arg-type]
    first = _shape(search="ada", date_after=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    second = _shape(search="bob", date_after=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    assert first == second
    assert statements.page(first) is statements.page(second)
    assert statements.count(first) is statements.count(second)
    other = _shape(search="ada", sort_direction="desc")
    assert other != first
    assert statements.page(other) is not statements.page(first)


def test_search_text_is_escaped_for_like_and_never_in_the_sql() -> None:
    shape = _shape(search="100%_a/b")
    values = shape.values({"search": "100%_a/b"}, limit=10, offset=20)
    assert values == {"search": "100/%/_a//b", "limit": 10, "offset": 20}
    table = User.__table__
    sql = str(ListStatements(table, [table.c.id]).page(shape))  # type: ignore[arg-type]
    assert "100" not in sql
    assert "ESCAPE '/'" in sql
