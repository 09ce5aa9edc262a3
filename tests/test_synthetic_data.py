"""Synthetic data: reproducible, consistent, unique, never written to production.

Everything that touches a database runs against the real PostgreSQL servers of
``tests/plugins/postgres.py`` (production and staging are separate instances); the
checks that matter (foreign keys, uniques, ordering) are asked of the server, not of the
generator. Task bodies run through ``.fn``; two whole-flow runs use the Prefect API.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from faker import Faker
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.exceptions import ParameterTypeError
from pydantic import SecretStr

from flows.synthetic_data import (
    PROGRESS_ARTIFACT_KEY,
    TABLE_ARTIFACT_KEY,
    generate_synthetic_data,
)
from rsolv_staging.environments import Database, topology_from_mapping
from rsolv_staging.exceptions import ConfigurationError, GuardError
from rsolv_staging.schema import TABLE_NAMES, compare_schemas, describe_metadata, metadata
from rsolv_staging.settings import REPO_ROOT
from rsolv_staging.synthetic import (
    BASE_ROWS,
    SyntheticPlan,
    generate_blocks,
    make_plan,
    resolve_rows,
)
from tasks.postgres import (
    LoadReport,
    checksum_tables,
    copy_rows,
    create_schema,
    describe_schema,
    read_max_ids,
)
from tests.plugins.postgres import PostgresDatabase, PostgresServer

AS_OF = date(2025, 6, 3)
SMALL = 0.02  # about 8,000 rows over the whole schema


@pytest.fixture
def production_model(pg_production: PostgresServer) -> Database:
    """The environment model's production database: the suite's production server."""
    topology = topology_from_mapping(
        {"production": {"database": {"host": "127.0.0.1", "port": pg_production.port}}}
    )
    return topology.production.database


def load(
    database: PostgresDatabase,
    production: Database,
    plan: SyntheticPlan,
    mode: str = "truncate",
    batch_rows: int = 5_000,
) -> LoadReport:
    dsn = SecretStr(database.dsn)
    create_schema.fn(dsn, production)
    return copy_rows.fn(dsn, production, plan, mode=mode, batch_rows=batch_rows)  # type: ignore[arg-type]


def query(database: PostgresDatabase, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database.dsn) as conn:
        return conn.execute(sql, params or None).fetchall()  # type: ignore[arg-type]


def generated_sha256(plan: SyntheticPlan, batch_rows: int) -> dict[str, str]:
    digests = {table: hashlib.sha256() for table in TABLE_NAMES}
    for block in generate_blocks(plan, batch_rows=batch_rows):
        digests[block.table].update(block.data)
    return {table: digest.hexdigest() for table, digest in digests.items()}


# --- the generator alone -----------------------------------------------------------


def test_bytes_depend_on_seed_scale_and_date_not_on_batch_size() -> None:
    """Same (seed, scale, as_of): identical bytes per table for any batch size; change any
    input and every table changes."""
    plan = make_plan(seed=11, scale=SMALL, as_of=AS_OF)
    reference = generated_sha256(plan, batch_rows=50_000)
    assert generated_sha256(plan, batch_rows=97) == reference
    for other in (
        make_plan(seed=12, scale=SMALL, as_of=AS_OF),
        make_plan(seed=11, scale=SMALL, as_of=date(2025, 6, 4)),
    ):
        changed = generated_sha256(other, batch_rows=50_000)
        assert all(changed[t] != reference[t] for t in TABLE_NAMES)


def test_the_same_seed_gives_the_same_bytes_in_another_process() -> None:
    """Reproducible across runs, not only within one: a fresh interpreter (with other
    string hashing, and no pools cached from an earlier plan) generates the same bytes
    as this process, after this one generated another seed first."""
    make_plan(seed=12, scale=SMALL, as_of=AS_OF)  # something else first, in this process
    generated_sha256(make_plan(seed=12, scale=SMALL, as_of=AS_OF), batch_rows=50_000)
    here = generated_sha256(make_plan(seed=11, scale=SMALL, as_of=AS_OF), batch_rows=50_000)
    script = (
        "import hashlib, json\n"
        "from datetime import date\n"
        "from rsolv_staging.synthetic import generate_blocks, make_plan\n"
        f"plan = make_plan(seed=11, scale={SMALL!r}, as_of=date(2025, 6, 3))\n"
        "sums = {}\n"
        "for block in generate_blocks(plan, batch_rows=777):\n"
        "    sums.setdefault(block.table, hashlib.sha256()).update(block.data)\n"
        "print(json.dumps({t: d.hexdigest() for t, d in sums.items()}))\n"
    )
    there = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONHASHSEED": "4242"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(there.stdout) == here


def test_a_scale_factor_keeps_the_parents_its_children_need() -> None:
    """A tiny factor rounds parents to zero; they are kept at one row so children can exist."""
    rows = resolve_rows(0.0005)
    assert rows["findings"] == round(BASE_ROWS["findings"] * 0.0005) > 0
    assert rows["organizations"] >= 1
    assert rows["scans"] >= 1
    assert rows["repositories"] >= 1
    assert resolve_rows({"organizations": 3, "users": 7}) == {
        **dict.fromkeys(TABLE_NAMES, 0),
        "organizations": 3,
        "users": 7,
    }


@pytest.mark.parametrize(
    ("seed", "scale", "message"),
    [
        (1, {"organizations": 1, "userz": 5}, "unknown table(s) ['userz']"),
        (1, -0.5, "scale must be a finite number >= 0"),
        (1, math.nan, "scale must be a finite number >= 0"),
        (1, {"organizations": -1}, "scale['organizations'] must be a whole number"),
        (1, {"organizations": 2.5}, "scale['organizations'] must be a whole number"),
        (1, {"users": 10}, "users needs rows in organizations"),
        (
            1,
            {
                "pull_requests": 5,
                "fix_attempts": 2,
                "findings": 1,
                "scans": 1,
                "repositories": 1,
                "organizations": 1,
            },
            "pull_requests (5) cannot exceed",
        ),
        ("42", 1.0, "seed must be an integer"),
        (4.2, 1.0, "seed must be an integer"),
        (True, 1.0, "seed must be an integer"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(seed: Any, scale: Any, message: str) -> None:
    """Unknown table, negative or NaN scale, fractional counts, orphans, non-integer seed."""
    with pytest.raises(ConfigurationError) as excinfo:
        make_plan(seed=seed, scale=scale, as_of=AS_OF)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    "as_of",
    ["2025-06-03", datetime(2025, 6, 3, tzinfo=UTC), date(1, 1, 1)],
    ids=["string", "datetime", "out-of-range"],
)
def test_as_of_must_be_a_plausible_date(as_of: Any) -> None:
    """The date anchors every timestamp: a string, a datetime or year 1 are refused."""
    with pytest.raises(ConfigurationError, match="as_of must"):
        make_plan(seed=1, scale=SMALL, as_of=as_of)


def test_load_order_puts_every_parent_before_its_children() -> None:
    """Each foreign key of the models points at a table generated and loaded earlier."""
    position = {name: index for index, name in enumerate(TABLE_NAMES)}
    assert set(position) == set(metadata.tables)
    for table in metadata.sorted_tables:
        for fk in table.foreign_keys:
            assert position[fk.column.table.name] < position[table.name], fk


# --- against a real server ---------------------------------------------------------


def test_same_seed_same_checksums_different_seed_different(
    pg_staging: PostgresServer, production_model: Database
) -> None:
    """Two loads of one plan into two databases give identical table checksums, equal to
    the generator's bytes (the server stores exactly what was generated, whatever its time
    zone); a reload replaces rather than adds; another seed changes every table."""
    plan = make_plan(seed=5, scale=SMALL, as_of=AS_OF)
    first, second, third = (pg_staging.create_database("repro") for _ in range(3))
    load(first, production_model, plan, batch_rows=1_000)
    load(second, production_model, plan, batch_rows=20_000)
    load(third, production_model, make_plan(seed=6, scale=SMALL, as_of=AS_OF))
    sums = [checksum_tables.fn(SecretStr(db.dsn)) for db in (first, second, third)]
    assert sums[0] == sums[1]
    assert {t: c.sha256 for t, c in sums[0].items()} == generated_sha256(plan, 10_000)
    assert {t: c.rows for t, c in sums[0].items()} == plan.rows
    assert all(sums[2][t].sha256 != sums[0][t].sha256 for t in TABLE_NAMES)

    load(first, production_model, plan)  # truncate mode: the same end state again
    assert checksum_tables.fn(SecretStr(first.dsn)) == sums[0]
    for db in (first, second, third):
        pg_staging.drop_database(db)


def test_every_foreign_key_is_validated_and_enforced_by_the_database(
    staging_database: PostgresDatabase, production_model: Database
) -> None:
    """After a load, the server holds every modeled foreign key, validated, finds no
    orphan by its own join, and rejects a dangling row: the constraints are live, not
    just promised by the generator."""
    load(staging_database, production_model, make_plan(seed=3, scale=SMALL, as_of=AS_OF))
    rows = query(
        staging_database,
        "SELECT conrelid::regclass::text, conname, convalidated,"
        " (SELECT attname FROM pg_attribute WHERE attrelid = conrelid AND attnum = conkey[1]),"
        " confrelid::regclass::text "
        "FROM pg_constraint WHERE contype = 'f'",
    )
    modeled = {
        fk.name for shape in describe_metadata().tables.values() for fk in shape.foreign_keys
    }
    assert {name for _, name, *_ in rows} == modeled
    assert all(validated for _, _, validated, *_ in rows)
    for child, _, _, column, parent in rows:
        orphans = query(
            staging_database,
            f"SELECT count(*) FROM {child} c WHERE c.{column} IS NOT NULL "
            f"AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.id = c.{column})",
        )
        assert orphans == [(0,)], (child, column)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        query(
            staging_database,
            "INSERT INTO findings (scan_id, rule_id, severity, title, file_path, line, status,"
            " details, created_at)"
            " VALUES (999999999, 'x', 'low', 't', 'p', 1, 'open', '{}', now())",
        )


def first_set_digests(database: PostgresDatabase, offsets: dict[str, int]) -> dict[str, Any]:
    """Per table, a digest of every row with an id up to ``offsets[table]``."""
    return {
        t: query(
            database,
            f"SELECT count(*), md5(string_agg(r::text, '|' ORDER BY r.id)) FROM {t} r "
            "WHERE r.id <= %s",
            offsets[t],
        )
        for t in TABLE_NAMES
    }


def test_timestamps_run_parent_before_child_and_before_as_of(
    staging_database: PostgresDatabase, production_model: Database
) -> None:
    """For every parent/child pair, the child's timestamp is at or after the parent's, and
    no event is at or after midnight of as_of."""
    load(staging_database, production_model, make_plan(seed=4, scale=SMALL, as_of=AS_OF))
    pairs = [
        ("users", "created_at", "organization_id", "organizations", "created_at"),
        ("api_keys", "created_at", "organization_id", "organizations", "created_at"),
        ("api_keys", "created_at", "created_by_id", "users", "created_at"),
        ("repositories", "created_at", "organization_id", "organizations", "created_at"),
        ("scans", "started_at", "repository_id", "repositories", "created_at"),
        ("scans", "started_at", "api_key_id", "api_keys", "created_at"),
        ("findings", "created_at", "scan_id", "scans", "started_at"),
        ("fix_attempts", "started_at", "finding_id", "findings", "created_at"),
        ("pull_requests", "opened_at", "fix_attempt_id", "fix_attempts", "started_at"),
        ("subscriptions", "started_at", "organization_id", "organizations", "created_at"),
        ("payments", "paid_at", "subscription_id", "subscriptions", "started_at"),
    ]
    for child, child_ts, fk, parent, parent_ts in pairs:
        early = query(
            staging_database,
            f"SELECT count(*) FROM {child} c JOIN {parent} p ON p.id = c.{fk} "
            f"WHERE c.{child_ts} < p.{parent_ts}",
        )
        assert early == [(0,)], (child, fk)
    midnight = datetime(AS_OF.year, AS_OF.month, AS_OF.day, tzinfo=UTC)
    for table, columns in {
        "organizations": ("created_at",),
        "users": ("created_at", "last_login_at"),
        "api_keys": ("created_at", "last_used_at", "revoked_at"),
        "repositories": ("created_at",),
        "scans": ("started_at", "finished_at"),
        "findings": ("created_at",),
        "fix_attempts": ("started_at", "completed_at"),
        "pull_requests": ("opened_at", "merged_at", "closed_at"),
        "subscriptions": ("started_at", "canceled_at"),
        "payments": ("paid_at",),
        "email_subscribers": ("subscribed_at", "confirmed_at", "unsubscribed_at"),
    }.items():
        latest = query(staging_database, f"SELECT max(greatest({', '.join(columns)})) FROM {table}")
        assert latest[0][0] < midnight, table
    # Not an event: the end of the billing period running on as_of, after it as in real
    # data, and after the subscription's start.
    periods = query(
        staging_database,
        "SELECT count(*) FILTER (WHERE current_period_end <= started_at), "
        "min(current_period_end) >= %s FROM subscriptions",
        midnight,
    )
    assert periods == [(0, True)]
    # A pull request belongs to the repository its fix attempt's finding was scanned in.
    mismatched = query(
        staging_database,
        "SELECT count(*) FROM pull_requests pr JOIN fix_attempts a ON a.id = pr.fix_attempt_id "
        "JOIN findings f ON f.id = a.finding_id JOIN scans s ON s.id = f.scan_id "
        "WHERE s.repository_id <> pr.repository_id",
    )
    assert mismatched == [(0,)]


def test_distributions_are_skewed_like_real_tenants(
    staging_database: PostgresDatabase, production_model: Database
) -> None:
    """A few large organizations and many small; findings lean to low severities; fix
    attempts favour severe findings; every organization has exactly one owner."""
    plan = make_plan(seed=9, scale=0.05, as_of=AS_OF)
    load(staging_database, production_model, plan)
    sizes = [
        n
        for (n,) in query(
            staging_database, "SELECT count(*) FROM users GROUP BY organization_id ORDER BY 1 DESC"
        )
    ]
    top = max(1, plan.rows["organizations"] // 10)
    assert sum(sizes[:top]) > 0.3 * sum(sizes)  # uniform would give about 10%
    assert sizes[0] > 5 * sizes[len(sizes) // 2]
    severity = dict(query(staging_database, "SELECT severity, count(*) FROM findings GROUP BY 1"))
    assert severity["critical"] < severity["high"] < severity["medium"]
    assert severity["low"] + severity["info"] > severity["critical"] + severity["high"]
    fixed_critical_share = query(
        staging_database,
        "SELECT avg((f.severity IN ('critical', 'high'))::int) FROM fix_attempts a "
        "JOIN findings f ON f.id = a.finding_id",
    )[0][0]
    assert fixed_critical_share > 2 * (severity["critical"] + severity["high"]) / sum(
        severity.values()
    )
    owners = query(
        staging_database,
        "SELECT count(*) FILTER (WHERE role = 'owner') FROM users GROUP BY organization_id",
    )
    assert {n for (n,) in owners} == {1}


def test_uniques_hold_where_faker_alone_collides(
    staging_database: PostgresDatabase, production_model: Database
) -> None:
    """At 20,000 rows Faker's per-row emails repeat; the generator's users, subscribers
    and API keys load under the server's UNIQUE constraints with none repeated."""
    n = 20_000
    fake = Faker(use_weighting=False)
    fake.seed_instance(1)
    faker_emails = [fake.email() for _ in range(n)]
    assert len(set(faker_emails)) < n  # the scale at which Faker alone collides

    rows = {"organizations": 40, "users": n, "api_keys": n, "email_subscribers": n}
    load(staging_database, production_model, make_plan(seed=1, scale=rows, as_of=AS_OF))
    counts = query(
        staging_database,
        "SELECT (SELECT count(DISTINCT email) FROM users),"
        " (SELECT count(DISTINCT key_hash) FROM api_keys),"
        " (SELECT count(DISTINCT email) FROM email_subscribers)",
    )
    assert counts == [(n, n, n)]
    uniques = {
        name
        for (name,) in query(
            staging_database, "SELECT conname FROM pg_constraint WHERE contype = 'u'"
        )
    }
    assert {"uq_users_email", "uq_api_keys_key_hash", "uq_email_subscribers_email"} <= uniques
    domains = query(
        staging_database,
        "SELECT DISTINCT split_part(email, '@', 2) FROM users "
        "UNION SELECT DISTINCT split_part(email, '@', 2) FROM email_subscribers",
    )
    assert all(
        d.endswith((".example", "example.com", "example.net", "example.org")) for (d,) in domains
    )


