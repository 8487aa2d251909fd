"""``make loadtest``: locust, headless, mixed reads and writes across the seeded tenants.

Run against a serving ``make run`` (or any tenantpool: ``LOAD_HOST``). Tenants come from the
file ``flask seed-tenants --output`` writes, ``TENANTS_FILE`` (default var/tenants.json).
Each simulated user acts for one tenant, picked at random.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

TENANTS_FILE = Path(os.environ.get("TENANTS_FILE", "var/tenants.json"))
TENANTS = json.loads(TENANTS_FILE.read_text())
if not TENANTS:
    raise SystemExit(f"{TENANTS_FILE} lists no tenants: run `make run` (or flask seed-tenants)")


class TenantUser(FastHttpUser):
    """One API client of one tenant: mostly lists and reads, some writes."""

    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        tenant = random.choice(TENANTS)
        self.headers = {"X-Tenant-ID": tenant["id"], "Authorization": f"Bearer {tenant['api_key']}"}
        self.user_ids: list[str] = []

    @task(6)
    def list_users(self) -> None:
        self.client.get("/v1/users?page=1&page_size=20", headers=self.headers, name="/v1/users")

    @task(2)
    def get_user(self) -> None:
        if self.user_ids:
            user_id = random.choice(self.user_ids)
            self.client.get(f"/v1/users/{user_id}", headers=self.headers, name="/v1/users/[id]")

    @task(2)
    def create_user(self) -> None:
        body = {"first_name": "Load", "last_name": "Test", "email": "load@example.com"}
        with self.client.post(
            "/v1/users", json=body, headers=self.headers, catch_response=True
        ) as response:
            if response.status_code == 201:
                self.user_ids.append(response.json()["id"])
            else:
                response.failure(f"status {response.status_code}")

    @task(1)
    def patch_user(self) -> None:
        if self.user_ids:
            user_id = random.choice(self.user_ids)
            self.client.patch(
                f"/v1/users/{user_id}",
                json={"confirmed": True},
                headers=self.headers,
                name="/v1/users/[id]",
            )

    @task(1)
    def list_products(self) -> None:
        self.client.get("/v1/products?page_size=10", headers=self.headers, name="/v1/products")
