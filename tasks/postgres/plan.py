"""Preparing a sync: every check before the first write (:func:`prepare_sync` and its
refusals), the :class:`SyncPlan` it decides, a previous run's leftovers
(:func:`drop_leftovers`) and the sanitization salt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel, SecretStr

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import ConfigurationError, GuardError, SecretError
from rsolv_staging.sanitize import (
    Rules,
    check_rules,
    inherit_rules,
    personal_columns,
)
from rsolv_staging.sync import (
    LARGE_OBJECTS,
    SyncNames,
    choose_tools,
    major_of,
    sync_names,
)
from tasks.postgres.connections import _redact, parse_target, refuse_production
from tasks.postgres.sessions import (
    _USER_NAMESPACES,
    _admin,
    _ancestors,
    _logger,
    _not_extension_member,
    _server_identity,
    source_session,
)
from tasks.postgres.tools import find_tools
from tasks.secrets import resolve_secret, secret_env_var


class SyncPlan(BaseModel):
    """Everything decided before the first write (no DSN in it)."""

    source: str
    target: str
    live: str
    new: str
    old: str
    gone: str
    tools: str
    source_version: int
    target_version: int
    masked: dict[str, str]
    unmasked_personal: list[str]
    source_bytes: int = 0
    staging_bytes: int = 0  # staging's databases before the copy (leftovers dropped)

    @property
    def names(self) -> SyncNames:
        return SyncNames(live=self.live, new=self.new, old=self.old, gone=self.gone)


_COLUMNS = f"""
SELECT n.nspname || '.' || c.relname || '.' || a.attname,
       format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, NULL),
       a.attnotnull
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attgenerated = '' AND {_USER_NAMESPACES} AND {_not_extension_member("pg_class", "c.oid")}
"""


# Tables whose rows row-level security would hide from the sync's role: its COPY would
# send only the rows it may see, and count only those. Tables only: the copy reads each
# partition itself, never through its parent's policies.
_HIDDEN_ROWS = f"""
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relrowsecurity AND {_USER_NAMESPACES}
  AND {_not_extension_member("pg_class", "c.oid")}
  AND NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user)
  AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))
ORDER BY 1
"""


_FORCED_ROW_SECURITY = f"""
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relforcerowsecurity AND {_USER_NAMESPACES}
  AND {_not_extension_member("pg_class", "c.oid")}
