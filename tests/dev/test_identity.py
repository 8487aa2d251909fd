"""``make run``'s development identity provider: its tokens verify as the service verifies."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from app.dev.identity import DevIdentityProvider
from app.tenancy.serving.tokens import JwksCache, TokenVerifier


def test_identity_demo_tokens_verify_against_its_jwks_and_are_written_0600(
    tmp_path: Path,
) -> None:
    provider = DevIdentityProvider(tmp_path)
    try:
        env = provider.env
        verifier = TokenVerifier(
            JwksCache(env["APP_JWT_JWKS_URL"]),
            issuer=env["APP_JWT_ISSUER"],
            audience=env["APP_JWT_AUDIENCE"],
        )
        tenant = str(uuid.uuid4())
        written = tmp_path / "demo-tokens.json"
        (tokens,) = provider.write_demo_tokens([{"id": tenant, "name": "acme"}], written)
        admin, member = verifier.verify(tokens["admin"]), verifier.verify(tokens["member"])
        assert (str(admin.tenant_id), admin.subject, admin.admin) == (tenant, "demo-admin", True)
        assert (member.subject, member.roles, member.admin) == ("demo-user-1", ("member",), False)
        assert json.loads(written.read_text()) == [tokens]
        assert oct(written.stat().st_mode & 0o777) == "0o600"
        assert oct((tmp_path / "dev-jwt-key.pem").stat().st_mode & 0o777) == "0o600"
    finally:
        provider.close()
    # The key is kept: a restart signs with the same key (only the issuer's port changes).
    pem = (tmp_path / "dev-jwt-key.pem").read_bytes()
    DevIdentityProvider(tmp_path).close()
    assert (tmp_path / "dev-jwt-key.pem").read_bytes() == pem
