"""Sessions of the production -> staging sync, and their connection strings.

Production is only ever read: every source session is ``default_transaction_read_only``
and runs inside ``REPEATABLE READ READ ONLY`` transactions (checked, or the run stops);
no DDL, DML or temporary object is sent to it; ``pg_dump`` and ``psql`` get the same
read-only option in their connection string's ``options``. Staging is written through
:func:`_admin` sessions (exempt from staging's timeouts) on its maintenance database.
Also here: the server identity that tells two servers apart, and the catalog filters
shared by the sync's queries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import GuardError
from rsolv_staging.sync import STARTUP_SETTINGS, session_settings
from tasks.postgres.connections import connect, connect_for_writing

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


def _untimed(dsn: SecretStr) -> SecretStr:
    """``dsn`` with the timeouts of :data:`STARTUP_SETTINGS` off from the first statement."""
    return SecretStr(_with_settings(dsn.get_secret_value(), *STARTUP_SETTINGS))


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
    with connect_for_writing(_untimed(target_dsn), production, autocommit=True) as conn:
        _exempt(conn)
        yield conn


@contextmanager
def source_session(
    dsn: SecretStr, snapshot: str | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """A read-only source connection inside a snapshot transaction (its own or ``snapshot``)."""
    conn = connect(_untimed(_read_only(dsn)), autocommit=True)
    with conn:
        _exempt(conn)
        _begin_snapshot(conn, snapshot)
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET DateStyle = 'ISO, YMD'")
        conn.execute("SET extra_float_digits = 3")
        yield conn


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


def _terminate(conn: psycopg.Connection[Any], database: str) -> int:
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return len(rows)
