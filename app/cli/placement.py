"""``flask tenants move``: move a tenant to another cluster; ``--cluster`` checks for the rest."""

from __future__ import annotations

import contextlib
import uuid

import click
import sqlalchemy as sa
from flask import current_app

from app.cli.progress import Progress, progress
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
    click.echo(f"moving tenant {tenant_id} to {target}", err=True)
    tables = _TableProgress()
    try:
        report = move_tenant(
            tenancy.clusters,
            tenancy.keyring,
            tenancy.limits,
            tenant_id,
            target,
            progress=tables,
            batch_size=batch_size,
        )
    except BaseException as error:
        tables.finish(error)
        if isinstance(error, TenancyError):
            raise click.ClickException(str(error)) from None
        if isinstance(error, sa.exc.DBAPIError):
            # One line without SQL text; running the move again resumes or finishes it.
            raise click.ClickException(
                f"the move stopped on a database error ({type(error.orig).__name__}: "
                f"{str(error.orig).strip().splitlines()[0] if error.orig else ''}); "
                "run it again when the cluster answers"
            ) from None
        raise
    tables.finish()
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


class _TableProgress:
    """The move's progress callback: one progress display per table, in turn."""

    def __init__(self) -> None:
        self._table: str | None = None
        self._display: contextlib.AbstractContextManager[Progress] | None = None
        self._bar: Progress | None = None
        self._done = 0

    def __call__(self, table: str, copied: int, total: int) -> None:
        if table != self._table:
            self.finish()
            self._table, self._done = table, 0
            self._display = progress(total, f"copying {table}")
            self._bar = self._display.__enter__()
        if self._bar is not None and copied > self._done:
            self._bar.update(copied - self._done)
            self._done = copied

    def finish(self, error: BaseException | None = None) -> None:
        """Close the current table's display (``error``: it stopped there)."""
        display, self._display, self._bar, self._table = self._display, None, None, None
        if display is not None:
            if error is None:
                display.__exit__(None, None, None)
            else:
                display.__exit__(type(error), error, error.__traceback__)
