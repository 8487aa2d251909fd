"""schemathesis against the served /openapi.json: no 5xx, responses conform, bad input refused.

Tenant operations run as two tenants, the admin API with the admin token.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from app.api import MOUNTS
from app.api.openapi import build_spec
from tests.e2e.conftest import SeededTenant, Service

pytestmark = pytest.mark.e2e

EXAMPLES = 30  # per operation and mode; the soak run makes 300
# (path, method, whether it takes input that negative generation can break)
OPERATIONS = [
    (path, method.upper(), path.startswith("/v1/"))
    for path, item in build_spec(MOUNTS)["paths"].items()
    for method in item
]
CONFIG = {
    "checks": {
        # The server is stricter than OpenAPI 3.0 can say: strings of only whitespace, NUL
        # or lone surrogates, and search_columns without search are refused with 422. So
        # "valid per the document" does not imply accepted; every other check runs.
        "positive_data_acceptance": {"enabled": False},
        # Input too large is refused with 413 (the app), 414 or 431 (gunicorn): rejections.
        "negative_data_rejection": {
            "expected-statuses": [
                *("400", "401", "403", "404", "405", "406", "409", "413", "414", "415"),
                *("422", "428", "429", "431", "5xx"),
            ]
        },
    }
}


@pytest.fixture(scope="session")
def openapi(fuzz_service: Service) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(CONFIG)
    return schemathesis.openapi.from_url(fuzz_service.url + "/openapi.json", config=config)


def _check(
    openapi: schemathesis.BaseSchema,
    service: Service,
    tenants: list[SeededTenant],
    path: str,
    method: str,
    mode: GenerationMode,
    examples: int,
) -> None:
    operation = openapi[path][method]
    if path.startswith("/v1/admin/"):
        identities = [{"Authorization": f"Bearer {service.env['APP_ADMIN_TOKEN']}"}]
    else:
        identities = [tenant.headers for tenant in tenants]
    cases = st.sampled_from(identities).flatmap(
        lambda headers: operation.as_strategy(generation_mode=mode, headers=headers)
    )

    @given(case=cases)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        # The credentials again, as the call's own headers: once schemathesis generates a
        # header of the operation (Idempotency-Key), it counts the strategy's headers as
        # generated and would take valid credentials for made-up ones (check ignored_auth).
        credentials = {"Authorization": case.headers["Authorization"]}
        case.call_and_validate(base_url=service.url, timeout=30, headers=credentials)

    run()


def _modes(takes_input: bool) -> list[GenerationMode]:
    return (
        [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        if takes_input
        else [GenerationMode.POSITIVE]
    )


CASES = [
    pytest.param(path, method, mode, id=f"{method} {path} {mode.value}")
    for path, method, takes_input in OPERATIONS
    for mode in _modes(takes_input)
]


@pytest.mark.parametrize(
    "examples",
    [pytest.param(EXAMPLES, id="short"), pytest.param(300, marks=pytest.mark.soak, id="soak")],
)
@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_schema_operation_conforms(
    openapi: schemathesis.BaseSchema,
    fuzz_service: Service,
    fuzz_tenants: list[SeededTenant],
    path: str,
    method: str,
    mode: GenerationMode,
    examples: int,
) -> None:
    _check(openapi, fuzz_service, fuzz_tenants, path, method, mode, examples)
