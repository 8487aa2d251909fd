"""Bad input through a real gunicorn: one service and two tenants for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.tenancy import Tenancy
from app.tenancy.control.provisioning import create_tenant
from tests.e2e.conftest import SeededTenant, Service, start_service, stop_service

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def fuzz_service(
    app_env: dict[str, str], migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """gunicorn with the default limits, 2 workers x 4 threads."""
    log_path = tmp_path_factory.mktemp("fuzz") / "gunicorn.log"
    process, service = start_service(app_env, log_path)
    yield service
    stop_service(process)


@pytest.fixture(scope="session")
def fuzz_tenants(tenancy: Tenancy) -> list[SeededTenant]:
    tenants = []
    for name in ("fuzz-a", "fuzz-b"):
        made = create_tenant(tenancy.clusters, tenancy.keyring, name, tenancy.limits)
        tenants.append(SeededTenant(str(made.id), made.name, made.api_key))
    return tenants
