"""Generate synthetic RSOLV data into the staging database (RFC 002, "Synthetic Data").

Purpose: fill staging's PostgreSQL with predictable, safe test data for daily
development: the whole RSOLV schema (organizations, users, API keys, repositories,
scans, findings, fix attempts and their pull requests, subscriptions, payments, email
subscribers), relationally consistent, reproducible from a seed, loaded with COPY while
it is generated. The same seed, scale and date give byte-identical tables.

Parameters:
    seed: integer seed of every random stream (default 2025).
    scale: one factor over the base sizes (1.0 is about 400k rows; see
        ``rsolv_staging.synthetic.BASE_ROWS``), or a mapping of table -> rows (tables
        it does not name get none; children need their parents).
    as_of: every event (creation, activity, payment, cancellation) lies before this day
        (UTC); a subscription's current period end may lie after it, as in real data.
        Default: the day the run starts.
    mode: ``truncate`` replaces all RSOLV rows atomically; ``append`` adds a new set of
        tenants after the existing ids, leaving existing rows alone.
    target_dsn_secret: name of the Secret holding the target's DSN.
    batch_rows: rows per COPY block (memory per block; does not change the data).

Blocks and variables it needs:
    * Secret block ``staging-database-dsn`` (or the name given), a libpq DSN such as
      ``postgresql://rsolv:...@staging-postgres.staging.svc.cluster.local:5432/rsolv``;
      or the environment variable ``RSOLV_SECRET_STAGING_DATABASE_DSN``. The DSN is never
      a flow parameter (Prefect stores those) and its password never reaches a log,
      an artifact or an error message.
    * The environment model (``data/environments.yaml`` or ``RSOLV_ENVIRONMENTS_FILE``):
      a target on production's database server is refused before anything is written.

What it leaves behind: the rows; a progress artifact ``synthetic-data-progress``; a
table artifact ``synthetic-data-load`` with rows, seconds and rows/s per table.

How to run it:
    python -m flows.synthetic_data --seed 42 --scale 0.1 --as-of 2025-06-03
    python -m flows.synthetic_data --scale '{"organizations": 10, "users": 500}' --mode append
or through a deployment: ``prefect deployment run generate-synthetic-data/<name> -p seed=42``.
Invalid input (unknown table, negative scale, a seed that is not an integer) fails the
run before any connection is made.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime
from typing import Annotated, Literal, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact
from pydantic import BaseModel, Field

from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.schema import TABLE_NAMES
from rsolv_staging.settings import load_topology
from rsolv_staging.synthetic import SyntheticPlan, make_plan
from tasks.postgres import (
    LoadReport,
    Target,
    analyze_tables,
    check_target,
    copy_rows,
    create_schema,
    read_max_ids,
    resolve_dsn,
)

PROGRESS_ARTIFACT_KEY = "synthetic-data-progress"
TABLE_ARTIFACT_KEY = "synthetic-data-load"

Seed = Annotated[
    int,
    Field(strict=True, description="Seed of every random stream; same seed, same data"),
]
Scale = Annotated[
    float | dict[str, int],
    Field(
        description="A factor over the base sizes (1.0 = about 400k rows), or rows per "
        'table, e.g. {"organizations": 10, "users": 500}'
    ),
]
AsOf = Annotated[
    date | None,
    Field(
        description="Every event lies before this day (UTC; a subscription's current "
        "period end may lie after it); default: today"
    ),
]
Mode = Annotated[
    Literal["truncate", "append"],
    Field(description="truncate: replace all RSOLV rows; append: add after existing ids"),
]
SecretName = Annotated[
    str,
    Field(min_length=1, description="Prefect Secret block holding the target database DSN"),
]
BatchRows = Annotated[
    int,
    Field(ge=100, le=1_000_000, description="Rows per COPY block; does not change the data"),
]


class SyntheticDataReport(BaseModel):
    """What a run generated and where (never the DSN)."""

    target: str = Field(description="user@host:port/database")
    seed: int
    as_of: date
    mode: Literal["truncate", "append"]
    rows: dict[str, int] = Field(description="Rows loaded per table")
    seconds: float = Field(description="Generating and loading, commit included")
    rows_per_second: float


def _table_rows(report: LoadReport) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [
        {
            "table": load.table,
            "rows": load.rows,
            "seconds": round(load.seconds, 3),
            "rows/s": round(load.rows_per_second),
        }
        for load in report.tables
    ]
    rows.append(
        {
            "table": "total (incl. constraints and commit)",
            "rows": report.rows,
            "seconds": round(report.seconds, 3),
            "rows/s": round(report.rows_per_second),
        }
    )
    return rows


@flow(name="generate-synthetic-data")
def generate_synthetic_data(
    seed: Seed = 2025,
    scale: Scale = 1.0,
    as_of: AsOf = None,
    mode: Mode = "truncate",
    target_dsn_secret: SecretName = "staging-database-dsn",
    batch_rows: BatchRows = 20_000,
) -> SyntheticDataReport:
    """Generate seeded, consistent RSOLV data and COPY it into the staging database."""
    # Validated before any connection: unknown table, negative scale, bad seed.
    plan = plan_rows(seed, scale, as_of, mode)
    production = load_topology().production.database

    dsn = resolve_dsn(target_dsn_secret)
    target = check_target(dsn, production)
    create_schema(dsn, production)  # and checks it: a drifted schema is left as it was
    if mode == "append":
        plan = make_plan(
            seed=plan.seed, scale=plan.rows, as_of=plan.as_of, id_offsets=read_max_ids(dsn)
        )
    get_run_logger().info(
        "Generating %d rows (seed %d, as of %s) into %s, mode %s",
        plan.total_rows,
        plan.seed,
        plan.as_of,
        target,
        mode,
    )
    progress = start_progress(target, plan)
    report = copy_rows(
        dsn, production, plan, mode=mode, batch_rows=batch_rows, progress_artifact_id=progress
    )
    analyze_tables(dsn, production)
    publish_load(report, target, plan)
    return SyntheticDataReport(
        target=str(target),
        seed=plan.seed,
        as_of=plan.as_of,
        mode=mode,
        rows={load.table: load.rows for load in report.tables},
        seconds=report.seconds,
        rows_per_second=report.rows_per_second,
    )


def plan_rows(
    seed: int, scale: float | dict[str, int], as_of: date | None, mode: str
) -> SyntheticPlan:
    """The rows to generate; refused when a truncate would load none at all."""
    plan = make_plan(seed=seed, scale=scale, as_of=as_of or datetime.now(UTC).date())
    if mode == "truncate" and plan.total_rows == 0:
        # Most likely a mistake (scale=0, {}), and staging's tables may hold the monthly
        # production copy: emptying them takes asking for it in so many words.
        raise ConfigurationError(
            "scale gives no rows at all: in truncate mode the run would only empty "
            "staging's RSOLV tables; give a scale above 0"
        )
    return plan


def start_progress(target: Target, plan: SyntheticPlan) -> UUID:
    """The load's progress artifact (updated by copy_rows)."""
    # Called from a synchronous flow, Prefect's sync_compatible helper returns the UUID.
    return cast(
        UUID,
        create_progress_artifact(
            0.0,
            key=PROGRESS_ARTIFACT_KEY,
            description=f"Synthetic data into {target}: {plan.total_rows} rows",
        ),
    )


