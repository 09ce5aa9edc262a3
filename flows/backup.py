"""Staging's own database backups, and the restore drill that proves them (RFC 002:
"Independent backup schedules"; "validate backup/restore procedures").

``backup-staging-database`` (daily): ``pg_dump --format=directory --jobs`` of staging's
live database at one snapshot, into the backup location, with a manifest (server
version, size, rows per table and object counts in that snapshot, the sequence values
the dump sets, every file's SHA-256, duration). A backup is written out of sight
(``partial/``) and becomes visible only complete: on a local path by one rename, on
object storage when its manifest, the last object, exists. A killed or failed backup
never counts; the next run removes what it left. Retention (7 daily and 4 weekly by
default) runs only after the new backup was read back complete.

``verify-restore`` (weekly): the latest (or a named) backup's files checked against
their SHA-256, restored with ``pg_restore --jobs`` into a scratch database on staging's
server (``<live>_restore_drill``; any other name is refused, the live one first of
all), verified against the manifest (rows, sequences, objects), then dropped. The time
to get the data back (fetch + checksums + restore: the RTO) is recorded in the
location's drill history; the run fails and notifies when the restore fails or its RTO
regresses against the trend. ``production_drill=true`` runs the same drill on
production's backups (only read; the restore target is still staging's scratch
database), which is how RFC 002's "validate backup/restore procedures" is met for
production.

Both leave the ``staging-recoverability`` artifact: what can be restored (each backup,
the sync's rollback copy), from when, and how long the last restore took.

Parameters: see each flow's signature (and the README's sections).

Blocks, variables and settings:
    * Secret blocks ``staging-database-dsn`` (backup: the live database, only read) and
      ``staging-database-admin-dsn`` (drill: the maintenance database, with CREATEDB),
      or ``RSOLV_SECRET_STAGING_DATABASE_DSN`` / ``..._ADMIN_DSN``.
    * The backup location: ``RSOLV_BACKUP_URL`` on the worker (a path or ``s3://``),
      with ``RSOLV_BACKUP_S3_ENDPOINT_URL`` for S3-compatible storage; production's
      (drill only): ``RSOLV_PRODUCTION_BACKUP_URL`` (+ ``..._S3_ENDPOINT_URL``). Not
      parameters: whoever can reach the Prefect API must not choose where a copy of
      staging's data goes.
    * S3 credentials: Secret blocks ``<storage_secret>-access-key-id`` and
      ``<storage_secret>-secret-access-key`` (default ``staging-backup-storage``;
      production's: ``production-backup-storage``, read-only keys), else the standard
      ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` chain.
    * A notification block (default ``rsolv-deployments``) for failed drills.

How to run it:
    python -m flows.backup backup
    python -m flows.backup verify [--backup-id ID] [--production]
or ``prefect deployment run backup-staging-database/backup-staging-database-daily``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field, SecretStr

from rsolv_staging.backups import (
    SCRATCH_SUFFIX,
    BackupManifest,
    DrillRecord,
    RetentionPlan,
    RetentionPolicy,
    RtoRule,
    check_backup_id,
    check_scratch_name,
    choose_backup,
    ensure_not_production_location,
    make_manifest,
    new_backup_id,
    recoverability_markdown,
    rto_regression,
    rto_trend,
)
from rsolv_staging.environments import Database
from rsolv_staging.exceptions import ConfigurationError, DataError
from rsolv_staging.settings import load_settings, load_topology
from rsolv_staging.sync import OLD_SUFFIX
from tasks.notify import DEFAULT_BLOCK, notify
from tasks.postgres import (
    backup_lock,
    drop_scratch_database,
    dump_database,
    read_rollback_copy,
    resolve_dsn,
    restore_backup,
    verify_restore,
)
from tasks.prefect_api import read_artifact_time
from tasks.storage import (
    StorageLocation,
    apply_retention,
    check_backup_complete,
    fetch_backup,
    hash_files,
    list_backups,
    prepare_dump_directory,
    publish_backup,
    read_drill_history,
    record_drill,
    remove_partial_backups,
    verify_backup_files,
    write_manifest,
)

RECOVERABILITY_KEY = "staging-recoverability"
BACKUP_REPORT_KEY = "staging-backup"
DRILL_REPORT_KEY = "restore-drill"
SYNC_REPORT_KEY = "staging-sync-report"

SecretName = Annotated[str, Field(min_length=1, description="Prefect Secret block name")]
Jobs = Annotated[int, Field(ge=1, le=16, description="pg_dump / pg_restore parallel jobs")]
ModelFile = Annotated[Path | None, Field(description="Another environment model file")]


class BackupResult(BaseModel):
    """What one backup run did."""

    url: str
    manifest: BackupManifest
    removed_partial: list[str]
    retention: RetentionPlan


def staging_location(storage_secret: str) -> StorageLocation:
    """Staging's backup location from the worker's settings, never production's.

    Raises:
        ConfigurationError: ``RSOLV_BACKUP_URL`` is not set.
        GuardError: it is (or holds, or lies in) production's backup location.
    """
    settings = load_settings()
    if not settings.backup_url:
        raise ConfigurationError("no backup location: set RSOLV_BACKUP_URL on the worker")
    ensure_not_production_location(settings.backup_url, [settings.production_backup_url or ""])
    return StorageLocation(
        url=settings.backup_url,
        endpoint_url=settings.backup_s3_endpoint_url,
        credentials_secret=storage_secret,
    )


def production_location(storage_secret: str) -> StorageLocation:
    """Production's backup location (read-only) from the worker's settings."""
    settings = load_settings()
    if not settings.production_backup_url:
        raise ConfigurationError(
            "no production backup location: set RSOLV_PRODUCTION_BACKUP_URL on the worker"
        )
    return StorageLocation(
        url=settings.production_backup_url,
        endpoint_url=settings.production_backup_s3_endpoint_url,
        credentials_secret=storage_secret,
        read_only=True,
    )


@flow(name="backup-staging-database")
def backup_staging_database(
    dsn_secret: SecretName = "staging-database-dsn",
    storage_secret: SecretName = "staging-backup-storage",
    jobs: Jobs = 2,
    retention: RetentionPolicy = RetentionPolicy(),  # noqa: B008 (a pydantic value, immutable here)
    environments_file: ModelFile = None,
) -> BackupResult:
    """Back up staging's database to the backup location; apply retention once verified."""
    started = time.perf_counter()
    topology = load_topology(environments_file)
    production = topology.production.database
    location = staging_location(storage_secret)
    dsn = resolve_dsn(dsn_secret)
    with backup_lock(dsn, production):
        removed = remove_partial_backups(location)
        backup_id = new_backup_id(datetime.now(UTC))
        directory = prepare_dump_directory(location, backup_id)
        try:
            facts = dump_database(dsn, production, directory, jobs=jobs)
            files = hash_files(directory, jobs)
            manifest = make_manifest(
                backup_id, facts, files, jobs=jobs, seconds=time.perf_counter() - started
            )
            write_and_publish(location, directory, manifest)
        except Exception:
            # An interrupted backup never counts: remove it now (a kill leaves it to
            # the next run); the backup's own error is the run's.
            discard_partial(location)
            raise
        check_backup_complete(location, manifest)
        plan = apply_retention(location, retention, datetime.now(UTC), newest=backup_id)
    result = BackupResult(
        url=f"{location.url.rstrip('/')}/backups/{backup_id}",
        manifest=manifest,
        removed_partial=removed,
        retention=plan,
    )
    publish_backup_report(result)
    publish_recoverability(location, dsn, topology.staging.database.name)
    return result


