"""PostgreSQL tasks: the production guard, secrets kept out of errors, atomic loads.

Against the suite's real servers (``tests/plugins/postgres.py``), through ``.fn``.
"""

from __future__ import annotations

import functools
import socket
import traceback
from collections.abc import Iterator
from datetime import date

import psycopg
import pytest
from pydantic import SecretStr

from rsolv_staging.environments import Database, topology_from_mapping
from rsolv_staging.exceptions import ConfigurationError, DataError
from rsolv_staging.schema import TABLE_NAMES, column_names
from rsolv_staging.synthetic import Block, make_plan
from tasks import postgres
from tasks.postgres import (
    checksum_tables,
    connect,
    copy_blocks,
    copy_rows,
    create_schema,
    is_production_server,
    parse_target,
    verify_schema,
)
from tests.plugins.postgres import PostgresDatabase, PostgresServer

AS_OF = date(2025, 6, 3)
PRODUCTION = topology_from_mapping({}).production.database  # postgres.production.svc...


@pytest.fixture
def production_model(pg_production: PostgresServer) -> Database:
    """The environment model's production database: the suite's production server."""
    return topology_from_mapping(
        {"production": {"database": {"host": "127.0.0.1", "port": pg_production.port}}}
    ).production.database


@pytest.mark.parametrize(
    ("host", "port", "refused"),
    [
        ("postgres.production.svc.cluster.local", 5432, True),
        ("POSTGRES.production.svc.cluster.local.", 5432, True),
        ("postgres.production.svc", 5432, True),
        ("postgres.production", 5432, True),
        ("postgres.production.svc.cluster.local", 5433, False),
        ("staging-postgres.staging.svc.cluster.local", 5432, False),
        ("postgres.staging", 5432, False),
    ],
)
def test_production_is_recognized_under_kubernetes_spellings(
    host: str, port: int, refused: bool
) -> None:
    """One Service has several DNS spellings; all of them are production, other hosts or
    ports are not."""
    assert is_production_server(host, port, PRODUCTION) is refused


def test_wrong_password_error_never_shows_the_password(pg_staging: PostgresServer) -> None:
    """A refused login raises a non-transient DataError whose message and traceback hold
    neither the DSN's password nor the real one."""
    wrong = "Wr0ng-Pa55-q7z"
    dsn = SecretStr(pg_staging.dsn.replace(pg_staging.password, wrong))
    with pytest.raises(DataError) as excinfo:
        connect(dsn)
    text = "".join(traceback.format_exception(excinfo.value))
    assert "password authentication failed" in text
    assert wrong not in text
    assert pg_staging.password not in text
    assert excinfo.value.transient is False


def test_unreachable_server_is_transient_and_redacted() -> None:
    """Nothing listening: a transient DataError (worth a retry) that names the target
    without its password."""
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    dsn = SecretStr(f"postgresql://postgres:S3cret-{free}@127.0.0.1:{free}/rsolv")
    with pytest.raises(DataError) as excinfo:
        connect(dsn)
    text = "".join(traceback.format_exception(excinfo.value))
    assert f"S3cret-{free}" not in text
    assert f"postgres@127.0.0.1:{free}/rsolv" in str(excinfo.value)
    assert excinfo.value.transient is True


def test_unparsable_dsn_is_reported_without_its_text() -> None:
    """libpq's parser quotes the string it chokes on; the error says what is wrong and
    quotes nothing."""
    dsn = SecretStr("host=db.example password=se cret-4417 dbname=rsolv")
    with pytest.raises(ConfigurationError) as excinfo:
        connect(dsn)
    assert "cret-4417" not in "".join(traceback.format_exception(excinfo.value))
    assert "not a valid PostgreSQL connection string" in str(excinfo.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://rsolv:Ab3/xYz9+Q@staging-postgres:5432/rsolv",  # port would be "Ab3"
        "postgresql://rsolv:8841/xYz9+Q@staging-postgres:5432/rsolv",  # dbname "xYz9+Q@..."
        "postgresql://rsolv:p@ss-w0rd@staging-postgres:5432/rsolv",  # host "ss-w0rd@..."
        "postgres://rsolv:a/b-c@staging-postgres/rsolv?sslmode=require",
    ],
)
def test_a_password_libpq_would_misread_is_refused_unshown(dsn: str) -> None:
    """A URI password with '/' or '@' unencoded would be read in part as the host, port
    or database, which messages name; the DSN is refused, and nothing of it shown."""
    with pytest.raises(ConfigurationError, match="Percent-encode") as excinfo:
        connect(SecretStr(dsn))
    secret = dsn.split("rsolv:", 1)[1].rsplit("@", 1)[0]
    text = "".join(traceback.format_exception(excinfo.value))
    parts = [p for p in secret.replace("@", "/").split("/") if len(p) > 2]
    for part in (secret, *parts):
        assert part not in text


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://rsolv:Ab3%2FxYz9%2BQ%40@staging-pg:5433/rsolv",  # percent-encoded
        "postgresql://rsolv:a?b-c@staging-pg:5433/rsolv",  # libpq reads '?' right here
        "postgresql://rsolv:pw@staging-pg:5433/rsolv?application_name=ci@runner",
        "postgresql://staging-pg:5433/rsolv?user=rsolv&application_name=ci@runner",
    ],
)
def test_passwords_libpq_reads_right_are_accepted(dsn: str) -> None:
    """Percent-encoded passwords, and an '@' in the query, are read as written."""
    target = parse_target(SecretStr(dsn))
    assert (target.host, target.port, target.dbname, target.user) == (
        "staging-pg",
        5433,
        "rsolv",
        "rsolv",
    )


