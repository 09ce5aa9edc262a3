"""Putting a verified copy live (:func:`swap_database`, a single transaction of
renames), what staging's disk holds afterwards, and dropping a failed run's copy."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import SecretStr

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import DataError
from rsolv_staging.settings import load_settings
from rsolv_staging.sync import (
    StagingDisk,
    SyncNames,
)
from tasks.postgres.connections import _error, _redact
from tasks.postgres.plan import SyncPlan, _database_sizes, drop_leftovers
from tasks.postgres.sessions import _admin, _logger, _terminate


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
    names = plan.names
    attempts = load_settings().sync_swap_attempts
    with _admin(target_dsn, production) as conn:
        for attempt in range(1, attempts + 1):
            try:
                live = _rename_in(conn, names)
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
        _drop_gone(conn, names, target_dsn)
    _logger().info(
        "Staging database %s replaced; previous copy kept as %s",
        names.live,
        names.old if live else "(none)",
    )
    return names.old if live else None


def _rename(conn: psycopg.Connection[Any], old: str, new: str) -> None:
    conn.execute(
        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    )


def _rename_in(conn: psycopg.Connection[Any], names: SyncNames) -> bool:
    """The renames of the swap, in one transaction; whether there was a live database."""
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '10s'")
        if not _exists(conn, names.new):
            raise DataError(f"{names.new} does not exist: nothing to swap in")
        if _exists(conn, names.old):
            _terminate(conn, names.old)
            _rename(conn, names.old, names.gone)
        live = _exists(conn, names.live)
        if live:
            n = _terminate(conn, names.live)
            _logger().warning(
                "Swapping staging database %s: terminated %d open connection(s) "
                "to it; clients reconnect to the new copy",
                names.live,
                n,
            )
            _rename(conn, names.live, names.old)
        _rename(conn, names.new, names.live)
    return live


def _drop_gone(conn: psycopg.Connection[Any], names: SyncNames, target_dsn: SecretStr) -> None:
    try:
        if _exists(conn, names.gone):
            conn.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(names.gone))
            )
    except psycopg.Error as exc:
        # The swap has committed: the run succeeded, and the next run drops it.
        _logger().warning(
            "%s (the copy before the rollback one) stays until the next run: %s",
            names.gone,
            _redact(str(exc).strip(), target_dsn),
        )


@task(cache_policy=NO_CACHE, task_run_name="measure_staging_disk-{plan.live}")
def measure_staging_disk(
    target_dsn: SecretStr, production: Database, plan: SyncPlan
) -> StagingDisk:
    """Staging's databases after the swap, and what they took while the copy ran (the
    rollback copy, the live one and the new one): what staging's volume must hold."""
    with _admin(target_dsn, production) as conn:
        sizes = _database_sizes(conn)
    live = sizes.get(plan.live, 0)
    total = sum(sizes.values())
    return StagingDisk(
        live=live,
        rollback=sizes.get(plan.old),
        total=total,
        # What staging held before the copy, plus the copy. The other databases kept
        # working meanwhile (autovacuum, their own writes): the peak was never below
        # what they hold now, so a report never shows a peak under the current total.
        peak=max(plan.staging_bytes + live, total),
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