def write_and_publish(location: StorageLocation, directory: Path, manifest: BackupManifest) -> None:
    """The manifest beside the files, then the backup made visible."""
    write_manifest(directory, manifest)
    publish_backup(location, directory, manifest)


def discard_partial(location: StorageLocation) -> None:
    """Remove a failed backup's files, logging (not raising) a failure to do so."""
    try:
        remove_partial_backups(location)
    except Exception as exc:
        get_run_logger().warning("the failed backup's files stay for the next run: %s", exc)


@flow(name="verify-restore")
def verify_restore_drill(
    backup_id: Annotated[str | None, Field(description="A backup id; default: the latest")] = None,
    production_drill: Annotated[
        bool, Field(description="Drill on production's backups (read-only)")
    ] = False,
    admin_dsn_secret: SecretName = "staging-database-admin-dsn",
    storage_secret: SecretName = "staging-backup-storage",
    production_storage_secret: SecretName = "production-backup-storage",
    scratch_database: Annotated[
        str | None, Field(description=f"Default: <live>{SCRATCH_SUFFIX}")
    ] = None,
    jobs: Jobs = 2,
    rto: RtoRule = RtoRule(),  # noqa: B008 (a pydantic value, immutable here)
    notify_block: SecretName = DEFAULT_BLOCK,
    environments_file: ModelFile = None,
) -> DrillRecord:
    """Restore a backup into a scratch database, verify it, record the RTO, drop it."""
    topology = load_topology(environments_file)
    production = topology.production.database
    live = topology.staging.database.name
    scratch = check_scratch_name(scratch_database or live + SCRATCH_SUFFIX, live)
    if backup_id is not None:
        check_backup_id(backup_id)
    history_location = staging_location(storage_secret)
    source = production_location(production_storage_secret) if production_drill else None
    kind = "production" if production_drill else "staging"
    admin = resolve_dsn(admin_dsn_secret)
    manifest = choose_backup(list_backups(source or history_location), backup_id)
    record = run_drill(
        admin,
        production,
        source or history_location,
        manifest,
        kind,
        scratch=scratch,
        live=live,
        jobs=jobs,
    )
    history = read_drill_history(history_location, kind)
    if record.ok and record.rto_seconds is not None:
        record.regression = rto_regression(
            record.rto_seconds, rto_trend(history, kind, rto.window), rto
        )
    record_drill(history_location, record)
    publish_drill_report(record)
    publish_recoverability(history_location, admin, live)
    if not record.ok or record.regression:
        what = "failed" if not record.ok else "regressed"
        detail = "; ".join(record.problems) if not record.ok else str(record.regression)
        notify(
            f"Restore drill {what}: {kind} backup {manifest.backup_id}",
            detail,
            block_name=notify_block,
        )
        raise DataError(f"restore drill of {kind} backup {manifest.backup_id} {what}: {detail}")
    return record


