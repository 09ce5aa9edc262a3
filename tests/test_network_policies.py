"""NetworkPolicies evaluated as Kubernetes does: the source's egress AND the destination's ingress.

Over everything we ship: provisioning's staging policies (``network_policies``) and the
production overlays' (rendered with the project's kubectl, and compared with the model's
``production_network_policies``). Pods carry the labels the rendered workloads give them.
The expected allow/deny cases are data (``CASES``), one line each.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from rsolv_staging.environments import topology_from_mapping
from rsolv_staging.images import ImageRef
from rsolv_staging.provisioning import network_policies, production_network_policies
from tasks.manifests import BASE_IMAGES, DEPLOYMENTS, render

# The API server at a node's (private) address, as k3s serves it; the model names it.
API_SERVER = "192.168.1.10"
TOPOLOGY = topology_from_mapping(
    {"production": {"cluster": {"api_server_cidrs": [f"{API_SERVER}/32"]}}}
)
STAGING, PRODUCTION = TOPOLOGY.staging, TOPOLOGY.production
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace, labels, IP) or, with no namespace, an address outside the pod network."""

    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "this evaluator only knows matchLabels"
    wanted: Mapping[str, str] = selector.get("matchLabels", {})
    return wanted.items() <= labels.items()


def _peer_matches(peer: Mapping[str, Any], policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        ns_ok = _selects(
            peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace}
        )
    else:
        ns_ok = other.namespace == policy_ns
    return ns_ok and _selects(peer.get("podSelector", {}), other.labels)


def _port_matches(rule: Mapping[str, Any], port: int, protocol: str) -> bool:
    ports = rule.get("ports", [])
    return not ports or any(
        p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports
    )


def _permits(
    policies: list[Manifest], pod: Endpoint, other: Endpoint, port: int, protocol: str, way: str
) -> bool:
    """Whether ``pod``'s policies allow traffic with ``other`` (``way``: Ingress or Egress)."""
    if pod.namespace is None:
        return True
    relevant = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and _selects(p["spec"]["podSelector"], pod.labels)
        and way in p["spec"]["policyTypes"]
    ]
    if not relevant:
        return True  # no policy selects it: Kubernetes allows everything
    peers_key = "from" if way == "Ingress" else "to"
    for policy in relevant:
        for rule in policy["spec"].get(way.lower()) or []:
            if not _port_matches(rule, port, protocol):
                continue
            peers = rule.get(peers_key)
            if not peers or any(
                _peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers
            ):
                return True
    return False


