"""Loading synthetic data: truncate, deferred DDL, COPY blocks, progress.

:func:`copy_rows` generates and loads concurrently (a producer thread renders COPY
blocks while this thread streams them to the server, :func:`copy_blocks`) in one
transaction, so a failed load leaves the previous data in place. After a truncate the
tables' keys, indexes and foreign keys are dropped (:func:`defer_ddl`) and rebuilt as
each table's rows are in (:func:`restore_table_ddl`, :func:`restore_ddl`).
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import psycopg
from prefect import task
from prefect.artifacts import update_progress_artifact
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel, Field, SecretStr

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import ConfigurationError, DataError
from rsolv_staging.schema import (
    TABLE_NAMES,
)
from rsolv_staging.synthetic import Block, SyntheticPlan, generate_blocks
from tasks.postgres.connections import LOCK_TIMEOUT, _error, connect_for_writing

# One load at a time per database: a second run fails fast instead of interleaving.
_LOAD_LOCK_KEY = 0x7273_6F6C_7631  # "rsolv1"


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
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthetic-producer") as pool:
        producer = pool.submit(_produce, blocks, pending, stop)
        try:
            loads = _consume(conn, pending, on_progress, after_table)
        finally:
            stop.set()
        producer.result()  # re-raises a generation failure
    return loads


def _put(pending: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    """Put ``item`` in the queue unless the consumer stops first."""
    while not stop.is_set():
        try:
            pending.put(item, timeout=0.1)
            break
        except queue.Full:
            continue


def _produce(blocks: Iterable[Block], pending: queue.Queue[Any], stop: threading.Event) -> None:
    """The producer thread: render ``blocks`` into ``pending``, then the end marker."""
    try:
        for block in blocks:
            _put(pending, block, stop)
            if stop.is_set():
                return
    finally:
        # Even when generation fails, wake the consumer; the exception reaches the
        # caller through the future.
        _put(pending, _END, stop)


def _consume(
    conn: psycopg.Connection[Any],
    pending: queue.Queue[Any],
    on_progress: Callable[[int], None] | None,
    after_table: Callable[[str], None] | None,
) -> list[TableLoad]:
    """Stream the queued blocks to the server, one COPY per table, until the end marker."""
    loads: list[TableLoad] = []
    loaded = 0
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
            loads.append(TableLoad(table=table, rows=rows, seconds=time.perf_counter() - started))
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
                _lock_load(conn)
                loads = _load(conn, plan, mode, tables, batch_rows, progress_artifact_id)
        except psycopg.Error as exc:
            failure = _error(f"loading {mode} failed, nothing was committed", exc, dsn)
        else:
            report = LoadReport(mode=mode, tables=loads, seconds=time.perf_counter() - started)
            if progress_artifact_id is not None:
                update_progress_artifact(progress_artifact_id, 100.0)
            return report
    raise failure


def _lock_load(conn: psycopg.Connection[Any]) -> None:
    """Set up the load's transaction and take the database's load lock (or fail fast)."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
    # Losing the last commit to a crash is harmless: the flow is rerun.
    conn.execute("SET LOCAL synchronous_commit = off")
    locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_LOAD_LOCK_KEY,)).fetchone()
    if not locked or not locked[0]:
        failure = DataError("another synthetic-data load is running on this database; retry later")
        raise failure


def _load(
    conn: psycopg.Connection[Any],
    plan: SyntheticPlan,
    mode: Literal["truncate", "append"],
    tables: Sequence[str],
    batch_rows: int,
    progress_artifact_id: UUID | None,
) -> list[TableLoad]:
    """The load, in the caller's transaction: truncate and defer the DDL (truncate mode),
    COPY the generated blocks, restore the DDL, move the sequences."""
    deferred: DeferredDDL | None = None
    if mode == "truncate":
        truncate_tables(conn, tables)
        deferred = defer_ddl(conn, tables)
    loads = copy_blocks(
        conn,
        generate_blocks(plan, batch_rows=batch_rows),
        on_progress=_progress_reporter(progress_artifact_id, plan.total_rows),
        after_table=(
            None if deferred is None else functools.partial(restore_table_ddl, conn, deferred)
        ),
    )
    if deferred is not None:
        restore_ddl(conn, deferred)
    _reset_sequences(conn, tables)
    return loads
