"""Secret sources: Prefect Secret blocks first, then the environment.

A secret named ``staging-database-password`` is read from the Secret block of that
name, or else from ``RSOLV_SECRET_STAGING_DATABASE_PASSWORD``. Values travel as
``SecretStr`` so that a stray ``repr`` or log line shows ``**********``; they are never
flow parameters (Prefect stores those) and the tasks that handle them use ``NO_CACHE``
so no value is hashed into a cache key or persisted as a result.
"""

from __future__ import annotations

import os
import re
from typing import cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from rsolv_staging.environments import Topology
from rsolv_staging.exceptions import SecretError
from rsolv_staging.fingerprint import fingerprint


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
        block = cast("Secret[str]", Secret.load(name))
    except ValueError:
        # Prefect raises ValueError("Unable to find block document named ...").
        return None
    value = block.get()
    return SecretStr(str(value)) if value else None


SecretValues = dict[str, dict[str, SecretStr]]


def source_name(secret: str, key: str) -> str:
    """Where one key of a Secret is read from: ``staging-database`` + ``password``."""
    return f"{secret}-{key}"


@task(name="load-staging-secrets", cache_policy=NO_CACHE, persist_result=False)
def load_staging_secrets(topology: Topology) -> SecretValues:
    """Read every staging credential from its secret source.

    Raises:
        SecretError: listing *every* missing secret with the block and variable to set,
            so one run tells the operator everything at once.
    """
    env = topology.staging
    values: SecretValues = {}
    missing: list[str] = []
    for spec in topology.secrets:
        name = env.secret_name(spec)
        for key in spec.data_keys:
            source = source_name(name, key)
            value = resolve_secret(source)
            if value is None:
                missing.append(f"{source} (Secret block, or ${secret_env_var(source)})")
            else:
                values.setdefault(name, {})[key] = value
    if missing:
        raise SecretError("missing staging secrets, nothing was applied: " + ", ".join(missing))
    return values


def ensure_not_production_values(
    topology: Topology, values: SecretValues, production: dict[str, dict[str, str]]
) -> None:
    """Refuse staging credentials equal to production's (compared by fingerprint).

    ``production`` maps production Secret name -> key -> fingerprint.

    Raises:
        SecretError: naming each reused secret key, never its value.
    """
    # Any production credential, not only the same key of the counterpart: a staging
    # OAuth secret that is production's payment key is shared all the same.
    owners: dict[str, list[str]] = {}
    for prod_name, keys in sorted(production.items()):
        for key, print_ in sorted(keys.items()):
            owners.setdefault(print_, []).append(f"{prod_name}/{key}")
    reused = []
    for spec in topology.secrets:
        staging_name = topology.staging.secret_name(spec)
        for key, value in values.get(staging_name, {}).items():
            for owner in owners.get(fingerprint(value.get_secret_value()), []):
                reused.append(f"{staging_name}/{key} equals {owner}")
    if reused:
        raise SecretError(
            "staging must not share credentials with production (RFC 002 section 7), "
            "nothing was applied: " + "; ".join(reused)
        )
