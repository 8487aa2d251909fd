"""``flask tenancy check``: lists what is wrong and exits non-zero unless tenants are isolated."""

from __future__ import annotations

import click
import sqlalchemy as sa
from flask import current_app

from app.cli.db import databases
from app.tenancy import tenancy_of
from app.tenancy.control.checks import check_isolation


@click.group()
def tenancy() -> None:
    """Tenant isolation of the database."""


@tenancy.command()
def check() -> None:
    """Check RLS, policies, indexes, grants, tenant roles, definer functions and views.

    On the control plane's database and on every other cluster of ``APP_CLUSTERS``.
    """
    tenancy = tenancy_of(current_app)
    targets = databases()
    problems: list[str] = []
    tables = roles = user_scoped = 0
    for position, (label, url) in enumerate(targets):
        engine = tenancy.control_engine if position == 0 else sa.create_engine(url)
        try:
            with engine.connect() as connection:
                result = check_isolation(connection, control_plane=position == 0)
        finally:
            if engine is not tenancy.control_engine:
                engine.dispose()
        prefix = f"{label}: " if len(targets) > 1 else ""
        problems += [prefix + problem for problem in result.problems]
        tables, roles = tables + result.tenant_tables, roles + result.tenant_roles
        user_scoped += result.user_scoped_tables
    if problems:
        for problem in problems:
            click.echo(problem)
        raise click.ClickException(f"tenant isolation check failed: {len(problems)} problem(s)")
    where = f" on {len(targets)} databases" if len(targets) > 1 else ""
    click.echo(
        f"tenant isolation check passed{where}: {tables} tenant table(s) ({user_scoped} "
        f"user-scoped), {roles} tenant role(s)"
    )
