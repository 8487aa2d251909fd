"""``flask db upgrade|downgrade|current``: Alembic, run as the owner role."""

from __future__ import annotations

from pathlib import Path

import click
from alembic import command
from alembic.config import Config
from flask import current_app

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url``; no alembic.ini, the script location is fixed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def _config() -> Config:
    return alembic_config(current_app.config["SETTINGS"].database_url)


@click.group()
def db() -> None:
    """Schema migrations (Alembic)."""


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Upgrade the database to REVISION (default: head)."""
    command.upgrade(_config(), revision)
    click.echo(f"database upgraded to {revision}")


@db.command()
@click.argument("revision", default="-1")
def downgrade(revision: str) -> None:
    """Downgrade the database to REVISION (default: one step back)."""
    command.downgrade(_config(), revision)
    click.echo(f"database downgraded to {revision}")


@db.command()
def current() -> None:
    """Show the current revision."""
    command.current(_config())
