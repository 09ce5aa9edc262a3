"""The Kubernetes API emulator, exercised over real HTTP by the official client and kubectl."""

from __future__ import annotations

import copy
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from kube_emulator import KINDS, KubeEmulator, Mode
from tests.plugins.kube import https, kubectl_path, run_kubectl

NS = "staging"


def deployment(
    name: str = "web",
    image: str = "ghcr.io/rsolv/app:1",
    replicas: int = 2,
    namespace: str = NS,
    **labels: str,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name, **labels}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def configmap(name: str, namespace: str = NS, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": {"key": "value"},
    }


def status_of(err: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(err.body)
    return body


@pytest.fixture
def api(kube: KubeEmulator, kubeconfig: Path) -> Iterator[client.ApiClient]:
    """An official ApiClient for the emulator, with the ``staging`` namespace created."""
    kube.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    api_client = config.new_client_from_config(config_file=str(kubeconfig), context="emulator")
    yield api_client
    api_client.close()


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def apps(api: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api)


@pytest.fixture
def dynamic(api: client.ApiClient, tmp_path: Path) -> DynamicClient:
    return DynamicClient(api, cache_file=str(tmp_path / "discovery.json"))


# --- CRUD through the typed client ------------------------------------------------------


def test_configmap_create_get_list_replace_patch_delete(core: client.CoreV1Api) -> None:
    """Every verb on a namespaced kind works, and only real changes move resourceVersion."""
    created = core.create_namespaced_config_map(NS, configmap("app", tier="web"))
    assert created.metadata.uid
    assert created.metadata.generation == 1
    got = core.read_namespaced_config_map("app", NS)
    assert got.data == {"key": "value"}
    assert got.metadata.resource_version == created.metadata.resource_version
    assert [c.metadata.name for c in core.list_namespaced_config_map(NS).items] == ["app"]

    body = core.read_namespaced_config_map("app", NS).to_dict()
    body["data"] = {"key": "changed"}
    replaced = core.replace_namespaced_config_map("app", NS, body)
    assert replaced.data == {"key": "changed"}
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    assert replaced.metadata.generation == 2

    merged = core.patch_namespaced_config_map(
        "app", NS, {"data": {"extra": "1"}}, _content_type="application/merge-patch+json"
    )
    assert merged.data == {"key": "changed", "extra": "1"}
    patched = core.patch_namespaced_config_map(
        "app",
        NS,
        [{"op": "remove", "path": "/data/extra"}],
        _content_type="application/json-patch+json",
    )
    assert patched.data == {"key": "changed"}
    same = core.patch_namespaced_config_map("app", NS, {"data": {"key": "changed"}})
    assert same.metadata.resource_version == patched.metadata.resource_version

    core.delete_namespaced_config_map("app", NS)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("app", NS)
    assert missing.value.status == 404


def test_strategic_merge_patch_merges_containers_by_name(apps: client.AppsV1Api) -> None:
    """A strategic merge patch changes one container and keeps the others; a merge patch
    replaces the whole list."""
    dep = deployment()
    dep["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "envoy"})
    apps.create_namespaced_deployment(NS, dep)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}}}

    strategic = apps.patch_namespaced_deployment(
        "web", NS, patch, _content_type="application/strategic-merge-patch+json"
    )
    images = {c.name: c.image for c in strategic.spec.template.spec.containers}
    assert images == {"app": "app:2", "sidecar": "envoy"}
    assert strategic.metadata.generation == 2

    merged = apps.patch_namespaced_deployment(
        "web", NS, patch, _content_type="application/merge-patch+json"
    )
    assert [c.name for c in merged.spec.template.spec.containers] == ["app"]


def test_cluster_scoped_kinds_and_namespace_deletion(
    api: client.ApiClient, core: client.CoreV1Api, kube: KubeEmulator
) -> None:
    """Cluster-scoped kinds have no namespace; deleting a namespace deletes its content."""
    rbac = client.RbacAuthorizationV1Api(api)
    role = {
        "metadata": {"name": "system:rsolv:deployer", "namespace": "ignored"},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}],
    }
    created = rbac.create_cluster_role(role)
    assert created.metadata.namespace is None
    patched = rbac.patch_cluster_role("system:rsolv:deployer", {"metadata": {"labels": {"a": "b"}}})
    assert patched.metadata.labels == {"a": "b"}
    assert patched.metadata.generation == 1
    rbac.delete_cluster_role("system:rsolv:deployer")
    assert kube.get("rbac.authorization.k8s.io/v1", "ClusterRole", "system:rsolv:deployer") is None

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="scratch")))
    assert core.read_namespace("scratch").status.phase == "Active"
    assert [sa.metadata.name for sa in core.list_namespaced_service_account("scratch").items] == [
        "default"
    ]  # like the real service account controller
    core.create_namespaced_config_map("scratch", configmap("doomed", "scratch"))
    core.delete_namespace("scratch")
    assert kube.list("ConfigMap", "scratch") == []
    assert kube.get("v1", "Namespace", "scratch") is None


# --- errors -----------------------------------------------------------------------------


def _create_twice(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, configmap("twice"))
    core.create_namespaced_config_map(NS, configmap("twice"))


def _replace_stale(core: client.CoreV1Api) -> None:
    stale = core.create_namespaced_config_map(NS, configmap("stale")).to_dict()
    core.patch_namespaced_config_map("stale", NS, {"data": {"key": "newer"}})
    core.replace_namespaced_config_map("stale", NS, stale)


