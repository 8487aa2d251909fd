"""``flask db upgrade|downgrade|current|revision``: Alembic, as the owner role, on every cluster.

The control plane's database first (it is also the ``default`` cluster unless
``APP_CLUSTERS`` names that elsewhere), then each cluster of ``APP_CLUSTERS`` whose DSN is
another: every cluster carries the same schema, so a tenant can live on any of them. A
``default`` DSN without credentials is the control plane's database reached another way.

``revision`` writes a new migration from migrations/script.py.mako, numbered after the
newest (0005 after 0004), then formats it with ruff when ruff is installed (the dev
requirements), so ``make lint`` passes on it as written.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import click
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from flask import current_app

from app.tenancy import tenancy_of

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
VERSIONS = MIGRATIONS / "versions"


def alembic_config(url: str, *, versions: Path | None = None) -> Config:
    """An Alembic config for ``url``; no alembic.ini, the script location is fixed.

    ``versions``: a directory of migrations read (and written to) beside migrations/versions.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if versions is not None:
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", os.pathsep.join([str(VERSIONS), str(versions)]))
    config.attributes["url"] = url
    return config


def _format_new_revisions(config: Config) -> None:
    """ruff fixes (unused noqa, import order) and formats what ``revision`` writes."""
    if importlib.util.find_spec("ruff") is None:
        return
    config.set_section_option("post_write_hooks", "hooks", "ruff_format, ruff_fix")
    # The project's settings wherever the file is written; what cannot be fixed is left for
    # `make lint` to report, not a reason to lose the file.
    settings = f"--config {MIGRATIONS.parent / 'pyproject.toml'}"
    for name, options in (
        ("ruff_format", f"-m ruff format {settings} --quiet REVISION_SCRIPT_FILENAME"),
        (
            "ruff_fix",
            f"-m ruff check {settings} --fix --exit-zero --silent REVISION_SCRIPT_FILENAME",
        ),
    ):
        config.set_section_option("post_write_hooks", f"{name}.type", "exec")
        config.set_section_option("post_write_hooks", f"{name}.executable", sys.executable)
        config.set_section_option("post_write_hooks", f"{name}.options", options)


def _next_number(config: Config) -> str | None:
    """The revision id after the newest, when ids are numbers (0004 -> 0005)."""
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        return "0001"
    return f"{int(head) + 1:04d}" if head.isdigit() else None


def databases() -> list[tuple[str, str]]:
    """(label, owner DSN) of every database to migrate, the control plane's first."""
    found = tenancy_of(current_app).clusters.owner_databases()
    return [(label, url.render_as_string(hide_password=False)) for label, url in found]


def _each_database() -> list[tuple[str, Config]]:
    return [(label, alembic_config(url)) for label, url in databases()]


@click.group()
def db() -> None:
    """Schema migrations (Alembic), on the control plane and every cluster."""


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Upgrade every database to REVISION (default: head)."""
    for label, config in _each_database():
        command.upgrade(config, revision)
        click.echo(f"{label}: upgraded to {revision}")


@db.command()
@click.argument("revision", default="-1")
def downgrade(revision: str) -> None:
    """Downgrade every database to REVISION (default: one step back), clusters first."""
    for label, config in reversed(_each_database()):
        command.downgrade(config, revision)
        click.echo(f"{label}: downgraded to {revision}")


@db.command()
@click.option("-m", "--message", required=True, help="What the migration does.")
@click.option(
    "--autogenerate",
    is_flag=True,
    help="Compare the models with the control plane's database and write the difference; "
    "tenant tables through make_tenant_scoped and tenant_reference. Review the result.",
)
@click.option(
    "--version-path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write it to this directory (read beside migrations/versions) instead.",
)
def revision(message: str, autogenerate: bool, version_path: Path | None) -> None:
    """Write a new migration from the template, after the newest one."""
    _, url = databases()[0]
    config = alembic_config(url, versions=version_path)
    _format_new_revisions(config)
    script = command.revision(
        config,
        message=message,
        autogenerate=autogenerate,
        rev_id=_next_number(config),
        version_path=str(version_path) if version_path else None,
    )
    for written in script if isinstance(script, list) else [script]:
        if written is not None:
            click.echo(f"wrote {written.path}")


@db.command()
def current() -> None:
    """Show the current revision of every database."""
    for label, config in _each_database():
        click.echo(f"{label}:")
        command.current(config)
