"""The provision flow against the Kubernetes API emulator (real HTTP) and a real Prefect API."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from flows.provision import ARTIFACT_KEY, ProvisionReport, provision_staging
from kube_emulator import KubeEmulator
from rsolv_staging.environments import default_topology, topology_from_mapping
from rsolv_staging.exceptions import GuardError, PermissionDenied, SecretError
from rsolv_staging.guards import ensure_confined
from rsolv_staging.provisioning import database, object_key, staging_objects
from rsolv_staging.settings import Settings
from tasks.kube import apply_objects, retrying
from tasks.manifests import DEPLOYMENTS, render
from tasks.secrets import secret_env_var
from tests.plugins.releases import latest_artifact

TOPOLOGY = default_topology()
# The staging monitoring stack (deployments/monitoring), as the provision flow applies it.
MONITORING_KEYS = {
    object_key(obj) for obj in render(DEPLOYMENTS / "monitoring" / "overlays" / "staging")
}
EXPECTED_KEYS = (
    {"Ingress/staging/rsolv"}
    | MONITORING_KEYS
    | {
        object_key(obj)
        for obj in staging_objects(
            TOPOLOGY,
            {
                TOPOLOGY.staging.secret_name(s): {k: "x" for k in s.data_keys}
                for s in TOPOLOGY.secrets
            },
        )
    }
)


@pytest.fixture
def cluster(
    kube: KubeEmulator, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> KubeEmulator:
    """The emulator as the current kube context, with fast retries for the tests."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("RSOLV_KUBE_RETRY_DELAY_SECONDS", "0.05")
    monkeypatch.setenv("RSOLV_KUBE_MAX_RETRY_AFTER_SECONDS", "2")
    return kube


def _state(kube: KubeEmulator) -> dict[str, Any]:
    """Every object the project owns, minus what the server generates, for comparisons."""
    out = {}
    for kind in (
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ResourceQuota",
        "LimitRange",
        "NetworkPolicy",
        "Secret",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Service",
        "Deployment",
        "StatefulSet",
        "Ingress",
    ):
        for obj in kube.list(kind):
            meta = obj["metadata"]
            if meta.get("labels", {}).get("app.kubernetes.io/managed-by") != "rsolv-staging":
                continue
            body = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
            out[object_key(obj)] = {"labels": meta.get("labels"), **body}
    return out