@pytest.mark.parametrize(
    ("call", "code", "reason", "message"),
    [
        pytest.param(
            lambda core: core.read_namespaced_config_map("nope", NS),
            404,
            "NotFound",
            'configmaps "nope" not found',
            id="get-missing",
        ),
        pytest.param(
            lambda core: core.delete_namespaced_secret("nope", NS),
            404,
            "NotFound",
            'secrets "nope" not found',
            id="delete-missing",
        ),
        pytest.param(
            lambda core: core.create_namespaced_config_map("absent", configmap("x", "absent")),
            404,
            "NotFound",
            'namespaces "absent" not found',
            id="missing-namespace",
        ),
        pytest.param(
            _create_twice,
            409,
            "AlreadyExists",
            'configmaps "twice" already exists',
            id="already-exists",
        ),
        pytest.param(
            _replace_stale,
            409,
            "Conflict",
            "the object has been modified",
            id="stale-resource-version",
        ),
        pytest.param(
            lambda core: core.create_namespaced_config_map(NS, configmap("Not_DNS")),
            422,
            "Invalid",
            'ConfigMap "Not_DNS" is invalid: metadata.name',
            id="bad-name",
        ),
        pytest.param(
            lambda core: core.create_namespaced_config_map(NS, {"data": {}}),
            422,
            "Invalid",
            "name or generateName is required",
            id="no-name",
        ),
    ],
)
def test_errors_are_status_bodies(
    core: client.CoreV1Api, call: Callable[[Any], object], code: int, reason: str, message: str
) -> None:
    """Failures answer with the real server's code, and a Status body with its reason."""
    with pytest.raises(ApiException) as raised:
        call(core)
    body = status_of(raised.value)
    assert raised.value.status == code == body["code"]
    assert body["kind"] == "Status"
    assert body["status"] == "Failure"
    assert body["reason"] == reason
    assert message in body["message"]


def test_unparseable_body_is_400(kube: KubeEmulator) -> None:
    """A body that is not JSON is a 400 BadRequest Status."""
    kube.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    response = https(kube).request(
        "POST",
        f"{kube.url}/api/v1/namespaces/{NS}/configmaps",
        body=b"{not json",
        headers={"Content-Type": "application/json", **kube.auth_headers()},
    )
    assert response.status == 400
    assert response.json()["reason"] == "BadRequest"


# --- selectors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("tier=web", ["a", "b"]),
        ("tier==web,env=prod", ["a"]),
        ("tier!=web", ["c", "d"]),
        ("env in (prod, dev)", ["a", "b", "c"]),
        ("env notin (prod),tier", ["b"]),
        ("!env", ["d"]),
        ("env", ["a", "b", "c"]),
    ],
)
def test_label_selectors(core: client.CoreV1Api, selector: str, names: list[str]) -> None:
    """List filters by equality, inequality, set and existence requirements."""
    for name, labels in {
        "a": {"tier": "web", "env": "prod"},
        "b": {"tier": "web", "env": "dev"},
        "c": {"env": "prod"},
        "d": {},
    }.items():
        core.create_namespaced_config_map(NS, configmap(name, **labels))
    found = core.list_namespaced_config_map(NS, label_selector=selector).items
    assert [c.metadata.name for c in found] == names


def test_field_selectors_and_all_namespaces(core: client.CoreV1Api) -> None:
    """metadata.name / metadata.namespace field selectors filter cluster-wide lists."""
    core.create_namespaced_config_map(NS, configmap("one"))
    core.create_namespaced_config_map("default", configmap("one", "default"))
    everywhere = core.list_config_map_for_all_namespaces(field_selector="metadata.name=one")
    assert sorted(c.metadata.namespace for c in everywhere.items) == ["default", NS]
    only = core.list_config_map_for_all_namespaces(
        field_selector=f"metadata.name=one,metadata.namespace!={NS}"
    )
    assert [c.metadata.namespace for c in only.items] == ["default"]


# --- DynamicClient, server-side apply, dry run, status ------------------------------------


def test_dynamic_client_discovers_every_kind(dynamic: DynamicClient) -> None:
    """Discovery lists every kind of the table, with its scope and /status subresource."""
    for kind in KINDS:
        resource = dynamic.resources.get(api_version=kind.api_version, kind=kind.kind)
        assert (resource.name, resource.namespaced) == (kind.plural, kind.namespaced)
        assert ("status" in resource.subresources) is kind.status


def test_server_side_apply_is_idempotent_and_prunes(
    dynamic: DynamicClient, kube: KubeEmulator
) -> None:
    """Applying creates; the same apply changes nothing; a new one bumps the generation and
    drops the fields that manager no longer applies."""
    deployments = dynamic.resources.get(api_version="apps/v1", kind="Deployment")
    body = deployment(team="rsolv")
    created = deployments.server_side_apply(
        body=body, name="web", namespace=NS, field_manager="rsolv-staging"
    )
    assert created.metadata.generation == 1
    before = kube.get("apps/v1", "Deployment", "web", NS)
    assert before is not None
    assert before["metadata"]["managedFields"][0]["manager"] == "rsolv-staging"

    again = deployments.server_side_apply(
        body=body, name="web", namespace=NS, field_manager="rsolv-staging", force_conflicts=True
    )
    assert again.metadata.resourceVersion == before["metadata"]["resourceVersion"]

    changed = deployment(image="ghcr.io/rsolv/app:2")  # and without the "team" label
    after = deployments.server_side_apply(
        body=changed, name="web", namespace=NS, field_manager="rsolv-staging"
    )
    assert int(after.metadata.resourceVersion) > int(before["metadata"]["resourceVersion"])
    assert after.metadata.generation == 2
    assert dict(after.metadata.labels) == {"app": "web"}


def test_apply_needs_a_field_manager(dynamic: DynamicClient) -> None:
    """An apply patch without fieldManager is rejected as the real server does."""
    deployments = dynamic.resources.get(api_version="apps/v1", kind="Deployment")
    with pytest.raises(ApiException) as raised:
        deployments.server_side_apply(body=deployment(), name="web", namespace=NS)
    assert raised.value.status == 422


