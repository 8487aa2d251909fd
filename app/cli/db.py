"""``flask db upgrade|downgrade|current``: Alembic, run as the owner role, on every cluster.

The control plane's database first (it is also the ``default`` cluster unless
``APP_CLUSTERS`` names that elsewhere), then each cluster of ``APP_CLUSTERS`` whose DSN is
another: every cluster carries the same schema, so a tenant can live on any of them. A
``default`` DSN without credentials is the control plane's database reached another way.
"""

from __future__ import annotations

from pathlib import Path

import click
from alembic import command
from alembic.config import Config
from flask import current_app

from app.tenancy import tenancy_of

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url``; no alembic.ini, the script location is fixed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


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
def current() -> None:
    """Show the current revision of every database."""
    for label, config in _each_database():
        click.echo(f"{label}:")
        command.current(config)
