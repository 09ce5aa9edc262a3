"""Secret sources: Prefect Secret blocks first, then the environment.

A secret named ``staging-database-password`` is read from the Secret block of that
name, or else from ``RSOLV_SECRET_STAGING_DATABASE_PASSWORD``. Values travel as
``SecretStr`` so that a stray ``repr`` or log line shows ``**********``; they are never
flow parameters (Prefect stores those) and the tasks that handle them use ``NO_CACHE``
so no value is hashed into a cache key or persisted as a result.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from pydantic import SecretStr


def secret_env_var(name: str) -> str:
    """The environment variable that can hold secret ``name``."""
    return "RSOLV_SECRET_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def resolve_secret(name: str) -> SecretStr | None:
    """Return secret ``name`` from its Prefect Secret block or environment variable.

    Returns None when neither holds it; the caller decides whether that is fatal.
    """
    block_value = _from_block(name)
    if block_value is not None:
        return block_value
    value = os.environ.get(secret_env_var(name))
    return SecretStr(value) if value else None


def _from_block(name: str) -> SecretStr | None:
    # Imported here so that importing this module never touches Prefect's settings.
    from prefect.blocks.system import Secret

    try:
        block = Secret.load(name)
    except ValueError:
        # Prefect raises ValueError("Unable to find block document named ...").
        return None
    value = block.get()
    return SecretStr(str(value)) if value else None


def fingerprint(value: str | bytes, *, key: bytes = b"rsolv-staging/fingerprint/v1") -> str:
    """A keyed hash of a secret value, safe to compare and to show (first 12 hex digits).

    Used to check that staging never reuses a production credential without either
    value being logged or stored.
    """
    data = value.encode() if isinstance(value, str) else value
    return hmac.new(key, data, hashlib.sha256).hexdigest()[:12]