def test_dry_run_stores_nothing(core: client.CoreV1Api, kube: KubeEmulator) -> None:
    """dryRun=All answers the would-be object, stores nothing, bumps nothing, and the log
    flags the request as a dry-run write."""
    seen = kube.store.resource_version
    would_be = core.create_namespaced_config_map(NS, configmap("dry"), dry_run="All")
    assert would_be.metadata.name == "dry"
    assert would_be.metadata.uid
    assert kube.get("v1", "ConfigMap", "dry", NS) is None
    assert kube.store.resource_version == seen
    [write] = kube.writes()
    assert write.dry_run
    assert write.method == "POST"
    assert write.status == 201


def test_status_only_changes_through_its_subresource(apps: client.AppsV1Api) -> None:
    """/status writes change the status only, without a new generation; writes to the main
    resource ignore the status they carry."""
    apps.create_namespaced_deployment(NS, deployment())
    patched = apps.patch_namespaced_deployment_status(
        "web",
        NS,
        {"status": {"readyReplicas": 7}, "spec": {"replicas": 9}},
        _content_type="application/merge-patch+json",
    )
    assert patched.status.ready_replicas == 7
    assert patched.spec.replicas == 2
    assert patched.metadata.generation == 1
    main = apps.patch_namespaced_deployment(
        "web", NS, {"status": {"readyReplicas": 1}}, _content_type="application/merge-patch+json"
    )
    assert main.status.ready_replicas == 7


# --- watch ------------------------------------------------------------------------------


def test_watch_sends_initial_events_bookmark_and_changes(core: client.CoreV1Api) -> None:
    """A watch-list stream sends ADDED for what exists, the initial-events-end BOOKMARK, then
    changes; a write that changes nothing sends nothing; the stream ends at its timeout."""
    core.create_namespaced_config_map(NS, configmap("first"))

    def writer() -> None:
        time.sleep(0.3)
        core.patch_namespaced_config_map("first", NS, {"data": {"key": "value"}})  # no-op
        core.patch_namespaced_config_map("first", NS, {"data": {"key": "two"}})
        core.delete_namespaced_config_map("first", NS)

    thread = threading.Thread(target=writer)
    thread.start()
    started = time.monotonic()
    events = [
        (e["type"], e["raw_object"])
        for e in watch.Watch().stream(
            core.list_namespaced_config_map,
            NS,
            allow_watch_bookmarks=True,
            send_initial_events=True,
            resource_version_match="NotOlderThan",
            timeout_seconds=1,
        )
    ]
    thread.join()
    assert time.monotonic() - started < 3
    assert [t for t, _ in events] == ["ADDED", "BOOKMARK", "MODIFIED", "DELETED"]
    bookmark = events[1][1]["metadata"]
    assert bookmark["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert events[2][1]["data"] == {"key": "two"}


def test_watch_from_a_resource_version_replays_later_events(core: client.CoreV1Api) -> None:
    """A watch from a resourceVersion replays the events after it, filtered by selector."""
    listed = core.list_namespaced_config_map(NS).metadata.resource_version
    core.create_namespaced_config_map(NS, configmap("mine", team="a"))
    core.create_namespaced_config_map(NS, configmap("theirs", team="b"))
    events = watch.Watch().stream(
        core.list_namespaced_config_map,
        NS,
        label_selector="team=a",
        resource_version=listed,
        timeout_seconds=1,
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "mine")]


# --- workload controllers ---------------------------------------------------------------


def test_ready_workloads_report_ready(
    apps: client.AppsV1Api, api: client.ApiClient, kube: KubeEmulator
) -> None:
    """By default Deployments become Available (with a revisioned ReplicaSet), StatefulSets
    ready and Jobs complete."""
    dep = apps.create_namespaced_deployment(NS, deployment())
    status = apps.read_namespaced_deployment_status("web", NS)
    assert status.status.observed_generation == dep.metadata.generation
    assert status.status.available_replicas == status.status.ready_replicas == 2
    conditions = {c.type: (c.status, c.reason) for c in status.status.conditions}
    assert conditions == {
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("True", "NewReplicaSetAvailable"),
    }
    [rs] = kube.list("ReplicaSet", NS)
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert rs["metadata"]["ownerReferences"][0]["uid"] == dep.metadata.uid

    sts = deployment("db")
    sts["kind"] = "StatefulSet"
    apps.create_namespaced_stateful_set(NS, sts)
    sts_status = apps.read_namespaced_stateful_set("db", NS).status
    assert sts_status.ready_replicas == 2
    assert sts_status.current_revision == sts_status.update_revision

    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "migrate"},
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "m", "image": "app:1"}], "restartPolicy": "Never"}
            }
        },
    }
    client.BatchV1Api(api).create_namespaced_job(NS, job)
    done = client.BatchV1Api(api).read_namespaced_job("migrate", NS).status
    assert done.succeeded == 1
    assert [c.type for c in done.conditions][-1] == "Complete"


def test_never_ready_workload_leaves_a_crashlooping_pod_and_event(
    apps: client.AppsV1Api, core: client.CoreV1Api, kube: KubeEmulator
) -> None:
    """In never-ready mode the Deployment stays unavailable, its pod waits in
    CrashLoopBackOff and a BackOff event names the image."""
    kube.set_workload_behaviour("never-ready", namespace=NS, name="web")
    apps.create_namespaced_deployment(NS, deployment(image="ghcr.io/rsolv/app:bad"))
    status = apps.read_namespaced_deployment("web", NS).status
    assert status.updated_replicas == 2
    assert status.available_replicas == 0
    available = next(c for c in status.conditions if c.type == "Available")
    assert (available.status, available.reason) == ("False", "MinimumReplicasUnavailable")
    pod = core.list_namespaced_pod(NS, label_selector="app=web").items[0]
    assert pod.status.container_statuses[0].state.waiting.reason == "CrashLoopBackOff"
    events = core.list_namespaced_event(NS).items
    assert {e.reason for e in events} == {"BackOff"}
    assert all("ghcr.io/rsolv/app:bad" in e.message for e in events)


