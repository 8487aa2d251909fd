"""Where the PostgreSQL server binaries (initdb, pg_ctl, postgres) are, and their version."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from app.dev.errors import PostgresNotFound

MIN_VERSION = 14
_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_FALLBACK_ROOTS = (Path("/usr/lib/postgresql"),)
_INSTALL_HINT = (
    f"PostgreSQL server binaries ({MIN_VERSION}+) not found: install them with "
    "`apt-get install postgresql` (Debian/Ubuntu) or `brew install postgresql@16`, "
    "or put their bin directory on PATH"
)


def find_pg_bindir(
    *, path: str | None = None, fallback_roots: tuple[Path, ...] = _FALLBACK_ROOTS
) -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` (version 14 or newer).

    Looks on ``path`` (default: ``$PATH``, symlinks resolved), then at ``pg_config
    --bindir``, then under ``<root>/*/bin`` for each fallback root, highest version first.
    Raises PostgresNotFound when none qualifies.
    """
    search_path = os.environ.get("PATH", os.defpath) if path is None else path
    candidates: list[Path] = []
    initdb = shutil.which("initdb", path=search_path)
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    pg_config = shutil.which("pg_config", path=search_path)
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out).resolve())
    for root in fallback_roots:
        versioned = [p for p in root.glob("*/bin") if p.parent.name.isdigit()]
        candidates.extend(sorted(versioned, key=lambda p: int(p.parent.name), reverse=True))
    for bindir in candidates:
        if all((bindir / name).is_file() for name in _SERVER_BINARIES):
            version = _server_version(bindir)
            if version is not None and version >= MIN_VERSION:
                return bindir
    raise PostgresNotFound(_INSTALL_HINT)


def pg_version(bindir: Path) -> int:
    """The major version of the server in ``bindir``; raises PostgresNotFound if unreadable."""
    version = _server_version(bindir)
    if version is None:
        raise PostgresNotFound(_INSTALL_HINT)
    return version


def _server_version(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None
