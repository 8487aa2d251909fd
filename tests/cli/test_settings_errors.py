"""A missing or bad setting ends a ``flask`` command with one line naming it, never a traceback.

Through the real ``flask --app wsgi`` (``tests.support.run_flask``), as a person runs it.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.dev.ports import free_port
from tests.support import run_flask


@pytest.mark.parametrize(
    ("broken", "line"),
    [
        (
            {"APP_DATABASE_URL": ""},
            "tenantpool: configuration error: APP_DATABASE_URL: is required but not set "
            "(nor APP_DATABASE_URL_FILE)",
        ),
        (
            {"APP_ENCRYPTION_ACTIVE_KEY": "nope"},
            "tenantpool: configuration error: APP_ENCRYPTION_ACTIVE_KEY: key id 'nope' is not "
            "in APP_ENCRYPTION_KEYS (known: test1)",
        ),
    ],
    ids=["missing", "malformed"],
)
def test_settings_errors_are_one_line_naming_the_variable(
    app_env: dict[str, str], broken: dict[str, str], line: str
) -> None:
    result = run_flask({**app_env, **broken}, "tenancy", "check", timeout=60)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""


def test_settings_errors_unreachable_database_is_one_line(app_env: dict[str, str]) -> None:
    nowhere = sa.make_url(app_env["APP_DATABASE_URL"]).set(port=free_port())
    url = nowhere.render_as_string(hide_password=False)
    result = run_flask({**app_env, "APP_DATABASE_URL": url}, "tenancy", "check", timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: cannot connect to the database at 127.0.0.1:{nowhere.port}/tenantpool "
        "(check APP_DATABASE_URL): Connection refused"
    ]
    assert nowhere.password is not None
    assert nowhere.password not in result.stderr + result.stdout
