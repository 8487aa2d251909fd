"""``flask db revision``: a new migration from the template; autogenerate writes tenant tables
through the tenancy helpers, and what it writes migrates, checks and lints clean.

Revisions are written to a directory of the test's own (``--version-path``), never into
migrations/versions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.cli.db import alembic_config
from app.models import metadata
from app.tenancy.control.checks import check_isolation
from tests.conftest import FreshDatabase
from tests.support import REPO_ROOT, app_for, invoke


def _revision(env: dict[str, str], versions: Path, *args: str) -> Path:
    with app_for(env) as app:
        result = invoke(app, "db", "revision", "--version-path", str(versions), *args)
    assert result.exit_code == 0, result.output
    (written,) = versions.glob("*.py")
    assert f"wrote {written}" in result.output
    return written


def _lint(path: Path) -> None:
    config = ("--config", str(REPO_ROOT / "pyproject.toml"))
    for args in (["check", *config, str(path)], ["format", "--check", *config, str(path)]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _head() -> str:
    """The newest migration shipped (the tests must not hard-code it)."""
    head = ScriptDirectory.from_config(alembic_config("postgresql://unused/x")).get_current_head()
    assert head is not None
    return head


def test_db_revision_writes_the_next_number_from_the_template(
    fresh_database: FreshDatabase, tmp_path: Path
) -> None:
    head = _head()
    following = f"{int(head) + 1:04d}"
    written = _revision(fresh_database(), tmp_path, "-m", "add invoices")
    assert written.name == f"{following}_add_invoices.py"
    text = written.read_text()
    assert f'revision: str = "{following}"' in text
    assert f'down_revision: str | None = "{head}"' in text
    assert "from app.tenancy.control.ddl import make_tenant_scoped, tenant_reference" in text
    _lint(written)


def test_db_revision_autogenerate_writes_a_tenant_table_through_the_helpers(
    fresh_database: FreshDatabase, tmp_path: Path
) -> None:
    env = fresh_database()
    url = env["APP_DATABASE_URL"]
    engine = sa.create_engine(url)
    try:
        # The models hold orders, the database not yet: as after adding a model.
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE orders")
        written = _revision(env, tmp_path, "-m", "orders again", "--autogenerate")
        text = written.read_text().split("def upgrade() -> None:")[1]
        assert 'make_tenant_scoped(op, "orders")' in text
        assert 'make_user_scoped(op, "orders")' in text
        assert "created_by" not in text  # the helper adds it with its policy
        assert 'tenant_reference(op, "orders", "user_id", "users", on_delete="CASCADE")' in text
        assert 'tenant_reference(op, "orders", "product_id", "products", on_delete="RESTRICT")' in (
            text
        )
        assert "tenant_id" not in text  # the helpers add it, its key and references
        assert "drop_index" not in text  # the helpers' indexes are no model's
        _lint(written)
        config = alembic_config(url, versions=tmp_path)
        command.upgrade(config, "head")
        with engine.connect() as connection:
            assert check_isolation(connection).problems == []
            diffs = compare_metadata(MigrationContext.configure(connection), metadata)
        assert [d for d in diffs if d[0] != "remove_index"] == []
        command.downgrade(config, _head())
    finally:
        engine.dispose()
