"""Every pod we ship passes Pod Security "restricted" where its namespace enforces it.

Judged by the emulator's Pod Security admission (``kube_emulator/podsecurity.py``: the
standard's baseline and restricted checks, worded as kube-apiserver words them, tested
in tests/test_kube_emulator.py) over every workload's pod template in everything
scripts/render_all.py renders (the four overlays and provisioning's objects).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kube_emulator.podsecurity import template_pod, violations
from rsolv_staging.environments import default_topology
from rsolv_staging.provisioning import namespaces
from tests.plugins.rendered import Manifest, render_all


def _pods(objects: list[Manifest]) -> Iterator[tuple[str, str, Manifest]]:
    for obj in objects:
        pod = template_pod(obj["kind"], obj)
        if pod is not None:
            meta = obj["metadata"]
            yield meta["namespace"], meta["name"], pod


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
    pods = list(_pods(render_all()[source]))
    assert pods
    problems = {f"{ns}/{name}": violations("restricted", pod) for ns, name, pod in pods}
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
    assert violations("restricted", {"spec": ok}) == ""
    bad = {**ok, "volumes": [{"name": "h", "hostPath": {"path": "/"}}], "hostNetwork": True}
    found = violations("restricted", {"spec": bad})
    assert "host namespaces" in found
    assert 'restricted volume type "hostPath"' in found
    found = violations("restricted", {"spec": {**ok, "securityContext": {}}})
    assert "runAsNonRoot != true" in found
    assert "seccompProfile" in found