def test_failing_workload_exceeds_its_progress_deadline(
    apps: client.AppsV1Api, kube: KubeEmulator
) -> None:
    """In failing mode (here chosen by image) the Deployment reports ProgressDeadlineExceeded
    and its pods ImagePullBackOff; other images still roll out."""
    kube.set_workload_behaviour("failing", image="ghcr.io/rsolv/app:broken")
    apps.create_namespaced_deployment(NS, deployment(image="ghcr.io/rsolv/app:broken"))
    progressing = next(
        c
        for c in apps.read_namespaced_deployment("web", NS).status.conditions
        if c.type == "Progressing"
    )
    assert (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")
    pods = kube.list("Pod", NS)
    assert (
        pods[0]["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
        == "ImagePullBackOff"
    )
    apps.create_namespaced_deployment(NS, deployment("api"))
    assert apps.read_namespaced_deployment("api", NS).status.available_replicas == 2


def test_rollback_reuses_the_previous_replicaset(
    apps: client.AppsV1Api, kube: KubeEmulator
) -> None:
    """Each template gets a ReplicaSet revision; restoring an old template reuses its
    ReplicaSet under a new revision, as the real controller does."""
    apps.create_namespaced_deployment(NS, deployment(image="app:1"))
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}}}
    apps.patch_namespaced_deployment("web", NS, patch)
    revisions = {
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]: rs
        for rs in kube.list("ReplicaSet", NS)
    }
    assert sorted(revisions) == ["1", "2"]
    old_template = revisions["1"]["spec"]["template"]
    old_template["metadata"]["labels"].pop("pod-template-hash")
    apps.patch_namespaced_deployment(
        "web",
        NS,
        {"spec": {"template": old_template}},
        _content_type="application/merge-patch+json",
    )
    rolled = apps.read_namespaced_deployment("web", NS)
    assert rolled.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    assert rolled.spec.template.spec.containers[0].image == "app:1"
    assert len(kube.list("ReplicaSet", NS)) == 2


def test_delayed_readiness_is_seen_by_a_watch(apps: client.AppsV1Api, kube: KubeEmulator) -> None:
    """With a delay, the Deployment is first unobserved, then a MODIFIED event makes it ready."""
    kube.set_workload_behaviour("ready", delay=0.3)
    apps.create_namespaced_deployment(NS, deployment())
    assert apps.read_namespaced_deployment("web", NS).status.observed_generation is None
    for event in watch.Watch().stream(apps.list_namespaced_deployment, NS, timeout_seconds=2):
        if (event["object"].status.available_replicas or 0) == 2:
            break
    else:
        pytest.fail("the Deployment never became available")


# --- test controls ----------------------------------------------------------------------


def test_injected_503_and_429_reach_the_client(core: client.CoreV1Api, kube: KubeEmulator) -> None:
    """Injected faults answer as the API server would: 503 Status, 429 with Retry-After; then
    service resumes."""
    kube.inject_faults(503)
    with pytest.raises(ApiException) as unavailable:
        core.list_namespaced_config_map(NS)
    assert unavailable.value.status == 503
    assert status_of(unavailable.value)["reason"] == "ServiceUnavailable"

    # A POST: urllib3's default Retry would wait out the Retry-After of a 429 on a GET.
    kube.inject_faults(429, retry_after=7)
    with pytest.raises(ApiException) as throttled:
        core.create_namespaced_config_map(NS, configmap("x"))
    assert throttled.value.status == 429
    assert throttled.value.headers["Retry-After"] == "7"
    assert core.list_namespaced_config_map(NS).items == []
    assert [r.fault for r in kube.requests()] == ["503", "429", None]


def test_only_writes_faults_spare_reads(core: client.CoreV1Api, kube: KubeEmulator) -> None:
    """Faults limited to writes leave reads alone and are used up by the writes."""
    kube.inject_faults(500, count=2, only_writes=True)
    core.list_namespaced_config_map(NS)
    for _ in range(2):
        with pytest.raises(ApiException, match="500"):
            core.create_namespaced_config_map(NS, configmap("x"))
    core.create_namespaced_config_map(NS, configmap("x"))


def test_dropped_connection_is_a_connection_error(
    core: client.CoreV1Api, kube: KubeEmulator
) -> None:
    """A dropped connection (no response at all) surfaces as a urllib3 protocol error."""
    kube.inject_faults("drop", methods=["POST"])
    with pytest.raises((urllib3.exceptions.ProtocolError, urllib3.exceptions.MaxRetryError)):
        core.create_namespaced_config_map(NS, configmap("x"))
    assert kube.requests()[-1].status == 0


@pytest.mark.parametrize("namespace", [NS, None], ids=["in-namespace", "everywhere"])
def test_deny_answers_forbidden(
    api: client.ApiClient, kube: KubeEmulator, namespace: str | None
) -> None:
    """deny() answers 403 with the real server's message, in a namespace or everywhere."""
    kube.deny("create", "deployments", namespace, user="system:serviceaccount:ci:deployer")
    with pytest.raises(ApiException) as raised:
        client.AppsV1Api(api).create_namespaced_deployment(NS, deployment())
    body = status_of(raised.value)
    assert raised.value.status == 403
    assert body["reason"] == "Forbidden"
    assert body["message"] == (
        "deployments.apps is forbidden: User "
        '"system:serviceaccount:ci:deployer" cannot create resource '
        f'"deployments" in API group "apps" in the namespace "{NS}"'
    )


def test_deny_at_cluster_scope(core: client.CoreV1Api, kube: KubeEmulator) -> None:
    """A denied cluster-scoped create says so; other verbs stay allowed."""
    kube.deny("create", "namespaces")
    with pytest.raises(ApiException) as raised:
        core.create_namespace({"metadata": {"name": "prod"}})
    assert status_of(raised.value)["message"] == (
        f'namespaces is forbidden: User "{kube.user}" cannot create resource "namespaces" '
        'in API group "" at the cluster scope'
    )
    assert core.read_namespace(NS).metadata.name == NS