def test_provision_creates_every_object_from_the_model(
    cluster: KubeEmulator, secret_values: dict[str, str]
) -> None:
    """A first run creates each RFC object with the model's values and reports it."""
    report = provision_staging()

    assert isinstance(report, ProvisionReport)
    assert {c.key for c in report.changes if c.action == "create"} == EXPECTED_KEYS
    assert (report.created, report.changed, report.unchanged) == (len(EXPECTED_KEYS), 0, 0)
    assert set(_state(cluster)) == EXPECTED_KEYS

    ns = cluster.get("v1", "Namespace", "staging")
    assert ns is not None
    assert ns["metadata"]["labels"]["rsolv.dev/environment"] == "staging"
    quota = cluster.get("v1", "ResourceQuota", "staging-quota", "staging")
    assert quota is not None
    assert quota["spec"]["hard"]["limits.memory"] == "4Gi"  # half of production's 8Gi
    limits = cluster.get("v1", "LimitRange", "staging-limits", "staging")
    assert limits is not None
    assert limits["spec"]["limits"][0]["default"] == {"cpu": "250m", "memory": "512Mi"}
    db = cluster.get("apps/v1", "StatefulSet", "staging-postgres", "staging")
    assert db is not None
    container = db["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    # No replicas, no PITR on staging: the sync's copy and index builds skip the WAL
    # (the sandbox and the sync benchmark run a real server with the same WAL arguments);
    # memory sized to the container's 1Gi limit, not the image's defaults.
    assert container["args"] == [
        "-c",
        "wal_level=minimal",
        "-c",
        "max_wal_senders=0",
        "-c",
        "shared_buffers=256MB",
        "-c",
        "effective_cache_size=768MB",
    ]
    ingress = cluster.get("networking.k8s.io/v1", "Ingress", "rsolv", "staging")
    assert ingress is not None
    assert [r["host"] for r in ingress["spec"]["rules"]] == [
        "rsolv-staging.com",
        "api.rsolv-staging.com",
    ]
    assert "cert-manager.io/cluster-issuer" in ingress["metadata"]["annotations"]
    password = cluster.get("v1", "Secret", "staging-database", "staging")
    assert password is not None
    assert (
        base64.b64decode(password["data"]["password"]).decode()
        == secret_values["staging-database-password"]
    )


def test_network_policies_keep_other_namespaces_out(
    cluster: KubeEmulator, secret_values: dict[str, str]
) -> None:
    """Only the same namespace, the ingress controller and staging monitoring get in."""
    provision_staging()
    sources: set[str] = set()
    for policy in cluster.list("NetworkPolicy", "staging"):
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                selector = peer.get("namespaceSelector", {}).get("matchLabels", {})
                sources.add(selector.get("kubernetes.io/metadata.name", "<same namespace>"))
    assert sources == {"<same namespace>", "kube-system", "staging-monitoring"}
    deny = cluster.get(
        "networking.k8s.io/v1", "NetworkPolicy", "default-deny-cross-namespace", "staging"
    )
    assert deny is not None
    # Every pod: nothing in, and out only DNS to CoreDNS's pods; the internet is the apps'.
    assert not deny["spec"].get("ingress")
    assert [rule["ports"] for rule in deny["spec"]["egress"]] == [
        [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    ]
    apps = cluster.get("networking.k8s.io/v1", "NetworkPolicy", "allow-apps", "staging")
    assert apps is not None
    assert apps["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "rsolv"}}
    internet = [
        (peer["ipBlock"], rule["ports"])
        for rule in apps["spec"]["egress"]
        for peer in rule["to"]
        if "ipBlock" in peer
    ]
    cut = ["10.42.0.0/16", "10.43.0.0/16", "169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12"]
    assert internet == [
        (
            {"cidr": "0.0.0.0/0", "except": [*cut, "192.168.0.0/16", "100.64.0.0/10"]},
            [{"protocol": "TCP", "port": 443}],
        )
    ]


def test_second_run_changes_nothing_and_says_so(
    cluster: KubeEmulator, secret_values: dict[str, str]
) -> None:
    """Re-running reports 0 created / 0 changed and leaves every resourceVersion as it was."""
    provision_staging()
    versions = {
        object_key(o): o["metadata"]["resourceVersion"] for o in cluster.list("Secret", "staging")
    }
    report = provision_staging()
    assert (report.created, report.changed, report.unchanged) == (0, 0, len(EXPECTED_KEYS))
    assert versions == {
        object_key(o): o["metadata"]["resourceVersion"] for o in cluster.list("Secret", "staging")
    }


# Fields and policies this hardening added (issue 19): what an older provision lacked.
_NEW_POD_FIELDS = ("securityContext", "automountServiceAccountToken")
_NEW_CONTAINER_FIELDS = ("securityContext", "livenessProbe")
_NEW_POLICIES = {"allow-apps", "allow-database-clients", "allow-data-sync"}


def _old_variant(obj: dict[str, Any]) -> dict[str, Any] | None:
    """``obj`` as the provision before the hardening built it (None: it did not exist)."""
    old = copy.deepcopy(obj)
    meta = old["metadata"]
    meta.pop("annotations", None)
    meta["labels"] = {
        k: v for k, v in meta.get("labels", {}).items() if not k.startswith("pod-security.")
    }
    if old["kind"] == "NetworkPolicy":
        if meta["name"] in _NEW_POLICIES:
            return None
        # Wider, as the old rules were: any port, any pod of a peer namespace.
        for way in ("ingress", "egress"):
            for rule in old["spec"].get(way) or []:
                rule.pop("ports", None)
        if not old["spec"].get("ingress") and "Ingress" in old["spec"]["policyTypes"]:
            old["spec"]["ingress"] = [{"from": [{"podSelector": {}}]}]
    template = old.get("spec", {}).get("template", {}).get("spec")
    if template:
        for key in _NEW_POD_FIELDS:
            template.pop(key, None)
        for container in template["containers"]:
            container["image"] = container["image"].split("@")[0].replace(":15.14", ":15")
            for key in _NEW_CONTAINER_FIELDS:
                container.pop(key, None)
            for variable in container.get("env", []):
                if variable["name"] == "POSTGRES_PASSWORD_FILE":  # was the plain variable
                    variable.clear()
                    variable["name"] = "POSTGRES_PASSWORD"
                    ref = {"name": "staging-database", "key": "password"}
                    variable["valueFrom"] = {"secretKeyRef": ref}
    return old


def test_provision_upgrades_the_objects_of_an_older_provision_in_place(
    cluster: KubeEmulator, secret_values: dict[str, str]
) -> None:
    """Over the old objects (no PSA labels, securityContexts or narrow policies), the first
    run changes them to today's, removing what is no longer there; the second changes nothing.
    """
    env = TOPOLOGY.staging
    values = {
        env.secret_name(s): {k: secret_values[f"{env.secret_name(s)}-{k}"] for k in s.data_keys}
        for s in TOPOLOGY.secrets
    }
    current = [
        *staging_objects(TOPOLOGY, values),
        *render(DEPLOYMENTS / "monitoring" / "overlays" / "staging"),
    ]
    old = [o for o in (_old_variant(obj) for obj in current) if o is not None]

    @flow
    def apply_old() -> object:
        return apply_objects(old, cluster=env.cluster, settings=Settings())

    apply_old()
    first = provision_staging()
    assert first.changed > 0
    second = provision_staging()
    assert (second.created, second.changed, second.unchanged) == (0, 0, len(EXPECTED_KEYS))
    namespace = cluster.get("v1", "Namespace", "staging")
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    deny = cluster.get(
        "networking.k8s.io/v1", "NetworkPolicy", "default-deny-cross-namespace", "staging"
    )
    assert deny is not None
    assert not deny["spec"].get("ingress")  # the old same-namespace rule is gone
    postgres = cluster.get("apps/v1", "StatefulSet", env.database.service, "staging")
    assert postgres is not None
    pod = postgres["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == env.database.image
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "livenessProbe" in container
    assert "POSTGRES_PASSWORD" not in {e["name"] for e in container["env"]}


def test_report_artifact_lists_objects_and_never_a_secret_value(
    cluster: KubeEmulator, secret_values: dict[str, str]
) -> None:
    """The run's markdown artifact names every object and contains no credential."""
    provision_staging()
    markdown = latest_artifact(ARTIFACT_KEY)
    assert f"{len(EXPECTED_KEYS)} created, 0 changed, 0 unchanged" in markdown
    for key in EXPECTED_KEYS:
        assert key in markdown
    for value in secret_values.values():
        assert value not in markdown
        assert base64.b64encode(value.encode()).decode() not in markdown


def test_changed_model_value_is_reported_as_a_change_with_a_diff(
    cluster: KubeEmulator, secret_values: dict[str, str], tmp_path: Path
) -> None:
    """Changing production's size changes staging's quota, and the run shows the diff."""
    provision_staging()
    model = tmp_path / "environments.yaml"
    model.write_text("production:\n  quota: {limits_memory: 16Gi}\n")
    report = provision_staging(environments_file=str(model))
    changed = [c for c in report.changes if c.action == "change"]
    assert [c.key for c in changed] == ["ResourceQuota/staging/staging-quota"]
    assert "-    limits.memory: 4Gi" in changed[0].diff
    assert "+    limits.memory: 8Gi" in changed[0].diff


def test_dry_run_writes_nothing_and_previews_changes(
    cluster: KubeEmulator, secret_values: dict[str, str], tmp_path: Path
) -> None:
    """dry_run on a provisioned cluster previews a change through the server and stores nothing."""
    provision_staging()
    before = _state(cluster)
    cluster.clear_log()
    model = tmp_path / "environments.yaml"
    model.write_text("production:\n  app_resources: {cpu: '1'}\n")
    report = provision_staging(dry_run=True, environments_file=str(model))
    assert report.dry_run
    assert [c.key for c in report.changes if c.action == "change"] == [
        "LimitRange/staging/staging-limits"
    ]
    assert _state(cluster) == before
    assert all(r.dry_run for r in cluster.writes())


def test_run_through_transient_faults_ends_like_a_clean_run(
    cluster: KubeEmulator, secret_values: dict[str, str], tmp_path: Path
) -> None:
    """Three 503s, a 429 with Retry-After and a dropped connection: same state as a clean run."""
    with KubeEmulator() as clean, pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(clean.write_kubeconfig(tmp_path / "clean-kubeconfig")))
        provision_staging()
        clean_state = _state(clean)

    cluster.inject_faults(503, count=3, only_writes=True)
    cluster.inject_faults(429, count=1, retry_after=1, only_writes=True)
    cluster.inject_faults("drop", count=1, only_writes=True)
    report = provision_staging()

    assert _state(cluster) == clean_state
    assert report.created == len(EXPECTED_KEYS)
    statuses = [r.status for r in cluster.requests() if r.is_write]
    assert statuses.count(503) == 3
    assert statuses.count(429) == 1


def test_missing_secret_fails_before_any_write(
    cluster: KubeEmulator, secret_values: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a staging secret the run fails naming it, and the API sees no write at all."""
    monkeypatch.delenv(secret_env_var("staging-oauth-client-secret"))
    with pytest.raises(SecretError, match="staging-oauth-client-secret"):
        provision_staging()
    assert cluster.writes() == []


@pytest.mark.parametrize(
    ("staging", "production", "namespace"),
    [
        ("database/password", "database/password", "production"),
        # Production keeps Grafana's credentials with its monitoring stack, not its apps.
        ("monitoring/grafana-admin-password", "monitoring/grafana-admin-password", "monitoring"),
        # Another credential of production's is shared all the same.
        ("oauth/client-secret", "payment/api-key", "production"),
    ],
)
def test_staging_secret_equal_to_production_fails_before_any_write(
    cluster: KubeEmulator,
    secret_values: dict[str, str],
    staging: str,
    production: str,
    namespace: str,
) -> None:
    """A staging credential equal to one of production's, wherever production keeps it,
    is refused (by fingerprint), nothing written."""
    reused = secret_values["staging-" + staging.replace("/", "-")]
    secret, key = production.split("/")
    cluster.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    cluster.seed(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"prod-{secret}", "namespace": namespace},
            "data": {key: base64.b64encode(reused.encode()).decode()},
        }
    )
    cluster.clear_log()
    with pytest.raises(SecretError, match=f"staging-{staging} equals prod-{production}") as err:
        provision_staging()
    assert reused not in str(err.value)
    assert cluster.writes() == []


def test_rbac_denial_fails_fast_naming_the_permission(
    kube: KubeEmulator, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    """A 403 is not retried and says which verb on which resource is missing."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    kube.deny("patch", "networkpolicies", namespace="staging")
    objects = staging_objects(
        TOPOLOGY,
        {TOPOLOGY.staging.secret_name(s): {k: "v" for k in s.data_keys} for s in TOPOLOGY.secrets},
    )

    @flow
    def apply_with_the_retry_policy() -> object:
        # The provision flow's own policy: 6 retries, but only for transient failures.
        return retrying(apply_objects, Settings())(
            objects, cluster=TOPOLOGY.staging.cluster, settings=Settings()
        )

    with pytest.raises(PermissionDenied, match=r"patch NetworkPolicy/staging/default-deny") as err:
        apply_with_the_retry_policy()
    assert "cannot patch resource" in str(err.value)
    assert [r.status for r in kube.requests() if r.is_write].count(403) == 1


def test_guard_refuses_objects_aimed_at_production() -> None:
    """An object in the production namespace, or naming a prod- secret or domain, is refused."""
    bad = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "production"},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "staging"},
            "spec": {"tls": [{"hosts": ["api.rsolv.dev"], "secretName": "prod-tls"}]},
        },
    ]
    bad.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "app", "namespace": "staging"},
            "data": {"DATABASE_URL": "postgres://app:hunter2@postgres.production:5432/rsolv"},
        }
    )
    with pytest.raises(GuardError) as err:
        ensure_confined(bad, TOPOLOGY.staging, TOPOLOGY.production)
    message = str(err.value)
    assert "ConfigMap/production/x is in namespace 'production'" in message
    assert "routes production domain 'api.rsolv.dev'" in message
    assert "references production secret 'prod-tls'" in message
    assert "ConfigMap/staging/app points at production host 'postgres.production'" in message
    assert "hunter2" not in message


def test_staging_postgres_memory_follows_its_derived_limit() -> None:
    """A bigger production database gives staging half of it, and staging's PostgreSQL
    sizes its buffers to that limit (a quarter shared, three quarters cache estimate)."""
    topology = topology_from_mapping(
        {"production": {"database": {"resources": {"replicas": 1, "cpu": "2", "memory": "6Gi"}}}}
    )
    statefulset = next(m for m in database(topology) if m["kind"] == "StatefulSet")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "3Gi"
    args = dict(a.split("=", 1) for a in container["args"][1::2])
    assert args["shared_buffers"] == "768MB"
    assert args["effective_cache_size"] == "2304MB"
    assert args["wal_level"] == "minimal"
