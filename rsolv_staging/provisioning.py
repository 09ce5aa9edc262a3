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
# The label deployments/base gives every app pod (includeTemplates).
APP_POD_LABELS = {"app.kubernetes.io/part-of": "rsolv"}
# Container ports of the monitoring stack (deployments/monitoring/base).
GRAFANA_PORT = 3000
# Where the API server listens as policies see it (after the kubernetes Service's DNAT):
# 6443 on k3s server nodes, 443 on most managed clusters.
KUBE_API_PORTS = (443, 6443)
POD_SECURITY = "pod-security.kubernetes.io"

# What every container we ship runs with: what Pod Security "restricted" demands, and a
# read-only root filesystem (writable paths are emptyDirs or volumes).
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


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


def deployer_service_account(env: Environment) -> str:
    """The identity ``env``'s deploys run as (in its app namespace): ``staging-deployer``."""
    return f"{env.name}-deployer"


def prometheus_service_account(env: Environment) -> str:
    """The scrape-only identity of ``env``'s Prometheus (in its monitoring namespace)."""
    return f"{env.name}-prometheus"


def pod_security_labels(env: Environment) -> dict[str, str]:
    """Pod Security Admission: the model's level enforced, warned about and audited."""
    level, version = env.pod_security, env.cluster.pod_security_version
    return {
        f"{POD_SECURITY}/{mode}{suffix}": value
        for mode in ("enforce", "warn", "audit")
        for suffix, value in (("", level), ("-version", version))
    }


def namespaces(env: Environment) -> list[Manifest]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": _meta(env, ns, None, **pod_security_labels(env)),
        }
        for ns in env.namespaces
    ]


def service_accounts(env: Environment) -> list[Manifest]:
    """One deployer identity confined to the app namespace, one for Prometheus' scraping."""
    ns, mon = env.namespace, env.monitoring.namespace
    deployer = deployer_service_account(env)
    prometheus = prometheus_service_account(env)
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(env, deployer, ns)},
        {
            "apiVersion": rbac,
            "kind": "Role",
            "metadata": _meta(env, deployer, ns),
            "rules": deployer_rules(),
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


# What the deploy flow does in its namespace, and nothing more (the emulator enforces it):
# server-side apply (patch; create when the object is new; get to read it back and
# snapshot it), the rollout watch (list/watch one Deployment), the rollback (apply, and
# delete what a failed run created), the prune (list, delete) and the failure details
# (pods and events, read). No Secrets, StatefulSets, PVCs, Jobs or RBAC: those are
# provisioning's, so staging's deploy identity cannot change its own quota, policies or
# rights, nor read staging's credentials.
_APPLIED = ("get", "list", "create", "patch", "delete")
DEPLOYER_RULES: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (("apps",), ("deployments",), (*_APPLIED, "watch")),
    (("",), ("services", "configmaps"), _APPLIED),
    (("networking.k8s.io",), ("ingresses",), _APPLIED),
    (("",), ("pods", "events"), ("get", "list")),
)


def deployer_rules() -> list[dict[str, list[str]]]:
    """The staging-deployer Role's rules (see DEPLOYER_RULES)."""
    return [
        {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs)}
        for groups, resources, verbs in DEPLOYER_RULES
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


def _pods_in(namespace: str, pod_labels: Mapping[str, str]) -> dict[str, Any]:
    """A peer: the pods with ``pod_labels`` in ``namespace`` (both selectors in ONE peer)."""
    return {**_from_namespace(namespace), "podSelector": {"matchLabels": dict(pod_labels)}}


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _dns_egress(env: Environment) -> dict[str, Any]:
    # CoreDNS's pods only: any other kube-system pod (Traefik, metrics-server) is no
    # business of a staging pod, on 53 or any other port.
    return {
        "to": [_pods_in(env.cluster.dns_namespace, env.cluster.dns_pod_labels)],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def _from_ingress_controller(env: Environment, port: int) -> dict[str, Any]:
    # The ingress controller's pods, not its whole namespace: kube-system runs other pods.
    return {
        "from": [_pods_in(env.cluster.ingress_namespace, env.cluster.ingress_pod_labels)],
        "ports": _tcp(port),
    }


def _outside_cluster(env: Environment) -> dict[str, Any]:
    # The cluster's own ranges and the private networks its nodes sit on are cut out so an
    # internet rule can never open a path into production (a pod, or a NodePort on a
    # node's address).
    cut = list(dict.fromkeys((*env.cluster.internal_cidrs, *env.cluster.private_cidrs)))
    return {"ipBlock": {"cidr": "0.0.0.0/0", "except": cut}}


def _internet_egress(env: Environment) -> dict[str, Any]:
    # Third-party APIs (ConvertKit, payments, OAuth) are on the internet, over HTTPS.
    return {"to": [_outside_cluster(env)], "ports": _tcp(*env.internet_egress_ports)}


def _kube_api_egress(env: Environment) -> dict[str, Any]:
    # Kubernetes service discovery talks to the API server. Policies see the address after
    # the Service's DNAT, i.e. a node's address (k3s: :6443). Public addresses, and the
    # API server's own addresses when the model names them (private on most k3s), never
    # the private ranges as a whole: another node's NodePort could be production's.
    peers = [_outside_cluster(env)]
    peers += [{"ipBlock": {"cidr": cidr}} for cidr in env.cluster.api_server_cidrs]
    return {"to": peers, "ports": _tcp(*KUBE_API_PORTS)}


def _policy(
    env: Environment, name: str, namespace: str, pods: Mapping[str, str], **rules: Any
) -> Manifest:
    """A NetworkPolicy for ``pods`` ({} = all) with ``ingress=``/``egress=`` rule lists."""
    types = [way for way in ("Ingress", "Egress") if way.lower() in rules]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(env, name, namespace),
        "spec": {"podSelector": {"matchLabels": dict(pods)} if pods else {}, "policyTypes": types}
        | rules,
    }


