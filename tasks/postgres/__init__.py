"""Side effects on PostgreSQL: connecting, the production guard, schema, COPY loads, checks.

Sections, in the order a load uses them (the monthly production -> staging sync will
add its dump/restore tasks as a section of their own):

1. **Targets and the production guard.** A DSN arrives as ``SecretStr`` (from a Secret
   block, see :func:`resolve_dsn`) and never appears in a log line, an artifact or an
   exception message: errors are rewritten with the password masked, and a DSN libpq
   cannot even parse is reported without its text (the parser quotes fragments of it).
   Every task that writes calls :func:`connect_for_writing`, which refuses a target that
   is production's PostgreSQL server twice: on the DSN as written (before connecting)
   and on where libpq actually connected (``conn.info``: after environment defaults,
   multi-host selection and ``hostaddr``).
2. **Schema**: :func:`create_schema`, :func:`describe_schema`, :func:`verify_schema`.
3. **Loading**: :func:`copy_rows` generates and loads concurrently (a producer thread
   renders COPY blocks while this thread streams them to the server) in one
   transaction, so a failed load leaves the previous data in place.
4. **Verification and upkeep**: :func:`read_max_ids`, :func:`checksum_tables`,
   :func:`analyze_tables`.

Why the guard compares *servers* and not only host/port/database: RFC 002 gives staging
its own PostgreSQL instance, so any database on production's server is the wrong
target; and the DSN is a secret nobody sees in the UI, so a pasted production DSN is
the realistic mistake. Host names are compared after folding Kubernetes' spellings of
one Service (``postgres.production``, ``...svc``, ``...svc.cluster.local``) and, where
both names resolve, by address; a production reached through some other alias (a
port-forward on another port, a proxy) cannot be recognized from the DSN alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote
from uuid import UUID

import psycopg
from prefect import Task, task
from prefect.artifacts import update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, Field, SecretStr
from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import ConfigurationError, DataError, GuardError, SecretError
from rsolv_staging.schema import (
    TABLE_NAMES,
    ForeignKeyShape,
    SchemaShape,
    TableShape,
    compare_schemas,
    describe_metadata,
    metadata,
    normalize_ondelete,
    type_name,
)
from rsolv_staging.synthetic import Block, SyntheticPlan, generate_blocks
from tasks.secrets import resolve_secret, secret_env_var

APPLICATION_NAME = "rsolv-staging"
# Retries of idempotent tasks on transient failures (connection lost, lock timeout).
RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=2)
RETRY_JITTER = 0.5
LOCK_TIMEOUT = "30s"
# One load at a time per database: a second run fails fast instead of interleaving.
_LOAD_LOCK_KEY = 0x7273_6F6C_7631  # "rsolv1"
_MASK = "********"
_PERMANENT_CONNECT_ERRORS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # database or role
    "authentication method",
    "certificate",
)


# --- 1. targets and the production guard -----------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a DSN points, without its password (safe to log and to return)."""

    host: str
    port: int
    dbname: str
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


def _is_transient(exc: psycopg.Error) -> bool:
    """Whether retrying may help: the connection or the server, not our request."""
    state = exc.sqlstate
    if state is None:
        # No SQLSTATE: a failed connection attempt (libpq reports only text) or a dropped
        # connection. Refused logins and missing databases will not pass by waiting.
        text = str(exc).lower()
        if any(marker in text for marker in _PERMANENT_CONNECT_ERRORS):
            return False
        return isinstance(exc, psycopg.OperationalError)
    # 08: connection exception; 57P0x: shutdown/crash; 53: out of resources;
    # 40001/40P01: serialization failure/deadlock; 55P03: lock not available.
    return state[:2] in {"08", "53"} or state in {
        "57P01",
        "57P02",
        "57P03",
        "40001",
        "40P01",
        "55P03",
    }


def _redact(text: str, dsn: SecretStr) -> str:
    """``text`` with the DSN's password masked (as written and percent-encoded)."""
    try:
        password = conninfo_to_dict(dsn.get_secret_value()).get("password")
    except psycopg.Error:
        password = None
    if password:
        for form in {str(password), quote(str(password), safe="")}:
            text = text.replace(form, _MASK)
    return text


