"""Backups of staging's database and restore drills: ``pg_dump -Fd -j`` at a snapshot
whose row counts and object counts the manifest records, and ``pg_restore -j`` into a
scratch database on staging's server, verified against the manifest, then dropped.

The backup's session is read-only (it only dumps); the backup lock is a session-level
advisory lock on the dumped database, so it ends with the process that held it (a
killed run leaves no lock behind for the next one to wait on). The drill writes only
to its scratch database, through staging's admin DSN under the production guard, and
refuses any name that is not a drill's (:func:`rsolv_staging.backups.check_scratch_name`).
"""

from __future__ import annotations

import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import SecretStr

from rsolv_staging.backups import (
    BACKUP_LOCK,
    BackupManifest,
    DumpFacts,
    RollbackCopy,
    check_scratch_name,
    parse_setvals,
    toc_sequence_entries,
)
from rsolv_staging.environments import Database
from rsolv_staging.exceptions import DataError, LockTimeout
from rsolv_staging.sync import SourceFacts, Verification, choose_tools, compare_facts, major_of
from tasks.postgres.catalog import _TABLES, read_objects, read_sequences
from tasks.postgres.connections import (
    _error,
    _retrying,
    connect,
    parse_target,
    refuse_production,
)
from tasks.postgres.sessions import _admin, _logger, _read_only, _unbounded, _with, source_session
from tasks.postgres.tools import _run_tool, _tool_env, find_tools

_LOCK_KEY = zlib.crc32(BACKUP_LOCK.encode())


@contextmanager
def backup_lock(dsn: SecretStr, production: Database) -> Iterator[None]:
    """One backup of a database at a time: a session advisory lock on it, held while
    the body runs. The server releases it when the session ends, a killed run's too.

    Raises:
        LockTimeout: another backup holds it; nothing was written.
    """
    refuse_production(dsn, production)
    with connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,)).fetchone()
        if not row or not row[0]:
            raise LockTimeout(
                f"another backup of {parse_target(dsn).dbname} is running; nothing was written"
            )
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _bindir_for(source_major: int, target_major: int) -> Path:
    return Path(choose_tools(source_major, target_major, find_tools()))


def _count_rows(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows: dict[str, int] = {}
    for schema, name, *_ in conn.execute(_TABLES).fetchall():
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, name))
        ).fetchone()
        rows[f"{schema}.{name}"] = int(row[0]) if row else -1
    return rows


def dump_sequences(bindir: Path, directory: Path, env: dict[str, str], dsn: SecretStr) -> Any:
    """The sequence values the dump in ``directory`` sets (its SEQUENCE SET entries):
    what a restore will hold, whatever the live sequences did meanwhile."""
    listing = _run_tool(
        [str(bindir / "pg_restore"), "--list", str(directory)], env, dsn, "pg_restore --list"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".list") as entries:
        entries.write(toc_sequence_entries(listing))
        entries.flush()
        script = _run_tool(
            [str(bindir / "pg_restore"), "-L", entries.name, "-f", "-", str(directory)],
            env,
            dsn,
            "pg_restore of the sequence values",
        )
    return parse_setvals(script)


