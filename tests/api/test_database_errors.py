"""Database errors become problems: a data exception validation missed is a 400, not a 500."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask

from app.tenancy import Tenancy


def _raised_by(tenancy: Tenancy, sql: str) -> sa.exc.DBAPIError:
    with tenancy.control_engine.connect() as connection:
        try:
            connection.execute(sa.text(sql))
        except sa.exc.DBAPIError as error:
            return error
    pytest.fail(f"{sql} did not fail")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT '2024-01-01T00:00:00-22:21'::timestamptz",  # 22009, found by schemathesis
        "SELECT 1 / 0",  # 22012
        "SELECT 'x'::numeric",  # 22P02
    ],
)
def test_database_errors_data_exception_is_400(app: Flask, tenancy: Tenancy, sql: str) -> None:
    error = _raised_by(tenancy, sql)
    with app.test_request_context():
        response = app.make_response(app.handle_user_exception(error))
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] == "invalid_value"  # type: ignore[index]
    assert sql not in response.get_data(as_text=True)