def _error(message: str, exc: psycopg.Error | DBAPIError, dsn: SecretStr) -> DataError:
    """A DataError for ``exc`` (a psycopg error, or SQLAlchemy's wrapper of one)."""
    if isinstance(exc, DBAPIError):
        original = exc.orig
        if not isinstance(original, psycopg.Error):
            return DataError(f"{message}: {_redact(str(exc).strip(), dsn)}")
        exc = original
    detail = _redact(str(exc).strip() or type(exc).__name__, dsn)
    return DataError(f"{message}: {detail}", transient=_is_transient(exc))


def _endpoints(params: dict[str, Any]) -> list[tuple[str, int]]:
    """The (host, port) pairs libpq would try for these connection parameters."""
    hosts = str(params.get("host") or os.environ.get("PGHOST") or "localhost").split(",")
    ports = str(params.get("port") or os.environ.get("PGPORT") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    pairs = []
    for host, port in zip(hosts, ports, strict=False):
        try:
            pairs.append((host.strip() or "localhost", int(port.strip() or 5432)))
        except ValueError:
            # Not quoted: a misread DSN can put part of the password there.
            raise ConfigurationError("the DSN's port is not a number") from None
    for address in str(params.get("hostaddr") or "").split(","):
        if address.strip():
            pairs.append((address.strip(), pairs[0][1] if pairs else 5432))
    return pairs


_URI_SCHEME = ("postgresql://", "postgres://")


def _misencoded_uri(dsn: str) -> bool:
    """Whether a URI DSN has '@' or '/' unencoded in its user info.

    libpq ends the user info at the first '@' or '/'. A '/' in the password then leaves
    no user info at all, and the password is read as host, port and database; an '@'
    cuts it there, and the rest is read as the host. Either way messages that name the
    target would print it, and no redaction knows to look there. Detected the way libpq
    reads: an '@' left in the host (after the user info) or in the database path (no
    user info). A base64 password holds '/' often enough for this to matter.
    """
    if not dsn.lower().startswith(_URI_SCHEME):
        return False
    rest = dsn.split("://", 1)[1]
    stop = next((i for i, c in enumerate(rest) if c in "@/"), len(rest))
    if stop < len(rest) and rest[stop] == "@":  # user info, then the host
        return "@" in re.split(r"[/?]", rest[stop + 1 :], maxsplit=1)[0]
    host = re.split(r"[/?]", rest, maxsplit=1)[0]
    path = rest[len(host) :].split("?", 1)[0]  # the database name; the query may hold '@'
    return "@" in path


def parse_target(dsn: SecretStr) -> Target:
    """Where ``dsn`` points, as written (libpq's defaults filled in from the environment).

    Raises:
        ConfigurationError: libpq cannot parse the DSN. The parser's message quotes
            parts of the string, so it is not repeated.
    """
    if _misencoded_uri(dsn.get_secret_value()):
        raise ConfigurationError(
            "the database DSN is a URI with '@' or '/' unencoded in its user info (in the "
            "password, say): libpq would read part of it as the host, port or database. "
            "Percent-encode them (%40, %2F); the text is not shown because it holds a "
            "password"
        )
    try:
        params = conninfo_to_dict(dsn.get_secret_value())
    except psycopg.Error:
        raise ConfigurationError(
            "the database DSN is not a valid PostgreSQL connection string "
            "(URI or key=value form); its text is not shown because it holds a password"
        ) from None
    host, port = _endpoints(params)[0]
    user = str(params.get("user") or os.environ.get("PGUSER") or "postgres")
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or user)
    return Target(host=host, port=port, dbname=dbname, user=user)


def _canonical_host(host: str) -> str:
    """Fold case, a trailing dot and Kubernetes' spellings of one Service name."""
    host = host.strip().lower().rstrip(".")
    for suffix in (".svc.cluster.local", ".svc"):
        if host.endswith(suffix):
            return host.removesuffix(suffix)
    return host


