"""Verifying a copy: the new database recounted and compared with the source facts the
copy recorded (rows, sequences, object counts, checksums, database properties)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import SecretStr

from rsolv_staging.exceptions import DataError
from rsolv_staging.sync import (
    LARGE_OBJECTS,
    CopyResult,
    Verification,
    compare_facts,
)
from tasks.postgres.catalog import _TABLES, _Table, read_objects, read_sequences, table_checksum
from tasks.postgres.connections import _error, connect
from tasks.postgres.extensions import large_objects_checksum, read_database_properties
from tasks.postgres.plan import SyncPlan
from tasks.postgres.sessions import _logger, _unbounded, _with, source_session


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
    try:
        counted = _count_rows(new_dsn, sorted(expected.rows), jobs)
        with connect(new_dsn, autocommit=True) as conn:
            # Tables the source did not have would be missed by counting its tables only.
            for schema, name, *_ in conn.execute(_TABLES):
                counted.setdefault(f"{schema}.{name}", -1)
            sequences = read_sequences(conn)
            objects = read_objects(conn)
            database = read_database_properties(conn)
        checksums = _new_checksums(new_dsn, expected.checksums, plan, jobs)
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


def _count_rows(new_dsn: SecretStr, keys: list[str], jobs: int) -> dict[str, int]:
    """``count(*)`` of each table (``schema.name``), ``jobs`` sessions in parallel."""
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

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for f in [pool.submit(count, keys[i::jobs]) for i in range(max(1, jobs))]:
            f.result()
    return counted


def _new_checksums(
    new_dsn: SecretStr, expected: Mapping[str, str], plan: SyncPlan, jobs: int
) -> dict[str, str]:
    """The new database's checksums of what the copy checksummed on the source."""
    checksums: dict[str, str] = {}
    if not expected:
        return checksums
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
        for k in expected
        if k != LARGE_OBJECTS
    ]
    checksums = _checksums(new_dsn, None, tables, plan, jobs, source=False)
    if LARGE_OBJECTS in expected:
        with connect(new_dsn, autocommit=True) as conn:
            checksums[LARGE_OBJECTS] = large_objects_checksum(conn)
    return checksums
