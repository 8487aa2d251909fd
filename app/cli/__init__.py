"""``flask`` commands: one module per command group."""

from __future__ import annotations

from flask import Flask

from app.cli import crypto, db, seed, tenancy, tenants


def init_app(app: Flask) -> None:
    app.cli.add_command(db.db)
    app.cli.add_command(seed.seed_tenants)
    app.cli.add_command(tenants.tenants)
    app.cli.add_command(crypto.crypto)
    app.cli.add_command(tenancy.tenancy)