def _addresses(host: str) -> set[str]:
    if host.startswith("/"):  # a Unix socket directory
        return set()
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()  # unresolvable here (e.g. cluster DNS from outside): compare names


def is_production_server(host: str, port: int, production: Database) -> bool:
    """Whether ``host:port`` is production's PostgreSQL server per the environment model."""
    if port != production.port:
        return False
    if _canonical_host(host) == _canonical_host(production.host):
        return True
    return bool(_addresses(host) & _addresses(production.host))


def refuse_production(dsn: SecretStr, production: Database) -> Target:
    """Return the target of ``dsn`` unless it is production's server.

    Raises:
        GuardError: ``dsn`` points at production's PostgreSQL server.
        ConfigurationError: ``dsn`` cannot be parsed.
    """
    target = parse_target(dsn)  # raises ConfigurationError when it cannot be parsed
    for host, port in _endpoints(conninfo_to_dict(dsn.get_secret_value())):
        if is_production_server(host, port, production):
            raise _guard_error(target, production)
    return target


def _guard_error(target: Target, production: Database) -> GuardError:
    return GuardError(
        f"refusing to write to {target}: that is production's PostgreSQL server "
        f"({production.host}:{production.port}, database {production.name}) in the "
        "environment model. Staging must be a separate instance (RFC 002); check the "
        "DSN secret the flow was given."
    )


def connect(dsn: SecretStr, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a connection; on failure raise a :class:`DataError` without the password.

    Raises:
        DataError: the server cannot be reached or refuses the login.
        ConfigurationError: the DSN cannot be parsed.
    """
    target = parse_target(dsn)
    params = conninfo_to_dict(dsn.get_secret_value())
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = 10
    if "application_name" not in params:
        extra["application_name"] = APPLICATION_NAME
    try:
        conn = psycopg.connect(dsn.get_secret_value(), autocommit=autocommit, **extra)
    except psycopg.Error as exc:
        failure = _error(f"cannot connect to {target}", exc, dsn)
    else:
        return conn
    # Raised outside the except block so that the original error, whose text may quote
    # the connection string, is not kept as __context__ and printed in tracebacks.
    raise failure


@contextmanager
def connect_for_writing(
    dsn: SecretStr, production: Database, *, autocommit: bool = False
) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a target that is verifiably not production's server.

    Raises:
        GuardError: the DSN, or where libpq actually connected, is production's server.
    """
    target = refuse_production(dsn, production)
    conn = connect(dsn, autocommit=autocommit)
    with conn:
        info = conn.info
        actual = [(info.host, info.port)]
        if info.hostaddr:
            actual.append((info.hostaddr, info.port))
        if any(is_production_server(host, port, production) for host, port in actual):
            raise _guard_error(target, production)
        yield conn


def _retry_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retry condition: retry connection-level failures, never logic errors."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, DataError):
        return exc.transient
    return isinstance(exc, psycopg.Error) and _is_transient(exc)


_retrying: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_jitter_factor": RETRY_JITTER,
    "retry_condition_fn": _retry_transient,
}


@task(cache_policy=NO_CACHE, persist_result=False)
def resolve_dsn(secret_name: str) -> SecretStr:
    """Read a database DSN from its Prefect Secret block or environment variable.

    Args:
        secret_name: Secret block name, e.g. ``staging-database-dsn`` (or the variable
            ``RSOLV_SECRET_STAGING_DATABASE_DSN``).

    Returns:
        The DSN, as ``SecretStr``; never persisted (``persist_result=False``).

    Raises:
        SecretError: neither source holds the secret.
    """
    value = resolve_secret(secret_name)
    if value is None:
        raise SecretError(
            f"no DSN: create the Prefect Secret block {secret_name!r} (or set the environment "
            f"variable {secret_env_var(secret_name)})"
        )
    return value


@task(cache_policy=NO_CACHE, **_retrying)
def check_target(dsn: SecretStr, production: Database) -> Target:
    """Connect to the target and make sure it is not production, before any write.

    Args:
        dsn: The target database's DSN.
        production: Production's database in the environment model.

    Returns:
        Where the DSN points (no password).

    Raises:
        GuardError: the target is production's server.
        DataError: the target cannot be reached (``transient``) or refuses the login.
    """
    target = parse_target(dsn)
    with connect_for_writing(dsn, production) as conn:
        version = conn.info.server_version
    get_run_logger().info(
        "Target %s is PostgreSQL %d.%d", target, version // 10_000, version % 10_000
    )
    return target


