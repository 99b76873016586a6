"""API keys: `Authorization: Bearer KEY` over HTTP, `x-api-key: KEY` metadata over gRPC.

With no keys configured the API is open (a deliberate choice: `pavana up` generates a key
unless told `--insecure`). Keys are compared in constant time, so response timing tells an
attacker nothing about how much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from router.errors import APIError, unauthorized

GRPC_KEY_METADATA = "x-api-key"


class APIKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        # Digests of equal length, so `compare_digest` never leaks a key's length either.
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys if k)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def is_valid(self, key: str | None) -> bool:
        if not self.enabled:
            return True
        if not key:
            return False
        digest = hashlib.sha256(key.encode()).digest()
        # Compare against every key (no early exit), for the same timing whichever matches.
        matches = [hmac.compare_digest(digest, known) for known in self._digests]
        return any(matches)

    def check_http(self, authorization: str | None) -> str | None:
        """Raise a 401 `APIError` unless the `Authorization` header carries a valid key; return
        the key (None when keys are off), so that the caller can look up what it is bound to."""
        if not self.enabled:
            return None
        if not authorization:
            raise unauthorized("Missing API key: send the header 'Authorization: Bearer <key>'.")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
        if not self.is_valid(key.strip()):
            raise unauthorized("Incorrect API key provided.")
        return key.strip()

    def check_grpc(self, metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
        """Raise a 401 `APIError` (UNAUTHENTICATED) unless the metadata carries a valid key, and
        return it. `authorization: Bearer KEY` is accepted too, for clients that send only that."""
        if not self.enabled:
            return None
        key: str | None = None
        bearer: str | None = None
        for name, value in metadata:
            value = value.decode() if isinstance(value, bytes) else value
            if name.lower() == GRPC_KEY_METADATA:
                key = value
            elif name.lower() == "authorization":
                bearer = value
        if key is None and bearer is not None:
            return self.check_http(bearer)
        if not key:
            raise unauthorized(f"Missing API key: send the metadata '{GRPC_KEY_METADATA}: <key>'.")
        if not self.is_valid(key):
            raise unauthorized("Incorrect API key provided.")
        return key


__all__ = ["APIError", "APIKeys", "GRPC_KEY_METADATA"]
