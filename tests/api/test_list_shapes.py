"""1500 list requests spelling search_columns every way leave the worker's caches within bounds.

Before, each spelling (``first_name,first_name,email``, ``email,first_name``...) was a shape
of its own: a statement in ``ListStatements`` and an entry in SQLAlchemy's compiled cache
per tenant engine, without bound (327 MB in 1500 requests across a service's workers).
"""

from __future__ import annotations

import random
from collections import Counter

from flask import Flask

from app.api.list_shapes import ListShape
from app.api.listing import ListStatements
from app.api.users import USERS
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.serving.engines import COMPILED_CACHE_SIZE
from tests.support import auth_headers

REQUESTS = 1500


def _statements(app: Flask) -> ListStatements:
    statements: ListStatements = app.view_functions["users.list_records"].__self__._statements  # type: ignore[attr-defined]
    return statements


def test_list_shapes_repeated_and_reordered_columns_stay_within_bounds(
    app: Flask, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    client = app.test_client()
    before = _statements(app).shapes()
    chooser = random.Random(18)
    names = list(USERS.query.SEARCHABLE)
    statuses: Counter[int] = Counter()
    for number in range(REQUESTS):
        spelled = [chooser.choice(names) for _ in range(chooser.randint(1, 6))]
        params = {
            "search": f"text{number}",
            "search_columns": ",".join(spelled),
            "sort_column": chooser.choice(USERS.query.SORTABLE),
        }
        response = client.get("/v1/users", query_string=params, headers=auth_headers(tenant_a))
        statuses[response.status_code] += 1
        if len(set(spelled)) < len(spelled):
            assert response.status_code == 422, response.json
            assert "once" in response.json["errors"]["search_columns"][0]
        else:
            assert response.status_code == 200, response.json

    assert set(statuses) == {200, 422}
    # New shapes: at most 5 sort columns x 7 column subsets (ascending, no dates, no
    # cursor), however many spellings the 1500 requests used; all in the finite space.
    space = list(ListShape.space(USERS))
    added = _statements(app).shapes() - before
    assert len(added) <= len(USERS.query.SORTABLE) * (2 ** len(names) - 1)
    assert added <= set(space)
    assert len(_statements(app)) <= 2 * len(space)  # a page and a window end per shape
    compiled = tenancy.engines.compiled_cache
    assert len(compiled) <= COMPILED_CACHE_SIZE * 1.5
