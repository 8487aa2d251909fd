"""``flask tenants create|list|rotate|suspend|resume|delete|move|stats``: admin, from a shell.

Same functions as the admin API (``app.tenancy.control.provisioning``), same events and audit
lines; the actor is ``cli:<user>@<host>``. A tenant is named by its id or its name.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from flask import current_app

from app.cli.progress import Progress, progress
from app.schemas.tenants import STATUSES
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control import provisioning, queries
from app.tenancy.control.audit import cli_actor
from app.tenancy.control.clusters import DEFAULT_CLUSTER
from app.tenancy.control.moving import move_tenant
from app.tenancy.control.queries import TenantInfo
from app.tenancy.errors import (
    InvalidTenantHeader,
    TenancyError,
    TenantNameTaken,
    TenantNotFound,
    UnknownCluster,
)
from app.tenancy.serving.resolve import parse_tenant_id
from app.tenant_stats import tenant_stats


@click.group()
def tenants() -> None:
    """Create, list, rotate, suspend, resume, delete and move tenants."""


def known_cluster(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback: ``value`` must name a configured cluster."""
    try:
        tenancy_of(current_app).clusters.url(value)
    except UnknownCluster as error:
        raise click.BadParameter(str(error)) from None
    return value


@tenants.command()
@click.argument("name")
@click.option(
    "--cluster",
    default=DEFAULT_CLUSTER,
    show_default=True,
    callback=known_cluster,
    help="The cluster to hold its rows (a name in APP_CLUSTERS).",
)
def create(name: str, cluster: str) -> None:
    """Create tenant NAME on CLUSTER and print its id and API key (shown this once)."""
    tenancy = _tenancy()
    try:
        created = provisioning.create_tenant(
            tenancy.clusters,
            tenancy.keyring,
            name,
            tenancy.limits,
            cluster=cluster,
            actor=cli_actor(),
        )
    except TenantNameTaken as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"id={created.id}  name={created.name}  api_key={created.api_key}")
    click.echo("the API key is shown this once; store it now", err=True)


@tenants.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only these tenants.")
def list_(status: str | None) -> None:
    """List tenants, oldest first."""
    engine = _tenancy().control_engine
    page, shown = 1, 0
    click.echo(f"{'id':36}  {'status':9}  {'key':8}  {'created':19}  name")
    while True:
        records, total = queries.list_tenants(engine, page=page, page_size=100, status=status)
        for info in records:
            created = info.created_at.strftime("%Y-%m-%d %H:%M:%S")
            click.echo(
                f"{info.id!s:36}  {info.status:9}  {info.key_id:8}  {created:19}  {info.name}"
            )
        shown += len(records)
        if not records or shown >= total:
            break
        page += 1
    click.echo(f"{shown} tenant(s)", err=True)


@tenants.command()
@click.argument("tenant")
@click.option("--credentials/--no-credentials", default=None, help="New database password.")
@click.option("--api-key", is_flag=True, help="New API key, printed once.")
def rotate(tenant: str, credentials: bool | None, api_key: bool) -> None:
    """Rotate TENANT's database password (the default) and/or its API key, online."""
    tenancy = _tenancy()
    info = _find(tenancy, tenant)
    if credentials or (credentials is None and not api_key):
        provisioning.rotate_credentials(
            tenancy.clusters,
            tenancy.keyring,
            info.id,
            scram_iterations=tenancy.limits.scram_iterations,
            actor=cli_actor(),
        )
        click.echo(f"rotated the database credentials of {info.name} ({info.id})")
    if api_key:
        new_key = provisioning.rotate_api_key(tenancy.control_engine, info.id, actor=cli_actor())
        click.echo(f"id={info.id}  name={info.name}  api_key={new_key}")
        click.echo("the API key is shown this once; the old one no longer works", err=True)


@tenants.command()
@click.argument("tenant")
def suspend(tenant: str) -> None:
    """Suspend TENANT: its requests get 403, its data stays."""
    _change_status(tenant, provisioning.suspend_tenant)


@tenants.command()
@click.argument("tenant")
def resume(tenant: str) -> None:
    """Resume a suspended TENANT."""
    _change_status(tenant, provisioning.resume_tenant)


