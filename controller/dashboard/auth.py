"""The operator token: what opens the dashboard's data and `/metrics`, never an inference key.

With no token in the spec these routes stay closed (403): a cluster's queues, power and
decisions are not for anyone who can reach the API. A wrong or missing token is a 401 with
OpenAI's error body, like a wrong API key. The comparison takes the same time however much of
a guess is right (SHA-256 digests, `hmac.compare_digest`), as `router/auth.py` does for keys.
"""

from __future__ import annotations

import hashlib
import hmac

from router.errors import AUTHENTICATION, APIError, unauthorized

PERMISSION = "permission_error"


def operator_closed() -> APIError:
    return APIError(
        403,
        "The operator dashboard and /metrics are closed: this cluster has no operator_token "
        "(set one in the spec; `pavana up` generates one).",
        type=PERMISSION,
        code="operator_token_not_configured",
    )


class OperatorToken:
    def __init__(self, token: str | None) -> None:
        self._digest = hashlib.sha256(token.encode()).digest() if token else None

    @property
    def configured(self) -> bool:
        return self._digest is not None

    def check_http(self, authorization: str | None) -> None:
        """Raise 403 when no token is configured, 401 unless `Authorization: Bearer <token>` matches."""
        if self._digest is None:
            raise operator_closed()
        if not authorization:
            raise unauthorized("Missing operator token: send the header 'Authorization: Bearer <operator token>'.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Malformed Authorization header: expected 'Bearer <operator token>'.")
        if not hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(), self._digest):
            raise APIError(401, "Incorrect operator token.", type=AUTHENTICATION, code="invalid_operator_token")
