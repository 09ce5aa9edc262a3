"""Helpers shared by the deploy and promotion tests: image references, what a namespace
runs, smoke checks files aimed at the local app server, and artifacts read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import Artifact
from prefect.client.schemas.sorting import ArtifactSort

from kube_emulator import KubeEmulator
from tests.plugins.http import Server

API = "ghcr.io/rsolv-dev/rsolv-api"
LANDING = "ghcr.io/rsolv-dev/rsolv-landing"


def images(digest: str) -> dict[str, str]:
    """Both apps' image references at ``digest``."""
    return {"rsolv-api": f"{API}@{digest}", "rsolv-landing": f"{LANDING}@{digest}"}


def app_config_map(name: str, namespace: str) -> dict[str, Any]:
    """A ConfigMap labelled as the apps' own: the deploy prunes it once no longer rendered."""
    labels = {"app.kubernetes.io/part-of": "rsolv", "app.kubernetes.io/managed-by": "rsolv-staging"}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
    }


def running_images(kube: KubeEmulator, namespace: str) -> dict[str, str]:
    """Deployment name -> the image its first container runs in ``namespace``."""
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in kube.list("Deployment", namespace)
    }


def checks_file(
    tmp_path: Path, server: Server, environment: str = "staging", path: str = "/api/health"
) -> str:
    """A smoke checks file for ``environment`` aimed at ``server``: its landing page and
    ``path`` must answer 200 (``/500`` makes the smoke test fail)."""
    file = tmp_path / f"{environment}-checks{path.replace('/', '-')}.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "environment": environment,
                "checks": [
                    {"name": "landing", "url": f"{server.url}/", "status": 200},
                    {"name": "api", "url": f"{server.url}{path}", "status": 200},
                ],
            }
        )
    )
    return str(file)


def newest_artifact(key: str) -> Artifact:
    """The newest artifact under ``key``, read back from the Prefect API."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert artifacts, f"no artifact {key}"
    return artifacts[0]


def latest_artifact(key: str) -> str:
    """The newest artifact's data under ``key``, as text."""
    return str(newest_artifact(key).data)