def publish_load(report: LoadReport, target: Target, plan: SyntheticPlan) -> None:
    """The load's table artifact (rows and speed per table) and its summary line."""
    create_table_artifact(
        table=_table_rows(report),
        key=TABLE_ARTIFACT_KEY,
        description=(
            f"Synthetic data ({report.mode}) into {target}: seed {plan.seed}, as of {plan.as_of}"
        ),
    )
    get_run_logger().info(
        "Loaded %d rows in %.1f s (%.0f rows/s)",
        report.rows,
        report.seconds,
        report.rows_per_second,
    )


def _scale(value: str) -> float | dict[str, int]:
    value = value.strip()
    if value.startswith("{"):
        parsed = json.loads(value)
        if not isinstance(parsed, dict):
            raise argparse.ArgumentTypeError("a JSON object of table -> rows")
        return parsed
    return float(value)


def main(argv: list[str] | None = None) -> None:
    """Command line: run the flow once, in this process."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.synthetic_data",
        description="Generate synthetic RSOLV data into the staging database.",
    )
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument(
        "--scale",
        type=_scale,
        default=1.0,
        help=f"a factor, or JSON rows per table ({', '.join(TABLE_NAMES)})",
    )
    parser.add_argument("--as-of", type=date.fromisoformat, default=None, help="YYYY-MM-DD")
    parser.add_argument("--mode", choices=("truncate", "append"), default="truncate")
    parser.add_argument(
        "--secret",
        default="staging-database-dsn",
        help="Secret block (or RSOLV_SECRET_<NAME> variable) with the DSN",
    )
    parser.add_argument("--batch-rows", type=int, default=20_000)
    args = parser.parse_args(argv)
    report = generate_synthetic_data(
        seed=args.seed,
        scale=args.scale,
        as_of=args.as_of,
        mode=args.mode,
        target_dsn_secret=args.secret,
        batch_rows=args.batch_rows,
    )
    print(report.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
