"""A graceful reload (SIGHUP) serves changed code, and no metrics directory outlives its master.

gunicorn runs from a copy of the service's code, which the test then changes: the master
must hold none of it, so the workers it starts after SIGHUP import the code on disk. Each
gunicorn gets a temporary directory (``TMPDIR``) of its own, where its metrics go.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import start_service, stop_service
from tests.support import REPO_ROOT, child_pids, eventually, gunicorn_refusal

pytestmark = pytest.mark.e2e


def _copy_of_the_service(target: Path) -> Path:
    for name in ("app", "config"):
        shutil.copytree(
            REPO_ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("wsgi.py", "gunicorn.conf.py"):
        shutil.copy2(REPO_ROOT / name, target / name)
    return target


def _metrics_dirs_of(master: int, temp: Path) -> list[Path]:
    return sorted(temp.glob(f"tenantpool-metrics-{master}-*"))


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_reload_serves_changed_code_and_leaves_no_metrics_directory(
    app_env: dict[str, str], migrated: None, tmp_path: Path
) -> None:
    code = _copy_of_the_service(tmp_path / "service")
    temp = tmp_path / "tmp"
    temp.mkdir()
    # What a master killed with SIGKILL leaves behind; the next start removes it.
    stale = Path(tempfile.mkdtemp(prefix=f"tenantpool-metrics-{_dead_pid()}-", dir=temp))
    (stale / "counter_1.db").write_bytes(b"")
    env = {**app_env, "TMPDIR": str(temp)}
    process, service = start_service(env, tmp_path / "gunicorn.log", cwd=code)
    try:
        assert not stale.exists()
        (made,) = _metrics_dirs_of(service.pid, temp)
        assert requests.get(f"{service.url}/healthz", timeout=10).json() == {"status": "ok"}
        old_workers = child_pids(service.pid)

        health = code / "app" / "api" / "health.py"
        health.write_text(health.read_text().replace('status="ok"', 'status="reloaded"'))
        os.kill(service.pid, signal.SIGHUP)

        def replaced() -> bool:
            workers = child_pids(service.pid)
            return len(workers) == 2 and not workers & old_workers

        assert eventually(replaced, timeout=60), service.log_path.read_text()
        answer = requests.get(f"{service.url}/healthz", timeout=10).json()
        assert answer == {"status": "reloaded"}, service.log_path.read_text()
        assert _metrics_dirs_of(service.pid, temp) == [made]  # the reload kept its own
    finally:
        stop_service(process)
    assert list(temp.iterdir()) == []


def test_reload_a_refused_start_leaves_no_metrics_directory(
    app_env: dict[str, str], migrated: None, tmp_path: Path
) -> None:
    # 256 workers' connections cannot fit in the suite's cluster: gunicorn refuses to start.
    env = {**app_env, "APP_WORKERS": "256", "TMPDIR": str(tmp_path)}
    (line,) = gunicorn_refusal(env)
    assert line.startswith("tenantpool: not starting: 256 workers x ")
    assert list(tmp_path.iterdir()) == []
