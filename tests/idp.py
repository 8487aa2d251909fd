"""An identity provider for tests: a JWKS served on 127.0.0.1 and the keys behind it."""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISSUER, AUDIENCE = "https://idp.example.test/", "tenantpool"
TENANT = uuid.UUID("6f1c1b7e-2a43-4b8e-9c5d-1f2e3d4c5b6a")
"""The tenant of tokens that name none: one that exists in no directory."""


@functools.cache
def _private_key(kind: str, kid: str) -> Any:
    """A key per (kind, kid), made once per run: RSA keys take a while to generate."""
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


class Idp:
    """A JWKS endpoint on 127.0.0.1 and the private keys behind it; keys may rotate."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}
        self.published: list[dict[str, Any]] = []
        self.requests = 0
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.requests += 1
                body = json.dumps({"keys": idp.published}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_key(self, kid: str, kind: str = "RSA") -> None:
        key = _private_key(kind, kid)
        algorithm: Any = {
            "RSA": jwt.algorithms.RSAAlgorithm,
            "EC": jwt.algorithms.ECAlgorithm,
            "OKP": jwt.algorithms.OKPAlgorithm,
        }[kind]
        self.private[kid] = key
        self.published.append({**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def token(self, kid: str = "k1", algorithm: str = "RS256", **overrides: Any) -> str:
        """A token signed by ``kid``; a claim overridden with None is left out."""
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user-1",
            "iat": now,
            "exp": now + 300,
            "tenant_id": str(TENANT),
            "roles": ["member"],
            **overrides,
        }
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, self.private[kid], algorithm=algorithm, headers={"kid": kid})