def test_append_adds_a_new_set_after_the_existing_ids(
    staging_database: PostgresDatabase, production_model: Database
) -> None:
    """Append keeps the first set, numbers the second after it with every constraint in
    force, and leaves the identity sequences past the data so the app can insert."""
    plan = make_plan(seed=2, scale=SMALL, as_of=AS_OF)
    load(staging_database, production_model, plan)
    dsn = SecretStr(staging_database.dsn)
    offsets = read_max_ids.fn(dsn)
    before = first_set_digests(staging_database, offsets)
    again = make_plan(seed=2, scale=SMALL, as_of=AS_OF, id_offsets=offsets)
    copy_rows.fn(dsn, production_model, again, mode="append")
    assert read_max_ids.fn(dsn) == {t: offsets[t] + plan.rows[t] for t in TABLE_NAMES}
    first_orgs = query(
        staging_database,
        "SELECT count(*) FROM organizations WHERE id <= %s",
        offsets["organizations"],
    )
    assert first_orgs == [(plan.rows["organizations"],)]
    assert first_set_digests(staging_database, offsets) == before  # not rewritten
    new_id = query(
        staging_database,
        "INSERT INTO organizations (name, slug, billing_email, country, created_at) "
        "VALUES ('New', 'new-org', 'b@new.example', 'US', now()) RETURNING id",
    )
    assert new_id == [(offsets["organizations"] + plan.rows["organizations"] + 1,)]


