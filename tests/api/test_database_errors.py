"""Database errors become problems: a data exception validation missed is a 400, not a 500."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask, Response

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


def _integrity_error(tenancy: Tenancy, *statements: str) -> sa.exc.DBAPIError:
    """The error of the last of ``statements``, run on temporary tables as the owner."""
    with tenancy.control_engine.connect() as connection:
        try:
            for statement in statements:
                connection.execute(sa.text(statement))
        except sa.exc.DBAPIError as error:
            return error
        finally:
            connection.rollback()
    pytest.fail(f"{statements[-1]} did not fail")


_PARENT_AND_CHILD = (
    "CREATE TEMP TABLE parent (id int PRIMARY KEY)",
    "CREATE TEMP TABLE child (id int PRIMARY KEY, parent_id int "
    "CONSTRAINT fk_child_parent_id_parent REFERENCES parent ON DELETE RESTRICT, "
    "amount int CONSTRAINT ck_child_positive CHECK (amount > 0))",
    "INSERT INTO parent VALUES (1)",
    "INSERT INTO child VALUES (1, 1, 1)",
)


def _handled(app: Flask, error: sa.exc.DBAPIError, method: str) -> Response:
    with app.test_request_context(method=method):
        return app.make_response(app.handle_user_exception(error))


def test_database_errors_missing_reference_is_422(app: Flask, tenancy: Tenancy) -> None:
    error = _integrity_error(tenancy, *_PARENT_AND_CHILD, "INSERT INTO child VALUES (2, 9, 1)")
    response = _handled(app, error, "POST")
    assert response.status_code == 422
    assert response.json["code"] == "validation_failed"  # type: ignore[index]
    # Not a model's constraint: no field to name, and never the SQL or the constraint.
    assert response.json["errors"] == {  # type: ignore[index]
        "_schema": ["refers to a record that does not exist"]
    }
    assert "fk_child" not in response.get_data(as_text=True)


def test_database_errors_deleting_a_referenced_record_is_409(app: Flask, tenancy: Tenancy) -> None:
    error = _integrity_error(tenancy, *_PARENT_AND_CHILD, "DELETE FROM parent")
    response = _handled(app, error, "DELETE")
    assert response.status_code == 409
    assert response.json["code"] == "referenced"  # type: ignore[index]


def test_database_errors_unique_violation_is_409(app: Flask, tenancy: Tenancy) -> None:
    error = _integrity_error(tenancy, *_PARENT_AND_CHILD, "INSERT INTO parent VALUES (1)")
    response = _handled(app, error, "POST")
    assert response.status_code == 409
    assert response.json["code"] == "conflict"  # type: ignore[index]


def test_database_errors_check_violation_is_422(app: Flask, tenancy: Tenancy) -> None:
    error = _integrity_error(tenancy, *_PARENT_AND_CHILD, "UPDATE child SET amount = 0")
    response = _handled(app, error, "PATCH")
    assert response.status_code == 422
    assert "ck_child" not in response.get_data(as_text=True)