def test_failed_append_commits_nothing_and_keeps_the_data(
    staging_database: PostgresDatabase, production_model: Database
) -> None:
    """An append whose ids collide (no offsets) fails on the primary key: a DataError, and
    the tables are exactly as before."""
    dsn = SecretStr(staging_database.dsn)
    plan = make_plan(seed=1, scale=0.01, as_of=AS_OF)
    create_schema.fn(dsn, production_model)
    copy_rows.fn(dsn, production_model, plan, mode="truncate")
    before = checksum_tables.fn(dsn)
    with pytest.raises(DataError, match="nothing was committed") as excinfo:
        copy_rows.fn(dsn, production_model, plan, mode="append")
    assert "duplicate key" in str(excinfo.value)
    assert checksum_tables.fn(dsn) == before


def test_generation_failure_mid_load_rolls_back(
    staging_database: PostgresDatabase, production_model: Database
) -> None:
    """The producer thread fails after one block was loaded: the error reaches the caller
    and the caller's transaction leaves the table empty."""
    create_schema.fn(SecretStr(staging_database.dsn), production_model)
    columns = column_names("email_subscribers")

    def blocks() -> Iterator[Block]:
        yield Block(
            "email_subscribers",
            columns,
            1,
            b"1\ta@example.com\t\\N\tlanding\tpending\t2025-01-01 00:00:00+00\t\\N\t\\N\n",
        )
        raise RuntimeError("generator bug")

    with psycopg.connect(staging_database.dsn) as conn:
        with pytest.raises(RuntimeError, match="generator bug"), conn.transaction():
            copy_blocks(conn, blocks())
        assert conn.execute("SELECT count(*) FROM email_subscribers").fetchone() == (0,)


def test_second_concurrent_load_is_refused(
    staging_database: PostgresDatabase, production_model: Database
) -> None:
    """While a load holds the database's load lock, another fails fast and writes nothing."""
    dsn = SecretStr(staging_database.dsn)
    create_schema.fn(dsn, production_model)
    plan = make_plan(seed=1, scale=0.001, as_of=AS_OF)
    with psycopg.connect(staging_database.dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (postgres._LOAD_LOCK_KEY,))
        with pytest.raises(DataError, match="another synthetic-data load"):
            copy_rows.fn(dsn, production_model, plan, mode="truncate")
    assert checksum_tables.fn(dsn, ["organizations"])["organizations"].rows == 0


def test_schema_drift_is_reported_before_any_row_is_loaded(
    staging_database: PostgresDatabase, production_model: Database
) -> None:
    """A target whose users table differs from the model (an app migration the models
    lack, a hand edit) is refused with each difference named, and keeps its schema: the
    tables that were missing are not left created."""
    with psycopg.connect(staging_database.dsn) as conn:
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL)")
    dsn = SecretStr(staging_database.dsn)
    with pytest.raises(DataError) as created:
        create_schema.fn(dsn, production_model)
    with pytest.raises(DataError) as verified:
        verify_schema.fn(dsn)
    for message in (str(created.value), str(verified.value)):
        assert "table users: column full_name missing" in message
        assert "table users: column email is TEXT, expected VARCHAR(320)" in message
        assert "foreign key fk_users_organization_id_organizations" in message
    with psycopg.connect(staging_database.dsn) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert [name for (name,) in tables] == ["users"]


def test_deferred_keys_and_indexes_come_back_with_their_names(
    staging_database: PostgresDatabase, production_model: Database
) -> None:
    """Dropping keys, indexes and foreign keys for a load and restoring them leaves the
    catalog as it was: same constraint and index names and definitions."""
    create_schema.fn(SecretStr(staging_database.dsn), production_model)
    catalog = (
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace "
        "UNION ALL SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "ORDER BY 1, 2"
    )
    with psycopg.connect(staging_database.dsn) as conn:
        before = conn.execute(catalog).fetchall()
        with conn.transaction():
            deferred = postgres.defer_ddl(conn, TABLE_NAMES)
            assert conn.execute(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'"
            ).fetchone() == (0,)
            restore = functools.partial(postgres.restore_table_ddl, conn, deferred)
            restore("users")
            postgres.restore_ddl(conn, deferred)
        assert conn.execute(catalog).fetchall() == before