def test_loaded_schema_is_the_modeled_one(
    staging_database: PostgresDatabase, production_model: Database
) -> None:
    """After a load (which drops and rebuilds keys, indexes and foreign keys), the live
    schema matches the models the sync and the app rely on, constraint for constraint."""
    load(staging_database, production_model, make_plan(seed=8, scale=SMALL, as_of=AS_OF))
    assert (
        compare_schemas(describe_metadata(), describe_schema.fn(SecretStr(staging_database.dsn)))
        == []
    )


@pytest.mark.parametrize(
    "point_at_production",
    [
        lambda db: db.dsn,
        lambda db: db.dsn.replace("127.0.0.1", "localhost"),
        lambda db: db.server.dsn,  # another database on production's server
    ],
    ids=["same-dsn", "host-alias", "other-database"],
)
def test_writes_to_production_are_refused_and_nothing_is_written(
    production_database: PostgresDatabase,
    production_model: Database,
    point_at_production: Callable[[PostgresDatabase], str],
) -> None:
    """Production's server in the environment model is refused by every writing task,
    however the DSN spells it, and its database stays empty."""
    dsn = SecretStr(point_at_production(production_database))
    plan = make_plan(seed=1, scale=SMALL, as_of=AS_OF)
    with pytest.raises(GuardError, match="refusing to write") as excinfo:
        create_schema.fn(dsn, production_model)
    assert production_database.server.password not in str(excinfo.value)
    with pytest.raises(GuardError):
        copy_rows.fn(dsn, production_model, plan, mode="truncate")
    assert query(
        production_database, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    ) == [(0,)]


