"""The AES-256-GCM keyring: round trips, rotation, and every way a token must fail."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable

import pytest

from app.crypto import CryptoError, DecryptError, Keyring, generate_key, tenant_aad

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
TENANT = uuid.UUID("6f1c1d2e-8a4b-4c3d-9e5f-0a1b2c3d4e5f")
OTHER_TENANT = uuid.UUID("0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a")
AAD = tenant_aad(TENANT, "t_6f1c1d2e8a4b4c3d9e5f0a1b2c3d4e5f")
SECRET = "correct horse battery staple"
B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture
def ring() -> Keyring:
    return Keyring({"a": KEY_A}, active_key_id="a")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _flip_bit(token: str, part: str, index: int) -> str:
    """Flip the lowest bit of one byte of the nonce, ciphertext or tag."""
    version, key_id, nonce_text, sealed_text = token.split(":")
    nonce, sealed = bytearray(_unb64(nonce_text)), bytearray(_unb64(sealed_text))
    if part == "nonce":
        nonce[index] ^= 1
    elif part == "ciphertext":
        sealed[index] ^= 1
    else:  # tag: the last 16 bytes
        sealed[len(sealed) - 16 + index] ^= 1
    return ":".join((version, key_id, _b64(bytes(nonce)), _b64(bytes(sealed))))


def test_keyring_round_trips_str(ring: Keyring) -> None:
    assert ring.decrypt_str(ring.encrypt(SECRET, AAD), AAD) == SECRET


def test_keyring_round_trips_bytes(ring: Keyring) -> None:
    data = bytes(range(256))
    assert ring.decrypt(ring.encrypt(data, AAD), AAD) == data


def test_keyring_round_trips_empty_plaintext(ring: Keyring) -> None:
    assert ring.decrypt(ring.encrypt(b"", AAD), AAD) == b""


def test_keyring_token_has_versioned_format(ring: Keyring) -> None:
    token = ring.encrypt(SECRET, AAD)
    assert re.fullmatch(r"v1:a:[A-Za-z0-9_-]{16}:[A-Za-z0-9_-]+", token)


def test_keyring_encrypting_twice_gives_different_tokens(ring: Keyring) -> None:
    assert ring.encrypt(SECRET, AAD) != ring.encrypt(SECRET, AAD)


def test_keyring_encrypting_twice_uses_different_nonces(ring: Keyring) -> None:
    first, second = ring.encrypt(SECRET, AAD), ring.encrypt(SECRET, AAD)
    assert first.split(":")[2] != second.split(":")[2]


def test_keyring_rejects_wrong_aad(ring: Keyring) -> None:
    token = ring.encrypt(SECRET, AAD)
    with pytest.raises(DecryptError, match="authentication"):
        ring.decrypt(token, b"something else")


def test_keyring_rejects_ciphertext_copied_to_another_tenant(ring: Keyring) -> None:
    token = ring.encrypt(SECRET, AAD)
    other_aad = tenant_aad(OTHER_TENANT, "t_0d9e8f7a6b5c4d3e8f2a1b0c9d8e7f6a")
    with pytest.raises(DecryptError):
        ring.decrypt(token, other_aad)


def test_keyring_rejects_ciphertext_copied_to_another_role_of_same_tenant(ring: Keyring) -> None:
    token = ring.encrypt(SECRET, AAD)
    with pytest.raises(DecryptError):
        ring.decrypt(token, tenant_aad(TENANT, "t_other"))


def test_keyring_rejects_unknown_key_id(ring: Keyring) -> None:
    token = Keyring({"b": KEY_B}, "b").encrypt(SECRET, AAD)
    with pytest.raises(DecryptError, match="not in the keyring"):
        ring.decrypt(token, AAD)


def test_keyring_rejects_token_relabelled_with_another_key_id() -> None:
    ring = Keyring({"a": KEY_A, "b": KEY_B}, "a")
    token = ring.encrypt(SECRET, AAD)
    with pytest.raises(DecryptError, match="authentication"):
        ring.decrypt(token.replace("v1:a:", "v1:b:", 1), AAD)


@pytest.mark.parametrize(
    ("part", "index"),
    [
        ("nonce", 0),
        ("nonce", 11),
        ("ciphertext", 0),
        ("ciphertext", 5),
        ("tag", 0),
        ("tag", 15),
    ],
)
def test_keyring_rejects_flipped_bit(ring: Keyring, part: str, index: int) -> None:
    token = _flip_bit(ring.encrypt(SECRET, AAD), part, index)
    with pytest.raises(DecryptError, match="authentication"):
        ring.decrypt(token, AAD)


def test_keyring_decrypts_old_key_after_active_key_switched() -> None:
    old = Keyring({"a": KEY_A}, "a").encrypt(SECRET, AAD)
    rotated = Keyring({"a": KEY_A, "b": KEY_B}, "b")
    assert rotated.decrypt_str(old, AAD) == SECRET


def test_keyring_encrypts_under_active_key() -> None:
    ring = Keyring({"a": KEY_A, "b": KEY_B}, "b")
    assert ring.key_id_of(ring.encrypt(SECRET, AAD)) == "b"


def test_keyring_key_id_of_reads_key_not_in_ring(ring: Keyring) -> None:
    token = Keyring({"b": KEY_B}, "b").encrypt(SECRET, AAD)
    assert ring.key_id_of(token) == "b"


def test_keyring_active_key_id_is_exposed() -> None:
    assert Keyring({"a": KEY_A, "b": KEY_B}, "b").active_key_id == "b"


def test_keyring_key_ids_are_sorted() -> None:
    assert Keyring({"b": KEY_B, "a": KEY_A}, "b").key_ids == ("a", "b")


def _valid_token() -> str:
    return Keyring({"a": KEY_A}, "a").encrypt(SECRET, AAD)


def _replace_part(index: int, value: str) -> str:
    parts = _valid_token().split(":")
    parts[index] = value
    return ":".join(parts)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("v1:a:AAAAAAAAAAAAAAAA", id="three-parts"),
        pytest.param(_valid_token() + ":extra", id="five-parts"),
        pytest.param(_replace_part(0, "v9"), id="version-v9"),
        pytest.param(_replace_part(0, "V1"), id="version-case"),
        pytest.param(_replace_part(1, ""), id="empty-key-id"),
        pytest.param(_replace_part(1, "a b"), id="bad-key-id"),
        pytest.param(_replace_part(2, "!!!!!!!!!!!!!!!!"), id="nonce-bad-alphabet"),
        pytest.param(_replace_part(2, "AAAAAAAAAAAAAAA="), id="nonce-padded"),
        pytest.param(_replace_part(2, "AAAAAAAAAAAAAAAAAAAA"), id="nonce-15-bytes"),
        pytest.param(_replace_part(2, "A"), id="nonce-impossible-length"),
        pytest.param(_replace_part(3, ""), id="ciphertext-empty"),
        pytest.param(_replace_part(3, "AAAA+/AA"), id="ciphertext-standard-alphabet"),
        pytest.param(_replace_part(3, "A" * 20), id="ciphertext-shorter-than-tag"),
    ],
)
def test_keyring_rejects_malformed_token(ring: Keyring, token: str) -> None:
    with pytest.raises(DecryptError):
        ring.decrypt(token, AAD)


def test_keyring_key_id_of_rejects_malformed_token(ring: Keyring) -> None:
    with pytest.raises(DecryptError):
        ring.key_id_of("v1:a:not-a-token")


def test_keyring_rejects_non_canonical_base64(ring: Keyring) -> None:
    # 12 bytes encode to exactly 16 characters, so alter a 17-byte ciphertext instead:
    # its last character carries stray low bits that decoding would silently drop.
    token = ring.encrypt(b"x", AAD)
    version, key_id, nonce, sealed = token.split(":")
    tweaked = sealed[:-1] + B64URL_ALPHABET[B64URL_ALPHABET.index(sealed[-1]) | 1]
    with pytest.raises(DecryptError, match="canonical"):
        ring.decrypt(":".join((version, key_id, nonce, tweaked)), AAD)


def test_keyring_decrypt_str_rejects_non_utf8(ring: Keyring) -> None:
    token = ring.encrypt(b"\xff\xfe", AAD)
    with pytest.raises(DecryptError, match="UTF-8"):
        ring.decrypt_str(token, AAD)


@pytest.mark.parametrize(
    "make_bad",
    [
        pytest.param(lambda t: _flip_bit(t, "tag", 3), id="tampered"),
        pytest.param(lambda t: t.replace("v1:", "v9:", 1), id="bad-version"),
        pytest.param(lambda t: t + ":x", id="malformed"),
    ],
)
def test_keyring_errors_do_not_reveal_secrets(
    ring: Keyring, make_bad: Callable[[str], str]
) -> None:
    token = ring.encrypt(SECRET, AAD)
    bad = make_bad(token)
    with pytest.raises(DecryptError) as excinfo:
        ring.decrypt(bad, AAD)
    message = f"{excinfo.value!s} {excinfo.value!r}"
    for secret in (SECRET, token, bad, KEY_A.hex(), repr(KEY_A)):
        assert secret not in message
    assert excinfo.value.__cause__ is None


def test_keyring_wrong_aad_error_does_not_reveal_secrets(ring: Keyring) -> None:
    token = ring.encrypt(SECRET, AAD)
    with pytest.raises(DecryptError) as excinfo:
        ring.decrypt(token, b"other")
    message = f"{excinfo.value!s} {excinfo.value!r}"
    for secret in (SECRET, token, KEY_A.hex(), repr(KEY_A)):
        assert secret not in message


def test_keyring_repr_hides_keys() -> None:
    text = repr(Keyring({"a": KEY_A, "b": KEY_B}, "b"))
    assert "'a'" in text
    for key in (KEY_A, KEY_B):
        assert key.hex() not in text
        assert repr(key) not in text


def test_keyring_decrypt_error_is_crypto_error() -> None:
    assert issubclass(DecryptError, CryptoError)


@pytest.mark.parametrize(
    ("keys", "active", "message"),
    [
        pytest.param({}, "a", "empty", id="empty-ring"),
        pytest.param({"a": KEY_A}, "b", "not in the keyring", id="active-missing"),
        pytest.param({"a": KEY_A[:31]}, "a", "32 bytes", id="short-key"),
        pytest.param({"a": KEY_A + b"\0"}, "a", "32 bytes", id="long-key"),
        pytest.param({"a": KEY_A.hex()}, "a", "32 bytes", id="hex-str-key"),
        pytest.param({"a:b": KEY_A}, "a:b", "key ids", id="colon-in-key-id"),
        pytest.param({"": KEY_A}, "", "key ids", id="empty-key-id"),
        pytest.param({"k" * 33: KEY_A}, "k" * 33, "key ids", id="long-key-id"),
    ],
)
def test_keyring_rejects_invalid_configuration(
    keys: dict[str, bytes], active: str, message: str
) -> None:
    with pytest.raises(CryptoError, match=message):
        Keyring(keys, active)


def test_keyring_validation_error_does_not_reveal_key() -> None:
    with pytest.raises(CryptoError) as excinfo:
        Keyring({"a": KEY_A[:31]}, "a")
    assert KEY_A[:31].hex() not in str(excinfo.value)
    assert repr(KEY_A[:31]) not in str(excinfo.value)


def test_generate_key_returns_64_hex_digits() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", generate_key())


def test_generate_key_is_usable_in_keyring() -> None:
    ring = Keyring({"k": bytes.fromhex(generate_key())}, "k")
    assert ring.decrypt_str(ring.encrypt(SECRET, AAD), AAD) == SECRET


def test_generate_key_returns_fresh_keys() -> None:
    assert generate_key() != generate_key()


def test_tenant_aad_encodes_tenant_and_role() -> None:
    assert tenant_aad(TENANT, "t_x") == f"tenantpool:v1:{TENANT}:t_x".encode()


def test_tenant_aad_differs_per_tenant() -> None:
    assert tenant_aad(TENANT, "t_x") != tenant_aad(OTHER_TENANT, "t_x")
