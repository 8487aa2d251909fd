"""``flask seed-tenants``: demo tenants and their rows, written through each tenant's engine.

The rows are app/cli/demo_data.py's. ``--keep-keys`` reuses the API keys the ``--output``
file holds (when they still open their tenant) instead of issuing new ones, so ``make run``
prints the same demo keys every time.
"""

from __future__ import annotations

import hmac
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from flask import current_app

from app.cli import demo_data
from app.cli.progress import progress
from app.cli.tenants import known_cluster
from app.models import Tenant
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.audit import cli_actor
from app.tenancy.control.clusters import DEFAULT_CLUSTER
from app.tenancy.control.provisioning import ProvisionedTenant, create_tenants, rotate_api_key
from app.tenancy.serving.resolve import hash_api_key

_CREATE_BATCH = 100  # tenants per control-plane transaction
_USER_WRITERS = 4  # tenants whose rows are written at once


@click.command("seed-tenants")
@click.option("--count", default=3, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--users-per-tenant", default=5, show_default=True, type=click.IntRange(0, 100_000))
@click.option(
    "--products-per-tenant", default=0, show_default=True, type=click.IntRange(0, 100_000)
)
@click.option(
    "--orders-per-tenant",
    default=0,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="Orders of its users for its products (needs both).",
)
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
@click.option(
    "--keep-keys",
    is_flag=True,
    help="Reuse the API keys in --output that still open their tenant, instead of new ones.",
)
def seed_tenants(
    count: int,
    users_per_tenant: int,
    products_per_tenant: int,
    orders_per_tenant: int,
    prefix: str,
    output: Path | None,
    cluster: str,
    keep_keys: bool,
) -> None:
    """Create demo tenants PREFIX-0001..COUNT with users, products and orders.

    Idempotent: existing demo tenants are kept (their API key is replaced, since only its
    hash is stored, unless --keep-keys finds it in --output) and their rows topped up to
    the numbers asked for, wherever they are.
    """
    if keep_keys and output is None:
        raise click.UsageError("--keep-keys reads the keys from --output: give it")
    tenancy = tenancy_of(current_app)
    names = [f"{prefix}-{number:04d}" for number in range(1, count + 1)]
    seeded = _tenants_and_keys(tenancy, names, cluster, output if keep_keys else None)
    wanted = {
        "users": users_per_tenant,
        "products": products_per_tenant,
        "orders": orders_per_tenant,
    }
    # Rows go in through each tenant's own engine, a connection per tenant: a few at a
    # time, since most of that time is the server starting backends.
    with progress(len(seeded), "seeding tenants") as bar, ThreadPoolExecutor(_USER_WRITERS) as pool:
        for _ in pool.map(lambda at: _top_up(tenancy, at, seeded[at], wanted), range(len(seeded))):
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
        output.chmod(0o600)
        output.write_text(json.dumps(seeded, indent=2) + "\n")
    for tenant in seeded:
        key = "" if output is not None else f"  api_key={tenant['api_key']}"
        click.echo(f"{tenant['name']}  id={tenant['id']}{key}")
    if output is not None:
        click.echo(f"wrote {len(seeded)} tenants with their API keys to {output}")


def _tenants_and_keys(
    tenancy: Tenancy, names: list[str], cluster: str, keys_from: Path | None
) -> list[dict[str, str]]:
    """``{"id", "name", "api_key"}`` of each of ``names``, creating those that are missing.

    An existing tenant keeps the key ``keys_from`` holds for it if that key still opens it;
    else it gets a new one (only hashes are stored, so there is no other way to show one).
    """
    existing = _existing_tenants(tenancy, names)
    kept = _kept_keys(tenancy, keys_from, existing) if keys_from else {}
    missing = [name for name in names if name not in existing]
    actor = cli_actor()
    created = _create_tenants(tenancy, missing, cluster=cluster, actor=actor)
    seeded = []
    for name in names:
        if name in kept:
            tenant_id, api_key = existing[name], kept[name]
        elif name in existing:
            tenant_id = existing[name]
            api_key = rotate_api_key(tenancy.control_engine, tenant_id, actor=actor)
        else:
            tenant_id, api_key = created[name].id, created[name].api_key
        seeded.append({"id": str(tenant_id), "name": name, "api_key": api_key})
    return seeded


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


def _kept_keys(tenancy: Tenancy, output: Path, existing: dict[str, uuid.UUID]) -> dict[str, str]:
    """Name -> API key, for the keys ``output`` lists that still open their tenant."""
    try:
        listed: Any = json.loads(output.read_text())
    except (OSError, ValueError):
        return {}
    candidates: dict[str, str] = {}
    for item in listed if isinstance(listed, list) else []:
        if not isinstance(item, dict):
            continue
        name, key = item.get("name"), item.get("api_key")
        if not (isinstance(key, str) and key.isascii()):
            continue  # a hand-edited file: never hashed, never kept
        if name in existing and item.get("id") == str(existing[name]):
            candidates[name] = key
    with tenancy.control_engine.connect() as connection:
        query = sa.select(Tenant.id, Tenant.api_key_hash).where(
            Tenant.id.in_([existing[name] for name in candidates])
        )
        hashes = {row.id: row.api_key_hash for row in connection.execute(query)}
    return {
        name: key
        for name, key in candidates.items()
        if hmac.compare_digest(hash_api_key(key), hashes.get(existing[name], b""))
    }


def _top_up(
    tenancy: Tenancy, position: int, tenant: dict[str, str], wanted: dict[str, int]
) -> None:
    session = tenancy.open_session(uuid.UUID(tenant["id"]))
    try:
        demo_data.top_up(session, position, f"{tenant['name']}.example", **wanted)
        session.commit()
    finally:
        session.close()
