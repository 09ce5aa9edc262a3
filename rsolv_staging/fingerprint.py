"""Keyed fingerprints of secret values: comparable and showable, never reversible."""

from __future__ import annotations

import hashlib
import hmac

DEFAULT_KEY = b"rsolv-staging/fingerprint/v1"


def fingerprint(value: str | bytes, *, key: bytes = DEFAULT_KEY) -> str:
    """A keyed SHA-256 of a secret value, cut to 12 hex digits.

    Used to check that staging never reuses a production credential without either
    value being logged or stored.
    """
    data = value.encode() if isinstance(value, str) else value
    return hmac.new(key, data, hashlib.sha256).hexdigest()[:12]