ORDER BY 1
"""


# Roles a policy applies to (0 is PUBLIC), in the user's schemas.
_POLICY_ROLES = f"""
SELECT DISTINCT r.rolname FROM pg_policy p
JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(p.polroles) AS applies(role)
JOIN pg_roles r ON r.oid = applies.role
WHERE {_USER_NAMESPACES}
"""


@task(cache_policy=NO_CACHE, task_run_name="prepare_sync-{live_name}")
def prepare_sync(
    source_dsn: SecretStr,
    target_dsn: SecretStr,
    production: Database,
    live_name: str,
    rules: Rules | None = None,
) -> SyncPlan:
    """Check everything before the first write; then clean up a previous run's leftovers.

    Refuses (GuardError) a target that is production's server in the environment model,
    a target that is the source (same host/port/database, or the same running server),
    and a source session that cannot be made read-only. Stops (ConfigurationError) when
    no client tools fit both versions, when an extension is missing on the target, or
    when a sanitize rule names an unknown column, when a row-level security policy
    names a role staging's server lacks, when row-level security would hide rows from
    the source role (or, forced, from staging's), when it may not read every large
    object, or when staging's role could not create, swap and clean up databases.

    Args:
        source_dsn: Production's database (only read).
        target_dsn: Staging's server, at a maintenance database such as ``postgres``.
        production: Production's database in the environment model.
        live_name: The staging database the copy replaces.
        rules: Sanitization rules, or None for a direct copy.
    """
    names = sync_names(live_name)
    target_at = refuse_production(target_dsn, production)
    source_at = parse_target(source_dsn)
    if (source_at.host, source_at.port) == (target_at.host, target_at.port) and (
        source_at.dbname in (live_name, names.new, target_at.dbname)
    ):
        raise GuardError(f"refusing to sync: the target {target_at} is the source {source_at}")
    source = _inspect_source(source_dsn, rules)
    same_server = GuardError(
        f"refusing to sync: the target {target_at} is the same PostgreSQL server as "
        f"the source {source_at} (same system identifier and start time)"
    )
    target = _inspect_target(target_dsn, production, live_name, source.identity, same_server)
    _refuse_missing_rights(target, source.forced, live_name)
    _refuse_missing_dependencies(source, target)
    tools = find_tools()
    tool_dir = choose_tools(major_of(source.version), major_of(target.version), tools)
    masked, unmasked = _masking(rules, source)
    staging_bytes = _clean_up_staging(target_dsn, production, names, source.bytes)
    tool_major = next(v for v, d in tools.items() if d == tool_dir)
    _logger().info(
        "Sync %s (PostgreSQL %d) -> %s database %s (PostgreSQL %d) with %s tools from %s",
        source_at,
        major_of(source.version),
        target_at,
        live_name,
        major_of(target.version),
        tool_major,
        tool_dir,
    )
    return SyncPlan(
        source=str(source_at),
        target=str(target_at),
        live=names.live,
        new=names.new,
        old=names.old,
        gone=names.gone,
        tools=tool_dir,
        source_version=source.version,
        target_version=target.version,
        masked=masked,
        unmasked_personal=unmasked,
        source_bytes=source.bytes,
        staging_bytes=staging_bytes,
    )


@dataclass(frozen=True)
class _SourceView:
    """What prepare_sync learns of the source (read-only, in one snapshot)."""

    version: int
    identity: tuple[str, str]
    extensions: set[str]
    columns: dict[str, tuple[str, bool]]
    policy_roles: set[str]
    ancestors: dict[str, list[str]]
    forced: list[str]  # tables with FORCE ROW LEVEL SECURITY
    large_objects: int
    bytes: int


@dataclass(frozen=True)
class _TargetView:
    """What prepare_sync learns of staging's server, and the sync role's rights there."""

    version: int
    identity: tuple[str, str]
    available: set[str]  # extensions
    roles: set[str]
    superuser: bool
    createdb: bool
    signal: bool  # member of pg_signal_backend
    owns_live: bool | None  # None: no live database yet
    bypassrls: bool


def _inspect_source(source_dsn: SecretStr, rules: Rules | None) -> _SourceView:
    """Read the source; refuse rows row-level security would hide, and large objects
    the sync's role may not read (unless the rules empty them)."""
    with source_session(source_dsn) as src:
        version = src.info.server_version
        identity = _server_identity(src)
        extensions = {
            str(r[0])
            for r in src.execute("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql'")
        }
        columns = {str(r[0]): (str(r[1]), bool(r[2])) for r in src.execute(_COLUMNS)}
        policy_roles = {str(r[0]) for r in src.execute(_POLICY_ROLES)}
        ancestors = _ancestors(src)
        hidden = [str(r[0]) for r in src.execute(_HIDDEN_ROWS)]
        forced = [str(r[0]) for r in src.execute(_FORCED_ROW_SECURITY)]
        if hidden:
            raise ConfigurationError(
                "row-level security would hide rows of "
                + ", ".join(hidden)
                + " from the sync's role on the source, and the copy would miss them "
                "unnoticed; nothing was copied. Use a role with BYPASSRLS (or the tables' "
                "owner, without FORCE ROW LEVEL SECURITY)"
            )
        count_row = src.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
        large_objects = int(count_row[0]) if count_row else 0
        if large_objects and not (rules is not None and rules.large_objects == "empty"):
            _check_large_objects_readable(src, source_dsn)
        size_row = src.execute("SELECT pg_database_size(current_database())").fetchone()
        source_bytes = int(size_row[0]) if size_row else 0
        src.rollback()
    return _SourceView(
        version=version,
        identity=identity,
        extensions=extensions,
        columns=columns,
        policy_roles=policy_roles,
        ancestors=ancestors,
        forced=forced,
        large_objects=large_objects,
        bytes=source_bytes,
    )


def _check_large_objects_readable(src: psycopg.Connection[Any], source_dsn: SecretStr) -> None:
    try:
        # Opens each for reading, reads nothing: a role without SELECT on one
        # fails here, not after the tables are copied.
        src.execute("SELECT count(lo_get(oid, 0, 0)) FROM pg_largeobject_metadata")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigurationError(
            "the sync's role cannot read every large object of the source, nothing "
            f"was copied ({_redact(str(exc).strip(), source_dsn)}): grant it SELECT "
            "on them, or say large_objects: empty in the rules file"
        ) from None


def _inspect_target(
    target_dsn: SecretStr,
    production: Database,
    live_name: str,
    source_identity: tuple[str, str],
    same_server: GuardError,
) -> _TargetView:
    """Read staging's server; refuse it (``same_server``) when it is the source's."""
    with _admin(target_dsn, production) as dst:
        version = dst.info.server_version
        identity = _server_identity(dst)
        if identity == source_identity:
            raise same_server
        available = {str(r[0]) for r in dst.execute("SELECT name FROM pg_available_extensions")}
        roles = {str(r[0]) for r in dst.execute("SELECT rolname FROM pg_roles")}
        rights = dst.execute(
            "SELECT r.rolsuper, r.rolcreatedb, pg_has_role('pg_signal_backend', 'USAGE'),"
            " (SELECT pg_has_role(d.datdba, 'USAGE') FROM pg_database d WHERE d.datname = %s),"
            " r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user",
            (live_name,),
        ).fetchone()
    superuser, createdb, signal, owns_live, bypassrls = rights or (False,) * 5
    return _TargetView(
        version=version,
        identity=identity,
        available=available,
        roles=roles,
        superuser=superuser,
        createdb=createdb,
        signal=signal,
        owns_live=owns_live,
        bypassrls=bypassrls,
    )


def _refuse_missing_rights(target: _TargetView, forced: Sequence[str], live_name: str) -> None:
    # The copy creates databases, and the swap renames the live one and ends the sessions
    # on it: without the rights to do all of it, the run would fail at the very end.
    if not target.superuser:
        lacking = []
        if not target.createdb:
            lacking.append("CREATEDB")
        if target.owns_live is False:
            lacking.append(f"ownership of {live_name} (ALTER DATABASE ... OWNER TO it)")
        if not target.signal:
            lacking.append("membership in pg_signal_backend (to end staging's sessions)")
        if lacking:
            raise ConfigurationError(
                "staging's sync role is not a superuser and lacks "
                + ", ".join(lacking)
                + "; nothing was copied"
            )
    # On staging the sync's role owns every table (ownership is not copied), but FORCE
    # ROW LEVEL SECURITY applies policies to owners too: verification would count, and
    # materialized views would see, only some rows.
    if forced and not (target.superuser or target.bypassrls):
        raise ConfigurationError(
            "the source forces row-level security on "
            + ", ".join(forced)
            + ": staging's sync role must bypass it (BYPASSRLS or superuser) to load and "
            "verify them; nothing was copied"
        )


def _refuse_missing_dependencies(source: _SourceView, target: _TargetView) -> None:
    missing = sorted(source.extensions - target.available)
    if missing:
        raise ConfigurationError(
            "extensions used by the source are not available on the target server: "
            + ", ".join(missing)
        )
    # Ownership and grants are left out, but a row-level security policy names its
    # roles in its definition: restoring it needs them (the restore would fail late).
    missing = sorted(source.policy_roles - target.roles)
    if missing:
        raise ConfigurationError(
            "roles named by the source's row-level security policies do not exist on "
            "staging's server (create them there, then sync again): " + ", ".join(missing)
        )


def _masking(rules: Rules | None, source: _SourceView) -> tuple[dict[str, str], list[str]]:
    """What the rules mask (column -> strategy), and what looks personal but is not."""
    masked: dict[str, str] = {}
    if rules is not None:
        problems = check_rules(rules, source.columns)
        if problems:
            raise ConfigurationError(
                "sanitize rules do not match the source, nothing was copied: " + "; ".join(problems)
            )
        rules = inherit_rules(rules, source.ancestors, source.columns)
        masked = _masked_labels(rules)
    unmasked = personal_columns(source.columns, rules)
    if rules is not None and source.large_objects:
        if rules.large_objects is None:
            # Documents and images are the usual content: as personal as any column.
            unmasked.append(f"{source.large_objects} large objects (large_objects: keep or empty)")
        else:
            masked[LARGE_OBJECTS] = rules.large_objects
    if unmasked:
        _logger().warning(
            "Columns that look personal and have no sanitize rule: %s", ", ".join(unmasked)
        )
    return masked, unmasked


def _clean_up_staging(
    target_dsn: SecretStr, production: Database, names: SyncNames, source_bytes: int
) -> int:
    """Drop an earlier run's leftovers; returns the size of staging's databases then."""
    logger = _logger()
    leftovers = drop_leftovers(target_dsn, production, names)
    if leftovers:
        logger.info("Dropped leftovers of an earlier run: %s", ", ".join(leftovers))
    with _admin(target_dsn, production) as dst:
        staging_bytes = sum(_database_sizes(dst).values())
    logger.info(
        "Staging's databases take %.0f MB; this sync adds a copy of about %.0f MB (the "
        "source's size) and frees the previous rollback copy once it succeeds",
        staging_bytes / 1e6,
        source_bytes / 1e6,
    )
    return staging_bytes


def _masked_labels(rules: Rules) -> dict[str, str]:
    """Each ruled column's strategy, as the report shows it (``fake:email``)."""
    return {
        c: r.strategy if r.strategy != "fake" else f"fake:{r.provider}"
        for c, r in rules.columns.items()
    }


def _database_sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Staging's databases by size on disk: those the sync's role may connect to (all of
    them for a superuser; pg_database_size refuses the others)."""
    return {
        str(name): int(size)
        for name, size in conn.execute(
            # NULL for a database dropped meanwhile.
            "SELECT datname, coalesce(pg_database_size(oid), 0) FROM pg_database"
            " WHERE datallowconn AND has_database_privilege(oid, 'CONNECT')"
        )
    }


def drop_leftovers(target_dsn: SecretStr, production: Database, names: SyncNames) -> list[str]:
    """Drop what an interrupted run left: ``<live>_sync_new`` and ``<live>_sync_gone``."""
    dropped = []
    with _admin(target_dsn, production) as conn:
        for name in (names.new, names.gone):
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
                dropped.append(name)
    return dropped


@task(cache_policy=NO_CACHE, persist_result=False)
def resolve_sanitize_salt(secret_name: str) -> SecretStr:
    """The key of the sanitization maskers, from its Secret block or environment variable.

    Raises:
        SecretError: neither holds it (sanitization never runs with a guessable key).
    """
    value = resolve_secret(secret_name)
    if value is None:
        raise SecretError(
            f"sanitization needs a salt: create the Prefect Secret block {secret_name!r} "
            f"(or set {secret_env_var(secret_name)}) to a long random string"
        )
    return value