# --- the whole flow -------------------------------------------------------------------


@pytest.fixture
def flow_env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pg_production: PostgresServer,
    staging_database: PostgresDatabase,
) -> str:
    """The environment model points production at the production server; the DSN of the
    staging database sits in an environment secret. Returns the secret's name."""
    model = tmp_path / "environments.yaml"
    model.write_text(
        yaml.safe_dump(
            {"production": {"database": {"host": "127.0.0.1", "port": pg_production.port}}}
        )
    )
    monkeypatch.setenv("RSOLV_ENVIRONMENTS_FILE", str(model))
    secret = f"test-staging-dsn-{staging_database.name.replace('_', '-')}"
    monkeypatch.setenv("RSOLV_SECRET_" + secret.upper().replace("-", "_"), staging_database.dsn)
    return secret


def test_flow_loads_the_schema_and_reports_progress_and_rows(
    prefect_api: None, flow_env: str, staging_database: PostgresDatabase
) -> None:
    """A whole run: schema created as modeled, every table filled, as_of defaulting to
    today at run time, a progress artifact at 100% and a table artifact with rows and
    rows/s per table; the DSN's password appears in no artifact."""
    state = generate_synthetic_data(
        seed=7,
        scale={
            "organizations": 5,
            "users": 50,
            "repositories": 10,
            "scans": 40,
            "findings": 200,
            "fix_attempts": 30,
            "pull_requests": 10,
            "subscriptions": 5,
            "payments": 20,
            "email_subscribers": 30,
            "api_keys": 8,
        },
        target_dsn_secret=flow_env,
        return_state=True,
    )
    report = state.result()
    assert report.as_of == datetime.now(UTC).date()
    counts = {t: c.rows for t, c in checksum_tables.fn(SecretStr(staging_database.dsn)).items()}
    assert counts == report.rows
    assert counts["findings"] == 200
    assert (
        compare_schemas(describe_metadata(), describe_schema.fn(SecretStr(staging_database.dsn)))
        == []
    )

    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert by_key[PROGRESS_ARTIFACT_KEY].data == 100.0
    table = by_key[TABLE_ARTIFACT_KEY].data
    assert isinstance(table, str)
    assert staging_database.server.password not in table
    rows = yaml.safe_load(table)  # JSON is YAML
    assert [r["table"] for r in rows[:-1]] == list(TABLE_NAMES)
    assert all(r["rows/s"] > 0 for r in rows if r["rows"])