def test_request_log_records_writes(core: client.CoreV1Api, kube: KubeEmulator) -> None:
    """Every request is logged with its query and status; writes() keeps the mutating ones."""
    kube.clear_log()
    core.create_namespaced_config_map(NS, configmap("logged"))
    core.read_namespaced_config_map("logged", NS)
    core.patch_namespaced_config_map("logged", NS, {"data": {"a": "b"}}, field_manager="me")
    assert [(r.method, r.status) for r in kube.requests()] == [
        ("POST", 201),
        ("GET", 200),
        ("PATCH", 200),
    ]
    patch = kube.writes()[-1]
    assert patch.query == {"fieldManager": "me"}
    assert patch.body == {"data": {"a": "b"}}
    assert patch.content_type == "application/strategic-merge-patch+json"


def test_stop_closes_the_port_and_open_watches() -> None:
    """stop() ends open watches and idle connections promptly and frees the port."""
    emulator = KubeEmulator().start()
    url, port = emulator.url, emulator.port
    stream = https(emulator).request(
        "GET",
        f"{url}/api/v1/namespaces?watch=true",
        headers=emulator.auth_headers(),
        preload_content=False,
    )
    assert stream.status == 200
    started = time.monotonic()
    emulator.stop()
    assert time.monotonic() - started < 2
    stream.release_conn()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


# --- kubectl ----------------------------------------------------------------------------


def _write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def test_kubectl_server_side_apply_get_rollout_and_wait(
    kube: KubeEmulator, kubeconfig: Path, tmp_path: Path
) -> None:
    """kubectl applies server-side (twice without change), reads JSON, sees the rollout
    complete and waits for Available."""
    manifest = _write(tmp_path / "web.yaml", deployment(namespace="default"))
    first = run_kubectl(kubeconfig, "apply", "--server-side", "-f", str(manifest), check=True)
    assert "deployment.apps/web serverside-applied" in first.stdout
    applied = kube.get("apps/v1", "Deployment", "web", "default")
    assert applied is not None
    second = run_kubectl(kubeconfig, "apply", "--server-side", "-f", str(manifest), check=True)
    assert "serverside-applied" in second.stdout
    got = json.loads(
        run_kubectl(kubeconfig, "get", "deployment", "web", "-o", "json", check=True).stdout
    )
    assert got["metadata"]["resourceVersion"] == applied["metadata"]["resourceVersion"]

    rollout = run_kubectl(kubeconfig, "rollout", "status", "deployment/web", "--timeout=10s")
    assert rollout.returncode == 0, rollout.stderr
    assert 'deployment "web" successfully rolled out' in rollout.stdout
    waited = run_kubectl(
        kubeconfig, "wait", "--for=condition=Available", "deployment/web", "--timeout=10s"
    )
    assert waited.returncode == 0
    assert "condition met" in waited.stdout


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("never-ready", "timed out waiting"),
        ("failing", "exceeded its progress deadline"),
    ],
)
def test_kubectl_rollout_status_fails_for_unready_deployments(
    kube: KubeEmulator, kubeconfig: Path, tmp_path: Path, mode: Mode, message: str
) -> None:
    """kubectl rollout status fails when pods never become ready or the deadline passes."""
    kube.set_workload_behaviour(mode)
    manifest = _write(tmp_path / "web.yaml", deployment(namespace="default"))
    run_kubectl(kubeconfig, "apply", "--server-side", "-f", str(manifest), check=True)
    rollout = run_kubectl(kubeconfig, "rollout", "status", "deployment/web", "--timeout=1s")
    assert rollout.returncode != 0
    assert message in rollout.stderr


