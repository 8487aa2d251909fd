"""``flask tenancy check``: lists what is wrong and exits non-zero unless tenants are isolated."""

from __future__ import annotations

import click
from flask import current_app

from app.hooks import tenancy_of
from app.tenancy.checks import check_isolation


@click.group()
def tenancy() -> None:
    """Tenant isolation of the database."""


@tenancy.command()
def check() -> None:
    """Check RLS, policies, indexes, grants, tenant roles, definer functions and views."""
    with tenancy_of(current_app).control_engine.connect() as connection:
        result = check_isolation(connection)
    if not result.ok:
        for problem in result.problems:
            click.echo(problem)
        raise click.ClickException(
            f"tenant isolation check failed: {len(result.problems)} problem(s)"
        )
    click.echo(
        f"tenant isolation check passed: {result.tenant_tables} tenant table(s), "
        f"{result.tenant_roles} tenant role(s)"
    )
