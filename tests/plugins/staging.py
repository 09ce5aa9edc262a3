"""Fixtures shared by the provisioning tests, against the emulator or a real cluster."""

from __future__ import annotations

import secrets

import pytest

from rsolv_staging.environments import default_topology
from tasks.secrets import secret_env_var, source_name


@pytest.fixture
def secret_values(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fresh random staging credentials in the environment, as an operator would set them."""
    topology = default_topology()
    values = {}
    for spec in topology.secrets:
        for key in spec.data_keys:
            source = source_name(topology.staging.secret_name(spec), key)
            values[source] = secrets.token_urlsafe(16)
            monkeypatch.setenv(secret_env_var(source), values[source])
    return values
