"""One Prefect API for the whole session: a real server, started once (it costs ~10 s).

The server keeps its state in a PostgreSQL server of its own, not in SQLite as
``prefect_test_harness`` does: under the suite's concurrent writers (a subflow's parent
task run racing the task-run recorder, log and event workers) SQLite answered
``SQLITE_BUSY`` with a 503, and the client slept 2 s before each retry (about 35 of them
in a full run). PostgreSQL is also what Prefect recommends for a server in production.
Otherwise this is the harness: a subprocess API server on a free port, the client's
settings pointed at it for the session, the log and event workers drained before stop.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import ExitStack

import prefect.context
import pytest
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
    temporary_settings,
)
from prefect.utilities.asyncutils import run_coro_as_sync

from sandbox.postgres import PostgresFactory


@pytest.fixture(scope="session")
def prefect_api(postgres_factory: PostgresFactory) -> Iterator[None]:
    """A real Prefect API server on its own PostgreSQL, shared by the session."""
    server = postgres_factory.start("prefect")
    database = server.create_database("prefect")
    url = database.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    with ExitStack() as stack:
        stack.enter_context(
            temporary_settings(
                updates={
                    PREFECT_SERVER_DATABASE_CONNECTION_URL: url,
                    # The server's telemetry heartbeat only adds noise here.
                    PREFECT_SERVER_ANALYTICS_ENABLED: False,
                }
            )
        )
        api = SubprocessASGIServer()
        api.start(timeout=60)
        stack.callback(api.stop)
        stack.enter_context(
            temporary_settings(
                updates={
                    PREFECT_API_URL: api.api_url,
                    # A sync flow run's heartbeat thread sleeps in 1 s steps and the engine
                    # joins it at the end: about 1 s of every flow run (hundreds in the
                    # suite) spent waiting. Nothing here reads heartbeats; the sandbox
                    # and the subprocess runners keep Prefect's default.
                    "flows.heartbeat_frequency": None,
                }
            )
        )
        # Code running in a context copied before this fixture (threads the tests start)
        # must see the same server: expose these settings process-wide too.
        stack.enter_context(
            prefect.context._temporary_global_settings_context(
                prefect.context.get_settings_context()
            )
        )
        yield
        run_coro_as_sync(_drain_workers())


async def _drain_workers() -> None:
    """Flush queued logs and events before the server stops (else: connection errors)."""
    try:
        result = APILogWorker.instance().drain()
        if inspect.isawaitable(result):
            await result
    except RuntimeError:  # never started
        pass
    result = EventsWorker.drain_all()
    if inspect.isawaitable(result):
        await result