@pytest.mark.parametrize(
    ("parameters", "error", "message"),
    [
        ({"scale": {"userz": 10}}, ConfigurationError, "userz"),
        ({"scale": -2.0}, ConfigurationError, "scale must be a finite number >= 0"),
        ({"seed": "abc"}, ParameterTypeError, "seed: Input should be a valid integer"),
        ({"scale": 0}, ConfigurationError, "scale gives no rows at all"),
        ({"scale": {}}, ConfigurationError, "scale gives no rows at all"),
    ],
    ids=["unknown-table", "negative-scale", "seed-not-an-integer", "zero", "empty-mapping"],
)
def test_flow_refuses_bad_input_before_any_write(
    prefect_api: None,
    flow_env: str,
    staging_database: PostgresDatabase,
    parameters: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """Bad parameters fail the run with the culprit named; the target stays untouched."""
    with pytest.raises(error, match=re.escape(message)):
        generate_synthetic_data(target_dsn_secret=flow_env, **parameters)
    assert query(
        staging_database, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    ) == [(0,)]


def test_flow_refuses_a_production_target_before_any_write(
    prefect_api: None,
    flow_env: str,
    monkeypatch: pytest.MonkeyPatch,
    production_database: PostgresDatabase,
) -> None:
    """The DSN secret points at production's server: the run fails on the guard, with
    no password in the error, and production gets no table."""
    monkeypatch.setenv(
        "RSOLV_SECRET_" + flow_env.upper().replace("-", "_"), production_database.dsn
    )
    with pytest.raises(GuardError, match="production's PostgreSQL server") as excinfo:
        generate_synthetic_data(seed=1, scale=SMALL, target_dsn_secret=flow_env)
    assert production_database.server.password not in str(excinfo.value)
    assert query(
        production_database, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    ) == [(0,)]