# --- 2. schema ------------------------------------------------------------------


def _engine(conn_factory: Callable[[], psycopg.Connection[Any]]) -> Any:
    # SQLAlchemy drives psycopg connections we open ourselves, so the DSN never reaches
    # SQLAlchemy's URL handling (which would print it on errors).
    return create_engine("postgresql+psycopg://", creator=conn_factory, poolclass=StaticPool)


@task(cache_policy=NO_CACHE, **_retrying)
def create_schema(dsn: SecretStr, production: Database) -> list[str]:
    """Create the RSOLV tables, enum and indexes that do not exist yet (idempotent), and
    check the whole schema against the models in the same transaction.

    A target whose existing tables differ from the models (an app migration the models
    lack, a hand edit) keeps its schema as it was: nothing is created.

    Args:
        dsn: The target database's DSN.
        production: Production's database in the environment model (refused).

    Returns:
        The tables that were created (empty when all existed).

    Raises:
        GuardError: the target is production's server.
        DataError: the DDL failed, or the schema differs (every difference listed).
    """
    created: list[str] = []
    with connect_for_writing(dsn, production) as conn:
        engine = _engine(lambda: conn)
        try:
            with engine.begin() as sa_conn:
                existing = set(inspect(sa_conn).get_table_names())
                metadata.create_all(sa_conn, checkfirst=True)
                created = [name for name in TABLE_NAMES if name not in existing]
                # Raised inside the transaction: the tables just created roll back.
                if problems := compare_schemas(describe_metadata(), _shape(sa_conn)):
                    raise _drift(problems)
        except (psycopg.Error, DBAPIError) as exc:
            failure = _error("creating the schema failed", exc, dsn)
        else:
            return created
        finally:
            engine.dispose(close=False)
    raise failure


def _reflect(conn: psycopg.Connection[Any]) -> SchemaShape:
    engine = _engine(lambda: conn)
    try:
        with engine.connect() as sa_conn:
            return _shape(sa_conn)
    finally:
        engine.dispose(close=False)


def _shape(sa_conn: Any) -> SchemaShape:
    """The schema as seen on ``sa_conn`` (a SQLAlchemy connection, in its transaction)."""
    inspector = inspect(sa_conn)
    tables: dict[str, TableShape] = {}
    for name in inspector.get_table_names():
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)}
        foreign_keys = {
            ForeignKeyShape(
                name=str(fk["name"]),
                columns=tuple(fk["constrained_columns"]),
                referred_table=fk["referred_table"],
                referred_columns=tuple(fk["referred_columns"]),
                ondelete=normalize_ondelete(fk.get("options", {}).get("ondelete")),
            )
            for fk in inspector.get_foreign_keys(name)
        }
        indexes = {
            (str(ix["name"]), tuple(str(c) for c in ix["column_names"]), bool(ix["unique"]))
            for ix in inspector.get_indexes(name)
            if not ix.get("duplicates_constraint")
        }
        tables[name] = TableShape(
            columns=tuple(
                (c["name"], type_name(c["type"]), bool(c["nullable"]))
                for c in inspector.get_columns(name)
            ),
            primary_key=tuple(inspector.get_pk_constraint(name)["constrained_columns"]),
            uniques=frozenset(uniques),
            foreign_keys=frozenset(foreign_keys),
            checks=frozenset(str(c["name"]) for c in inspector.get_check_constraints(name)),
            indexes=frozenset(indexes),
        )
    enums = {str(e["name"]): tuple(e["labels"]) for e in inspector.get_enums()}
    return SchemaShape(tables=tables, enums=enums)


