"""``flask tenants move``: move a tenant to another cluster; ``--cluster`` checks for the rest."""

from __future__ import annotations

import uuid

import click
import sqlalchemy as sa
from flask import current_app

from app.hooks import tenancy_of
from app.models import Tenant
from app.tenancy.errors import TenancyError, UnknownCluster
from app.tenancy.moving import move_tenant


def known_cluster(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback: ``value`` must name a configured cluster."""
    try:
        tenancy_of(current_app).clusters.url(value)
    except UnknownCluster as error:
        raise click.BadParameter(str(error)) from None
    return value


@click.command("move")
@click.argument("tenant")
@click.option(
    "--to", "target", required=True, callback=known_cluster, help="The cluster to move it to."
)
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000))
def move(tenant: str, target: str, batch_size: int) -> None:
    """Move TENANT (id or name) with all its rows to the cluster TARGET.

    Its requests get 503 with Retry-After while the rows are copied; no acknowledged write
    is lost. Running it again after an interruption finishes or undoes the move.
    """
    tenancy = tenancy_of(current_app)
    tenant_id = _tenant_id(tenancy.control_engine, tenant)
    last_shown: dict[str, int] = {}

    def progress(table: str, copied: int, total: int) -> None:
        # Every 10 % and at the end: enough to watch a long copy, not a line per batch.
        step = max(total // 10, 1)
        if copied == total or copied - last_shown.get(table, -step) >= step:
            last_shown[table] = copied
            click.echo(f"  {table}: {copied}/{total} rows", err=True)

    click.echo(f"moving tenant {tenant_id} to {target}", err=True)
    try:
        report = move_tenant(
            tenancy.clusters,
            tenancy.keyring,
            tenancy.limits,
            tenant_id,
            target,
            progress=progress,
            batch_size=batch_size,
        )
    except TenancyError as error:
        raise click.ClickException(str(error)) from None
    if report.source == report.target:
        removed = ", ".join(report.removed_from) or "none found"
        click.echo(f"tenant {tenant_id} is on {target} already; old copies removed: {removed}")
        return
    rows = ", ".join(f"{table} {count}" for table, count in report.rows.items())
    click.echo(
        f"moved tenant {tenant_id} from {report.source} to {report.target} ({rows} rows); "
        f"old copy removed"
    )


def _tenant_id(control: sa.Engine, tenant: str) -> uuid.UUID:
    try:
        return uuid.UUID(tenant)
    except ValueError:
        pass
    with control.connect() as connection:
        found = connection.execute(sa.select(Tenant.id).where(Tenant.name == tenant)).scalar()
    if found is None:
        raise click.BadParameter(f"no tenant with id or name {tenant!r}", param_hint="TENANT")
    return found
