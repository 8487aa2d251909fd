"""``flask tenants create|list|rotate|suspend|resume|delete|move``: the admin API, from a shell.

Same functions as the admin API (``app.tenancy.provisioning``), same events and audit
lines; the actor is ``cli:<user>@<host>``. A tenant is named by its id or its name.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from flask import current_app

from app.cli.placement import known_cluster, move
from app.hooks import tenancy_of
from app.tenancy import Tenancy, provisioning
from app.tenancy.audit import cli_actor
from app.tenancy.clusters import DEFAULT_CLUSTER
from app.tenancy.errors import InvalidTenantHeader, TenantNameTaken, TenantNotFound
from app.tenancy.provisioning import TenantInfo
from app.tenancy.resolve import parse_tenant_id


@click.group()
def tenants() -> None:
    """Create, list, rotate, suspend, resume, delete and move tenants."""


tenants.add_command(move)


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
@click.option("--status", type=click.Choice(["active", "suspended"]), help="Only these tenants.")
def list_(status: str | None) -> None:
    """List tenants, oldest first."""
    engine = _tenancy().control_engine
    page, shown = 1, 0
    click.echo(f"{'id':36}  {'status':9}  {'key':8}  {'created':19}  name")
    while True:
        records, total = provisioning.list_tenants(engine, page=page, page_size=100, status=status)
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


def _change_status(tenant: str, change: Callable[..., TenantInfo]) -> None:
    tenancy = _tenancy()
    info = change(tenancy.clusters, _find(tenancy, tenant).id, actor=cli_actor())
    click.echo(f"{info.status}: {info.name} ({info.id})")


def _tenancy() -> Tenancy:
    return tenancy_of(current_app)


def _find(tenancy: Tenancy, tenant: str) -> TenantInfo:
    """The tenant whose id or name is ``tenant``; a usage error if there is none."""
    try:
        return provisioning.get_tenant(tenancy.control_engine, parse_tenant_id([tenant]))
    except (InvalidTenantHeader, TenantNotFound):
        pass  # not an id, or no tenant has it: try it as a name
    info = provisioning.find_tenant_by_name(tenancy.control_engine, tenant)
    if info is None:
        raise click.ClickException(f"no tenant with id or name {tenant!r}")
    return info
