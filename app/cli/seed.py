"""``flask seed-tenants``: demo tenants and their rows, written through each tenant's engine."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import sqlalchemy as sa
from flask import current_app

from app.cli.progress import progress
from app.cli.tenants import known_cluster
from app.models import Tenant, User
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.audit import cli_actor
from app.tenancy.control.clusters import DEFAULT_CLUSTER
from app.tenancy.control.provisioning import ProvisionedTenant, create_tenants, rotate_api_key

FIRST_NAMES = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken")
LAST_NAMES = ("Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
_CREATE_BATCH = 100  # tenants per control-plane transaction
_USER_WRITERS = 4  # tenants whose rows are written at once


@click.command("seed-tenants")
@click.option("--count", default=3, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--users-per-tenant", default=5, show_default=True, type=click.IntRange(0, 100_000))
@click.option("--prefix", default="demo", show_default=True, help="Tenant names are PREFIX-0001...")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write ids, names and API keys as JSON (mode 0600); stdout then shows no key.",
)
@click.option(
    "--cluster",
    default=DEFAULT_CLUSTER,
    show_default=True,
    callback=known_cluster,
    help="Place new tenants on CLUSTER.",
)
def seed_tenants(
    count: int, users_per_tenant: int, prefix: str, output: Path | None, cluster: str
) -> None:
    """Create demo tenants PREFIX-0001..COUNT, each with USERS_PER_TENANT users.

    Idempotent: existing demo tenants are kept (their API key is replaced, since only its
    hash is stored) and their users topped up to the number asked for, wherever they are.
    """
    tenancy = tenancy_of(current_app)
    names = [f"{prefix}-{number:04d}" for number in range(1, count + 1)]
    existing = _existing_tenants(tenancy, names)
    missing = [name for name in names if name not in existing]
    actor = cli_actor()
    created = _create_tenants(tenancy, missing, cluster=cluster, actor=actor)
    seeded = []
    for name in names:
        if name in existing:
            tenant_id = existing[name]
            api_key = rotate_api_key(tenancy.control_engine, tenant_id, actor=actor)
        else:
            tenant_id, api_key = created[name].id, created[name].api_key
        seeded.append({"id": str(tenant_id), "name": name, "api_key": api_key})
    # Rows go in through each tenant's own engine, a connection per tenant: a few at a
    # time, since most of that time is the server starting backends.
    with progress(len(seeded), "seeding tenants") as bar, ThreadPoolExecutor(_USER_WRITERS) as pool:
        for _ in pool.map(
            lambda t: _top_up_users(tenancy, uuid.UUID(t["id"]), users_per_tenant), seeded
        ):
            bar.update()
    _report(seeded, output)


def _report(seeded: list[dict[str, str]], output: Path | None) -> None:
    """Write the keys to ``output`` (0600); stdout gets ids and names only when there is one.

    Terminals scroll into logs and CI output: with a file to hold them, keys never go to
    stdout. Without ``--output`` stdout is the only place they could go.
    """
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.touch(mode=0o600)
        output.write_text(json.dumps(seeded, indent=2) + "\n")
    for tenant in seeded:
        key = "" if output is not None else f"  api_key={tenant['api_key']}"
        click.echo(f"{tenant['name']}  id={tenant['id']}{key}")
    if output is not None:
        click.echo(f"wrote {len(seeded)} tenants with their API keys to {output}")


def _existing_tenants(tenancy: Tenancy, names: list[str]) -> dict[str, uuid.UUID]:
    """The id of each of ``names`` that is a tenant already."""
    with tenancy.control_engine.connect() as connection:
        rows = connection.execute(sa.select(Tenant.name, Tenant.id).where(Tenant.name.in_(names)))
        return {row.name: row.id for row in rows}


def _create_tenants(
    tenancy: Tenancy, names: list[str], *, cluster: str, actor: str
) -> dict[str, ProvisionedTenant]:
    """Create tenants ``names`` on ``cluster``, a batch per control-plane transaction."""
    created: dict[str, ProvisionedTenant] = {}
    with progress(len(names), "creating tenants") as bar:
        for start in range(0, len(names), _CREATE_BATCH):
            batch = names[start : start + _CREATE_BATCH]
            for new in create_tenants(
                tenancy.clusters,
                tenancy.keyring,
                batch,
                tenancy.limits,
                cluster=cluster,
                actor=actor,
            ):
                created[new.name] = new
            bar.update(len(batch))
    return created


def _top_up_users(tenancy: Tenancy, tenant_id: uuid.UUID, wanted: int) -> None:
    session = tenancy.open_session(tenant_id)
    try:
        have = session.scalar(sa.select(sa.func.count()).select_from(User)) or 0
        rows = [
            {
                "first_name": FIRST_NAMES[number % len(FIRST_NAMES)],
                "last_name": LAST_NAMES[(number // len(FIRST_NAMES)) % len(LAST_NAMES)],
                "email": f"user{number}@example.com",
                "confirmed": number % 2 == 0,
            }
            for number in range(have, wanted)
        ]
        if rows:
            session.execute(sa.insert(User), rows)
        session.commit()
    finally:
        session.close()
