"""The emulator authenticates and authorizes as kube-apiserver: bearer tokens, RBAC.

Over real HTTPS with the official client and kubectl; every identity but the admin one is
confined only by the Roles and bindings the test stores, as on a cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from kube_emulator import KubeEmulator
from tests.plugins.kube import https, run_kubectl

RBAC = "rbac.authorization.k8s.io/v1"


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def forbidden_message(call: Callable[[], object]) -> str:
    """Run ``call``; it must be refused 403 Forbidden with a Status body: its message."""
    with pytest.raises(ApiException) as raised:
        call()
    body = status_of(raised.value)
    assert (raised.value.status, body["code"], body["reason"]) == (403, 403, "Forbidden")
    assert body["kind"] == "Status"
    return str(body["message"])


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def deployment(name: str = "web", ns: str = "staging") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "ghcr.io/rsolv/app:1"}]},
            },
        },
    }


def role(name: str, ns: str | None, *rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    kind = "Role" if ns is not None else "ClusterRole"
    return {"apiVersion": RBAC, "kind": kind, "metadata": meta, "rules": list(rules), **extra}


def rule(groups: list[str], resources: list[str], verbs: list[str], **extra: Any) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs, **extra}


def binding(
    name: str, ns: str | None, role_kind: str, role_name: str, *subjects: dict[str, str]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    return {
        "apiVersion": RBAC,
        "kind": "RoleBinding" if ns is not None else "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
        "subjects": list(subjects),
    }


def sa(name: str, ns: str = "staging") -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": ns}


@pytest.fixture
def cluster(kube: KubeEmulator) -> KubeEmulator:
    """Namespaces staging and production, a ServiceAccount staging/bot, a Deployment each."""
    for ns in ("staging", "production"):
        kube.seed(namespace(ns))
        kube.seed(deployment("web", ns))
    kube.seed({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": sa("bot")})
    return kube


def client_for(kube: KubeEmulator, path: Path, token: str | None = None) -> client.ApiClient:
    """An official client acting with ``token`` (default: the admin's)."""
    kubeconfig = kube.write_kubeconfig(path, token=token)
    return config.new_client_from_config(config_file=str(kubeconfig))


def bot(kube: KubeEmulator, tmp_path: Path) -> client.ApiClient:
    return client_for(kube, tmp_path / "bot", kube.service_account_token("staging", "bot"))


BOT = "system:serviceaccount:staging:bot"


def test_no_token_or_an_unknown_one_is_401_with_a_status(
    kube: KubeEmulator, tmp_path: Path
) -> None:
    """Without a token, or with one the server never issued, every request is a 401."""
    pool = https(kube)
    for headers in ({}, {"Authorization": "Bearer made-up"}, {"Authorization": "Basic eDp5"}):
        answer = pool.request("GET", f"{kube.url}/api/v1/namespaces", headers=headers)
        assert answer.status == 401
        assert json.loads(answer.data) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }
    with pytest.raises(ApiException) as raised:
        client.CoreV1Api(client_for(kube, tmp_path / "k", "made-up")).list_namespace()
    assert raised.value.status == 401
    assert [r.status for r in kube.requests()][-1] == 401


def test_static_token_file_maps_tokens_to_users_and_groups(tmp_path: Path) -> None:
    """A ``--token-auth-file`` CSV: each token acts as its user, in its quoted groups."""
    tokens = tmp_path / "tokens.csv"
    tokens.write_text('t-ops,olga,1001,"ops,readers"\nt-dev,dave,1002\n')
    with KubeEmulator(token_file=tokens) as kube:
        kube.seed(role("reader", None, rule([""], ["namespaces"], ["get", "list"])))
        kube.seed(
            binding("readers", None, "ClusterRole", "reader", {"kind": "Group", "name": "readers"})
        )
        olga = client.CoreV1Api(client_for(kube, tmp_path / "olga", "t-ops"))
        assert "default" in [n.metadata.name for n in olga.list_namespace().items]
        dave = client.CoreV1Api(client_for(kube, tmp_path / "dave", "t-dev"))
        assert forbidden_message(dave.list_namespace) == (
            'namespaces is forbidden: User "dave" cannot list resource "namespaces" in API '
            'group "" at the cluster scope'
        )


