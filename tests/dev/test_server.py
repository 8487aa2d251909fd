"""``make run``'s settings file, and the README's second-terminal commands run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.dev import server
from tests.conftest import FreshDatabase
from tests.support import REPO_ROOT


def test_server_dev_env_carries_the_local_clusters_url(tmp_path: Path) -> None:
    path = tmp_path / "var" / "dev.env"
    secrets = server.load_dev_env(path)
    server.record_database_url("postgresql://tenantpool:pw@127.0.0.1:5001/tenantpool", path)
    server.record_database_url("postgresql://tenantpool:pw@127.0.0.1:5002/tenantpool", path)
    values = server.read_dev_env(path)
    assert values == {**secrets, "APP_DATABASE_URL": values["APP_DATABASE_URL"]}
    assert values["APP_DATABASE_URL"].endswith(":5002/tenantpool")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # A database given from outside is not copied into var/.
    server.record_database_url(None, path)
    assert server.read_dev_env(path) == secrets


def test_server_a_shell_that_sourced_dev_env_still_gets_the_local_cluster() -> None:
    dev_env = {"APP_DATABASE_URL": "postgresql://tenantpool:pw@127.0.0.1:5001/tenantpool"}
    assert server.wants_local_cluster({}, dev_env)
    assert server.wants_local_cluster(dict(dev_env), dev_env)
    assert not server.wants_local_cluster({"APP_DATABASE_URL": "postgresql://db/x"}, dev_env)


def _second_terminal_block() -> str:
    """The README's fenced block that starts a second terminal beside ``make run``."""
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    (block,) = [block for block in blocks if server.SECOND_TERMINAL.split("; ", 1)[1] in block]
    return str(block)


def test_server_readme_second_terminal_commands_work_as_written(
    tmp_path: Path, fresh_database: FreshDatabase
) -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("the README's commands use the virtualenv make run makes")
    block = _second_terminal_block()
    assert block.startswith("source .venv/bin/activate")
    flask_lines = [line for line in block.splitlines() if line.startswith("flask ")]
    assert "flask --app wsgi tenancy check" in flask_lines
    # A checkout as make run leaves it: the venv, the code, var/dev.env with the cluster's URL.
    (tmp_path / ".venv").symlink_to(sys.prefix)
    for name in ("app", "config", "migrations", "wsgi.py"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    dev_env = tmp_path / "var" / "dev.env"
    server.load_dev_env(dev_env)
    server.record_database_url(fresh_database()["APP_DATABASE_URL"], dev_env)
    shell = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    # As typed: one shell, stopping at the first command that fails (-x says which).
    result = subprocess.run(
        ["bash", "-e", "-x", "-c", block],
        cwd=tmp_path,
        env=shell,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "tenant isolation check passed" in result.stdout


def test_server_runs_from_the_repository_root() -> None:
    # Where `flask --app wsgi` finds wsgi.py and where var/ belongs (README).
    assert server.REPO_ROOT == REPO_ROOT
    assert server.DEV_ENV == REPO_ROOT / "var" / "dev.env"