@task(cache_policy=NO_CACHE, **_retrying)
def describe_schema(dsn: SecretStr) -> SchemaShape:
    """Reflect the live schema (tables, columns, keys, constraints, enums); read-only.

    Args:
        dsn: The database to describe (production is fine: nothing is written).

    Returns:
        The shape, comparable with ``rsolv_staging.schema.describe_metadata()``.
    """
    with connect(dsn) as conn:
        try:
            return _reflect(conn)
        except (psycopg.Error, DBAPIError) as exc:
            failure = _error("reading the schema failed", exc, dsn)
    raise failure


@task(cache_policy=NO_CACHE, **_retrying)
def verify_schema(dsn: SecretStr) -> None:
    """Check that the live schema is the one the models describe.

    Args:
        dsn: The database to check.

    Raises:
        DataError: the schema differs; the message lists every difference.
    """
    with connect(dsn) as conn:
        try:
            actual = _reflect(conn)
        except (psycopg.Error, DBAPIError) as exc:
            failure = _error("reading the schema failed", exc, dsn)
        else:
            problems = compare_schemas(describe_metadata(), actual)
            if not problems:
                return
            failure = _drift(problems)
    raise failure


def _drift(problems: Sequence[str]) -> DataError:
    return DataError(
        "the target's schema is not the RSOLV schema this project loads: " + "; ".join(problems)
    )


# --- 3. loading ------------------------------------------------------------------


class TableLoad(BaseModel):
    """Rows loaded into one table, and how fast."""

    table: str
    rows: int
    seconds: float = Field(
        description="From the table's first COPY block to its last, plus rebuilding its "
        "keys, indexes and foreign keys after a truncate"
    )

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class LoadReport(BaseModel):
    """What a load did, for the flow's artifact and return value."""

    mode: Literal["truncate", "append"]
    tables: list[TableLoad] = Field(description="Per table, in load order")
    seconds: float = Field(description="Wall time of the whole load, commit included")

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def truncate_tables(conn: psycopg.Connection[Any], tables: Sequence[str]) -> None:
    """Empty ``tables`` in the caller's transaction (without CASCADE, on purpose).

    A table outside the RSOLV schema that references one of these makes TRUNCATE fail
    rather than silently emptying it too.
    """
    conn.execute(
        sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in tables)
        )
    )


@dataclass
class DeferredDDL:
    """Keys, indexes and foreign keys dropped for a bulk load into empty tables.

    This is what ``pg_restore`` calls post-data: building an index once over loaded
    rows (a sort) is much cheaper than updating it row by row, and adding a foreign key
    checks every row in one join instead of one trigger call per row. All of it happens
    inside the load's transaction, so a failure restores the original DDL too.
    """

    keys: dict[str, list[tuple[str, str]]]
    """Per table, PRIMARY KEY and UNIQUE constraints: (name, definition)."""
    indexes: dict[str, list[str]]
    """Per table, ``CREATE INDEX`` statements of the indexes no constraint owns."""
    foreign_keys: list[tuple[str, str, str, str]]
    """(table, name, definition, referenced table) of the foreign keys among the tables."""


# The tables, by name, in the schema that unqualified names resolve to.
_TABLES = (
    "SELECT oid FROM pg_class"
    " WHERE relname = ANY(%(tables)s) AND relnamespace = current_schema()::regnamespace"
)


