"""Verification and upkeep after a load: :func:`read_max_ids`, :func:`checksum_tables`,
:func:`analyze_tables`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel, SecretStr

from rsolv_staging.environments import Database
from rsolv_staging.schema import (
    TABLE_NAMES,
)
from tasks.postgres.connections import _error, _retrying, connect, connect_for_writing


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
