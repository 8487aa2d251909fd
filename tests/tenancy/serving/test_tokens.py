"""End users' JWTs against a real JWKS served on loopback, with keys made here."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from app.tenancy.errors import AuthenticationFailed
from app.tenancy.serving.tokens import JwksCache, TokenVerifier, looks_like_jwt
from tests.idp import AUDIENCE, ISSUER, TENANT, Idp
from tests.support import FakeClock


@pytest.fixture
def idp() -> Iterator[Idp]:
    server = Idp()
    server.add_key("k1")
    yield server
    server.close()


def _verifier(idp: Idp, **jwks: Any) -> TokenVerifier:
    return TokenVerifier(JwksCache(idp.url, **jwks), issuer=ISSUER, audience=AUDIENCE)


@pytest.mark.parametrize(
    ("kind", "algorithm"), [("RSA", "RS256"), ("EC", "ES256"), ("OKP", "EdDSA")]
)
def test_tokens_valid_token_names_tenant_user_and_roles(
    idp: Idp, kind: str, algorithm: str
) -> None:
    idp.add_key("k2", kind)
    identity = _verifier(idp).verify(idp.token("k2", algorithm, roles=["b", "a", "a"]))
    assert identity.tenant_id == TENANT
    assert identity.subject == "user-1"
    assert identity.roles == ("a", "b")
    assert identity.can_write


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _hs256_with_public_key(idp: Idp) -> str:
    """The classic confusion attack: the RSA public key's PEM used as an HMAC secret."""
    pem = (
        idp.private["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": "k1"})
    payload = _b64(jwt.decode(idp.token(), options={"verify_signature": False}))
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _forged(idp: Idp, case: str) -> str:
    now = int(time.time())
    if case == "expired":
        return idp.token(exp=now - 120, iat=now - 600)
    if case == "not-yet-valid":
        return idp.token(nbf=now + 120)
    if case == "wrong-issuer":
        return idp.token(iss="https://evil.example.test/")
    if case == "wrong-audience":
        return idp.token(aud="another-service")
    if case == "alg-none":
        claims = jwt.decode(idp.token(), options={"verify_signature": False})
        return f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{_b64(claims)}."
    if case == "hs256-with-public-key":
        return _hs256_with_public_key(idp)
    if case == "payload-swapped":
        header, _, signature = idp.token().split(".")
        payload = idp.token(sub="admin-user").split(".")[1]
        return f"{header}.{payload}.{signature}"
    if case == "missing-tenant":
        return idp.token(tenant_id=None)
    if case == "braced-tenant":
        return idp.token(tenant_id="{" + str(TENANT) + "}")
    if case == "missing-exp":
        return idp.token(exp=None)
    if case == "odd-subject":
        return idp.token(sub="x'; DROP TABLE users; --")
    if case == "roles-not-a-list":
        return idp.token(roles="admin")
    if case == "unknown-kid":
        idp.add_key("unpublished")
        idp.published.pop()
        return idp.token("unpublished")
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "not-yet-valid",
        "wrong-issuer",
        "wrong-audience",
        "alg-none",
        "hs256-with-public-key",
        "payload-swapped",
        "missing-tenant",
        "braced-tenant",
        "missing-exp",
        "odd-subject",
        "roles-not-a-list",
        "unknown-kid",
    ],
)
def test_tokens_every_forged_or_wrong_token_gets_the_same_refusal(idp: Idp, case: str) -> None:
    with pytest.raises(AuthenticationFailed) as refused:
        _verifier(idp).verify(_forged(idp, case))
    assert str(refused.value) == "invalid bearer token for this tenant"


def test_tokens_key_rotated_at_the_provider_is_picked_up_without_a_restart(idp: Idp) -> None:
    clock = FakeClock()
    verifier = _verifier(idp, min_interval=10, clock=clock)
    verifier.verify(idp.token())
    idp.add_key("k2", "EC")
    fresh = idp.token("k2", "ES256")
    clock.advance(10)
    assert verifier.verify(fresh).tenant_id == TENANT
    assert idp.requests == 2


@pytest.mark.parametrize(("spacing", "fetches"), [(0.0, 1 + 1), (0.5, 1 + 6)])
def test_tokens_a_flood_of_unknown_kids_costs_a_few_fetches(
    idp: Idp, spacing: float, fetches: int
) -> None:
    """100 tokens at once, or over 50 seconds: the first fetch, then at most one per 10 s."""
    clock = FakeClock()
    verifier = _verifier(idp, min_interval=10, clock=clock)
    verifier.verify(idp.token())
    for number in range(100):
        token = jwt.encode(
            {"sub": "x"}, idp.private["k1"], algorithm="RS256", headers={"kid": f"made-up-{number}"}
        )
        with pytest.raises(AuthenticationFailed):
            verifier.verify(token)
        clock.advance(spacing)
    assert idp.requests <= fetches


def test_tokens_unreachable_provider_blocks_no_longer_than_the_timeout(idp: Idp) -> None:
    """Known keys keep working; an unknown kid waits at most the timeout, then is refused."""
    clock = FakeClock()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts, never answers
    cache = JwksCache(idp.url, ttl=60, min_interval=10, timeout=0.3, clock=clock)
    verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
    verifier.verify(idp.token())
    cache.url = f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json"
    clock.advance(120)  # the keys are stale: a refresh is due
    started = time.monotonic()
    assert verifier.verify(idp.token()).tenant_id == TENANT  # the key known still works
    idp.add_key("k2")
    with pytest.raises(AuthenticationFailed):
        verifier.verify(idp.token("k2"))
    silent.close()
    assert time.monotonic() - started < 1.5


def test_tokens_write_scope_decides_whether_the_token_may_write(idp: Idp) -> None:
    verifier = TokenVerifier(
        JwksCache(idp.url), issuer=ISSUER, audience=AUDIENCE, write_scope="write"
    )
    assert verifier.verify(idp.token(scope="read write")).can_write
    assert not verifier.verify(idp.token(scope="read")).can_write
    assert verifier.verify(idp.token(scp=["read", "write"])).can_write


def test_tokens_shape_tells_a_jwt_from_an_api_key(idp: Idp) -> None:
    assert looks_like_jwt(idp.token())
    assert not looks_like_jwt("tpk_" + "a" * 43)