def defer_ddl(conn: psycopg.Connection[Any], tables: Sequence[str]) -> DeferredDDL:
    """Drop the keys, indexes and foreign keys of ``tables`` (empty, just truncated)."""
    params = {"tables": list(tables)}
    foreign_keys = [
        (str(t), str(n), str(d), str(p))
        for t, n, d, p in conn.execute(
            f"""
            SELECT r.relname, c.conname, pg_get_constraintdef(c.oid), p.relname
            FROM pg_constraint c
            JOIN pg_class r ON r.oid = c.conrelid
            JOIN pg_class p ON p.oid = c.confrelid
            WHERE c.contype = 'f' AND c.conrelid IN ({_TABLES}) AND c.confrelid IN ({_TABLES})
            ORDER BY 1, 2
            """,
            params,
        )
    ]
    keys: dict[str, list[tuple[str, str]]] = {}
    for table, name, definition in conn.execute(
        f"""
        SELECT r.relname, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
        WHERE c.contype IN ('p', 'u') AND c.conrelid IN ({_TABLES})
        ORDER BY 1, c.contype, 2
        """,
        params,
    ):
        keys.setdefault(str(table), []).append((str(name), str(definition)))
    indexes: dict[str, list[str]] = {}
    plain: list[tuple[str, str]] = []
    for table, name, definition in conn.execute(
        f"""
        SELECT r.relname, x.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        JOIN pg_class r ON r.oid = i.indrelid
        JOIN pg_class x ON x.oid = i.indexrelid
        WHERE i.indrelid IN ({_TABLES})
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        ORDER BY 1, 2
        """,
        params,
    ):
        indexes.setdefault(str(table), []).append(str(definition))
        plain.append((str(table), str(name)))

    for table, name, _, _ in foreign_keys:
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(table), sql.Identifier(name)
            )
        )
    for table, constraints in keys.items():
        for name, _ in constraints:
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(table), sql.Identifier(name)
                )
            )
    for _, name in plain:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    return DeferredDDL(keys=keys, indexes=indexes, foreign_keys=foreign_keys)


def _add_constraint(conn: psycopg.Connection[Any], table: str, name: str, definition: str) -> None:
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            sql.Identifier(table), sql.Identifier(name), sql.SQL(definition)
        )
    )


def restore_table_ddl(conn: psycopg.Connection[Any], deferred: DeferredDDL, table: str) -> None:
    """Re-create one loaded table's keys and indexes, then the foreign keys from it to
    tables whose keys are back.

    Called as soon as the table's rows are in, this overlaps the index builds and the
    foreign key checks with the generation of the next table. Every ADD CONSTRAINT
    validates all rows: the database, not the generator, vouches for the uniques and for
    referential integrity.
    """
    for name, definition in deferred.keys.pop(table, []):
        _add_constraint(conn, table, name, definition)
    for statement in deferred.indexes.pop(table, []):
        conn.execute(statement)
    ready = [fk for fk in deferred.foreign_keys if fk[0] == table and fk[3] not in deferred.keys]
    for child, name, definition, _ in ready:
        _add_constraint(conn, child, name, definition)
        deferred.foreign_keys.remove((child, name, definition, _))


def restore_ddl(conn: psycopg.Connection[Any], deferred: DeferredDDL) -> None:
    """Re-create whatever is still deferred (tables that got no rows, late foreign keys)."""
    for table in list(deferred.keys.keys() | deferred.indexes.keys()):
        restore_table_ddl(conn, deferred, table)
    for child, name, definition, _ in deferred.foreign_keys:
        _add_constraint(conn, child, name, definition)
    deferred.foreign_keys.clear()


def _reset_sequences(conn: psycopg.Connection[Any], tables: Sequence[str]) -> None:
    """Move each identity sequence past the largest id, so the app's inserts succeed."""
    for table in tables:
        conn.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence({name}, 'id'), "
                "COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table}"
            ).format(name=sql.Literal(table), table=sql.Identifier(table))
        )


_END = object()


def copy_blocks(
    conn: psycopg.Connection[Any],
    blocks: Iterable[Block],
    *,
    on_progress: Callable[[int], None] | None = None,
    after_table: Callable[[str], None] | None = None,
    queue_size: int = 8,
) -> list[TableLoad]:
    """COPY ``blocks`` into their tables, generating the next ones while this one loads.

    A producer thread pulls ``blocks`` (rendering them is Python work) into a small
    queue; this thread streams them to the server (socket work, with the GIL released),
    so generation and the server's parsing, constraint checks and index updates overlap.
    ``after_table`` runs once a table's rows are in (e.g. to build its indexes while
    the producer renders the next table). At most ``queue_size`` blocks wait in memory
    (8 blocks of 20,000 findings are about 40 MB). The caller owns the transaction.
    """
    pending: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    stop = threading.Event()

    def produce() -> None:
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        pending.put(block, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        finally:
            # Even when generation fails, wake the consumer; the exception reaches the
            # caller through the future.
            while not stop.is_set():
                try:
                    pending.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    continue

    loads: list[TableLoad] = []
    loaded = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthetic-producer") as pool:
        producer = pool.submit(produce)
        try:
            with conn.cursor() as cur:
                item = pending.get()
                while item is not _END:
                    table, columns = item.table, item.columns
                    started, rows = time.perf_counter(), 0
                    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
                    )
                    with cur.copy(statement) as copy:
                        while item is not _END and item.table == table:
                            copy.write(item.data)
                            rows += item.rows
                            loaded += item.rows
                            if on_progress is not None:
                                on_progress(loaded)
                            item = pending.get()
                    if after_table is not None:
                        after_table(table)
                    loads.append(
                        TableLoad(table=table, rows=rows, seconds=time.perf_counter() - started)
                    )
        finally:
            stop.set()
        producer.result()  # re-raises a generation failure
    return loads