def test_kubectl_applies_a_kustomization_and_rolls_back(
    kube: KubeEmulator, kubeconfig: Path, tmp_path: Path
) -> None:
    """apply --server-side -k creates everything a kustomization renders; rollout undo
    restores the previous template."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    _write(
        overlay / "resources.yaml",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sandbox"}},
        configmap("settings", "sandbox"),
        deployment(namespace="sandbox"),
    )
    (overlay / "kustomization.yaml").write_text(
        "namespace: sandbox\nresources: [resources.yaml]\n"
        "images: [{name: ghcr.io/rsolv/app, newTag: '2'}]\n"
    )
    applied = run_kubectl(kubeconfig, "apply", "--server-side", "-k", str(overlay))
    assert applied.returncode == 0, applied.stderr
    assert kube.get("v1", "ConfigMap", "settings", "sandbox") is not None

    (overlay / "kustomization.yaml").write_text(
        "namespace: sandbox\nresources: [resources.yaml]\n"
        "images: [{name: ghcr.io/rsolv/app, newTag: '3'}]\n"
    )
    run_kubectl(kubeconfig, "apply", "--server-side", "-k", str(overlay), check=True)
    undo = run_kubectl(kubeconfig, "rollout", "undo", "deployment/web", "-n", "sandbox")
    assert undo.returncode == 0, undo.stderr
    dep = kube.get("apps/v1", "Deployment", "web", "sandbox")
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/rsolv/app:2"
    assert len(kube.list("ReplicaSet", "sandbox")) == 2


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    """``python -m kube_emulator`` says it is an emulator, writes a kubeconfig
    kubectl can use, and exits cleanly on SIGTERM."""
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kube_emulator",
            "--port",
            "0",
            "--kubeconfig",
            str(kubeconfig),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        while not lines or "kubeconfig written" not in lines[-1]:
            lines.append(process.stdout.readline())
            assert lines[-1], "".join(lines)
        assert "EMULATOR of the Kubernetes API" in "".join(lines)
        namespaces = subprocess.run(
            [
                str(kubectl_path()),
                "--kubeconfig",
                str(kubeconfig),
                "get",
                "namespaces",
                "-o",
                "name",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        assert "namespace/default" in namespaces.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "stopped" in output


def test_secret_string_data_is_stored_as_base64_data(core: client.CoreV1Api) -> None:
    """Like the real server, stringData is folded into data and never stored or returned."""
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="creds"),
        data={"kept": "a2VwdA=="},
        string_data={"password": "s3cret"},
    )
    core.create_namespaced_secret("default", body)
    stored = core.read_namespaced_secret("creds", "default")
    assert stored.data == {"kept": "a2VwdA==", "password": "czNjcmV0"}
    assert stored.string_data is None


# --- admission: Pod Security ----------------------------------------------------------------

PSA = "pod-security.kubernetes.io/enforce"


def labelled_namespace(kube: KubeEmulator, name: str, level: str) -> str:
    kube.seed(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {PSA: level}},
        }
    )
    return name


def pod(name: str = "x", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": copy.deepcopy(
            {"containers": [{"name": "app", "image": "ghcr.io/rsolv/app:1"}], **spec}
        ),
    }


PRIVILEGED = {"name": "app", "image": "i", "securityContext": {"privileged": True}}
RESTRICTED_POD = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [
        {
            "name": "app",
            "image": "ghcr.io/rsolv/app:1",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            },
        }
    ],
}


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_pod_security_refuses_privileged_and_host_network_pods(
    kube: KubeEmulator, core: client.CoreV1Api, level: str
) -> None:
    """A privileged pod and a hostNetwork pod are refused 403 in a baseline or restricted
    namespace, the message naming the level and each violated check as kube-apiserver does."""
    ns = labelled_namespace(kube, f"psa-{level}", level)
    with pytest.raises(ApiException) as privileged:
        core.create_namespaced_pod(ns, pod("priv", containers=[PRIVILEGED]))
    with pytest.raises(ApiException) as host:
        core.create_namespaced_pod(ns, pod("host", hostNetwork=True))
    assert privileged.value.status == host.value.status == 403
    assert status_of(privileged.value)["reason"] == "Forbidden"
    prefix = f'violates PodSecurity "{level}:latest": '
    assert status_of(privileged.value)["message"].startswith(f'pods "priv" is forbidden: {prefix}')
    assert (
        'privileged (container "app" must not set securityContext.privileged=true)'
        in (status_of(privileged.value)["message"])
    )
    assert "host namespaces (hostNetwork=true)" in status_of(host.value)["message"]
    if level == "baseline":  # a plain pod is fine at baseline, so nothing else is named
        assert status_of(host.value)["message"] == (
            f'pods "host" is forbidden: {prefix}host namespaces (hostNetwork=true)'
        )
    else:
        assert (
            'allowPrivilegeEscalation != false (container "app" must set '
            "securityContext.allowPrivilegeEscalation=false)"
        ) in status_of(host.value)["message"]
    assert kube.list("Pod", ns) == []


def test_restricted_names_every_missing_setting_in_the_real_order(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    """A plain pod in a restricted namespace: the four settings it lacks, in the real wording."""
    ns = labelled_namespace(kube, "locked", "restricted")
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(ns, pod("plain"))
    assert status_of(err.value)["message"] == (
        'pods "plain" is forbidden: violates PodSecurity "restricted:latest": '
        'allowPrivilegeEscalation != false (container "app" must set '
        "securityContext.allowPrivilegeEscalation=false), "
        'unrestricted capabilities (container "app" must set '
        'securityContext.capabilities.drop=["ALL"]), '
        'runAsNonRoot != true (pod or container "app" must set '
        "securityContext.runAsNonRoot=true), "
        'seccompProfile (pod or container "app" must set securityContext.seccompProfile.type '
        'to "RuntimeDefault" or "Localhost")'
    )
    hostpath = pod("vol", **RESTRICTED_POD, volumes=[{"name": "root", "hostPath": {"path": "/"}}])
    hostpath["spec"]["containers"][0]["securityContext"]["runAsUser"] = 0
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(ns, hostpath)
    assert status_of(err.value)["message"].endswith(
        'restricted volume types (volume "root" uses restricted volume type "hostPath"), '
        'runAsUser=0 (container "app" must not set runAsUser=0)'
    )


def test_compliant_pods_are_admitted_and_unlabelled_namespaces_enforce_nothing(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    """A pod meeting restricted is admitted there; an unlabelled namespace is privileged."""
    ns = labelled_namespace(kube, "locked", "restricted")
    core.create_namespaced_pod(ns, pod("good", **RESTRICTED_POD))
    core.create_namespaced_pod(NS, pod("anything", hostNetwork=True, containers=[PRIVILEGED]))
    assert [p["metadata"]["name"] for p in kube.list("Pod", ns)] == ["good"]
    assert [p["metadata"]["name"] for p in kube.list("Pod", NS)] == ["anything"]


def test_a_deployment_whose_pods_violate_pod_security_never_becomes_ready(
    kube: KubeEmulator,
    apps: client.AppsV1Api,
    kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Deployment is admitted, its pods are not: the ReplicaSet reports ReplicaFailure
    and a FailedCreate event, and the rollout watch's failure reason carries the message."""
    from rsolv_staging.environments import Cluster
    from rsolv_staging.settings import Settings
    from tasks.kube import wait_for_rollout

    ns = labelled_namespace(kube, "locked", "baseline")
    dep = deployment(namespace=ns)
    dep["spec"]["template"]["spec"]["hostNetwork"] = True
    apps.create_namespaced_deployment(ns, dep)
    assert kube.list("Pod", ns) == []
    (rs,) = kube.list("ReplicaSet", ns)
    (failure,) = rs["status"]["conditions"]
    assert (failure["type"], failure["reason"]) == ("ReplicaFailure", "FailedCreate")
    assert "is forbidden: violates PodSecurity" in failure["message"]
    events = [e for e in kube.list("Event", ns) if e["reason"] == "FailedCreate"]
    assert events[0]["involvedObject"]["name"] == rs["metadata"]["name"]
    assert events[0]["message"].startswith('Error creating: pods "web-')

    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    result = wait_for_rollout.fn(
        "web", namespace=ns, deadline_seconds=1, cluster=Cluster(), settings=Settings()
    )
    assert not result.ready
    assert 'forbidden: violates PodSecurity "baseline:latest": host namespaces' in result.reason


