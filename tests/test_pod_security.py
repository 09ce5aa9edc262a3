"""Every pod we ship passes Pod Security "restricted" where its namespace enforces it.

The checks of the Pod Security Standards (restricted, which includes baseline) as the
API server's admission applies them to a pod template, over everything
scripts/render_all.py renders (the four overlays and provisioning's objects).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

from rsolv_staging.environments import default_topology
from rsolv_staging.provisioning import namespaces
from rsolv_staging.settings import REPO_ROOT

Manifest = dict[str, Any]
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _rendered() -> dict[str, list[Manifest]]:
    spec = importlib.util.spec_from_file_location(
        "render_all", REPO_ROOT / "scripts" / "render_all.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered: dict[str, list[Manifest]] = module.rendered()
    return rendered


def restricted_violations(pod: Manifest) -> Iterator[str]:
    """What Pod Security "restricted" (and so "baseline") refuses in ``pod`` (a PodSpec)."""
    pod_sc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            yield flag
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            yield f"volume {volume['name']}: {sorted(kinds)}"
    containers = [
        *pod.get("initContainers", []),
        *pod.get("containers", []),
        *pod.get("ephemeralContainers", []),
    ]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            yield f"{name}: privileged"
        if sc.get("allowPrivilegeEscalation") is not False:
            yield f"{name}: allowPrivilegeEscalation != false"
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            yield f"{name}: capabilities.drop lacks ALL"
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            yield f"{name}: capabilities.add {caps['add']}"
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            yield f"{name}: runAsNonRoot != true"
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            yield f"{name}: runAsUser 0"
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield f"{name}: seccompProfile {seccomp}"
        if any(p.get("hostPort") for p in c.get("ports", [])):
            yield f"{name}: hostPort"


def _pods(objects: list[Manifest]) -> Iterator[tuple[str, str, Manifest]]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            meta = obj["metadata"]
            yield meta["namespace"], meta["name"], obj["spec"]["template"]["spec"]


def test_the_staging_namespaces_enforce_restricted_with_warn_audit_and_versions() -> None:
    env = default_topology().staging
    for ns in namespaces(env):
        labels = ns["metadata"]["labels"]
        for mode in ("enforce", "warn", "audit"):
            assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
            assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "v1.33"


@pytest.mark.parametrize(
    "source",
    [
        "apps-staging",
        "apps-production",
        "monitoring-staging",
        "monitoring-production",
        "provisioning-staging",
    ],
)
def test_every_pod_we_ship_passes_restricted(source: str) -> None:
    """Restricted everywhere (production's namespaces are not labelled by us, yet)."""
    pods = list(_pods(_rendered()[source]))
    assert pods
    problems = {f"{ns}/{name}": list(restricted_violations(pod)) for ns, name, pod in pods}
    assert {k: v for k, v in problems.items() if v} == {}


def test_the_check_refuses_what_restricted_refuses() -> None:
    ok = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    assert list(restricted_violations(ok)) == []
    bad = {**ok, "volumes": [{"name": "h", "hostPath": {"path": "/"}}], "hostNetwork": True}
    assert len(list(restricted_violations(bad))) == 2
    assert list(restricted_violations({**ok, "securityContext": {}})) == [
        "c: runAsNonRoot != true",
        "c: seccompProfile None",
    ]