def network_policies(topology: Topology) -> list[Manifest]:
    """Default deny in both staging namespaces; each allowed path named, port by port.

    Into ``staging``: the apps from each other, the ingress controller's pods and staging's
    Prometheus (the app port only); the database from the apps and the sync's pods only.
    Out of ``staging``: CoreDNS, the apps to each other, the database and the internet
    (``internet_egress_ports``). ``staging-monitoring``: itself, CoreDNS, Grafana from the
    ingress controller, and for Prometheus alone the apps' port in ``staging`` and the
    API server (service discovery); never production.
    """
    return [*_staging_policies(topology), *_monitoring_policies(topology)]


def _staging_policies(topology: Topology) -> list[Manifest]:
    """Into and out of ``staging``."""
    env = topology.staging
    ns, db = env.namespace, env.database
    apps: dict[str, Any] = {"podSelector": {"matchLabels": dict(APP_POD_LABELS)}}
    database_pods = {"app.kubernetes.io/name": db.service}
    sync: dict[str, Any] = {"podSelector": {"matchLabels": dict(db.sync_pod_labels)}}
    to_database = {"to": [{"podSelector": {"matchLabels": database_pods}}], "ports": _tcp(5432)}
    return [
        # Selects every pod: nothing in, only DNS out, unless a policy below says more.
        _policy(env, "default-deny-cross-namespace", ns, {}, ingress=[], egress=[_dns_egress(env)]),
        _policy(
            env,
            "allow-apps",
            ns,
            APP_POD_LABELS,
            ingress=[{"from": [apps], "ports": _tcp(env.app_port)}],
            egress=[
                {"to": [apps], "ports": _tcp(env.app_port)},
                to_database,
                _internet_egress(env),
            ],
        ),
        *_app_entrances(env),
        _policy(
            env,
            "allow-database-clients",
            ns,
            database_pods,
            ingress=[{"from": [apps, sync], "ports": _tcp(5432)}],
        ),
        _policy(env, "allow-data-sync", ns, db.sync_pod_labels, egress=[to_database]),
    ]


def _monitoring_policies(topology: Topology) -> list[Manifest]:
    """In and out of ``staging-monitoring``: itself, DNS, Grafana's ingress, the scrape.

    And for Prometheus alone, the API server (service discovery); never production.
    """
    env = topology.staging
    ns, mon = env.namespace, env.monitoring.namespace
    same_namespace: dict[str, Any] = {"podSelector": {}}
    return [
        _policy(
            env,
            "default-deny-cross-namespace",
            mon,
            {},
            ingress=[{"from": [same_namespace]}],
            egress=[{"to": [same_namespace]}, _dns_egress(env)],
        ),
        # Grafana is the one thing served through the ingress controller
        # (grafana.rsolv-staging.com); Prometheus and Alertmanager are not exposed.
        _policy(
            env,
            "allow-ingress-controller",
            mon,
            GRAFANA_POD_LABELS,
            ingress=[_from_ingress_controller(env, GRAFANA_PORT)],
        ),
        _policy(
            env,
            "allow-prometheus-kube-api",
            mon,
            PROMETHEUS_POD_LABELS,
            egress=[
                _kube_api_egress(env),
                # What it scrapes (deployments/monitoring/overlays/staging/prometheus.yml):
                # the apps' http port in staging, nothing else there.
                {"to": [_pods_in(ns, APP_POD_LABELS)], "ports": _tcp(env.app_port)},
            ],
        ),
    ]