def test_pod_security_warns_on_workloads_and_at_the_warn_level(
    kube: KubeEmulator, kubeconfig: Path, tmp_path: Path
) -> None:
    """Workloads are admitted with a Warning naming what their pods violate (kubectl prints
    it); a pod breaking only the namespace's warn level is admitted with a Warning."""
    ns = labelled_namespace(kube, "locked", "baseline")
    dep = deployment(namespace=ns)
    dep["spec"]["template"]["spec"]["hostNetwork"] = True
    manifest = tmp_path / "dep.yaml"
    manifest.write_text(yaml.safe_dump(dep))
    created = run_kubectl(kubeconfig, "create", "-f", str(manifest))
    assert created.returncode == 0, created.stderr
    assert (
        'Warning: would violate PodSecurity "baseline:latest": host namespaces (hostNetwork=true)'
    ) in created.stderr
    kube.seed(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": "warned",
                "labels": {"pod-security.kubernetes.io/warn": "restricted"},
            },
        }
    )
    answer = https(kube).request(
        "POST",
        f"{kube.url}/api/v1/namespaces/warned/pods",
        body=json.dumps(pod("plain")),
        headers={"Content-Type": "application/json", **kube.auth_headers()},
    )
    assert answer.status == 201
    assert answer.headers["Warning"].startswith(
        '299 - "would violate PodSecurity \\"restricted:latest\\": allowPrivilegeEscalation'
    )


# --- admission: LimitRange and ResourceQuota ------------------------------------------------


def seed_limits(kube: KubeEmulator, hard: dict[str, str]) -> None:
    kube.seed(
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": {"name": "limits", "namespace": NS},
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": {"cpu": "500m", "memory": "1Gi"},
                        "defaultRequest": {"cpu": "250m", "memory": "512Mi"},
                        "max": {"cpu": "1", "memory": "2Gi"},
                    }
                ]
            },
        }
    )
    kube.seed(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "quota", "namespace": NS},
            "spec": {"hard": hard},
        }
    )


def with_resources(name: str, **resources: dict[str, str]) -> dict[str, Any]:
    obj = pod(name)
    obj["spec"]["containers"][0]["resources"] = resources
    return obj


