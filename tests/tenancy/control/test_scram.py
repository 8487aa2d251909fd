"""Client-side SCRAM-SHA-256 verifiers (a real login against PostgreSQL is tested elsewhere)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest

from app.tenancy.control.scram import generate_password, is_scram_verifier, scram_sha256_verifier

FORMAT = re.compile(
    r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]{43}=):([A-Za-z0-9+/]{43}=)"
)

# The exchange in RFC 7677 section 3 (user "user", password "pencil").
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_ITERATIONS = 4096
RFC_CLIENT_FIRST_BARE = "n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL_NO_PROOF = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_CLIENT_PROOF = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_SIGNATURE = base64.b64decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
RFC_AUTH_MESSAGE = ",".join(
    (RFC_CLIENT_FIRST_BARE, RFC_SERVER_FIRST, RFC_CLIENT_FINAL_NO_PROOF)
).encode()


def _keys(verifier: str) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) from a verifier."""
    match = FORMAT.fullmatch(verifier)
    assert match is not None
    return base64.b64decode(match[3]), base64.b64decode(match[4])


def _hi(password: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 5802 Hi(): PBKDF2 with HMAC-SHA-256 written out, one 32-byte block."""
    u = hmac.new(password, salt + b"\x00\x00\x00\x01", hashlib.sha256).digest()
    result = u
    for _ in range(iterations - 1):
        u = hmac.new(password, u, hashlib.sha256).digest()
        result = bytes(a ^ b for a, b in zip(result, u, strict=True))
    return result


def test_scram_sha256_verifier_matches_step_by_step_computation() -> None:
    password, salt, iterations = "s3cret-Pass_word", bytes(range(16)), 64
    salted = _hi(password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64_salt, b64_stored, b64_server = (
        base64.b64encode(value).decode() for value in (salt, stored_key, server_key)
    )
    expected = f"SCRAM-SHA-256${iterations}:{b64_salt}${b64_stored}:{b64_server}"
    assert scram_sha256_verifier(password, iterations=iterations, salt=salt) == expected


def test_scram_sha256_verifier_server_key_signs_rfc7677_exchange() -> None:
    _stored_key, server_key = _keys(
        scram_sha256_verifier("pencil", iterations=RFC_ITERATIONS, salt=RFC_SALT)
    )
    signature = hmac.new(server_key, RFC_AUTH_MESSAGE, hashlib.sha256).digest()
    assert signature == RFC_SERVER_SIGNATURE


def test_scram_sha256_verifier_stored_key_accepts_rfc7677_client_proof() -> None:
    stored_key, _server_key = _keys(
        scram_sha256_verifier("pencil", iterations=RFC_ITERATIONS, salt=RFC_SALT)
    )
    # What the server does: recover ClientKey from the proof and check it hashes to StoredKey.
    client_signature = hmac.new(stored_key, RFC_AUTH_MESSAGE, hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(RFC_CLIENT_PROOF, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key


def test_scram_sha256_verifier_has_postgresql_format() -> None:
    verifier = scram_sha256_verifier(generate_password())
    match = FORMAT.fullmatch(verifier)
    assert match is not None
    assert match[1] == "64"
    assert len(base64.b64decode(match[2])) == 16


def test_scram_sha256_verifier_uses_given_iterations() -> None:
    assert scram_sha256_verifier("pw", iterations=4096).startswith("SCRAM-SHA-256$4096:")


def test_scram_sha256_verifier_is_deterministic_for_fixed_salt() -> None:
    salt = b"0123456789abcdef"
    assert scram_sha256_verifier("pw", salt=salt) == scram_sha256_verifier("pw", salt=salt)


def test_scram_sha256_verifier_differs_per_salt() -> None:
    first = scram_sha256_verifier("pw", salt=b"0123456789abcdef")
    second = scram_sha256_verifier("pw", salt=b"fedcba9876543210")
    assert _keys(first) != _keys(second)


def test_scram_sha256_verifier_uses_random_salt_by_default() -> None:
    assert scram_sha256_verifier("pw") != scram_sha256_verifier("pw")


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("pässword", id="latin1"),
        pytest.param("密码", id="cjk"),
        pytest.param("pass\u00a0word", id="non-ascii-space"),
        pytest.param("pass\nword", id="newline"),
        pytest.param("pass\x00word", id="nul"),
        pytest.param("pass\x7fword", id="del"),
        pytest.param("", id="empty"),
    ],
)
def test_scram_sha256_verifier_rejects_password_needing_saslprep(password: str) -> None:
    with pytest.raises(ValueError, match="password"):
        scram_sha256_verifier(password)


@pytest.mark.parametrize("iterations", [0, -1])
def test_scram_sha256_verifier_rejects_non_positive_iterations(iterations: int) -> None:
    with pytest.raises(ValueError, match="iterations"):
        scram_sha256_verifier("pw", iterations=iterations)


def test_scram_sha256_verifier_rejects_empty_salt() -> None:
    with pytest.raises(ValueError, match="salt"):
        scram_sha256_verifier("pw", salt=b"")


def test_generate_password_has_256_bits() -> None:
    # token_urlsafe(32): 32 random bytes -> 43 base64 characters.
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", generate_password())


def test_generate_password_returns_fresh_passwords() -> None:
    assert generate_password() != generate_password()


def test_is_scram_verifier_accepts_generated_verifier() -> None:
    assert is_scram_verifier(scram_sha256_verifier(generate_password()))


def _valid() -> str:
    return scram_sha256_verifier("pw", salt=b"0123456789abcdef")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("pw", id="plain-password"),
        pytest.param("md5" + "0" * 32, id="md5"),
        pytest.param(_valid() + "\n", id="trailing-newline"),
        pytest.param(" " + _valid(), id="leading-space"),
        pytest.param(_valid() + "'; DROP ROLE x; --", id="sql-suffix"),
        pytest.param(_valid().replace("SCRAM-SHA-256", "SCRAM-SHA-1"), id="other-mechanism"),
        pytest.param(_valid().replace("$64:", "$0:"), id="zero-iterations"),
        pytest.param(_valid().replace("$64:", "$064:"), id="leading-zero-iterations"),
        pytest.param(_valid().replace("$64:", "$:"), id="no-iterations"),
        pytest.param(re.sub(r":[^$]+\$", ":$", _valid(), count=1), id="empty-salt"),
        pytest.param(_valid()[:-4] + "AAB=", id="non-canonical-key"),
        pytest.param(_valid()[:-1], id="unpadded-key"),
        pytest.param(_valid().rsplit(":", 1)[0] + ":" + "A" * 40, id="short-key"),
        pytest.param(_valid().replace("$", "$$", 1), id="extra-separator"),
    ],
)
def test_is_scram_verifier_rejects_malformed_text(text: str) -> None:
    assert not is_scram_verifier(text)
