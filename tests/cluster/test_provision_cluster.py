"""Provisioning against a REAL cluster (opt-in: ``pytest -m cluster --with-cluster``).

The same scenarios as tests/test_provision.py, against the API server ``KUBECONFIG``
names (k3s under k3d in .github/workflows/cluster-e2e.yml). They create the staging
namespaces on that cluster, so never point them at a cluster you care about.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest
from kubernetes import client, config

from flows.provision import provision_staging
from rsolv_staging.environments import default_topology
from rsolv_staging.exceptions import SecretError

pytestmark = pytest.mark.cluster
TOPOLOGY = default_topology()


@pytest.fixture(scope="module")
def core() -> client.CoreV1Api:
    """The official client on the cluster under test, with staging wiped first."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig or not Path(kubeconfig).exists():
        pytest.fail("--with-cluster needs KUBECONFIG naming a kubeconfig file")
    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    for ns in TOPOLOGY.staging.namespaces:
        try:
            api.delete_namespace(ns)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
    deadline = time.monotonic() + 180
    names = set(TOPOLOGY.staging.namespaces)
    while names & {n.metadata.name for n in api.list_namespace().items}:
        if time.monotonic() > deadline:
            pytest.fail("staging namespaces did not terminate within 180 s")
        time.sleep(2)
    return api


@pytest.fixture
def real_cluster(
    core: client.CoreV1Api, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> client.CoreV1Api:
    monkeypatch.setenv("RSOLV_KUBE_RETRY_DELAY_SECONDS", "0.5")
    return core


def test_provision_then_rerun_changes_nothing(
    real_cluster: client.CoreV1Api, secret_values: dict[str, str]
) -> None:
    """A fresh cluster gets every object; a second run and a dry run report no change."""
    first = provision_staging()
    assert first.changed == 0
    assert first.created == len(first.changes)
    ns = real_cluster.read_namespace("staging")
    assert ns.metadata.labels["rsolv.dev/environment"] == "staging"
    quota = real_cluster.read_namespaced_resource_quota("staging-quota", "staging")
    assert quota.spec.hard["limits.memory"] == "4Gi"
    secret = real_cluster.read_namespaced_secret("staging-database", "staging")
    assert (
        base64.b64decode(secret.data["password"]).decode()
        == secret_values["staging-database-password"]
    )

    second = provision_staging()
    assert (second.created, second.changed) == (0, 0), [
        c.key for c in second.changes if c.action != "unchanged"
    ]
    preview = provision_staging(dry_run=True)
    assert (preview.created, preview.changed) == (0, 0), [
        c.diff for c in preview.changes if c.action != "unchanged"
    ]


def test_reused_production_secret_is_refused(
    real_cluster: client.CoreV1Api, secret_values: dict[str, str]
) -> None:
    """A staging password equal to production's stops the run; staging keeps its own."""
    provision_staging()
    before = real_cluster.read_namespaced_secret("staging-database", "staging")
    try:
        real_cluster.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name="production"))
        )
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="prod-database"),
        string_data={"password": secret_values["staging-database-password"]},
    )
    real_cluster.create_namespaced_secret("production", body)
    try:
        with pytest.raises(SecretError, match="staging-database/password"):
            provision_staging()
        after = real_cluster.read_namespaced_secret("staging-database", "staging")
        assert after.metadata.resource_version == before.metadata.resource_version
    finally:
        real_cluster.delete_namespaced_secret("prod-database", "production")