def can_connect(
    policies: list[Manifest], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Both ends must agree: the source's egress and the destination's ingress."""
    return _permits(policies, src, dst, port, protocol, "Egress") and _permits(
        policies, dst, src, port, protocol, "Ingress"
    )


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    """Everything we ship that holds pods or policies, rendered once for the module."""
    digest = "sha256:" + "ab" * 32
    images = {app: ImageRef(name, digest) for app, name in BASE_IMAGES.items()}
    return {
        "apps-production": render(DEPLOYMENTS / "overlays" / "production", images=images),
        "apps-staging": render(DEPLOYMENTS / "overlays" / "staging", images=images),
        "monitoring-production": render(DEPLOYMENTS / "monitoring" / "overlays" / "production"),
        "monitoring-staging": render(DEPLOYMENTS / "monitoring" / "overlays" / "staging"),
    }


def _pod_labels(objects: list[Manifest], kind: str, name: str) -> dict[str, str]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    labels: dict[str, str] = found["spec"]["template"]["metadata"]["labels"]
    return labels


def _shipped_policies(rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    shipped = [o for objs in rendered.values() for o in objs if o["kind"] == "NetworkPolicy"]
    return [*network_policies(TOPOLOGY), *shipped]


def test_production_overlays_ship_the_models_policies_and_staging_ships_none(
    rendered: dict[str, list[Manifest]],
) -> None:
    """The policies in the production overlays are the model's, typed once; staging's come
    from provisioning only."""

    def spec_by_key(objects: list[Manifest]) -> dict[tuple[str, str], Any]:
        return {
            (o["metadata"]["namespace"], o["metadata"]["name"]): o["spec"]
            for o in objects
            if o["kind"] == "NetworkPolicy"
        }

    shipped = spec_by_key(rendered["apps-production"] + rendered["monitoring-production"])
    assert shipped == spec_by_key(production_network_policies(TOPOLOGY))
    assert spec_by_key(rendered["apps-staging"] + rendered["monitoring-staging"]) == {}


def _endpoints(rendered: dict[str, list[Manifest]]) -> dict[str, Endpoint]:
    """Every party of the cases below, with the labels its rendered workload gives it."""

    def pod(source: str, kind: str, name: str, ip: str, namespace: str) -> Endpoint:
        return Endpoint(ip, namespace, _pod_labels(rendered[source], kind, name))

    mon, prod_mon = STAGING.monitoring.namespace, PRODUCTION.monitoring.namespace
    db = STAGING.database
    kube_system = STAGING.cluster.ingress_namespace
    return {
        "staging-api": pod("apps-staging", "Deployment", "rsolv-api", "10.42.1.5", "staging"),
        "staging-landing": pod(
            "apps-staging", "Deployment", "rsolv-landing", "10.42.1.6", "staging"
        ),
        "staging-postgres": Endpoint(
            "10.42.1.7", STAGING.namespace, {"app.kubernetes.io/name": db.service}
        ),
        "staging-sync": Endpoint("10.42.1.8", STAGING.namespace, dict(db.sync_pod_labels)),
        "staging-other": Endpoint("10.42.1.9", STAGING.namespace, {"app": "debug-shell"}),
        "prometheus": pod("monitoring-staging", "StatefulSet", "prometheus", "10.42.0.10", mon),
        "grafana": pod("monitoring-staging", "Deployment", "grafana", "10.42.0.11", mon),
        "alertmanager": pod("monitoring-staging", "Deployment", "alertmanager", "10.42.0.12", mon),
        "production-api": pod(
            "apps-production", "Deployment", "rsolv-api", "10.42.2.5", PRODUCTION.namespace
        ),
        "production-landing": pod(
            "apps-production", "Deployment", "rsolv-landing", "10.42.2.6", PRODUCTION.namespace
        ),
        "production-prometheus": pod(
            "monitoring-production", "StatefulSet", "prometheus", "10.42.2.9", prod_mon
        ),
        "production-grafana": pod(
            "monitoring-production", "Deployment", "grafana", "10.42.2.10", prod_mon
        ),
        "traefik": Endpoint("10.42.3.3", kube_system, dict(STAGING.cluster.ingress_pod_labels)),
        "coredns": Endpoint("10.42.3.4", kube_system, dict(STAGING.cluster.dns_pod_labels)),
        "kube-system-other": Endpoint("10.42.3.5", kube_system, {"k8s-app": "metrics-server"}),
        "api-server": Endpoint(API_SERVER),  # a node's address, where k3s serves the API
        "other-node": Endpoint("192.168.1.11"),  # production's NodePorts answer on every node
        "internet": Endpoint("52.1.2.3"),  # a third-party API
    }


# (source, destination, port, protocol, allowed?)
CASES: list[tuple[str, str, int, str, bool]] = [
    # staging <-> production, both ways
    ("staging-api", "production-api", 4000, "TCP", False),
    ("staging-api", "production-prometheus", 9090, "TCP", False),
    ("production-api", "staging-api", 4000, "TCP", False),
    ("production-api", "staging-postgres", 5432, "TCP", False),
    ("production-prometheus", "staging-api", 4000, "TCP", False),  # monitoring -> staging
    ("production-prometheus", "prometheus", 9090, "TCP", False),
    ("production-api", "grafana", 3000, "TCP", False),
    # staging's Prometheus: the apps' metrics port, never the database, never production
    ("prometheus", "staging-api", 4000, "TCP", True),
    ("prometheus", "staging-landing", 4000, "TCP", True),
    ("prometheus", "staging-postgres", 5432, "TCP", False),
    ("prometheus", "staging-api", 5432, "TCP", False),
    ("prometheus", "api-server", 6443, "TCP", True),  # service discovery
    ("prometheus", "other-node", 6443, "TCP", False),  # private, and not the API server
    ("prometheus", "other-node", 30080, "TCP", False),
    ("prometheus", "alertmanager", 9093, "TCP", True),
    ("prometheus", "production-api", 4000, "TCP", False),
    ("prometheus", "production-api", 443, "TCP", False),  # the API ports, but a pod
    ("prometheus", "production-prometheus", 9090, "TCP", False),
    ("grafana", "prometheus", 9090, "TCP", True),
    ("staging-api", "prometheus", 9090, "TCP", False),
    ("grafana", "staging-api", 4000, "TCP", False),  # only Prometheus may enter staging
    ("grafana", "api-server", 6443, "TCP", False),
    ("alertmanager", "api-server", 443, "TCP", False),
    # the ingress controller's pods, not kube-system as a whole
    ("traefik", "staging-api", 4000, "TCP", True),
    ("traefik", "staging-landing", 4000, "TCP", True),
    ("traefik", "grafana", 3000, "TCP", True),
    ("traefik", "prometheus", 9090, "TCP", False),  # only Grafana is exposed
    ("traefik", "staging-postgres", 5432, "TCP", False),
    ("kube-system-other", "staging-api", 4000, "TCP", False),
    ("kube-system-other", "grafana", 3000, "TCP", False),
    # DNS: CoreDNS's pods on 53 only
    ("staging-api", "coredns", 53, "UDP", True),
    ("staging-api", "coredns", 53, "TCP", True),
    ("staging-postgres", "coredns", 53, "UDP", True),
    ("prometheus", "coredns", 53, "UDP", True),
    ("staging-api", "kube-system-other", 53, "UDP", False),
    ("staging-api", "kube-system-other", 53, "TCP", False),
    ("staging-api", "coredns", 9153, "TCP", False),
    # the database: the apps and the sync's pods, on 5432 only
    ("staging-api", "staging-postgres", 5432, "TCP", True),
    ("staging-sync", "staging-postgres", 5432, "TCP", True),
    ("staging-other", "staging-postgres", 5432, "TCP", False),
    ("staging-api", "staging-postgres", 22, "TCP", False),
    ("staging-landing", "staging-api", 4000, "TCP", True),
    ("staging-other", "staging-api", 4000, "TCP", False),
    # nodes and the internet
    ("staging-api", "other-node", 30080, "TCP", False),  # a production NodePort
    ("staging-api", "api-server", 6443, "TCP", False),
    ("staging-api", "internet", 443, "TCP", True),
    ("staging-api", "internet", 80, "TCP", False),
    ("staging-api", "internet", 25, "TCP", False),
    ("staging-postgres", "internet", 443, "TCP", False),
    ("staging-sync", "internet", 443, "TCP", False),
    ("staging-other", "internet", 443, "TCP", False),
    # into production: only the ingress controller and production's own monitoring
    ("traefik", "production-api", 4000, "TCP", True),
    ("traefik", "production-grafana", 3000, "TCP", True),
    ("production-prometheus", "production-api", 4000, "TCP", True),
    ("production-grafana", "production-prometheus", 9090, "TCP", True),
    ("production-landing", "production-api", 4000, "TCP", True),
    ("kube-system-other", "production-api", 4000, "TCP", False),
    ("kube-system-other", "production-grafana", 3000, "TCP", False),
    ("prometheus", "production-grafana", 3000, "TCP", False),
    ("grafana", "production-prometheus", 9090, "TCP", False),
    ("staging-sync", "production-api", 4000, "TCP", False),
    ("traefik", "production-prometheus", 9090, "TCP", False),
]


@pytest.mark.parametrize(
    ("source", "destination", "port", "protocol", "allowed"),
    CASES,
    ids=[f"{s}->{d}:{p}/{proto}" for s, d, p, proto, _ in CASES],
)
def test_connectivity(
    source: str,
    destination: str,
    port: int,
    protocol: str,
    allowed: bool,
    rendered: dict[str, list[Manifest]],
) -> None:
    """Each case as a CNI would decide it, over every policy we ship."""
    ends = _endpoints(rendered)
    policies = _shipped_policies(rendered)
    assert can_connect(policies, ends[source], ends[destination], port, protocol) is allowed


def test_prometheus_reaches_no_private_address_when_the_model_names_no_api_server(
    rendered: dict[str, list[Manifest]],
) -> None:
    """Without api_server_cidrs, discovery egress stays off the private ranges entirely."""
    default = topology_from_mapping({})
    ends = _endpoints(rendered)
    policies = network_policies(default)
    assert not can_connect(policies, ends["prometheus"], ends["api-server"], 6443)
    assert can_connect(policies, ends["prometheus"], Endpoint("52.1.2.4"), 6443)