def test_limit_range_fills_in_defaults_and_refuses_over_its_max(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    """A container stating nothing gets the LimitRange's default requests and limits; a
    limit over its max is refused 403 with the LimitRanger's wording."""
    seed_limits(kube, {"pods": "10"})
    created = core.create_namespaced_pod(NS, pod("plain"))
    resources = created.spec.containers[0].resources
    assert resources.requests == {"cpu": "250m", "memory": "512Mi"}
    assert resources.limits == {"cpu": "500m", "memory": "1Gi"}
    limits_only = core.create_namespaced_pod(NS, with_resources("capped", limits={"cpu": "1"}))
    assert limits_only.spec.containers[0].resources.requests["cpu"] == "1"  # request = limit
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(NS, with_resources("big", limits={"memory": "3Gi"}))
    assert err.value.status == 403
    assert status_of(err.value)["message"] == (
        'pods "big" is forbidden: maximum memory usage per Container is 2Gi, but limit is 3Gi'
    )


def test_a_pod_over_quota_is_refused_and_the_quota_counts_what_runs(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    """Quota admission: status.used follows the pods; one that would pass ``hard`` is
    refused with "exceeded quota" and the requested, used and limited amounts."""
    seed_limits(kube, {"limits.memory": "2Gi", "requests.cpu": "1", "pods": "3"})
    core.create_namespaced_pod(NS, pod("first"))  # defaults: limits.memory=1Gi
    quota = core.read_namespaced_resource_quota("quota", NS)
    assert quota.status.used == {"limits.memory": "1Gi", "pods": "1", "requests.cpu": "250m"}
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(NS, with_resources("second", limits={"memory": "2Gi"}))
    assert err.value.status == 403
    assert status_of(err.value)["message"] == (
        'pods "second" is forbidden: exceeded quota: quota, requested: limits.memory=2Gi, '
        "used: limits.memory=1Gi, limited: limits.memory=2Gi"
    )
    core.delete_namespaced_pod("first", NS, _preload_content=False)
    assert core.read_namespaced_resource_quota("quota", NS).status.used["pods"] == "0"
    core.create_namespaced_pod(NS, with_resources("second", limits={"memory": "2Gi"}))


def test_a_quota_without_defaults_wants_every_container_to_state_its_resources(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    """Without a LimitRange, a quota on limits refuses a container that states none."""
    kube.seed(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "quota", "namespace": NS},
            "spec": {"hard": {"limits.cpu": "2", "limits.memory": "2Gi"}},
        }
    )
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(NS, pod("bare"))
    assert status_of(err.value)["message"] == (
        'pods "bare" is forbidden: failed quota: quota: must specify limits.cpu for: app; '
        "limits.memory for: app"
    )


def test_a_deployment_over_quota_reports_failed_create(
    kube: KubeEmulator, apps: client.AppsV1Api
) -> None:
    """Replicas over the pods quota: the Deployment's ReplicaFailure says "exceeded quota"."""
    seed_limits(kube, {"pods": "1"})
    apps.create_namespaced_deployment(NS, deployment(replicas=2))
    dep = kube.get("apps/v1", "Deployment", "web", NS)
    assert dep is not None
    failure = next(c for c in dep["status"]["conditions"] if c["type"] == "ReplicaFailure")
    assert (
        "exceeded quota: quota, requested: pods=1, used: pods=1, limited: pods=1"
        in (failure["message"])
    )
    assert dep["status"].get("availableReplicas", 0) == 0


# --- validation: immutable fields -----------------------------------------------------------


def test_a_deployment_selector_change_is_refused_as_immutable(
    apps: client.AppsV1Api, kubeconfig: Path, tmp_path: Path
) -> None:
    """Changing spec.selector, by a patch or by kubectl apply, is 422 "field is immutable"."""
    apps.create_namespaced_deployment(NS, deployment())
    moved = deployment()
    moved["spec"]["selector"] = {"matchLabels": {"app": "web", "tier": "front"}}
    moved["spec"]["template"]["metadata"]["labels"]["tier"] = "front"
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment("web", NS, moved)
    assert err.value.status == 422
    status = status_of(err.value)
    assert status["reason"] == "Invalid"
    assert status["message"] == (
        'Deployment.apps "web" is invalid: spec.selector: Invalid value: '
        'v1.LabelSelector{MatchLabels:map[string]string{"app":"web", "tier":"front"}, '
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
    )
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.selector"]
    manifest = tmp_path / "moved.yaml"
    manifest.write_text(yaml.safe_dump(moved))
    applied = run_kubectl(kubeconfig, "apply", "--server-side", "-f", str(manifest))
    assert applied.returncode != 0
    assert "spec.selector: Invalid value" in applied.stderr
    assert "field is immutable" in applied.stderr
    replicas = deployment(replicas=5)  # what is not immutable still changes
    assert apps.patch_namespaced_deployment("web", NS, replicas).spec.replicas == 5


def test_stateful_set_services_and_immutable_config_maps_keep_their_fields(
    apps: client.AppsV1Api, core: client.CoreV1Api
) -> None:
    """A StatefulSet's volumeClaimTemplates, a Service's clusterIP and an immutable
    ConfigMap's data are refused 422 with the real messages; allowed changes pass."""
    sts = deployment("db")
    sts["kind"] = "StatefulSet"
    sts["spec"]["serviceName"] = "db"
    claim = {"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}}
    sts["spec"]["volumeClaimTemplates"] = [claim]
    apps.create_namespaced_stateful_set(NS, sts)
    claim["spec"]["resources"]["requests"]["storage"] = "2Gi"
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_stateful_set("db", NS, sts)
    assert status_of(err.value)["message"] == (
        'StatefulSet.apps "db" is invalid: spec: Forbidden: updates to statefulset spec for '
        "fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', "
        "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
    )
    assert apps.patch_namespaced_stateful_set("db", NS, {"spec": {"replicas": 3}}).spec.replicas

    service = {
        "metadata": {"name": "db"},
        "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 5432}]},
    }
    core.create_namespaced_service(NS, service)
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_service("db", NS, {"spec": {"clusterIP": "10.43.0.11"}})
    assert status_of(err.value)["message"] == (
        'Service "db" is invalid: spec.clusterIPs[0]: Invalid value: []string{"10.43.0.11"}: '
        "may not change once set"
    )

    core.create_namespaced_config_map(NS, {**configmap("frozen"), "immutable": True})
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map("frozen", NS, {"data": {"key": "other"}})
    assert err.value.status == 422
    assert status_of(err.value)["message"] == (
        'ConfigMap "frozen" is invalid: data: Forbidden: field is immutable when `immutable` is set'
    )
    core.delete_namespaced_config_map("frozen", NS)  # deleting is how it changes


# --- validation: the OpenAPI schema ---------------------------------------------------------


def test_kubectl_apply_with_a_typo_is_refused_naming_the_field(
    kube: KubeEmulator, api: client.ApiClient, kubeconfig: Path, tmp_path: Path
) -> None:
    """kubectl validates strictly (fieldValidation=Strict): an unknown field is refused with
    the real decoder's message, for client-side and server-side apply alike; nothing is
    written."""
    typo = deployment()
    typo["spec"]["replicaz"] = 3
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(yaml.safe_dump(typo))
    created = run_kubectl(kubeconfig, "create", "-f", str(manifest))
    assert created.returncode != 0
    assert (
        'Deployment in version "v1" cannot be handled as a Deployment: '
        'strict decoding error: unknown field "spec.replicaz"'
    ) in created.stderr
    applied = run_kubectl(kubeconfig, "apply", "--server-side", "-f", str(manifest))
    assert applied.returncode != 0
    assert ".spec.replicaz: field not declared in schema" in applied.stderr
    assert kube.list("Deployment", NS) == []


def test_unknown_fields_are_dropped_with_a_warning_unless_strict_and_wrong_types_refused(
    kube: KubeEmulator, api: client.ApiClient
) -> None:
    """Without fieldValidation (the Python client) the server drops an unknown field and
    says so in a Warning header; Strict refuses it with the field in the Status; a value of
    the wrong type never decodes."""
    typo = deployment()
    typo["spec"]["replicaz"] = 3
    pool = https(kube)
    url = f"{kube.url}/apis/apps/v1/namespaces/{NS}/deployments"
    headers = {"Content-Type": "application/json", **kube.auth_headers()}
    strict = pool.request(
        "POST", url + "?fieldValidation=Strict", body=json.dumps(typo), headers=headers
    )
    assert strict.status == 400
    causes = json.loads(strict.data)["details"]["causes"]
    assert [c["field"] for c in causes] == ["spec.replicaz"]
    lenient = pool.request("POST", url, body=json.dumps(typo), headers=headers)
    assert lenient.status == 201
    assert lenient.headers.get("Warning") == '299 - "unknown field \\"spec.replicaz\\""'
    assert "replicaz" not in json.loads(lenient.data)["spec"]
    wrong = deployment("other")
    wrong["spec"]["replicas"] = "two"
    typed = pool.request("POST", url, body=json.dumps(wrong), headers=headers)
    assert typed.status == 400
    assert json.loads(typed.data)["message"] == (
        'Deployment in version "v1" cannot be handled as a Deployment: json: cannot '
        "unmarshal string into Go struct field spec.replicas of type int32"
    )
