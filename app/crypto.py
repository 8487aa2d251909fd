"""AES-256-GCM keyring for credentials at rest (DESIGN section 6).

A token is ASCII text, so it fits a plain text column::

    v1:<key_id>:<nonce>:<ciphertext+tag>      (both parts urlsafe base64, no padding)

The key id travels with each ciphertext so keys can be rotated online: decrypt with
whichever ring key the token names, re-encrypt under the active one. The caller supplies
associated data (see :func:`tenant_aad`) that binds a ciphertext to its row, so a value
copied to another tenant fails authentication instead of decrypting.

Nothing here imports the app, config or Flask: the keyring takes keys as values.
Error messages never contain a key, a plaintext or a token.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import uuid
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "CryptoError",
    "DecryptError",
    "Keyring",
    "generate_key",
    "tenant_aad",
]

FORMAT_VERSION: Final = "v1"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Strict alphabet check up front: base64.urlsafe_b64decode silently skips foreign
# characters, which would let two different texts decode to the same bytes.
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class CryptoError(Exception):
    """The keyring is misconfigured or a crypto operation failed."""


class DecryptError(CryptoError):
    """A token could not be decrypted: malformed, unknown version or key, or not authentic."""


class Keyring:
    """Named AES-256-GCM keys, one of them active for new encryptions.

    Immutable after construction and safe to share between threads (each call builds its
    own cipher context). ``repr()`` lists key ids only, never key material.
    """

    __slots__ = ("_active_key_id", "_ciphers")

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str) -> None:
        """Validate and load the keys.

        Raises :class:`CryptoError` if the ring is empty, a key id is malformed, a key is
        not 32 bytes, or ``active_key_id`` is not in the ring.
        """
        if not keys:
            raise CryptoError(
                "keyring is empty: configure at least one key "
                "(generate one with `flask crypto generate-key`)"
            )
        ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
                raise CryptoError(
                    "key ids must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'; "
                    "rename the offending key"
                )
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise CryptoError(
                    f"key {key_id!r} must be exactly {KEY_BYTES} bytes (256 bits); "
                    "generate one with `flask crypto generate-key`"
                )
            ciphers[key_id] = AESGCM(key)
        if active_key_id not in ciphers:
            raise CryptoError(
                f"active key id {active_key_id!r} is not in the keyring "
                f"(known: {', '.join(sorted(ciphers))})"
            )
        self._ciphers: Final = ciphers
        self._active_key_id: Final = active_key_id

    def __repr__(self) -> str:
        return f"Keyring(key_ids={self.key_ids!r}, active_key_id={self._active_key_id!r})"

    @property
    def active_key_id(self) -> str:
        """The id of the key that :meth:`encrypt` uses."""
        return self._active_key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """All key ids in the ring, sorted."""
        return tuple(sorted(self._ciphers))

    def encrypt(self, plaintext: str | bytes, aad: bytes) -> str:
        """Encrypt under the active key with a fresh random nonce; ``str`` is UTF-8 encoded.

        A random 96-bit nonce per call keeps (key, nonce) pairs unique with overwhelming
        probability for far more encryptions than this service will ever make per key.
        """
        data = plaintext.encode("utf-8") if isinstance(plaintext, str) else plaintext
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._active_key_id].encrypt(nonce, data, aad)
        return ":".join(
            (FORMAT_VERSION, self._active_key_id, _b64encode(nonce), _b64encode(sealed))
        )

    def decrypt(self, token: str, aad: bytes) -> bytes:
        """Return the plaintext bytes of ``token``.

        Raises :class:`DecryptError` if the token is malformed, has an unknown version or
        key id, or fails authentication (wrong associated data, tampered, wrong key).
        """
        key_id, nonce, sealed = _parse(token)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptError(
                f"token was encrypted under key {key_id!r}, which is not in the keyring; "
                "add the key back to decrypt it"
            )
        try:
            return cipher.decrypt(nonce, sealed, aad)
        except InvalidTag:
            # `from None`: InvalidTag says nothing useful and the chain adds noise to logs.
            raise DecryptError(
                "token failed authentication: it was tampered with, or belongs to another "
                "row (associated data differs)"
            ) from None

    def decrypt_str(self, token: str, aad: bytes) -> str:
        """Like :meth:`decrypt`, decoded as UTF-8; undecodable plaintext is a DecryptError."""
        data = self.decrypt(token, aad)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptError("decrypted value is not valid UTF-8") from None

    def key_id_of(self, token: str) -> str:
        """The key id a token names, without decrypting it (rotation finds stale tokens).

        Raises :class:`DecryptError` if the token is malformed; the key need not be in the ring.
        """
        key_id, _nonce, _sealed = _parse(token)
        return key_id


def generate_key() -> str:
    """A fresh random 256-bit key as 64 hex digits (the APP_ENCRYPTION_KEYS format)."""
    return secrets.token_hex(KEY_BYTES)


def tenant_aad(tenant_id: uuid.UUID, role_name: str) -> bytes:
    """Associated data binding a tenant credential to its tenant id and role name.

    The UUID's canonical text has a fixed length and no ':', so the encoding is
    unambiguous whatever the role name is.
    """
    return f"tenantpool:v1:{tenant_id}:{role_name}".encode()


def gateway_aad(database: str, role_name: str) -> bytes:
    """Associated data binding a gateway role's password to its database and role.

    Its own prefix, so neither a tenant's ciphertext nor a gateway's passes for the other.
    """
    return f"tenantpool:gateway:v1:{database}:{role_name}".encode()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    if not _B64URL.fullmatch(text):
        raise DecryptError(f"malformed token: {what} is not unpadded urlsafe base64")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise DecryptError(f"malformed token: {what} is not valid base64") from None
    # Reject non-canonical encodings (stray low bits in the last character) so each
    # byte string has exactly one token text.
    if _b64encode(data) != text:
        raise DecryptError(f"malformed token: {what} is not canonical base64")
    return data


def _parse(token: str) -> tuple[str, bytes, bytes]:
    """Split a token into (key_id, nonce, ciphertext+tag), checking only its structure."""
    parts = token.split(":")
    if len(parts) != 4:
        raise DecryptError("malformed token: expected 4 ':'-separated parts")
    version, key_id, nonce_text, sealed_text = parts
    if version != FORMAT_VERSION:
        # The version text comes from the token, so it is not echoed back.
        raise DecryptError(f"unsupported token version (this code reads {FORMAT_VERSION})")
    if not _KEY_ID.fullmatch(key_id):
        raise DecryptError("malformed token: invalid key id")
    nonce = _b64decode(nonce_text, "nonce")
    if len(nonce) != NONCE_BYTES:
        raise DecryptError(f"malformed token: nonce must be {NONCE_BYTES} bytes")
    sealed = _b64decode(sealed_text, "ciphertext")
    if len(sealed) < TAG_BYTES:
        raise DecryptError("malformed token: ciphertext is shorter than the GCM tag")
    return key_id, nonce, sealed
