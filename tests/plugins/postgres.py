"""Fixtures: two real PostgreSQL servers, production and staging, for the whole session.

The servers come from :mod:`sandbox.postgres` (see there for where the binaries come
from and how they run under root); these fixtures only own their lifetime.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.postgres import PostgresDatabase, PostgresFactory, PostgresServer

__all__ = ["PostgresDatabase", "PostgresFactory", "PostgresServer"]


@pytest.fixture(scope="session")
def postgres_factory() -> Iterator[PostgresFactory]:
    """Starts PostgreSQL servers for the session; stops them all at its end."""
    with PostgresFactory() as factory:
        yield factory


@pytest.fixture(scope="session")
def pg_production(postgres_factory: PostgresFactory) -> PostgresServer:
    """The server that plays production (tests point the environment model at it)."""
    return postgres_factory.start("production")


@pytest.fixture(scope="session")
def pg_staging(postgres_factory: PostgresFactory) -> PostgresServer:
    """A separate server that plays staging.

    Its time zone is not UTC on purpose: whatever reads or writes timestamps must not
    depend on the server's setting.
    """
    return postgres_factory.start("staging", {"timezone": "America/New_York"})


@pytest.fixture
def staging_database(pg_staging: PostgresServer) -> Iterator[PostgresDatabase]:
    """A fresh, empty database on the staging server, dropped after the test."""
    database = pg_staging.create_database("staging")
    yield database
    pg_staging.drop_database(database)


@pytest.fixture
def production_database(pg_production: PostgresServer) -> Iterator[PostgresDatabase]:
    """A fresh, empty database on the production server, dropped after the test."""
    database = pg_production.create_database("production")
    yield database
    pg_production.drop_database(database)
