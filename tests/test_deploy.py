"""The deploy flow against the Kubernetes API emulator and real HTTP smoke targets."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kubernetes import config, dynamic
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.concurrency.sync import concurrency

from flows.deploy import STAGING_LOCK, deploy
from kube_emulator import KubeEmulator
from kube_emulator.kinds import kind_named
from rsolv_staging.deployments import DeployFailed
from rsolv_staging.exceptions import ConfigurationError, GuardError, LockTimeout
from rsolv_staging.fields import applied_configuration
from tasks.manifests import DEPLOYMENTS
from tasks.prefect_api import ensure_concurrency_limit
from tests.plugins.http import Server
from tests.plugins.kube import staging_deployer_kubeconfig
from tests.plugins.releases import (
    API,
    LANDING,
    app_config_map,
    checks_file,
    images,
    latest_artifact,
    running_images,
)

PSA = "pod-security.kubernetes.io/enforce"
GOOD = "sha256:" + "1" * 64
BAD = "sha256:" + "2" * 64


@pytest.fixture
def staging(
    kube: KubeEmulator,
    kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api: None,
    tmp_path: Path,
) -> KubeEmulator:
    """The emulator as the current context (admin), with the staging namespace and
    provisioning's staging-deployer: every staging deploy here runs as that identity, so
    its Role must grant all a deploy does (apply, watch, roll back, prune)."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("RSOLV_KUBE_RETRY_DELAY_SECONDS", "0.05")
    kube.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "staging"}})
    deployer = staging_deployer_kubeconfig(kube, tmp_path / "staging-deployer")
    monkeypatch.setenv("RSOLV_STAGING_KUBECONFIG", str(deployer))
    return kube