def _progress_reporter(artifact_id: UUID | None, total: int) -> Callable[[int], None] | None:
    if artifact_id is None or total <= 0:
        return None
    last = 0.0

    def report(loaded: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 1.0:  # one API call a second, not one per block
            last = now
            # 99 at most: the load is done only once constraints are checked and committed.
            update_progress_artifact(artifact_id, min(99.0, 100.0 * loaded / total))

    return report


@task(cache_policy=NO_CACHE, task_run_name="copy_rows-{mode}")
def copy_rows(
    dsn: SecretStr,
    production: Database,
    plan: SyntheticPlan,
    *,
    mode: Literal["truncate", "append"],
    batch_rows: int = 20_000,
    progress_artifact_id: UUID | None = None,
) -> LoadReport:
    """Generate the plan's rows and COPY them into the target, in one transaction.

    ``truncate`` empties the RSOLV tables first and, while they are empty, drops their
    keys, indexes and foreign keys (:class:`DeferredDDL`). Right after a table's rows
    are in, its keys and indexes are rebuilt and its foreign keys added back, each
    validating every row, while the producer renders the next table: about twice as
    fast overall as maintaining them row by row. ``append`` keeps everything in place
    and expects ``plan.id_offsets`` past the existing ids. Both move the identity
    sequences past the loaded ids. No retries: an append is not idempotent, and a
    truncate-and-load is cheaper to rerun as a flow.

    Args:
        dsn: The target database's DSN.
        production: Production's database in the environment model (refused).
        plan: What to generate.
        mode: ``truncate`` (replace all RSOLV rows) or ``append``.
        batch_rows: Rows per COPY block (does not change the data).
        progress_artifact_id: A progress artifact to update while loading.

    Returns:
        Rows and seconds per table, and the total wall time.

    Raises:
        GuardError: the target is production's server.
        DataError: another load holds the lock, or the load failed (constraint
            violation, lost connection); nothing is committed then.
    """
    if mode not in ("truncate", "append"):
        raise ConfigurationError(f"mode must be 'truncate' or 'append', not {mode!r}")
    tables = list(TABLE_NAMES)
    started = time.perf_counter()
    with connect_for_writing(dsn, production) as conn:
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT))
                )
                # Losing the last commit to a crash is harmless: the flow is rerun.
                conn.execute("SET LOCAL synchronous_commit = off")
                locked = conn.execute(
                    "SELECT pg_try_advisory_xact_lock(%s)", (_LOAD_LOCK_KEY,)
                ).fetchone()
                if not locked or not locked[0]:
                    failure = DataError(
                        "another synthetic-data load is running on this database; retry later"
                    )
                    raise failure
                deferred: DeferredDDL | None = None
                if mode == "truncate":
                    truncate_tables(conn, tables)
                    deferred = defer_ddl(conn, tables)
                loads = copy_blocks(
                    conn,
                    generate_blocks(plan, batch_rows=batch_rows),
                    on_progress=_progress_reporter(progress_artifact_id, plan.total_rows),
                    after_table=(
                        None
                        if deferred is None
                        else functools.partial(restore_table_ddl, conn, deferred)
                    ),
                )
                if deferred is not None:
                    restore_ddl(conn, deferred)
                _reset_sequences(conn, tables)
        except psycopg.Error as exc:
            failure = _error(f"loading {mode} failed, nothing was committed", exc, dsn)
        else:
            report = LoadReport(mode=mode, tables=loads, seconds=time.perf_counter() - started)
            if progress_artifact_id is not None:
                update_progress_artifact(progress_artifact_id, 100.0)
            return report
    raise failure


