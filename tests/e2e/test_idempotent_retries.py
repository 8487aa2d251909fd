"""``Idempotency-Key`` through a real gunicorn (2 workers x 4 threads): retries and races.

A retry may land on any worker: the key lives in the database, not in a worker, so every
retry gets the first answer and the write happens once.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.e2e.conftest import SeededTenant, Service
from tests.support import eventually

pytestmark = pytest.mark.e2e


def _post(service: Service, tenant: SeededTenant, key: str, name: str) -> requests.Response:
    # A new connection each time (no requests.Session): gunicorn hands it to any worker.
    return requests.post(
        f"{service.url}/v1/users",
        json={"first_name": name, "last_name": "Retry"},
        headers={**tenant.headers, "Idempotency-Key": key},
        timeout=10,
    )


def _named(service: Service, tenant: SeededTenant, name: str) -> int:
    listed = requests.get(
        f"{service.url}/v1/users",
        params={"search": name, "page_size": 100},
        headers=tenant.headers,
        timeout=10,
    ).json()
    return sum(1 for user in listed["records"] if user["first_name"] == name)


def _workers_of(service: Service, request_ids: set[str]) -> set[int]:
    """The pids of the workers whose access log names one of ``request_ids``."""
    pids = set()
    for line in service.log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # gunicorn's own lines, or one still being written
            continue
        if isinstance(record, dict) and record.get("request_id") in request_ids:
            pids.add(record["pid"])
    return pids


def test_idempotency_retries_on_any_worker_make_one_row_and_identical_answers(
    service: Service, seeded: list[SeededTenant]
) -> None:
    tenant, name, key = seeded[0], uuid.uuid4().hex, str(uuid.uuid4())
    first = _post(service, tenant, key, name)
    assert first.status_code == 201, first.text
    request_ids = {first.headers["X-Request-ID"]}
    for _ in range(40):  # until the retries have landed on another worker than the first
        again = _post(service, tenant, key, name)
        assert (again.status_code, again.content) == (first.status_code, first.content)
        assert again.headers["Location"] == first.headers["Location"]
        assert again.headers["Idempotent-Replayed"] == "true"
        request_ids.add(again.headers["X-Request-ID"])
        if len(request_ids) >= 4 and eventually(
            lambda: len(_workers_of(service, request_ids)) >= 2, timeout=1
        ):
            break
    assert len(_workers_of(service, request_ids)) >= 2
    assert _named(service, tenant, name) == 1


def test_idempotency_concurrent_requests_with_one_key_write_once(
    service: Service, seeded: list[SeededTenant]
) -> None:
    tenant, name, key = seeded[1], uuid.uuid4().hex, str(uuid.uuid4())
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _post(service, tenant, key, name), range(8)))
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {201, 409}, statuses
    created = {answer.content for answer in answers if answer.status_code == 201}
    assert len(created) == 1  # every 201 is the one write's answer
    for busy in (answer for answer in answers if answer.status_code == 409):
        assert busy.json()["code"] == "idempotency_key_in_use"
    assert _named(service, tenant, name) == 1
    assert _post(service, tenant, key, name).content in created  # and a retry gets it too
