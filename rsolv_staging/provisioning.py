"""What "provisioned staging" means, as Kubernetes objects built from the environment model.

Pure functions: the model and the secret values in, plain manifests (dicts) out. The
provision flow applies them server-side; the tests compare them with what the API holds.
Every object carries the labels below, so a person (or a later prune) can find what this
project owns with one selector.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from rsolv_staging.environments import Environment, SecretSpec, Topology
from rsolv_staging.quantities import format_cpu, format_memory

MANAGED_BY = "rsolv-staging"
ENV_LABEL = "rsolv.dev/environment"

Manifest = dict[str, Any]
SecretValues = Mapping[str, Mapping[str, str]]
"""Secret name (e.g. ``staging-database``) -> key -> plain value."""

# Pod labels of the monitoring stack (deployments/monitoring/base) that NetworkPolicies
# select; rsolv_staging.monitoring checks the rendered stack carries them.
PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}
GRAFANA_POD_LABELS = {"app.kubernetes.io/name": "grafana"}


def labels(env: Environment, **extra: str) -> dict[str, str]:
    return {ENV_LABEL: env.name, "app.kubernetes.io/managed-by": MANAGED_BY, **extra}


def _meta(env: Environment, name: str, namespace: str | None, **extra: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels(env, **extra)}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def object_key(obj: Mapping[str, Any]) -> str:
    """``Kind/namespace/name`` (``Kind/name`` for cluster objects): how reports name objects."""
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{obj['kind']}/{ns}/{meta['name']}" if ns else f"{obj['kind']}/{meta['name']}"


def secret_namespace(env: Environment, spec: SecretSpec) -> str:
    """Grafana's credentials live with the monitoring stack; the rest with the apps."""
    return env.monitoring.namespace if spec.name == "monitoring" else env.namespace


def prometheus_service_account(env: Environment) -> str:
    """The scrape-only identity of ``env``'s Prometheus (in its monitoring namespace)."""
    return f"{env.name}-prometheus"


def namespaces(env: Environment) -> list[Manifest]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(env, ns, None)}
        for ns in env.namespaces
    ]


