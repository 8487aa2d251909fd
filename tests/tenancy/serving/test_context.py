"""The signed opening of tenant statements: what it signs, and that the signature comes first."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from app.tenancy.serving.context import ContextSigner, TenantContext

KEY = bytes(range(32))
TENANT = "0b8f4c9e-6a43-4c3c-9d6e-0c7f1f6c2a11"


def _signature(*fields: str) -> str:
    return hmac.new(KEY, "\n".join(fields).encode(), hashlib.sha256).hexdigest()


def test_signer_signs_the_tenant_user_roles_admin_and_binding_first() -> None:
    context = TenantContext(TENANT, user="user-1", roles=("buyer", "viewer"), admin=False)
    opening = ContextSigner(KEY, shared=False).opening(context, "42:0")
    expected = _signature(TENANT, "user-1", "buyer,viewer", "false", "42:0")
    assert opening.startswith(f"SELECT set_config('app.tenant_sig', '{expected}', true), ")
    assert f"set_config('app.tenant_id', '{TENANT}', true)" in opening
    assert "set_config('app.user_id', 'user-1', true)" in opening
    assert "set_config('app.user_roles', 'buyer,viewer', true)" in opening
    assert "set_config('app.user_admin', 'false', true)" in opening
    assert "'role'" not in opening  # a tenant's own connection is already the role


def test_signer_of_an_api_key_signs_the_tenant_as_admin_without_a_user() -> None:
    opening = ContextSigner(KEY, shared=False).opening(TenantContext(TENANT), "42:0")
    assert _signature(TENANT, "", "", "true", "42:0") in opening


def test_shared_signer_switches_role_and_sets_the_role_settings() -> None:
    opening = ContextSigner(KEY, shared=True, statement_timeout_ms=5000).opening(
        TenantContext(TENANT), "42:17"
    )
    assert opening.startswith(
        f"SELECT set_config('app.tenant_sig', '{_signature(TENANT, '', '', 'true', '42:17')}'"
    )
    assert "set_config('role', 't_0b8f4c9e6a434c3c9d6e0c7f1f6c2a11', true)" in opening
    assert "set_config('statement_timeout', '5000', true)" in opening
    assert f"set_config('application_name', 'tp:{TENANT}:{os.getpid()}', true)" in opening


def test_signatures_differ_by_user_and_by_backend() -> None:
    signer = ContextSigner(KEY, shared=False)
    one = signer.opening(TenantContext(TENANT, user="u1", admin=False), "42:0")
    other_user = signer.opening(TenantContext(TENANT, user="u2", admin=False), "42:0")
    other_backend = signer.opening(TenantContext(TENANT, user="u1", admin=False), "43:0")
    assert len({one[:100], other_user[:100], other_backend[:100]}) == 3


def test_signer_refuses_a_short_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ContextSigner(b"short", shared=True)
