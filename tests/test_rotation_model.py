"""The rotation's decisions (rsolv_staging/rotation.py), without any server."""

from __future__ import annotations

import string
from typing import Any

import pytest

from rsolv_staging.environments import default_topology
from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.rotation import (
    RESTART_ANNOTATION,
    chosen_specs,
    consumers,
    generate_like,
    next_login,
)

TOPOLOGY = default_topology()


@pytest.mark.parametrize(
    ("current", "alphabet"),
    [
        ("0123456789abcdef" * 2, "0123456789abcdef"),
        ("Ab-_" * 8, string.ascii_letters + string.digits + "-_"),
        ("AbC123" * 5, string.ascii_letters + string.digits),
    ],
    ids=["hex", "urlsafe", "alnum"],  # alnum: no '-' or '_' in the successor either
)
def test_a_new_value_keeps_the_shape_and_length_of_the_current_one(
    current: str, alphabet: str
) -> None:
    """Hex stays hex, URL-safe stays URL-safe: a consumer that parses the value still can."""
    new = generate_like(current)
    assert len(new) == len(current)
    assert set(new) <= set(alphabet)
    assert new != current


def test_a_short_current_value_gets_a_successor_of_at_least_24_characters() -> None:
    """Rotation never weakens a secret: the floor is 24 characters."""
    assert len(generate_like("abc")) == 24
    assert len(generate_like(None)) == 24


def _deployment(name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> Any:
    meta: dict[str, Any] = {"annotations": annotations} if annotations else {}
    return {
        "metadata": {"name": name, "namespace": "staging"},
        "spec": {"template": {"metadata": meta, "spec": spec}},
    }


def test_consumers_are_every_way_a_pod_spec_can_read_a_secret() -> None:
    """env secretKeyRef, envFrom, secret volumes, projected volumes and init containers;
    a Deployment reading another Secret is no consumer."""
    secret = "staging-oauth"
    deployments = [
        _deployment(
            "env",
            {
                "containers": [
                    {
                        "name": "a",
                        "env": [
                            {
                                "name": "X",
                                "valueFrom": {"secretKeyRef": {"name": secret, "key": "client-id"}},
                            }
                        ],
                    }
                ]
            },
        ),
        _deployment(
            "init",
            {
                "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": secret}}]}],
                "containers": [{"name": "a"}],
            },
        ),
        _deployment(
            "volume",
            {
                "containers": [{"name": "a"}],
                "volumes": [{"name": "v", "secret": {"secretName": secret}}],
            },
            {RESTART_ANNOTATION: "t0"},
        ),
        _deployment(
            "projected",
            {
                "containers": [{"name": "a"}],
                "volumes": [
                    {"name": "p", "projected": {"sources": [{"secret": {"name": secret}}]}}
                ],
            },
        ),
        _deployment(
            "other",
            {
                "containers": [
                    {"name": "a", "envFrom": [{"secretRef": {"name": "staging-payment"}}]}
                ]
            },
        ),
    ]
    found = {c.name: c for c in consumers(deployments, secret)}
    assert set(found) == {"env", "init", "volume", "projected"}
    assert found["env"].references == ["a: env X (key client-id)"]
    assert found["volume"].restarted_at == "t0"
    assert found["init"].restarted_at is None


def test_the_logins_alternate_and_a_login_outside_the_pair_is_refused() -> None:
    """blue -> green -> blue; anything else means the pair was never set up."""
    assert next_login("rsolv_blue", "rsolv") == "rsolv_green"
    assert next_login("rsolv_green", "rsolv") == "rsolv_blue"
    with pytest.raises(ConfigurationError, match="blue/green pair"):
        next_login("postgres", "rsolv")


def test_only_staging_secrets_of_the_model_can_be_chosen() -> None:
    """No name means every staging secret; a production name or an unknown one is refused."""
    assert [s.name for s in chosen_specs(TOPOLOGY, None)] == [s.name for s in TOPOLOGY.secrets]
    assert [s.name for s in chosen_specs(TOPOLOGY, ["staging-payment"])] == ["payment"]
    with pytest.raises(ConfigurationError, match="production secret"):
        chosen_specs(TOPOLOGY, ["prod-payment"])
    with pytest.raises(ConfigurationError, match="not a staging secret"):
        chosen_specs(TOPOLOGY, ["payment"])
