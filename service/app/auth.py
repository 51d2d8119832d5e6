"""Bearer-key auth: on when keys are configured. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from service.errors import Unauthorized

OPS_PATHS = frozenset({"/health", "/ready", "/metrics"})
DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
ADAPTER_PATHS = frozenset({"/compute", "/score", "/rewards"})  # trainer adapters' routes outside /api/


class ApiKeyAuth:
    def __init__(self, keys: list[SecretStr], *, protect_ops: bool = False) -> None:
        self._keys = [k.get_secret_value().encode() for k in keys]
        self.protect_ops = protect_ops

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def applies_to(self, path: str) -> bool:
        if not self.enabled:
            return False
        if path.startswith(("/v1/", "/api/")) or path in ADAPTER_PATHS:
            return True
        return self.protect_ops and path in OPS_PATHS

    def check(self, authorization: str | None) -> None:
        """Raise Unauthorized unless the header carries one of the keys."""
        if not authorization:
            raise Unauthorized("missing 'Authorization: Bearer <key>' header")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization header must be 'Bearer <key>'")
        candidate = token.strip().encode("utf-8", "surrogateescape")
        # Compare against every key (no early exit), each comparison constant-time.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(candidate, key)
        if not ok:
            raise Unauthorized("invalid API key")
