"""The kustomize tree renders, validates, and agrees with the environment model."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rsolv_staging.environments import Environment, default_topology
from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.images import parse_image
from tasks.manifests import DEPLOYMENTS, ManifestError, render
from tests.plugins.rendered import render_all

TOPOLOGY = default_topology()
DIGEST = "sha256:" + "ab" * 32


def _render(env: Environment) -> list[dict[str, Any]]:
    return render(DEPLOYMENTS / "overlays" / env.name)


def _of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize("env", [TOPOLOGY.staging, TOPOLOGY.production], ids=lambda e: e.name)
def test_overlay_matches_the_environment_model(env: Environment) -> None:
    """Namespace, replicas, CPU/memory, domains, secrets, log level and DB host are the model's."""
    objects = _render(env)
    assert {o["metadata"]["namespace"] for o in objects} == {env.namespace}
    deployments = _of_kind(objects, "Deployment")
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(env.apps)
    for deployment in deployments:
        assert deployment["spec"]["replicas"] == env.app_resources.replicas
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        wanted = {"cpu": env.app_resources.cpu, "memory": env.app_resources.memory}
        assert container["resources"] == {"requests": wanted, "limits": wanted}
        assert container["readinessProbe"]["httpGet"]["path"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "rsolv"  # what NetworkPolicies select
    (ingress,) = _of_kind(objects, "Ingress")
    assert [r["host"] for r in ingress["spec"]["rules"]] == [env.domain, env.api_domain]
    assert ingress["spec"]["tls"][0]["hosts"] == [env.domain, env.api_domain]
    assert ingress["spec"]["ingressClassName"] == env.cluster.ingress_class
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == (
        env.cluster.cluster_issuer
    )
    secret_names = {env.secret_name(s) for s in TOPOLOGY.secrets}
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for d in deployments
        for c in d["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if "valueFrom" in e
    }
    assert refs
    assert refs <= secret_names
    (config,) = _of_kind(objects, "ConfigMap")
    assert config["data"]["LOG_LEVEL"] == env.monitoring.log_level
    assert config["data"]["DATABASE_HOST"] == env.database.host
    assert config["data"]["PHX_HOST"] == env.domain


def _neutral(node: Any, env: Environment) -> Any:
    """Replace every value the RFC lets differ with a placeholder."""
    if isinstance(node, dict):
        out = {k: _neutral(v, env) for k, v in node.items()}
        if "replicas" in out and isinstance(out["replicas"], int):
            out["replicas"] = "<replicas>"
        if set(out) == {"cpu", "memory"}:
            out = {"cpu": "<cpu>", "memory": "<memory>"}
        return out
    if isinstance(node, list):
        return [_neutral(v, env) for v in node]
    if isinstance(node, str):
        for value, placeholder in (
            (env.database.host, "<db-host>"),
            (env.api_domain, "<api-domain>"),
            (env.domain, "<domain>"),
        ):
            node = node.replace(value, placeholder)
        if node.startswith(env.secret_prefix):
            node = "<prefix>" + node.removeprefix(env.secret_prefix)
        if node in (env.namespace, env.name):
            node = "<env>"
        if node == env.monitoring.log_level:
            node = "<log-level>"
    return node


def test_overlays_differ_only_where_the_rfc_says() -> None:
    """With namespace, size, domain, secrets, log level and DB host neutralised, they are equal.

    Besides production's NetworkPolicies, which only its overlay ships (staging's come from
    provisioning; tests/test_network_policies.py checks both against the model).
    """
    production_objects = _render(TOPOLOGY.production)
    assert _of_kind(production_objects, "NetworkPolicy")
    assert _of_kind(_render(TOPOLOGY.staging), "NetworkPolicy") == []
    staging = _neutral(_render(TOPOLOGY.staging), TOPOLOGY.staging)
    production = _neutral(
        [o for o in production_objects if o["kind"] != "NetworkPolicy"], TOPOLOGY.production
    )
    assert staging == production


# name[:tag]@sha256:<64 hex>, nothing else: a tag alone can move.
_PINNED = re.compile(
    r"^[a-z0-9.-]+(?::[0-9]+)?(?:/[a-z0-9._-]+)*(?::[\w][\w.-]*)?@sha256:[0-9a-f]{64}$"
)


def _images(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images(value)
    elif isinstance(node, list):
        for item in node:
            yield from _images(item)


def test_every_image_we_render_or_build_is_pinned_by_digest() -> None:
    """The four overlays (apps with a deploy's digests) and provisioning's objects."""
    rendered = render_all()
    assert set(rendered) == {
        "apps-staging",
        "apps-production",
        "monitoring-staging",
        "monitoring-production",
        "provisioning-staging",
    }
    images = {image for objects in rendered.values() for image in _images(objects)}
    assert len(images) >= 5  # two apps, Prometheus, Alertmanager, Grafana, PostgreSQL
    assert sorted(i for i in images if not _PINNED.match(i)) == []
    assert any(i.startswith("postgres:") for i in images)


@pytest.mark.parametrize(
    "image",
    ["postgres:15", "postgres", "prom/prometheus:v3.5.0", "postgres:15@sha256:abc"],
)
def test_the_pin_check_refuses_floating_images(image: str) -> None:
    assert not _PINNED.match(image)


def test_images_are_pinned_to_the_given_digest() -> None:
    """Each app's container runs exactly the digest given; the other keeps its placeholder."""
    ref = parse_image(f"registry.example/rsolv/api@{DIGEST}")
    objects = render(DEPLOYMENTS / "overlays" / "staging", images={"rsolv-api": ref})
    images = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in _of_kind(objects, "Deployment")
    }
    assert images == {
        "rsolv-api": f"registry.example/rsolv/api@{DIGEST}",
        "rsolv-landing": "ghcr.io/rsolv-dev/rsolv-landing",
    }


def test_unknown_application_is_refused() -> None:
    """An image for an app the tree does not have is an error, not silently ignored."""
    ref = parse_image(f"ghcr.io/rsolv-dev/other@{DIGEST}")
    with pytest.raises(ManifestError, match="unknown application"):
        render(DEPLOYMENTS / "overlays" / "staging", images={"rsolv-other": ref})


def test_schema_validation_catches_a_typo(tmp_path: Path) -> None:
    """A misspelt field (replicaz) fails strict validation, naming the object."""
    tree = tmp_path / "deployments"
    shutil.copytree(DEPLOYMENTS, tree)
    api = tree / "base" / "api.yaml"
    api.write_text(api.read_text().replace("  replicas: 1\n", "  replicaz: 1\n", 1))
    with pytest.raises(ManifestError, match=r"Deployment/staging/rsolv-api.*replicaz"):
        render(tree / "overlays" / "staging")


def test_broken_kustomization_is_a_clear_error(tmp_path: Path) -> None:
    """A kustomization naming a missing file fails with kustomize's reason."""
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(ManifestError, match=r"missing\.yaml"):
        render(tmp_path)


@pytest.mark.parametrize(
    "reference",
    [
        "ghcr.io/rsolv-dev/rsolv-api:latest",
        "ghcr.io/rsolv-dev/rsolv-api",
        "ghcr.io/rsolv-dev/rsolv-api@sha256:abc",
        "Ghcr.io/RSOLV/API@" + DIGEST,
        "",
    ],
)
def test_floating_or_malformed_images_are_refused(reference: str) -> None:
    """Tags float and malformed references are refused before any render."""
    with pytest.raises(ConfigurationError, match="image"):
        parse_image(reference)