@task(cache_policy=NO_CACHE, task_run_name="dump_database-{directory.name}")
def dump_database(
    dsn: SecretStr, production: Database, directory: Path, *, jobs: int = 2
) -> DumpFacts:
    """``pg_dump --format=directory --jobs`` of ``dsn``'s database into ``directory``,
    at one exported snapshot in which rows per table and objects by kind are counted.

    Not retried: a dump cut short leaves its directory to the next run's cleanup.

    Raises:
        GuardError: ``dsn`` is production's server (this flow backs up staging).
        DataError: the dump failed (the tool's message, password masked).
    """
    refuse_production(dsn, production)
    target = parse_target(dsn)
    started = time.perf_counter()
    with source_session(dsn) as snap:
        version_num = snap.info.server_version
        row = snap.execute(
            "SELECT pg_export_snapshot(), current_setting('server_version'), "
            "pg_database_size(current_database()), now()"
        ).fetchone()
        assert row is not None
        snapshot, version, size, created = str(row[0]), str(row[1]), int(row[2]), row[3]
        bindir = _bindir_for(major_of(version_num), major_of(version_num))
        conninfo, env = _tool_env(_unbounded(_read_only(dsn), version_num))
        _run_tool(
            [
                str(bindir / "pg_dump"),
                "--format=directory",
                f"--jobs={jobs}",
                f"--snapshot={snapshot}",
                "--no-subscriptions",
                f"--file={directory}",
                f"--dbname={conninfo}",
            ],
            env,
            dsn,
            "pg_dump",
        )
        # Counted after the dump, in the same snapshot (REPEATABLE READ: the counts are
        # those of the dump); before it, a lock pg_dump would wait for could hold them up.
        rows = _count_rows(snap)
        objects = read_objects(snap)
        snap.rollback()
    sequences = dump_sequences(bindir, directory, env, dsn)
    _logger().info(
        "Dumped %s (%d tables, %d rows) in %.1f s",
        target,
        len(rows),
        sum(rows.values()),
        time.perf_counter() - started,
    )
    return DumpFacts(
        database=target.dbname,
        source=str(target),
        server_version=version,
        server_version_num=version_num,
        pg_dump_major=major_of(version_num),
        created_at=created.astimezone(UTC),
        seconds=time.perf_counter() - started,
        database_bytes=size,
        rows=rows,
        sequences=sequences,
        objects=objects,
    )


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@task(cache_policy=NO_CACHE, task_run_name="restore_backup-{scratch}")
def restore_backup(
    admin_dsn: SecretStr,
    production: Database,
    directory: Path,
    manifest: BackupManifest,
    *,
    scratch: str,
    live: str,
    jobs: int = 2,
) -> float:
    """Restore the backup in ``directory`` into a fresh scratch database (dropped first
    if a killed drill left it): ``pg_restore --jobs``, without owners and grants (a
    production backup's roles need not exist on staging).

    Returns:
        Seconds from creating the scratch database to the end of ``pg_restore``.

    Raises:
        GuardError: ``scratch`` is not a drill's name, or the server is production's.
        DataError: ``pg_restore`` failed (its message names the object).
    """
    check_scratch_name(scratch, live)
    started = time.perf_counter()
    with _admin(admin_dsn, production) as conn:
        target_major = major_of(conn.info.server_version)
        _drop(conn, scratch)
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(scratch))
        )
    source_major = max(manifest.pg_dump_major, major_of(manifest.server_version_num))
    bindir = _bindir_for(source_major, target_major)
    scratch_dsn = _unbounded(_with(admin_dsn, dbname=scratch), target_major * 10_000)
    refuse_production(scratch_dsn, production)
    conninfo, env = _tool_env(scratch_dsn)
    _run_tool(
        [
            str(bindir / "pg_restore"),
            f"--jobs={jobs}",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            f"--dbname={conninfo}",
            str(directory),
        ],
        env,
        admin_dsn,
        f"pg_restore of backup {manifest.backup_id} into {scratch}",
    )
    return time.perf_counter() - started


@task(cache_policy=NO_CACHE, task_run_name="verify_restore-{scratch}", **_retrying)
def verify_restore(
    admin_dsn: SecretStr, production: Database, manifest: BackupManifest, *, scratch: str, live: str
) -> Verification:
    """Count the scratch database's rows, read its sequences and objects, and compare
    them with the manifest.

    Raises:
        DataError: listing every difference.
    """
    check_scratch_name(scratch, live)
    scratch_dsn = _with(admin_dsn, dbname=scratch)
    refuse_production(scratch_dsn, production)
    try:
        with connect(scratch_dsn, autocommit=True) as conn:
            rows = _count_rows(conn)
            sequences = read_sequences(conn)
            objects = read_objects(conn)
    except psycopg.Error as exc:
        raise _error(f"verifying {scratch} failed", exc, scratch_dsn) from None
    expected = SourceFacts(
        rows=manifest.rows,
        sequences=manifest.sequences,
        objects=manifest.objects,
        bytes=manifest.database_bytes,
    )
    verification = compare_facts(
        expected, rows=rows, sequences=sequences, objects=objects, checksums={}
    )
    if not verification.ok:
        raise DataError(
            f"the restore of backup {manifest.backup_id} does not match its manifest: "
            + "; ".join(verification.problems)
        )
    return verification


@task(cache_policy=NO_CACHE, task_run_name="drop_scratch_database-{scratch}", **_retrying)
def drop_scratch_database(
    admin_dsn: SecretStr, production: Database, *, scratch: str, live: str
) -> None:
    """Drop the drill's scratch database ("already gone" is success)."""
    check_scratch_name(scratch, live)
    with _admin(admin_dsn, production) as conn:
        _drop(conn, scratch)


@task(cache_policy=NO_CACHE, task_run_name="read_rollback_copy-{database}", **_retrying)
def read_rollback_copy(admin_dsn: SecretStr, database: str) -> RollbackCopy | None:
    """The sync's rollback copy of ``database`` on staging's server, if there is one."""
    with connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT datname, pg_database_size(oid) FROM pg_database WHERE datname = %s",
            (database,),
        ).fetchone()
    return RollbackCopy(database=str(row[0]), bytes=int(row[1])) if row else None