def run_drill(
    admin: SecretStr,
    production: Database,
    location: StorageLocation,
    manifest: BackupManifest,
    kind: str,
    *,
    scratch: str,
    live: str,
    jobs: int,
) -> DrillRecord:
    """Fetch, check, restore and verify one backup; the scratch database is dropped
    whatever happened. A failure is returned in the record (to be recorded), not raised."""
    record = DrillRecord(
        backup_id=manifest.backup_id,
        source="production" if kind == "production" else "staging",
        started_at=datetime.now(UTC),
        ok=False,
        backup_bytes=manifest.size,
        backup_created_at=manifest.created_at,
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rsolv-restore-") as workdir:
        try:
            directory = fetch_backup(location, manifest, Path(workdir))
            verify_backup_files(directory, manifest, jobs=jobs)
            record.fetch_seconds = time.perf_counter() - started
            record.restore_seconds = restore_backup(
                admin, production, directory, manifest, scratch=scratch, live=live, jobs=jobs
            )
            record.rto_seconds = time.perf_counter() - started
            verified = time.perf_counter()
            verify_restore(admin, production, manifest, scratch=scratch, live=live)
            record.verify_seconds = time.perf_counter() - verified
            record.ok = True
        except Exception as exc:
            record.problems = [str(exc)]
        finally:
            try:
                drop_scratch_database(admin, production, scratch=scratch, live=live)
            except Exception as exc:
                record.problems.append(f"the scratch database {scratch} was not dropped: {exc}")
                record.ok = False
    return record


def publish_backup_report(result: BackupResult) -> None:
    """The backup's table artifact: its files' sizes and digests, rows and retention."""
    m = result.manifest
    create_table_artifact(
        key=BACKUP_REPORT_KEY,
        table=[
            {"name": name, "bytes": f.bytes, "sha256": f.sha256}
            for name, f in sorted(m.files.items())
        ],
        description=(
            f"Backup {m.backup_id} of {m.source} (PostgreSQL {m.server_version}) at "
            f"{result.url}: {len(m.files)} files, {m.size / 1e6:.1f} MB, "
            f"{sum(m.rows.values()):,} rows in {len(m.rows)} tables, "
            f"{m.duration_seconds:.1f} s. Retention kept {sorted(result.retention.keep)}, "
            f"deleted {result.retention.delete}; interrupted backups removed: "
            f"{result.removed_partial}"
        ),
    )


def publish_drill_report(record: DrillRecord) -> None:
    """The drill's outcome and timings as a table artifact."""
    create_table_artifact(
        key=DRILL_REPORT_KEY,
        table=[{k: (str(v) if v is not None else "") for k, v in record.model_dump().items()}],
        description=f"Restore drill of {record.source} backup {record.backup_id}",
    )


def publish_recoverability(location: StorageLocation, dsn: SecretStr, live: str) -> None:
    """The ``staging-recoverability`` artifact (what can be restored, from when, how
    long the last restore took). A part that cannot be read is left out, logged."""
    logger = get_run_logger()
    backups = list_backups(location)
    history = [
        *read_drill_history(location, "staging"),
        *read_drill_history(location, "production"),
    ]
    rollback = None
    try:
        rollback = read_rollback_copy(dsn, live + OLD_SUFFIX)
        if rollback is not None:
            rollback.as_of = read_artifact_time(SYNC_REPORT_KEY)
    except Exception as exc:
        logger.warning("the sync's rollback copy was not looked up: %s", exc)
    create_markdown_artifact(
        key=RECOVERABILITY_KEY,
        markdown=recoverability_markdown(
            location=location.url, backups=backups, history=history, rollback=rollback, live=live
        ),
        description="What staging's database can be restored from",
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: run one of the two flows once, in this process."""
    parser = argparse.ArgumentParser(prog="python -m flows.backup")
    parser.add_argument("what", choices=["backup", "verify"])
    parser.add_argument("--backup-id", default=None)
    parser.add_argument("--production", action="store_true", help="drill on production's")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    if args.what == "backup":
        print(backup_staging_database(jobs=args.jobs).model_dump_json(indent=2))
    else:
        result = verify_restore_drill(
            backup_id=args.backup_id, production_drill=args.production, jobs=args.jobs
        )
        print(result.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