def test_good_deploy_applies_waits_smoke_tests_and_records(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """A good deploy runs the exact digests, passes smoke tests and leaves a record."""
    report = deploy(
        images=images(GOOD),
        trigger="ci:push:abc123",
        smoke_checks_file=checks_file(tmp_path, app_server),
    )
    assert report.result == "succeeded"
    assert running_images(staging, "staging") == {
        "rsolv-api": f"{API}@{GOOD}",
        "rsolv-landing": f"{LANDING}@{GOOD}",
    }
    record = latest_artifact("deployments-staging")
    assert GOOD in record
    assert "ci:push:abc123" in record
    assert "succeeded" in record


def test_second_identical_deploy_changes_nothing(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """Deploying the same digests again leaves every object's resourceVersion alone."""
    checks = checks_file(tmp_path, app_server)
    deploy(images=images(GOOD), smoke_checks_file=checks)
    versions = {
        o["metadata"]["name"]: o["metadata"]["resourceVersion"]
        for o in staging.list("Deployment", "staging")
    }
    report = deploy(images=images(GOOD), smoke_checks_file=checks)
    assert {c.action for c in report.changes} == {"unchanged"}
    assert versions == {
        o["metadata"]["name"]: o["metadata"]["resourceVersion"]
        for o in staging.list("Deployment", "staging")
    }
    previous = {r.app: r.previous_digest for r in report.records}
    assert previous == {"rsolv-api": f"{API}@{GOOD}", "rsolv-landing": f"{LANDING}@{GOOD}"}


def test_never_ready_workload_is_rolled_back_within_the_deadline(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """A digest whose pods crash-loop is rolled back to the previous one, and the run says why."""
    checks = checks_file(tmp_path, app_server)
    deploy(images=images(GOOD), smoke_checks_file=checks)
    staging.set_workload_behaviour("never-ready", image=f"{API}@{BAD}")

    started = time.monotonic()
    with pytest.raises(DeployFailed) as err:
        deploy(
            images={"rsolv-api": f"{API}@{BAD}"},
            rollout_deadline_seconds=3,
            smoke_checks_file=checks,
        )
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert "rolled back" in message
    assert "CrashLoopBackOff" in message
    assert running_images(staging, "staging")["rsolv-api"] == f"{API}@{GOOD}"
    api = staging.get("apps/v1", "Deployment", "rsolv-api", "staging")
    assert api is not None
    assert api["status"]["availableReplicas"] == api["spec"]["replicas"]
    assert elapsed < 3 + 10, f"rollback took {elapsed:.1f}s"
    assert "rolled back" in latest_artifact("deployments-staging")


def test_failed_smoke_test_rolls_back(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """A critical smoke check failing after the rollout rolls back to the previous digest."""
    deploy(images=images(GOOD), smoke_checks_file=checks_file(tmp_path, app_server))
    with pytest.raises(DeployFailed, match="smoke tests failed"):
        deploy(
            images=images(BAD),
            smoke_checks_file=checks_file(tmp_path, app_server, path="/500"),
        )
    assert set(running_images(staging, "staging").values()) == {
        f"{API}@{GOOD}",
        f"{LANDING}@{GOOD}",
    }


def test_a_rollback_that_fails_halfway_says_what_it_put_back(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """A first deploy whose smoke tests fail deletes what it created; when a delete is
    refused halfway, the error lists the objects already deleted, not "nothing"."""
    staging.deny("delete", "services", "staging")  # the ConfigMap goes first, then Services
    with pytest.raises(DeployFailed) as err:
        deploy(images=images(BAD), smoke_checks_file=checks_file(tmp_path, app_server, path="/500"))
    message = str(err.value)
    assert "the rollback itself failed" in message
    undone = message.split("Undone: ", 1)[1]
    assert undone == "deleted ConfigMap/staging/rsolv-config (created by the failed run)"
    assert staging.get("v1", "ConfigMap", "rsolv-config", "staging") is None
    assert staging.get("v1", "Service", "rsolv-api", "staging") is not None
    records = json.loads(latest_artifact("deployments-staging"))
    assert {r["result"] for r in records} == {"failed"}
    assert all("Undone before the failure: deleted ConfigMap" in r["reason"] for r in records)


def test_rollback_gives_back_only_our_fields(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """Another field manager's annotation stays its own through a rollback: the rollback
    re-applies only what this project had applied, so the other manager can still
    remove its annotation afterwards, and our image is back."""
    checks = checks_file(tmp_path, app_server)
    deploy(images=images(GOOD), smoke_checks_file=checks)
    api = dynamic.DynamicClient(config.new_client_from_config(config_file=os.environ["KUBECONFIG"]))
    deployments = api.resources.get(api_version="apps/v1", kind="Deployment")

    def ops_applies(annotations: dict[str, str]) -> None:
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "rsolv-api", "namespace": "staging", "annotations": annotations},
        }
        deployments.server_side_apply(
            body=body, name="rsolv-api", namespace="staging", field_manager="ops"
        )

    def annotations() -> dict[str, str]:
        live = staging.get("apps/v1", "Deployment", "rsolv-api", "staging")
        assert live is not None
        return dict(live["metadata"].get("annotations") or {})

    ops_applies({"ops.example/owner": "platform"})
    with pytest.raises(DeployFailed, match="rolled back"):
        deploy(images=images(BAD), smoke_checks_file=checks_file(tmp_path, app_server, path="/500"))
    assert running_images(staging, "staging")["rsolv-api"] == f"{API}@{GOOD}"
    assert annotations()["ops.example/owner"] == "platform"
    ops_applies({})  # ops lets go of its annotation: nobody else may still hold it
    assert "ops.example/owner" not in annotations()


def test_overlay_naming_the_production_namespace_writes_nothing(
    staging: KubeEmulator, tmp_path: Path
) -> None:
    """A staging overlay that points at production is refused before the first write."""
    tree = tmp_path / "deployments"
    shutil.copytree(DEPLOYMENTS, tree)
    overlay = tree / "overlays" / "staging" / "kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("namespace: staging", "namespace: production"))
    staging.clear_log()
    with pytest.raises(
        GuardError, match="Deployment/production/rsolv-api is in namespace 'production'"
    ):
        deploy(images=images(GOOD), manifests_dir=str(tree), run_smoke_tests=False)
    assert staging.writes() == []


def test_a_template_pod_security_refuses_fails_the_rollout_and_is_rolled_back(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """An overlay adding hostNetwork into a namespace enforcing Pod Security "restricted"
    (as provisioning labels staging): the shipped pods pass it, the Deployment with
    hostNetwork is admitted but its pods are not, so the rollout fails with the admission
    message as its reason, and the previous template is put back."""
    staging.store.update(
        kind_named("Namespace"),
        None,
        "staging",
        lambda ns: {**ns, "metadata": {**ns["metadata"], "labels": {PSA: "restricted"}}},
    )
    checks = checks_file(tmp_path, app_server)
    deploy(images=images(GOOD), smoke_checks_file=checks)
    tree = tmp_path / "deployments"
    shutil.copytree(DEPLOYMENTS, tree)
    overlay = tree / "overlays" / "staging" / "kustomization.yaml"
    overlay.write_text(
        overlay.read_text()
        + "  - target: {kind: Deployment, name: rsolv-api}\n"
        + "    patch: |-\n"
        + "      - {op: add, path: /spec/template/spec/hostNetwork, value: true}\n"
    )
    with pytest.raises(DeployFailed) as err:
        deploy(
            images=images(GOOD),
            manifests_dir=str(tree),
            rollout_deadline_seconds=3,
            smoke_checks_file=checks,
        )
    message = str(err.value)
    assert "rolled back" in message
    assert "rsolv-api: " in message
    assert 'is forbidden: violates PodSecurity "restricted:latest": host namespaces' in message
    api = staging.get("apps/v1", "Deployment", "rsolv-api", "staging")
    assert api is not None
    assert "hostNetwork" not in api["spec"]["template"]["spec"]
    assert api["status"]["availableReplicas"] == api["spec"]["replicas"]


@pytest.mark.parametrize(
    ("requested", "field"),
    [
        ({"rsolv-api": f"{API}:latest", "rsolv-landing": f"{LANDING}@{GOOD}"}, "images.rsolv-api"),
        ({"rsolv-api": "not an image", "rsolv-landing": f"{LANDING}@{GOOD}"}, "images.rsolv-api"),
        ({"rsolv-api": f"{API}@{GOOD}"}, "images.rsolv-landing"),  # not running yet: needs one
        ({"rsolv-web": f"{API}@{GOOD}"}, "unknown application"),
    ],
)
def test_bad_image_input_is_refused_before_any_write(
    staging: KubeEmulator, requested: dict[str, str], field: str
) -> None:
    """Tags, malformed references, unknown apps and missing first images write nothing."""
    staging.clear_log()
    with pytest.raises(ConfigurationError, match=field):
        deploy(images=requested, run_smoke_tests=False)
    assert staging.writes() == []


def test_production_is_not_deployed_without_an_approval(staging: KubeEmulator) -> None:
    """The deploy flow alone never writes production: that needs the promotion's approval."""
    staging.clear_log()
    with pytest.raises(GuardError, match="promote-to-production"):
        deploy(images=images(GOOD), environment="production", run_smoke_tests=False)
    assert staging.writes() == []


def test_objects_no_longer_rendered_are_pruned(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """An app object the tree no longer renders is deleted; provisioning's objects are kept."""
    leftover = app_config_map("old-feature-flags", "staging")
    provisioned: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "kept",
            "namespace": "staging",
            "labels": {"app.kubernetes.io/managed-by": "rsolv-staging"},
        },
    }
    staging.seed(leftover)
    staging.seed(provisioned)
    report = deploy(images=images(GOOD), smoke_checks_file=checks_file(tmp_path, app_server))
    assert report.pruned == ["ConfigMap/staging/old-feature-flags"]
    assert staging.get("v1", "ConfigMap", "old-feature-flags", "staging") is None
    assert staging.get("v1", "ConfigMap", "kept", "staging") is not None


def test_a_wrong_smoke_checks_file_is_refused_before_any_write(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """A missing checks file, or production's, stops the deploy before it applies: found
    after the rollout, it would roll a good deploy back."""
    staging.clear_log()
    with pytest.raises(ConfigurationError, match="cannot read checks file"):
        deploy(images=images(GOOD), smoke_checks_file=str(tmp_path / "missing.yaml"))
    production_checks = checks_file(tmp_path, app_server, "production")
    with pytest.raises(ConfigurationError, match="not 'staging'"):
        deploy(images=images(GOOD), smoke_checks_file=production_checks)
    assert staging.writes() == []


def test_a_prune_that_fails_leaves_the_deploy_standing_and_says_so(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """The new digests are live and tested when pruning fails: the deploy succeeds, and
    its record and report say what was pruned before the failure and that the rest was
    not (it used to fail with no record)."""
    staging.seed(app_config_map("old-feature-flags", "staging"))
    stale_service = {**app_config_map("old-api", "staging"), "kind": "Service"}
    staging.seed({**stale_service, "spec": {"ports": [{"port": 80}]}})
    staging.deny("delete", "services", "staging")  # ConfigMaps are pruned first
    report = deploy(images=images(GOOD), smoke_checks_file=checks_file(tmp_path, app_server))
    assert report.result == "succeeded"
    assert report.pruned == ["ConfigMap/staging/old-feature-flags"]
    assert "pruning failed" in report.reason
    assert staging.get("v1", "ConfigMap", "old-feature-flags", "staging") is None
    assert staging.get("v1", "Service", "old-api", "staging") is not None
    assert running_images(staging, "staging")["rsolv-api"] == f"{API}@{GOOD}"
    record = latest_artifact("deployments-staging")
    assert "succeeded" in record
    assert "pruning failed" in record


def test_a_deploy_waits_for_the_one_running_then_gives_up_untouched(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """Another deploy to staging holds ``staging-deploy``: this one waits 4x its rollout
    deadline, then fails saying so, having written nothing; once the lock is free, it
    deploys."""
    checks = checks_file(tmp_path, app_server)
    ensure_concurrency_limit.fn(STAGING_LOCK)
    with concurrency(STAGING_LOCK, occupy=1, strict=True):  # the other deploy
        started = time.monotonic()
        with pytest.raises(LockTimeout, match="another deploy to staging held"):
            deploy(images=images(GOOD), rollout_deadline_seconds=0.5, smoke_checks_file=checks)
        waited = time.monotonic() - started
    assert 2 <= waited < 15
    assert staging.writes() == []
    report = deploy(images=images(GOOD), rollout_deadline_seconds=3, smoke_checks_file=checks)
    assert report.result == "succeeded"


def test_a_retried_prune_reports_what_its_first_attempt_deleted(
    staging: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """The first attempt deletes the stale ConfigMap, then the API answers 503 on the
    stale Service; the retry deletes the Service. The report lists both, not only the
    retry's own deletion."""
    staging.seed(app_config_map("old-feature-flags", "staging"))
    stale_service = {**app_config_map("old-api", "staging"), "kind": "Service"}
    staging.seed({**stale_service, "spec": {"ports": [{"port": 80}]}})
    staging.inject_faults(503, methods=["DELETE"], path_contains="/services/old-api")
    report = deploy(images=images(GOOD), smoke_checks_file=checks_file(tmp_path, app_server))
    assert report.result == "succeeded"
    assert report.reason == ""
    assert sorted(report.pruned) == [
        "ConfigMap/staging/old-feature-flags",
        "Service/staging/old-api",
    ]
    assert [r.fault for r in staging.requests() if r.method == "DELETE"] == [None, "503", None]
    assert staging.get("v1", "ConfigMap", "old-feature-flags", "staging") is None
    assert staging.get("v1", "Service", "old-api", "staging") is None


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on 127.0.0.1 recording each JSON body it is sent."""
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hook.received
    server.shutdown()
    server.server_close()


def test_notifies_through_a_configured_block_and_is_silent_without_one(
    staging: KubeEmulator,
    app_server: Server,
    tmp_path: Path,
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    """With no block nothing is sent; with the rsolv-deployments block the result is posted."""
    url, received = webhook
    checks = checks_file(tmp_path, app_server)
    deploy(images=images(GOOD), smoke_checks_file=checks)
    assert received == []

    block = CustomWebhookNotificationBlock(
        name="rsolv-deployments", url=url, json_data={"text": "{{subject}}: {{body}}"}
    )
    block.save("rsolv-deployments", overwrite=True)
    try:
        deploy(images=images(GOOD), trigger="ci:push:def456", smoke_checks_file=checks)
    finally:
        CustomWebhookNotificationBlock.delete("rsolv-deployments")
    assert len(received) == 1
    text = received[0]["text"]
    assert text.startswith("staging: deploy succeeded")
    assert "ci:push:def456" in text


def test_applied_configuration_keeps_one_managers_fields_and_list_items() -> None:
    """From managedFields: our map fields, our containers (by name) with only our fields,
    our ports (by two merge keys) and set values; nothing of the other manager's."""
    ours = {
        "f:metadata": {"f:labels": {"f:app": {}}},
        "f:spec": {
            "f:template": {
                "f:spec": {
                    "f:containers": {
                        'k:{"name":"api"}': {
                            ".": {},
                            "f:image": {},
                            "f:name": {},
                            "f:ports": {
                                'k:{"containerPort":8080,"protocol":"TCP"}': {
                                    ".": {},
                                    "f:containerPort": {},
                                }
                            },
                        }
                    }
                }
            },
            "f:finalizers": {'v:"rsolv"': {}},
        },
    }
    live = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "rsolv-api",
            "namespace": "staging",
            "labels": {"app": "api", "team": "ops"},
            "managedFields": [
                {
                    "manager": "ops",
                    "operation": "Apply",
                    "fieldsV1": {"f:spec": {"f:replicas": {}}},
                },
                {"manager": "rsolv-staging", "operation": "Apply", "fieldsV1": ours},
            ],
        },
        "spec": {
            "replicas": 5,
            "finalizers": ["other", "rsolv"],
            "template": {
                "spec": {
                    "containers": [
                        {"name": "sidecar", "image": "proxy:1"},
                        {
                            "name": "api",
                            "image": "api@sha256:1",
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [
                                {"containerPort": 9090, "protocol": "TCP"},
                                {"containerPort": 8080, "protocol": "TCP", "name": "http"},
                            ],
                        },
                    ]
                }
            },
        },
    }
    assert applied_configuration(live, "rsolv-staging") == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "rsolv-api", "namespace": "staging", "labels": {"app": "api"}},
        "spec": {
            "finalizers": ["rsolv"],
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "api",
                            "image": "api@sha256:1",
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        }
                    ]
                }
            },
        },
    }
    assert applied_configuration(live, "kubectl") is None
