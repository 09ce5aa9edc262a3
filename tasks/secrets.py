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
from contextlib import suppress
from typing import Any, cast

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


# ------------------------------------------------------------------ writing the sources


def read_block(name: str) -> SecretStr | None:
    """Secret block ``name``'s value (None when there is no such block; the environment
    is not consulted: this is what a rollback must put back)."""
    return _from_block(name)


def load_values(name: str, keys: tuple[str, ...]) -> dict[str, SecretStr]:
    """New values an operator put in Secret block ``name``: one string for a single key,
    or a JSON object ``{key: value}`` naming exactly the keys rotated.

    Raises:
        SecretError: the block is missing, empty, or does not hold those keys.
    """
    from prefect.blocks.system import Secret

    try:
        value = cast("Secret[Any]", Secret.load(name)).get()
    except ValueError:
        raise SecretError(f"no Secret block {name!r}: nothing was changed") from None
    if isinstance(value, dict):
        if set(value) != set(keys) or not all(isinstance(v, str) and v for v in value.values()):
            raise SecretError(
                f"Secret block {name!r} must map exactly the keys {sorted(keys)} to non-empty "
                f"strings (it names {sorted(value)}): nothing was changed"
            )
        return {k: SecretStr(str(value[k])) for k in keys}
    if len(keys) != 1 or not isinstance(value, str) or not value:
        raise SecretError(
            f"Secret block {name!r} holds one value; the secret has keys {sorted(keys)}: give "
            "a JSON object {key: value} (nothing was changed)"
        )
    return {keys[0]: SecretStr(value)}


@task(
    name="write-secret-block",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="write-block-{name}",
    retries=2,
    retry_delay_seconds=1,
)
def write_secret_block(name: str, value: SecretStr | None) -> None:
    """Set Secret block ``name`` to ``value`` (created if missing); None deletes the block.

    Idempotent either way, so retried on a failed call to the Prefect API.
    """
    from prefect.blocks.system import Secret

    if value is None:
        with suppress(ValueError):  # no such block: already as wanted
            Secret.delete(name)
        return
    Secret(value=value.get_secret_value()).save(name, overwrite=True)
