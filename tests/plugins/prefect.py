"""One Prefect API for the whole session: a real server, started once (it costs ~10 s)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real Prefect API server with a throwaway database, shared by the session."""
    with pytest.MonkeyPatch.context() as mp:
        # The server's telemetry heartbeat only adds noise (and sqlite lock errors) here.
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with prefect_test_harness(server_startup_timeout=60):
            yield
