"""``flask crypto generate-key|rotate``: keyring keys and re-encrypting tenant secrets.

Key rotation, everywhere the service runs (docs/security.md, "Key management"): add the new
key to every keyring and reload; make it the active key everywhere and reload; run
``flask crypto rotate``; only then drop the old key.
"""

from __future__ import annotations

import datetime as dt

import click
from flask import current_app

from app.cli.progress import progress
from app.crypto import CryptoError, Keyring, generate_key
from app.tenancy import tenancy_of
from app.tenancy.control.rekey import count_stale, reencrypt_all


@click.group()
def crypto() -> None:
    """Encryption keys of tenant secrets."""


@crypto.command("generate-key")
@click.option("--key-id", help="Id of the new key (default: k<UTC date>).")
def generate_key_command(key_id: str | None) -> None:
    """Print a new random 256-bit key as KEY_ID:64-hex, an APP_ENCRYPTION_KEYS entry."""
    key_id = key_id or "k" + dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    key = generate_key()
    try:
        Keyring({key_id: bytes.fromhex(key)}, key_id)  # the keyring's own checks of the id
    except CryptoError as error:
        raise click.BadParameter(str(error), param_hint="--key-id") from None
    click.echo(f"{key_id}:{key}")
    click.echo(
        "add it to APP_ENCRYPTION_KEYS everywhere before making it APP_ENCRYPTION_ACTIVE_KEY",
        err=True,
    )


@crypto.command()
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=100, show_default=True)
def rotate(batch_size: int) -> None:
    """Re-encrypt every secret (tenants' and gateways' passwords) under the active key.

    Online, idempotent and safe to interrupt: each batch commits on its own, and running
    it again carries on where it stopped. Exits non-zero if any secret is left behind.
    """
    tenancy = tenancy_of(current_app)
    active = tenancy.keyring.active_key_id
    pending = count_stale(tenancy.control_engine, active)
    with progress(pending, f"re-encrypting secrets under {active!r}") as bar:
        report = reencrypt_all(
            tenancy.control_engine, tenancy.keyring, batch_size=batch_size, progress=bar.update
        )
    click.echo(f"{report.reencrypted} secret(s) re-encrypted under key {active!r}")
    for tenant_id in report.failed:
        click.echo(f"tenant {tenant_id}: cannot decrypt its secret", err=True)
    for role in report.failed_gateways:
        click.echo(f"gateway {role}: cannot decrypt its secret", err=True)
    left = count_stale(tenancy.control_engine, active)
    failed = len(report.failed) + len(report.failed_gateways)
    if failed:
        raise click.ClickException(
            f"{failed} secret(s) could not be decrypted: put the key they name "
            "back in APP_ENCRYPTION_KEYS and run this again"
        )
    if left:
        raise click.ClickException(
            f"{left} secret(s) were written under another key meanwhile (a process with an "
            "older active key?); run this again"
        )
