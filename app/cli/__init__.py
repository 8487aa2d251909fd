"""``flask`` commands: one module per command group.

A database that cannot be reached (a wrong ``APP_DATABASE_URL``, a server that is down) ends
any command with one line naming the setting, not a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
import sqlalchemy as sa
from flask import Flask, current_app

from app.cli import crypto, db, seed, tenancy, tenants
from app.dbhosts import where as hosts_of


def init_app(app: Flask) -> None:
    for command in (db.db, seed.seed_tenants, tenants.tenants, crypto.crypto, tenancy.tenancy):
        _report_unreachable_database(command)
        app.cli.add_command(command)


def _report_unreachable_database(command: click.Command) -> None:
    """Wrap ``command`` and its subcommands: a failed connect is one line (exit 1)."""
    if command.callback is not None and not getattr(command.callback, "_one_line", False):
        command.callback = _one_line(command.callback)
    if isinstance(command, click.Group):
        for subcommand in command.commands.values():
            _report_unreachable_database(subcommand)


def _one_line(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except sa.exc.OperationalError as error:
            if getattr(error.orig, "pgcode", None) is not None:
                raise  # the server answered: not a connection problem
            raise click.ClickException(_unreachable(error)) from None

    run._one_line = True  # type: ignore[attr-defined]  # wrapped once, however often init_app runs
    return run


def _unreachable(error: sa.exc.OperationalError) -> str:
    """One line: where, which settings to check, and the driver's reason (never a password)."""
    settings = current_app.config["SETTINGS"]
    reason = next((line.strip() for line in str(error.orig).splitlines() if line.strip()), "")
    hint = "; is `make run` running?" if settings.env == "development" else ""
    if settings.clusters:
        names = "APP_DATABASE_URL and APP_CLUSTERS"
        return f"cannot connect to a database (check {names}{hint}): {reason}"
    url = sa.make_url(settings.database_url)
    where = f"{hosts_of(url)}/{url.database or ''}"
    return f"cannot connect to the database at {where} (check APP_DATABASE_URL{hint}): {reason}"
