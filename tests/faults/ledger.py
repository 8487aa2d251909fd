"""A ledger of every write sent to the service, a mixed client load, and the ledger's check.

Every write carries a unique marker. After a fault, :meth:`Ledger.verify` reads each
tenant's rows back through the API, as that tenant: every acknowledged (2xx) write is there
exactly once, under its own tenant only; a write that was not acknowledged is there at most
once (a commit can succeed on the server while its answer is lost), and never elsewhere.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from tests.e2e.conftest import SeededTenant

MARKER_PREFIX = "ledger-"
# The field of each resource that carries the marker, and a valid body around it.
RESOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    "/v1/users": ("last_name", {"first_name": "Fault"}),
    "/v1/products": ("name", {"price": "1.00", "stock": 1}),
}


@dataclass(frozen=True)
class Outcome:
    """One request: status None when the client got no HTTP answer (``error`` says why)."""

    tenant_id: str
    method: str
    path: str
    started: float
    elapsed: float
    status: int | None
    content_type: str | None = None
    error: str | None = None
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Write:
    tenant_id: str
    path: str
    marker: str
    outcome: Outcome | None = None
    record_id: str | None = None


def request(method: str, url: str, *, timeout: float, **kwargs: Any) -> tuple[Outcome, Any]:
    """Send one request on a fresh connection; never raises for a transport failure."""
    started = time.monotonic()
    headers = kwargs.get("headers") or {}
    tenant_id = headers.get("X-Tenant-ID", "")
    path = urlsplit(url).path
    try:
        response = requests.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as error:
        outcome = Outcome(
            tenant_id, method, path, started, time.monotonic() - started, None, error=repr(error)
        )
        return outcome, None
    outcome = Outcome(
        tenant_id,
        method,
        path,
        started,
        time.monotonic() - started,
        response.status_code,
        response.headers.get("Content-Type"),
        retry_after=response.headers.get("Retry-After"),
    )
    return outcome, response


def assert_answered(outcomes: list[Outcome], timeout: float) -> None:
    """Every request was answered within ``timeout`` s: a success or a 503 problem, no 500."""
    for outcome in outcomes:
        assert outcome.elapsed < timeout, outcome
        if not outcome.ok:
            assert outcome.status == 503, outcome
            assert outcome.content_type == "application/problem+json", outcome


@dataclass
class Ledger:
    """Every write attempted through :meth:`write`. Thread safe."""

    writes: list[Write] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def write(
        self, base_url: str, tenant: SeededTenant, path: str, *, timeout: float
    ) -> tuple[Outcome, Write]:
        """POST a new record with a fresh marker and note what came of it."""
        marker_field, body = RESOURCES[path]
        entry = Write(tenant.id, path, MARKER_PREFIX + uuid.uuid4().hex[:16])
        with self._lock:
            self.writes.append(entry)
        outcome, response = request(
            "POST",
            base_url + path,
            json={**body, marker_field: entry.marker},
            headers=tenant.headers,
            timeout=timeout,
        )
        entry.outcome = outcome
        if outcome.ok:
            entry.record_id = response.json()["id"]
        return outcome, entry

    def acknowledged(self, tenant_id: str, path: str) -> list[str]:
        """Ids of the tenant's acknowledged writes to ``path``."""
        with self._lock:
            return [
                w.record_id
                for w in self.writes
                if w.record_id is not None and w.tenant_id == tenant_id and w.path == path
            ]

    def copies(self, base_url: str, tenant: SeededTenant, write: Write) -> int:
        """How many rows carry ``write``'s marker, read through the API as ``tenant``."""
        response = requests.get(
            base_url + write.path,
            params={"search": write.marker, "search_columns": RESOURCES[write.path][0]},
            headers=tenant.headers,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        total: int = response.json()["total"]
        return total

    def verify(self, base_url: str, tenants: list[SeededTenant]) -> None:
        """Assert the ledger against every tenant's rows, read through the API as it."""
        with self._lock:
            writes = list(self.writes)
        markers_of = {(w.path, w.marker): w for w in writes}
        for path, (marker_field, _) in RESOURCES.items():
            for tenant in tenants:
                records = _all_records(base_url, tenant, path)
                counts = Counter(record["id"] for record in records)
                assert all(count == 1 for count in counts.values()), f"{path}: duplicate ids"
                seen = Counter(record[marker_field] for record in records)
                for record in records:
                    marker = record[marker_field]
                    if not marker.startswith(MARKER_PREFIX):
                        continue  # seeded rows
                    entry = markers_of.get((path, marker))
                    assert entry is not None, f"{path}: row {marker} was never written"
                    assert entry.tenant_id == tenant.id, (
                        f"{path}: {marker} of tenant {entry.tenant_id} is visible to {tenant.id}"
                    )
                for entry in writes:
                    if entry.path != path or entry.tenant_id != tenant.id:
                        continue
                    if entry.record_id is not None:
                        assert seen[entry.marker] == 1, f"{path}: acknowledged {entry.marker} lost"
                        assert counts[entry.record_id] == 1
                    else:
                        assert seen[entry.marker] <= 1, f"{path}: {entry.marker} written twice"


def _all_records(base_url: str, tenant: SeededTenant, path: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    page = 1
    while True:
        response = requests.get(
            base_url + path,
            params={"page": page, "page_size": 100, "sort_column": "created_at"},
            headers=tenant.headers,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        records.extend(body["records"])
        if page >= body["total_pages"]:
            return records
        page += 1


class MixedLoad:
    """Client threads sending writes, lists and reads as random tenants until stopped.

    Use as a context manager; ``outcomes`` holds every request once it has stopped.
    """

    def __init__(
        self,
        base_url: str,
        tenants: list[SeededTenant],
        ledger: Ledger,
        *,
        threads: int = 4,
        timeout: float,
        paths: tuple[str, ...] = tuple(RESOURCES),
    ) -> None:
        self.base_url = base_url
        self.tenants = tenants
        self.ledger = ledger
        self.timeout = timeout
        self.paths = paths
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"load-{n}", daemon=True)
            for n in range(threads)
        ]

    def __enter__(self) -> MixedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 10)
        assert not any(thread.is_alive() for thread in self._threads), "a load thread hangs"

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def wait_until(self, predicate: Any, timeout: float, what: str) -> None:
        """Wait until ``predicate(outcomes)`` is true; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(self.snapshot()):
            assert time.monotonic() < deadline, f"load: {what} not within {timeout:g} s"
            time.sleep(0.05)

    def _run(self, seed: int) -> None:
        chooser = random.Random(seed)
        while not self._stop.is_set():
            tenant = chooser.choice(self.tenants)
            path = chooser.choice(self.paths)
            roll = chooser.random()
            if roll < 0.5:
                outcome, _ = self.ledger.write(self.base_url, tenant, path, timeout=self.timeout)
            else:
                url = self.base_url + path
                mine = self.ledger.acknowledged(tenant.id, path)
                if roll < 0.75 and mine:
                    url += "/" + chooser.choice(mine)
                outcome, _ = request("GET", url, headers=tenant.headers, timeout=self.timeout)
            with self._lock:
                self.outcomes.append(outcome)
            time.sleep(0.01)