@tenants.command()
@click.argument("tenant")
@click.option(
    "--grace",
    type=click.FloatRange(0, 300),
    default=provisioning.DEFAULT_DELETE_GRACE,
    show_default=True,
    help="Seconds its running queries get before their sessions are ended.",
)
@click.confirmation_option(prompt="Delete the tenant, its role and all its rows?")
def delete(tenant: str, grace: float) -> None:
    """Delete TENANT: end its sessions, drop its role, delete its rows and its secret."""
    tenancy = _tenancy()
    info = _find(tenancy, tenant)
    provisioning.delete_tenant(tenancy.clusters, info.id, actor=cli_actor(), grace=grace)
    click.echo(f"deleted {info.name} ({info.id})")


@tenants.command()
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
    tenancy = _tenancy()
    tenant_id = _find(tenancy, tenant).id
    click.echo(f"moving tenant {tenant_id} to {target}", err=True)
    tables = _TableProgress()
    try:
        report = move_tenant(
            tenancy.clusters,
            tenancy.engines,
            tenancy.limits,
            tenant_id,
            target,
            progress=tables,
            batch_size=batch_size,
            actor=cli_actor(),
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


@tenants.command()
@click.argument("tenant")
@click.option(
    "--workers-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The running service's PROMETHEUS_MULTIPROC_DIR, where its workers answer.",
)
@click.option("--as-json", "as_json", is_flag=True, help="The report as the admin API gives it.")
def stats(tenant: str, workers_dir: Path | None, as_json: bool) -> None:
    """TENANT across the service's workers and on its database server (the per-tenant view)."""
    tenancy = _tenancy()
    report = tenant_stats(
        tenancy,
        _find(tenancy, tenant),
        workers_directory=workers_dir,
        include_self=False,  # this process serves no request
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for line in _stats_lines(report):
        click.echo(line)
    if not report["workers"]:
        click.echo(
            "no worker answered: pass --workers-dir (the service's PROMETHEUS_MULTIPROC_DIR), "
            "or ask the admin API (GET /v1/admin/tenants/<id>/stats)",
            err=True,
        )


def _stats_lines(report: dict[str, Any]) -> list[str]:
    tenant, totals = report["tenant"], report["totals"]
    lines = [
        f"tenant {tenant['id']} ({tenant['name']}): {tenant['status']}, cluster "
        f"{tenant['cluster']}, serving {report['serving']}",
        f"{'worker':>8}  {'way':9}  {'engine':6}  {'open':>4}  {'in use':>6}  {'shared':>6}  "
        f"{'flight':>6}  {'recent':>6}  {'4xx':>4}  {'5xx':>4}  last login",
    ]
    for view in report["workers"]:
        conn, recent = view["connections"], view["recent"]
        lines.append(
            f"{view['pid']:>8}  {view['way']:9}  {'yes' if view['engine'] else 'no':6}  "
            f"{conn['dedicated_open']:>4}  {conn['dedicated_in_use']:>6}  "
            f"{conn['shared_in_use']:>6}  {view['in_flight']:>6}  {recent['requests']:>6}  "
            f"{recent['client_errors']:>4}  {recent['server_errors']:>4}  "
            f"{view['last_login_at'] or '-'}"
        )
    database = report["database"]
    by_worker = ", ".join(f"{b['pid']}: {b['connections']}" for b in database["by_worker"])
    if database["note"]:
        by_worker = database["note"]
    lines += [
        f"total: {totals['workers']} worker(s), {totals['in_flight']} in flight, "
        f"{totals['recent']['requests']} recent requests, last request "
        f"{totals['last_request_at'] or '-'}",
        f"database: {database['connections']} connection(s)"
        + (f" ({by_worker})" if by_worker else ""),
    ]
    if report["unanswered_workers"]:
        lines.append(f"no answer from: {', '.join(map(str, report['unanswered_workers']))}")
    return lines


def _change_status(tenant: str, change: Callable[..., TenantInfo]) -> None:
    tenancy = _tenancy()
    info = change(tenancy.clusters, _find(tenancy, tenant).id, actor=cli_actor())
    click.echo(f"{info.status}: {info.name} ({info.id})")


def _tenancy() -> Tenancy:
    return tenancy_of(current_app)


def _find(tenancy: Tenancy, tenant: str) -> TenantInfo:
    """The tenant whose id or name is ``tenant``; a usage error if there is none."""
    try:
        return queries.get_tenant(tenancy.control_engine, parse_tenant_id([tenant]))
    except (InvalidTenantHeader, TenantNotFound):
        pass  # not an id, or no tenant has it: try it as a name
    info = queries.find_tenant_by_name(tenancy.control_engine, tenant)
    if info is None:
        raise click.ClickException(f"no tenant with id or name {tenant!r}")
    return info


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
