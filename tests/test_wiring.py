"""Building the app connects to nothing and starts no thread; the first tenant request does.

The reaper thread is also what opens the LISTEN connection, so a one-shot ``flask``
command that starts no thread holds no connection it never needed.
"""

from __future__ import annotations

import subprocess
import sys
import threading

from flask import Flask

from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.serving.reaper import THREAD_NAME
from tests.support import REPO_ROOT, auth_headers

# Runs `flask tenants list` through the app's own CLI; lists the live threads around it.
_THREADS_AROUND_A_COMMAND = """
import threading
from app import create_app
app = create_app()
built = sorted(thread.name for thread in threading.enumerate())
with app.app_context():  # as the real `flask` command line pushes one
    result = app.test_cli_runner().invoke(args=["tenants", "list"])
after = sorted(thread.name for thread in threading.enumerate())
print(result.exit_code, built, after)
"""


def test_wiring_one_shot_command_starts_no_thread(app_env: dict[str, str], migrated: None) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _THREADS_AROUND_A_COMMAND],
        cwd=REPO_ROOT,
        env={**app_env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "0 ['MainThread'] ['MainThread']", result.stderr


def test_wiring_first_tenant_request_starts_the_reaper(
    app: Flask, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    assert app.test_client().get("/v1/users", headers=auth_headers(tenant_a)).status_code == 200
    assert tenancy.reaper is not None
    assert tenancy.reaper.running
    assert THREAD_NAME in {thread.name for thread in threading.enumerate()}