def service_accounts(env: Environment) -> list[Manifest]:
    """One deployer identity confined to the app namespace, one for Prometheus' scraping."""
    ns, mon = env.namespace, env.monitoring.namespace
    deployer = f"{env.name}-deployer"
    prometheus = prometheus_service_account(env)
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(env, deployer, ns)},
        {
            "apiVersion": rbac,
            "kind": "Role",
            "metadata": _meta(env, deployer, ns),
            "rules": [
                {
                    "apiGroups": ["", "apps", "batch", "networking.k8s.io"],
                    "resources": [
                        "deployments",
                        "statefulsets",
                        "replicasets",
                        "jobs",
                        "services",
                        "configmaps",
                        "secrets",
                        "persistentvolumeclaims",
                        "ingresses",
                    ],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["pods", "pods/log", "events"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        _role_binding(env, deployer, ns, account_namespace=ns),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(env, prometheus, mon)},
        {
            # Read-only discovery of scrape targets, granted in the app namespace only:
            # Prometheus in staging-monitoring can never list production's pods.
            "apiVersion": rbac,
            "kind": "Role",
            "metadata": _meta(env, prometheus, ns),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "services", "endpoints"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        _role_binding(env, prometheus, ns, account_namespace=mon),
    ]


def _role_binding(
    env: Environment, name: str, namespace: str, *, account_namespace: str
) -> Manifest:
    """Bind Role ``name`` in ``namespace`` to the ServiceAccount of the same name."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(env, name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": account_namespace}],
    }


def quotas(topology: Topology) -> list[Manifest]:
    """ResourceQuota and LimitRange, both from the model (staging = 50% of production)."""
    env = topology.staging
    q = env.quota
    app = env.app_resources
    db = env.database.resources
    biggest_cpu = max(app.millicores, db.millicores)
    biggest_mem = max(app.memory_bytes, db.memory_bytes)
    return [
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": _meta(env, f"{env.name}-quota", env.namespace),
            "spec": {
                "hard": {
                    "requests.cpu": q.requests_cpu,
                    "requests.memory": q.requests_memory,
                    "limits.cpu": q.limits_cpu,
                    "limits.memory": q.limits_memory,
                    "requests.storage": q.storage,
                    "pods": str(q.pods),
                }
            },
        },
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": _meta(env, f"{env.name}-limits", env.namespace),
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        # A container that states nothing gets the app's share.
                        "default": {"cpu": app.cpu, "memory": app.memory},
                        "defaultRequest": {"cpu": app.cpu, "memory": app.memory},
                        "max": {
                            "cpu": format_cpu(biggest_cpu),
                            "memory": format_memory(biggest_mem),
                        },
                    }
                ]
            },
        },
    ]


def _from_namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def _dns_egress(topology: Topology) -> dict[str, Any]:
    return {
        "to": [_from_namespace(topology.staging.cluster.dns_namespace)],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def _internet_egress(env: Environment) -> dict[str, Any]:
    # Third-party APIs (ConvertKit, payments, OAuth) are on the internet; the cluster's own
    # ranges and the private networks its nodes sit on are cut out so this rule can never
    # open a path into production (a pod, or a NodePort on a node's address).
    cut = list(dict.fromkeys((*env.cluster.internal_cidrs, *env.cluster.private_cidrs)))
    return {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": cut}}]}


def _kube_api_egress(env: Environment) -> dict[str, Any]:
    # Kubernetes service discovery talks to the API server. Policies see the address after
    # the Service's DNAT, i.e. a node's address (k3s: :6443), outside the pod and service
    # ranges; cutting those ranges out keeps every pod, production's included, unreachable.
    return {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(env.cluster.internal_cidrs)}}],
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
    }


def network_policies(topology: Topology) -> list[Manifest]:
    """No traffic across namespaces, except the ingress controller and staging's scraper.

    Into ``staging``: its own pods, the ingress controller (apps only) and staging's
    Prometheus (to scrape). Into ``staging-monitoring``: its own pods, and the ingress
    controller to Grafana. Out of ``staging-monitoring``: itself, DNS, ``staging``, and
    for Prometheus alone the API server (service discovery); never production.
    """
    return [*_staging_policies(topology), *_monitoring_policies(topology)]


def _staging_policies(topology: Topology) -> list[Manifest]:
    """Into ``staging``: its own pods, the ingress controller and staging's Prometheus."""
    env = topology.staging
    ns, mon = env.namespace, env.monitoring.namespace
    ingress_ns = env.cluster.ingress_namespace
    np = "networking.k8s.io/v1"
    same_namespace: dict[str, Any] = {"podSelector": {}}
    return [
        {
            "apiVersion": np,
            "kind": "NetworkPolicy",
            "metadata": _meta(env, "default-deny-cross-namespace", ns),
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [same_namespace]}],
                "egress": [
                    {"to": [same_namespace]},
                    _dns_egress(topology),
                    _internet_egress(env),
                ],
            },
        },
        {
            "apiVersion": np,
            "kind": "NetworkPolicy",
            "metadata": _meta(env, "allow-ingress-controller", ns),
            "spec": {
                "podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "rsolv"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [_from_namespace(ingress_ns)]}],
            },
        },
        {
            "apiVersion": np,
            "kind": "NetworkPolicy",
            "metadata": _meta(env, "allow-monitoring-scrape", ns),
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress"],
                # Prometheus only (namespace AND pod selector in one peer), not all of
                # staging-monitoring: Grafana and Alertmanager have no business in staging.
                "ingress": [
                    {
                        "from": [
                            {
                                **_from_namespace(mon),
                                "podSelector": {"matchLabels": dict(PROMETHEUS_POD_LABELS)},
                            }
                        ]
                    }
                ],
            },
        },
    ]


def _monitoring_policies(topology: Topology) -> list[Manifest]:
    """In and out of ``staging-monitoring``: itself, DNS, ``staging``, Grafana's ingress.

    And for Prometheus alone, the API server (service discovery); never production.
    """
    env = topology.staging
    ns, mon = env.namespace, env.monitoring.namespace
    ingress_ns = env.cluster.ingress_namespace
    np = "networking.k8s.io/v1"
    same_namespace: dict[str, Any] = {"podSelector": {}}
    return [
        {
            "apiVersion": np,
            "kind": "NetworkPolicy",
            "metadata": _meta(env, "default-deny-cross-namespace", mon),
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [same_namespace]}],
                # Monitoring may reach itself, DNS, and staging's pods (to scrape): nothing else.
                "egress": [
                    {"to": [same_namespace]},
                    {"to": [_from_namespace(ns)]},
                    _dns_egress(topology),
                ],
            },
        },
        {
            # Grafana is the one thing served through the ingress controller
            # (grafana.rsolv-staging.com); Prometheus and Alertmanager are not exposed.
            "apiVersion": np,
            "kind": "NetworkPolicy",
            "metadata": _meta(env, "allow-ingress-controller", mon),
            "spec": {
                "podSelector": {"matchLabels": dict(GRAFANA_POD_LABELS)},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [_from_namespace(ingress_ns)]}],
            },
        },
        {
            "apiVersion": np,
            "kind": "NetworkPolicy",
            "metadata": _meta(env, "allow-prometheus-kube-api", mon),
            "spec": {
                "podSelector": {"matchLabels": dict(PROMETHEUS_POD_LABELS)},
                "policyTypes": ["Egress"],
                "egress": [_kube_api_egress(env)],
            },
        },
    ]


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def secrets(topology: Topology, values: SecretValues) -> list[Manifest]:
    """Staging's own credentials, ``staging-`` prefixed, as base64 ``data``.

    ``data`` rather than ``stringData``: the API server converts ``stringData`` on write,
    so re-applying it would never look unchanged.
    """
    env = topology.staging
    out: list[Manifest] = []
    for spec in topology.secrets:
        name = env.secret_name(spec)
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": _meta(env, name, secret_namespace(env, spec)),
                "type": "Opaque",
                "data": {key: _b64(values[name][key]) for key in spec.data_keys},
            }
        )
    return out