# --- 4. verification and upkeep ---------------------------------------------------


@task(cache_policy=NO_CACHE, **_retrying)
def read_max_ids(dsn: SecretStr, tables: Sequence[str] = TABLE_NAMES) -> dict[str, int]:
    """The largest id of each table (0 when empty): where an append starts numbering.

    Args:
        dsn: The database to read.
        tables: Tables to read.
    """
    with connect(dsn) as conn:
        try:
            return {
                table: int(
                    conn.execute(
                        sql.SQL("SELECT COALESCE(MAX(id), 0) FROM {}").format(sql.Identifier(table))
                    ).fetchone()[0]  # type: ignore[index]
                )
                for table in tables
            }
        except psycopg.Error as exc:
            failure = _error("reading the largest ids failed", exc, dsn)
    raise failure


class TableChecksum(BaseModel):
    """A table's row count and the SHA-256 of its COPY text, ordered by primary key."""

    rows: int
    sha256: str


@task(cache_policy=NO_CACHE, **_retrying)
def checksum_tables(
    dsn: SecretStr, tables: Sequence[str] = TABLE_NAMES
) -> dict[str, TableChecksum]:
    """Checksum each table's content (streamed, so any size fits in memory); read-only.

    The session is pinned to UTC and ISO dates so that the same rows give the same
    checksum on any server, whatever its configured time zone.

    Args:
        dsn: The database to read.
        tables: Tables to checksum (each must have an ``id`` primary key).

    Returns:
        Per table: rows and SHA-256 of ``COPY (SELECT * ... ORDER BY id) TO STDOUT``.
    """
    result: dict[str, TableChecksum] = {}
    with connect(dsn) as conn:
        try:
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("SET DateStyle = 'ISO, YMD'")
            conn.execute("SET extra_float_digits = 1")
            with conn.cursor() as cur:
                for table in tables:
                    digest, rows = hashlib.sha256(), 0
                    statement = sql.SQL("COPY (SELECT * FROM {} ORDER BY id) TO STDOUT").format(
                        sql.Identifier(table)
                    )
                    with cur.copy(statement) as copy:
                        for chunk in copy:
                            data = bytes(chunk)
                            digest.update(data)
                            rows += data.count(b"\n")
                    result[table] = TableChecksum(rows=rows, sha256=digest.hexdigest())
        except psycopg.Error as exc:
            failure = _error("checksumming failed", exc, dsn)
        else:
            return result
    raise failure


@task(cache_policy=NO_CACHE, **_retrying)
def analyze_tables(
    dsn: SecretStr, production: Database, tables: Sequence[str] = TABLE_NAMES
) -> None:
    """Refresh planner statistics after a bulk load (idempotent).

    Args:
        dsn: The target database's DSN.
        production: Production's database in the environment model (refused).
        tables: Tables to analyze.
    """
    with connect_for_writing(dsn, production, autocommit=True) as conn:
        try:
            for table in tables:
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        except psycopg.Error as exc:
            failure = _error("ANALYZE failed", exc, dsn)
        else:
            return
    raise failure


__all__ = [
    "DeferredDDL",
    "LoadReport",
    "TableChecksum",
    "TableLoad",
    "Target",
    "analyze_tables",
    "check_target",
    "checksum_tables",
    "connect",
    "connect_for_writing",
    "copy_blocks",
    "copy_rows",
    "create_schema",
    "defer_ddl",
    "describe_schema",
    "is_production_server",
    "parse_target",
    "read_max_ids",
    "refuse_production",
    "resolve_dsn",
    # The secret lookup, for the sync's salt (tasks.secrets is the one shared service).
    "resolve_secret",
    "restore_ddl",
    "restore_table_ddl",
    "secret_env_var",
    "truncate_tables",
    "verify_schema",
]