def test_token_request_issues_a_service_account_token_bound_to_the_account(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    """TokenRequest (client and ``kubectl create token``) gives a token acting as
    system:serviceaccount:<ns>:<name> in system:serviceaccounts:<ns>; deleting the account
    ends it."""
    admin = client.CoreV1Api(client_for(cluster, tmp_path / "admin"))
    answer = admin.create_namespaced_service_account_token(
        "bot", "staging", {"spec": {"expirationSeconds": 3600}}
    )
    token = answer.status.token
    printed = run_kubectl(tmp_path / "admin", "create", "token", "bot", "-n", "staging")
    assert printed.returncode == 0, printed.stderr
    cluster.seed(role("lister", "staging", rule([""], ["configmaps"], ["list"])))
    group = {"kind": "Group", "name": "system:serviceaccounts:staging"}
    cluster.seed(binding("lister", "staging", "Role", "lister", group))
    for issued in (token, printed.stdout.strip()):
        core = client.CoreV1Api(client_for(cluster, tmp_path / "bot", issued))
        assert core.list_namespaced_config_map("staging").items == []
        assert forbidden_message(lambda c=core: c.list_namespaced_secret("staging")) == (
            f'secrets is forbidden: User "{BOT}" cannot list resource "secrets" in API group '
            '"" in the namespace "staging"'
        )
    admin.delete_namespaced_service_account("bot", "staging")
    with pytest.raises(ApiException) as raised:
        core.list_namespaced_config_map("staging")
    assert raised.value.status == 401
    with pytest.raises(ApiException) as missing:
        admin.create_namespaced_service_account_token("gone", "staging", {"spec": {}})
    assert missing.value.status == 404


def test_a_role_grants_in_its_namespace_only_and_403_names_the_missing_right(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    """A Role in staging lets the bot patch staging's Deployment; production's answers the
    real server's Forbidden, for server-side apply and its dry run alike, and is unchanged."""
    cluster.seed(role("deployer", "staging", rule(["apps"], ["deployments"], ["get", "patch"])))
    cluster.seed(binding("deployer", "staging", "Role", "deployer", sa("bot")))
    dyn = DynamicClient(bot(cluster, tmp_path))
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    before = cluster.get("apps/v1", "Deployment", "web", "production")
    assert before is not None
    change = {**deployment("web", "staging"), "metadata": {"name": "web", "labels": {"a": "b"}}}
    applied = deployments.server_side_apply(
        body=change, name="web", namespace="staging", field_manager="t"
    )
    assert applied.to_dict()["metadata"]["labels"] == {"a": "b"}
    expected = (
        f'deployments.apps "web" is forbidden: User "{BOT}" cannot patch resource '
        '"deployments" in API group "apps" in the namespace "production"'
    )
    for extra in ({}, {"dry_run": "All"}):
        message = forbidden_message(
            lambda e=extra: deployments.server_side_apply(
                body=change, name="web", namespace="production", field_manager="t", **e
            )
        )
        assert message == expected
    assert cluster.get("apps/v1", "Deployment", "web", "production") == before


def test_resource_names_and_subresources_are_rights_of_their_own(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    """resourceNames limit a rule to those names (a one-name watch included);
    ``deployments/scale`` and ``pods/log`` are granted apart from their parent."""
    cluster.seed(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "staging"},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }
    )
    cluster.seed(deployment("other", "staging"))
    cluster.seed(
        role(
            "narrow",
            "staging",
            rule(["apps"], ["deployments"], ["get", "watch"], resourceNames=["web"]),
            rule(["apps"], ["deployments/scale"], ["get", "patch"]),
            rule([""], ["pods/log"], ["get"]),
        )
    )
    cluster.seed(binding("narrow", "staging", "Role", "narrow", sa("bot")))
    api = bot(cluster, tmp_path)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    assert apps.read_namespaced_deployment("web", "staging").metadata.name == "web"
    assert "cannot get resource" in forbidden_message(
        lambda: apps.read_namespaced_deployment("other", "staging")
    )
    one = apps.list_namespaced_deployment(
        "staging",
        field_selector="metadata.name=web",
        watch=True,
        timeout_seconds=1,
        _preload_content=False,
    )
    assert one.status == 200
    one.close()
    assert "cannot list resource" in forbidden_message(
        lambda: apps.list_namespaced_deployment("staging")
    )
    scaled = apps.patch_namespaced_deployment_scale("other", "staging", {"spec": {"replicas": 3}})
    assert scaled.spec.replicas == 3
    assert cluster.get("apps/v1", "Deployment", "other", "staging")["spec"]["replicas"] == 3
    assert forbidden_message(
        lambda: apps.patch_namespaced_deployment("other", "staging", {"spec": {"replicas": 1}})
    ).endswith('cannot patch resource "deployments" in API group "apps" in the namespace "staging"')
    assert core.read_namespaced_pod_log("p", "staging") == ""
    assert forbidden_message(lambda: core.read_namespaced_pod("p", "staging")) == (
        f'pods "p" is forbidden: User "{BOT}" cannot get resource "pods" in API group "" in '
        'the namespace "staging"'
    )
    assert 'cannot patch resource "deployments/scale"' in forbidden_message(
        lambda: apps.patch_namespaced_deployment_scale(
            "web", "production", {"spec": {"replicas": 0}}
        )
    )


def test_cluster_roles_wildcards_and_aggregation(cluster: KubeEmulator, tmp_path: Path) -> None:
    """A ClusterRole bound in a namespace grants there only; ``*`` matches any verb, group
    and resource; an aggregated ClusterRole grants what the roles it selects grant, as
    soon as they exist."""
    cluster.seed(role("everything", None, rule(["*"], ["*"], ["*"])))
    cluster.seed(binding("all-in-staging", "staging", "ClusterRole", "everything", sa("bot")))
    cluster.seed(
        role(
            "aggregate",
            None,
            aggregationRule={
                "clusterRoleSelectors": [{"matchLabels": {"rsolv.dev/aggregate-to": "ns-reader"}}]
            },
        )
    )
    cluster.seed(binding("ns-reader", None, "ClusterRole", "aggregate", sa("bot")))
    api = bot(cluster, tmp_path)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.delete_namespaced_deployment("web", "staging")
    assert 'in the namespace "production"' in forbidden_message(
        lambda: apps.delete_namespaced_deployment("web", "production")
    )
    assert "at the cluster scope" in forbidden_message(core.list_namespace)
    piece = role("ns-reader-piece", None, rule([""], ["namespaces"], ["list"]))
    piece["metadata"]["labels"] = {"rsolv.dev/aggregate-to": "ns-reader"}
    cluster.seed(piece)
    assert "production" in [n.metadata.name for n in core.list_namespace().items]


def test_system_masters_may_do_anything_without_any_binding(
    kube: KubeEmulator, tmp_path: Path
) -> None:
    """The system:masters group bypasses RBAC, as the real server's first authorizer: with
    the cluster-admin binding deleted, it still may."""
    kube.add_token("root-token", "root", groups=["system:masters"])
    rbac = client.RbacAuthorizationV1Api(client_for(kube, tmp_path / "admin"))
    rbac.delete_cluster_role_binding("cluster-admin")
    root = client.CoreV1Api(client_for(kube, tmp_path / "root", "root-token"))
    root.create_namespace(namespace("made-by-root"))
    assert kube.get("v1", "Namespace", "made-by-root") is not None


def test_discovery_is_open_to_every_authenticated_user_and_kubectl_prints_the_403(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    """A user with no role still discovers the API (system:discovery), so clients work and
    kubectl reports the server's Forbidden; anonymous requests, when allowed, see only
    /version."""
    token = cluster.service_account_token("staging", "bot")
    DynamicClient(bot(cluster, tmp_path)).resources.get(api_version="apps/v1", kind="Deployment")
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubectl-bot", token=token)
    listed = run_kubectl(kubeconfig, "get", "deployments", "-n", "production")
    assert listed.returncode == 1
    assert listed.stderr.strip() == (
        f'Error from server (Forbidden): deployments.apps is forbidden: User "{BOT}" cannot '
        'list resource "deployments" in API group "apps" in the namespace "production"'
    )
    with KubeEmulator(anonymous_auth=True) as open_door:
        pool = https(open_door)
        assert pool.request("GET", f"{open_door.url}/version").status == 200
        refused = pool.request("GET", f"{open_door.url}/api")
        assert refused.status == 403
        assert json.loads(refused.data)["message"] == (
            'forbidden: User "system:anonymous" cannot get path "/api"'
        )


def test_an_apply_that_creates_is_authorized_as_a_create(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    """Server-side apply of an object that does not exist needs ``create`` as well as
    ``patch``, as on the real server; an existing object needs ``patch`` only."""
    cluster.seed(role("patcher", "staging", rule([""], ["configmaps"], ["patch"])))
    cluster.seed(binding("patcher", "staging", "Role", "patcher", sa("bot")))
    configmaps = DynamicClient(bot(cluster, tmp_path)).resources.get(
        api_version="v1", kind="ConfigMap"
    )
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    assert forbidden_message(
        lambda: configmaps.server_side_apply(
            body=body, name="c", namespace="staging", field_manager="t"
        )
    ) == (
        f'configmaps "c" is forbidden: User "{BOT}" cannot create resource "configmaps" in '
        'API group "" in the namespace "staging"'
    )
    assert cluster.get("v1", "ConfigMap", "c", "staging") is None
    cluster.seed({**body, "metadata": {"name": "c", "namespace": "staging"}})
    configmaps.server_side_apply(
        body={**body, "data": {"a": "2"}}, name="c", namespace="staging", field_manager="t"
    )
    assert cluster.get("v1", "ConfigMap", "c", "staging")["data"] == {"a": "2"}


def test_no_one_grants_a_right_they_lack_unless_they_may_bind_or_escalate(
    cluster: KubeEmulator, tmp_path: Path
) -> None:
    """RBAC's escalation prevention: a user who may write RoleBindings and Roles still
    cannot bind a role, or write one, with rights it does not hold; ``bind`` on that role,
    ``escalate`` on roles, or holding the rights lets it."""
    secrets_rule = rule([""], ["secrets"], ["get"])
    cluster.seed(role("secret-reader", "staging", secrets_rule))
    cluster.seed(
        role(
            "rbac-writer",
            "staging",
            rule(["rbac.authorization.k8s.io"], ["rolebindings", "roles"], ["create"]),
        )
    )
    cluster.seed(binding("rbac-writer", "staging", "Role", "rbac-writer", sa("bot")))
    rbac = client.RbacAuthorizationV1Api(bot(cluster, tmp_path))
    grant = binding("grab", "staging", "Role", "secret-reader", sa("bot"))
    assert forbidden_message(lambda: rbac.create_namespaced_role_binding("staging", grant)) == (
        f'rolebindings.rbac.authorization.k8s.io "grab" is forbidden: user "{BOT}" '
        '(groups=["system:serviceaccounts" "system:serviceaccounts:staging" '
        '"system:authenticated"]) is attempting to grant RBAC permissions not currently '
        'held:\n{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}'
    )
    mine = role("mine", "staging", secrets_rule)
    assert "not currently held" in forbidden_message(
        lambda: rbac.create_namespaced_role("staging", mine)
    )
    assert [b["metadata"]["name"] for b in cluster.list("RoleBinding", "staging")] == [
        "rbac-writer"
    ]
    cluster.seed(
        role(
            "may-bind",
            "staging",
            rule(
                ["rbac.authorization.k8s.io"], ["roles"], ["bind"], resourceNames=["secret-reader"]
            ),
            rule(["rbac.authorization.k8s.io"], ["roles"], ["escalate"]),
        )
    )
    cluster.seed(binding("may-bind", "staging", "Role", "may-bind", sa("bot")))
    rbac.create_namespaced_role_binding("staging", grant)
    rbac.create_namespaced_role("staging", mine)
    # Now it holds secrets/get: binding another role with that right needs no bind right.
    cluster.seed(role("secret-reader-2", "staging", secrets_rule))
    rbac.create_namespaced_role_binding(
        "staging", binding("again", "staging", "Role", "secret-reader-2", sa("bot"))
    )