def _app_entrances(env: Environment) -> list[Manifest]:
    """The two ways into an environment's apps from other namespaces, the same in both:
    the ingress controller's pods, and the environment's own Prometheus (namespace AND
    pod selector in one peer, not its whole namespace), on the apps' port only: never
    the database."""
    ns, mon = env.namespace, env.monitoring.namespace
    scrape = {"from": [_pods_in(mon, PROMETHEUS_POD_LABELS)], "ports": _tcp(env.app_port)}
    return [
        _policy(
            env,
            "allow-ingress-controller",
            ns,
            APP_POD_LABELS,
            ingress=[_from_ingress_controller(env, env.app_port)],
        ),
        _policy(env, "allow-monitoring-scrape", ns, APP_POD_LABELS, ingress=[scrape]),
    ]


def production_network_policies(topology: Topology) -> list[Manifest]:
    """Production's side of the isolation, as its overlays ship them (tests compare).

    Ingress only, so production's own traffic out is unchanged: into ``production`` its
    own pods, the ingress controller's pods and production's Prometheus (the app port);
    into ``monitoring`` its own pods and the ingress controller to Grafana. Never built
    into a staging flow's objects: the promotion applies the overlays, and the guard
    refuses production objects in staging flows.
    """
    env = topology.production
    ns, mon = env.namespace, env.monitoring.namespace
    same_namespace: dict[str, Any] = {"podSelector": {}}
    deny = [{"from": [same_namespace]}]
    return [
        _policy(env, "default-deny-cross-namespace", ns, {}, ingress=deny),
        *_app_entrances(env),
        _policy(env, "default-deny-cross-namespace", mon, {}, ingress=deny),
        _policy(
            env,
            "allow-ingress-controller",
            mon,
            GRAFANA_POD_LABELS,
            ingress=[_from_ingress_controller(env, GRAFANA_PORT)],
        ),
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
            "metadata": {
                **_meta(env, name, ns, **meta_labels),
                # checkov's inline suppression (CKV id=reason), reviewed.
                "annotations": {
                    "checkov.io/skip1": f"CKV_K8S_40=uid {db.run_as_user} is the postgres "
                    "image's own postgres user that owns its files and data directory; it is "
                    "non-root as Pod Security restricted demands"
                },
            },
            "spec": {
                "serviceName": name,
                "replicas": 1,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": {**labels(env), **meta_labels}},
                    "spec": _postgres_pod_spec(topology),
                },
            },
        },
    ]


def _postgres_pod_spec(topology: Topology) -> dict[str, Any]:
    """The database pod: Pod Security restricted, as the image's own user, no API token."""
    db = topology.staging.database
    name, password = db.service, _password_secret(topology)
    return {
        # No API access needed: no service-account token in the pod.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": db.run_as_user,
            "runAsGroup": db.run_as_user,
            "fsGroup": db.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_postgres_container(topology)],
        "volumes": [
            {
                "name": "data",
                "persistentVolumeClaim": {"claimName": f"{name}-data"},
            },
            # The root filesystem is read-only: the server's socket and
            # lock files, and its temporary files, live here instead.
            {"name": "run", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {
                "name": "password",
                "secret": {"secretName": password, "defaultMode": 0o440},
            },
        ],
    }


def _password_secret(topology: Topology) -> str:
    env = topology.staging
    return next(env.secret_name(s) for s in topology.secrets if s.name == "database")


def _postgres_container(topology: Topology) -> dict[str, Any]:
    """The PostgreSQL container: settings sized to its memory, password from the Secret.

    The password is read from a file (the image's ``POSTGRES_PASSWORD_FILE``), not an
    environment variable, which every process in the container and a crash dump would see.
    """
    env = topology.staging
    db = env.database
    res = {"cpu": db.resources.cpu, "memory": db.resources.memory}
    ready = {"exec": {"command": ["pg_isready", "-U", "postgres"]}}
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
            {"name": "POSTGRES_PASSWORD_FILE", "value": "/run/secrets/postgres/password"},
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
        ],
        "resources": {"requests": res, "limits": res},
        "securityContext": dict(CONTAINER_SECURITY),
        "readinessProbe": {**ready, "periodSeconds": 5},
        # Generous: a crash recovery or the first initdb must not be cut short by a restart.
        "livenessProbe": {
            **ready,
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "password", "mountPath": "/run/secrets/postgres", "readOnly": True},
        ],
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