# Staging's server settings. Staging has no replicas and no point-in-time recovery (its
# data is production's monthly copy or synthetic), so it keeps only the WAL needed for
# crash recovery: with wal_level=minimal the sync's COPY into a table emptied in the
# same transaction, and every index build, write no WAL at all.
STAGING_POSTGRES_SETTINGS: dict[str, str] = {"wal_level": "minimal", "max_wal_senders": "0"}


def postgres_settings(memory_bytes: int) -> dict[str, str]:
    """Staging's server settings in a container limited to ``memory_bytes``.

    :data:`STAGING_POSTGRES_SETTINGS`, and memory sized to the limit: the image's
    defaults (128MB of shared buffers, a 4GB cache estimate) ignore it, which wastes a
    large container and overcommits a small one. The usual split: a quarter for shared
    buffers, three quarters as the planner's estimate of what the OS caches.
    """
    mib = memory_bytes // 2**20
    return {
        **STAGING_POSTGRES_SETTINGS,
        "shared_buffers": f"{max(1, mib // 4)}MB",
        "effective_cache_size": f"{max(1, mib * 3 // 4)}MB",
    }


def database(topology: Topology) -> list[Manifest]:
    """Staging's own PostgreSQL: StatefulSet, Service and PVC at staging's size."""
    env = topology.staging
    db = env.database
    name, ns = db.service, env.namespace
    selector = {"app.kubernetes.io/name": name}
    meta_labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "database"}
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": _meta(env, f"{name}-data", ns, **meta_labels),
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": db.storage}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(env, name, ns, **meta_labels),
            "spec": {
                "selector": selector,
                "ports": [{"name": "postgres", "port": db.port, "targetPort": 5432}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": _meta(env, name, ns, **meta_labels),
            "spec": {
                "serviceName": name,
                "replicas": 1,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": {**labels(env), **meta_labels}},
                    "spec": {
                        "containers": [_postgres_container(topology)],
                        "volumes": [
                            {"name": "data", "persistentVolumeClaim": {"claimName": f"{name}-data"}}
                        ],
                    },
                },
            },
        },
    ]


def _postgres_container(topology: Topology) -> dict[str, Any]:
    """The PostgreSQL container: settings sized to its memory, password from the Secret."""
    env = topology.staging
    db = env.database
    password_secret = next(env.secret_name(s) for s in topology.secrets if s.name == "database")
    res = {"cpu": db.resources.cpu, "memory": db.resources.memory}
    return {
        "name": "postgres",
        "image": db.image,
        "args": [
            arg
            for key, value in postgres_settings(db.resources.memory_bytes).items()
            for arg in ("-c", f"{key}={value}")
        ],
        "ports": [{"name": "postgres", "containerPort": 5432}],
        "env": [
            {"name": "POSTGRES_DB", "value": db.name},
            {
                "name": "POSTGRES_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": password_secret, "key": "password"}},
            },
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
        ],
        "resources": {"requests": res, "limits": res},
        "readinessProbe": {
            "exec": {"command": ["pg_isready", "-U", "postgres"]},
            "periodSeconds": 5,
        },
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
    }


def staging_objects(topology: Topology, secret_values: SecretValues) -> list[Manifest]:
    """Every object of provisioned staging, in an order the API server accepts.

    The Ingress for the staging domains and the monitoring stack are not built here: they
    are defined once, in the kustomize tree (``deployments/`` and
    ``deployments/monitoring/``), and the provision flow applies the staging overlays'
    renderings of them.
    """
    return [
        *namespaces(topology.staging),
        *service_accounts(topology.staging),
        *quotas(topology),
        *network_policies(topology),
        *secrets(topology, secret_values),
        *database(topology),
    ]
