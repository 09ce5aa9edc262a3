"""Staging's deploys act as provisioning's staging-deployer, and RBAC alone keeps it out
of production (issue 18, row 5): the emulator authorizes every request as kube-apiserver."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.deploy import deploy
from kube_emulator import KINDS, KubeEmulator
from rsolv_staging.deployments import DeployFailed
from rsolv_staging.exceptions import PermissionDenied
from rsolv_staging.images import parse_image
from rsolv_staging.provisioning import object_key
from rsolv_staging.settings import Settings, load_settings, load_topology
from tasks.kube import apply_objects, prune_objects, read_objects
from tasks.manifests import DEPLOYMENTS, render_overlay
from tests.plugins.kube import staging_deployer_kubeconfig
from tests.plugins.releases import API, app_config_map, images, running_images

DEPLOYER = "system:serviceaccount:staging:staging-deployer"
OLD = "sha256:" + "0" * 64
GOOD = "sha256:" + "1" * 64
BAD = "sha256:" + "2" * 64


@pytest.fixture
def cluster(
    kube: KubeEmulator,
    kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api: None,
    tmp_path: Path,
) -> KubeEmulator:
    """Production runs OLD (applied by the admin, the bootstrap identity); staging exists
    with provisioning's staging-deployer, which is staging's identity (its kubeconfig in
    RSOLV_STAGING_KUBECONFIG); KUBECONFIG stays the admin's."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("RSOLV_KUBE_RETRY_DELAY_SECONDS", "0.05")
    for ns in ("staging", "production"):
        kube.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    production = render_overlay.fn(
        "production", images={a: parse_image(r) for a, r in images(OLD).items()}
    )
    apply_objects.fn(production, cluster=load_topology().production.cluster, settings=Settings())
    deployer = staging_deployer_kubeconfig(kube, tmp_path / "staging-deployer")
    monkeypatch.setenv("RSOLV_STAGING_KUBECONFIG", str(deployer))
    return kube


def versions(kube: KubeEmulator, namespace: str) -> dict[str, str]:
    """Every object in ``namespace``, of every kind served, with its resourceVersion."""
    return {
        object_key(obj): obj["metadata"]["resourceVersion"]
        for kind in KINDS
        if kind.namespaced
        for obj in kube.list(kind.kind, namespace)
    }


def test_staging_deployer_does_a_whole_staging_deploy(cluster: KubeEmulator) -> None:
    """A deploy that creates, prunes, then a failing one that is rolled back: every request
    made as staging-deployer, none refused, so its Role grants all a deploy needs."""
    cluster.seed(app_config_map("retired-config", "staging"))
    cluster.clear_log()
    report = deploy(images=images(GOOD), run_smoke_tests=False)
    assert report.result == "succeeded"
    assert report.pruned == ["ConfigMap/staging/retired-config"]
    cluster.set_workload_behaviour("never-ready", image=f"{API}@{BAD}")
    with pytest.raises(DeployFailed, match="rolled back"):
        deploy(images={"rsolv-api": f"{API}@{BAD}"}, rollout_deadline_seconds=2)
    assert running_images(cluster, "staging")["rsolv-api"] == f"{API}@{GOOD}"
    requests = cluster.requests()
    assert {r.user for r in requests} == {DEPLOYER}
    assert [(r.method, r.path) for r in requests if r.status in (401, 403)] == []
    methods = {(r.method, r.query.get("watch")) for r in requests}
    assert {("PATCH", None), ("DELETE", None), ("GET", "true")} <= methods


def test_a_staging_flow_given_production_gets_403_from_the_api_server_not_our_guard(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    """Issue 18 row 5 with every check of ours bypassed: production's overlay handed over
    as staging's, applied by the deploy's own tasks with staging's identity. The API server
    refuses each object 403 for lack of the right, and production is unchanged."""
    tree = tmp_path / "deployments"
    shutil.copytree(DEPLOYMENTS, tree)
    shutil.rmtree(tree / "overlays" / "staging")
    shutil.copytree(DEPLOYMENTS / "overlays" / "production", tree / "overlays" / "staging")
    refs = {a: parse_image(r) for a, r in images(GOOD).items()}
    objects = render_overlay.fn("staging", images=refs, root=tree)
    assert {o["metadata"]["namespace"] for o in objects} == {"production"}
    staging = load_topology().staging
    settings = load_settings().for_environment("staging")
    before, store_version = versions(cluster, "production"), cluster.store.resource_version
    cluster.clear_log()

    for obj in objects:
        with pytest.raises(PermissionDenied) as refused:
            apply_objects.fn([obj], cluster=staging.cluster, settings=settings)
        group, _, _ = obj["apiVersion"].rpartition("/")
        plural = next(k.plural for k in KINDS if k.kind == obj["kind"])
        assert (
            f'User "{DEPLOYER}" cannot patch resource "{plural}" in API group "{group}" in '
            'the namespace "production"'
        ) in str(refused.value)
    with pytest.raises(PermissionDenied, match=f'User "{DEPLOYER}" cannot get resource'):
        read_objects.fn(objects, cluster=staging.cluster, settings=settings)
    with pytest.raises(PermissionDenied, match='cannot list resource "configmaps"'):
        prune_objects.fn(
            [],
            namespace="production",
            cluster=staging.cluster,
            settings=settings,
            only=[object_key(o) for o in objects],
        )

    requests = [r for r in cluster.requests() if r.method != "GET" or "/namespaces/" in r.path]
    assert {r.user for r in requests} == {DEPLOYER}
    assert {r.status for r in requests} == {403}
    assert len([r for r in requests if r.method == "PATCH"]) == len(objects)
    assert versions(cluster, "production") == before
    assert cluster.store.resource_version == store_version
