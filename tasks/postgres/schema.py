"""The RSOLV schema on a target: :func:`create_schema`, :func:`describe_schema`,
:func:`verify_schema` (compared with the models of ``rsolv_staging.schema``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr
from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import DataError
from rsolv_staging.schema import (
    TABLE_NAMES,
    ForeignKeyShape,
    SchemaShape,
    TableShape,
    compare_schemas,
    describe_metadata,
    metadata,
    normalize_ondelete,
    type_name,
)
from tasks.postgres.connections import _error, _retrying, connect, connect_for_writing


def _engine(conn_factory: Callable[[], psycopg.Connection[Any]]) -> Any:
    # SQLAlchemy drives psycopg connections we open ourselves, so the DSN never reaches
    # SQLAlchemy's URL handling (which would print it on errors).
    return create_engine("postgresql+psycopg://", creator=conn_factory, poolclass=StaticPool)


@task(cache_policy=NO_CACHE, **_retrying)
def create_schema(dsn: SecretStr, production: Database) -> list[str]:
    """Create the RSOLV tables, enum and indexes that do not exist yet (idempotent), and
    check the whole schema against the models in the same transaction.

    A target whose existing tables differ from the models (an app migration the models
    lack, a hand edit) keeps its schema as it was: nothing is created.

    Args:
        dsn: The target database's DSN.
        production: Production's database in the environment model (refused).

    Returns:
        The tables that were created (empty when all existed).

    Raises:
        GuardError: the target is production's server.
        DataError: the DDL failed, or the schema differs (every difference listed).
    """
    created: list[str] = []
    with connect_for_writing(dsn, production) as conn:
        engine = _engine(lambda: conn)
        try:
            with engine.begin() as sa_conn:
                existing = set(inspect(sa_conn).get_table_names())
                metadata.create_all(sa_conn, checkfirst=True)
                created = [name for name in TABLE_NAMES if name not in existing]
                # Raised inside the transaction: the tables just created roll back.
                if problems := compare_schemas(describe_metadata(), _shape(sa_conn)):
                    raise _drift(problems)
        except (psycopg.Error, DBAPIError) as exc:
            failure = _error("creating the schema failed", exc, dsn)
        else:
            return created
        finally:
            engine.dispose(close=False)
    raise failure


def _reflect(conn: psycopg.Connection[Any]) -> SchemaShape:
    engine = _engine(lambda: conn)
    try:
        with engine.connect() as sa_conn:
            return _shape(sa_conn)
    finally:
        engine.dispose(close=False)


def _shape(sa_conn: Any) -> SchemaShape:
    """The schema as seen on ``sa_conn`` (a SQLAlchemy connection, in its transaction)."""
    inspector = inspect(sa_conn)
    tables: dict[str, TableShape] = {}
    for name in inspector.get_table_names():
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)}
        foreign_keys = {
            ForeignKeyShape(
                name=str(fk["name"]),
                columns=tuple(fk["constrained_columns"]),
                referred_table=fk["referred_table"],
                referred_columns=tuple(fk["referred_columns"]),
                ondelete=normalize_ondelete(fk.get("options", {}).get("ondelete")),
            )
            for fk in inspector.get_foreign_keys(name)
        }
        indexes = {
            (str(ix["name"]), tuple(str(c) for c in ix["column_names"]), bool(ix["unique"]))
            for ix in inspector.get_indexes(name)
            if not ix.get("duplicates_constraint")
        }
        tables[name] = TableShape(
            columns=tuple(
                (c["name"], type_name(c["type"]), bool(c["nullable"]))
                for c in inspector.get_columns(name)
            ),
            primary_key=tuple(inspector.get_pk_constraint(name)["constrained_columns"]),
            uniques=frozenset(uniques),
            foreign_keys=frozenset(foreign_keys),
            checks=frozenset(str(c["name"]) for c in inspector.get_check_constraints(name)),
            indexes=frozenset(indexes),
        )
    enums = {str(e["name"]): tuple(e["labels"]) for e in inspector.get_enums()}
    return SchemaShape(tables=tables, enums=enums)


@task(cache_policy=NO_CACHE, **_retrying)
def describe_schema(dsn: SecretStr) -> SchemaShape:
    """Reflect the live schema (tables, columns, keys, constraints, enums); read-only.

    Args:
        dsn: The database to describe (production is fine: nothing is written).

    Returns:
        The shape, comparable with ``rsolv_staging.schema.describe_metadata()``.
    """
    with connect(dsn) as conn:
        try:
            return _reflect(conn)
        except (psycopg.Error, DBAPIError) as exc:
            failure = _error("reading the schema failed", exc, dsn)
    raise failure


@task(cache_policy=NO_CACHE, **_retrying)
def verify_schema(dsn: SecretStr) -> None:
    """Check that the live schema is the one the models describe.

    Args:
        dsn: The database to check.

    Raises:
        DataError: the schema differs; the message lists every difference.
    """
    with connect(dsn) as conn:
        try:
            actual = _reflect(conn)
        except (psycopg.Error, DBAPIError) as exc:
            failure = _error("reading the schema failed", exc, dsn)
        else:
            problems = compare_schemas(describe_metadata(), actual)
            if not problems:
                return
            failure = _drift(problems)
    raise failure


def _drift(problems: Sequence[str]) -> DataError:
    return DataError(
        "the target's schema is not the RSOLV schema this project loads: " + "; ".join(problems)
    )
