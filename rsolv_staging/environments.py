"""The environment model: the single source of truth for production and staging.

Pure, typed code with no I/O. Production is described once (RFC 002's tables); staging
is *derived* from it: resources at 50% (2->1 replicas, 1Gi->512Mi, 500m->250m), its own
namespaces, domain, secret prefix, database and monitoring settings. Each environment
names the cluster it lives on (a kube context), so moving staging to its own cluster, as
the RFC's migration path plans, is a configuration change and nothing else.

Build one with :func:`topology_from_mapping` (the YAML file in ``data/`` is such a
mapping) or :func:`default_topology`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.images import parse_image
from rsolv_staging.quantities import format_cpu, format_memory, parse_cpu, parse_memory

# RFC 1123 label: what Kubernetes accepts as a namespace name.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,63}$")
_RETENTION = re.compile(r"^[1-9]\d*(h|d|w)$")
_PSA_VERSION = re.compile(r"^(latest|v1\.\d{1,3})$")
# Label keys and values as Kubernetes accepts them (prefix/name, at most 63 characters).
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# A registry host[:port], optionally followed by repository path components.
_REGISTRY = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")

EnvironmentName = Literal["production", "staging"]


def _check_dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a valid Kubernetes name: at most 63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit"
        )
    return value


def _check_cidrs(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        try:
            ipaddress.ip_network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a network such as '10.0.0.0/8'") from None
    return values


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    if not value:
        raise ValueError("at least one label is needed: an empty selector selects every pod")
    for key, item in value.items():
        if len(key.rsplit("/", 1)[-1]) > 63 or not _LABEL_KEY.match(key):
            raise ValueError(f"{key!r} is not a Kubernetes label key")
        if len(item) > 63 or not _LABEL_VALUE.match(item):
            raise ValueError(f"{item!r} (label {key}) is not a Kubernetes label value")
    return value


def _check_ports(value: tuple[int, ...]) -> tuple[int, ...]:
    if not value or any(not 1 <= port <= 65535 for port in value):
        raise ValueError(f"{list(value)} must be one or more TCP ports (1-65535)")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(_Frozen):
    """Replicas and per-container CPU/memory of a workload (requests = limits here)."""

    replicas: int = Field(ge=1, description="Pod replicas")
    cpu: str = Field(description="CPU per container, a Kubernetes quantity such as 500m")
    memory: str = Field(description="Memory per container, a Kubernetes quantity such as 1Gi")

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str) -> str:
        parse_cpu(value)
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        parse_memory(value)
        return value

    @property
    def millicores(self) -> int:
        return parse_cpu(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    def scaled(self, ratio: float) -> Resources:
        """These resources times ``ratio``, never below one replica."""
        return Resources(
            replicas=max(1, int(self.replicas * ratio)),
            cpu=format_cpu(max(1, int(self.millicores * ratio))),
            memory=format_memory(max(1, int(self.memory_bytes * ratio))),
        )


class Quota(_Frozen):
    """The namespace's ResourceQuota budget."""

    requests_cpu: str = Field(description="Sum of CPU requests allowed in the namespace")
    requests_memory: str = Field(description="Sum of memory requests allowed in the namespace")
    limits_cpu: str = Field(description="Sum of CPU limits allowed in the namespace")
    limits_memory: str = Field(description="Sum of memory limits allowed in the namespace")
    storage: str = Field(description="Sum of PersistentVolumeClaim storage requests")
    pods: int = Field(ge=1, description="Maximum pods in the namespace")

    @field_validator("requests_cpu", "limits_cpu")
    @classmethod
    def _cpu(cls, value: str) -> str:
        parse_cpu(value)
        return value

    @field_validator("requests_memory", "limits_memory", "storage")
    @classmethod
    def _memory(cls, value: str) -> str:
        parse_memory(value)
        return value

    def scaled(self, ratio: float) -> Quota:
        def cpu(v: str) -> str:
            return format_cpu(max(1, int(parse_cpu(v) * ratio)))

        def mem(v: str) -> str:
            return format_memory(max(1, int(parse_memory(v) * ratio)))

        return Quota(
            requests_cpu=cpu(self.requests_cpu),
            requests_memory=mem(self.requests_memory),
            limits_cpu=cpu(self.limits_cpu),
            limits_memory=mem(self.limits_memory),
            storage=mem(self.storage),
            pods=max(1, int(self.pods * ratio)),
        )


class Database(_Frozen):
    """Where an environment's PostgreSQL lives, and how big it is."""

    host: str = Field(description="Host name clients connect to")
    port: int = Field(default=5432, ge=1, le=65535, description="TCP port")
    name: str = Field(description="Database name")
    service: str = Field(description="Kubernetes Service (and StatefulSet) name")
    image: str = Field(
        # The official image's 15.14 (Debian) manifest list, pinned: a tag can move.
        # Digest as published on Docker Hub and pinned in public code (see CHANGELOG).
        default="postgres:15.14@sha256:822f8795764a670160640888508b2a68ea5c4b045012c2de17e1d0447bdbdc99",
        description="PostgreSQL container image, pinned by digest (name[:tag]@sha256:...)",
    )
    run_as_user: int = Field(
        # The official postgres image's own 'postgres' user: its files (and initdb) expect it.
        default=999,
        ge=1,
        description="Numeric uid (and gid, fsGroup) the database runs as; never root",
    )
    sync_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/component": "data-sync"},
        description="Labels of the data sync's pods (a Kubernetes work pool's job template "
        "sets them) in the app namespace: besides the apps, the only database clients",
    )
    storage: str = Field(description="PersistentVolumeClaim size")
    resources: Resources = Field(description="The database container's resources")

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        return _check_dns_label(value)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        try:
            parse_image(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc).removeprefix("image: ")) from None
        return value

    @field_validator("sync_pod_labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        parse_memory(value)
        return value


class Monitoring(_Frozen):
    """The environment's Prometheus/Grafana stack and alerting policy."""

    namespace: str = Field(description="Namespace of the monitoring stack")
    retention: str = Field(description="Prometheus retention, e.g. 7d")
    slo_percent: float = Field(gt=0, lt=100, description="Availability objective, percent")
    paging: bool = Field(description="Whether alerts page a human (PagerDuty)")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        description="Application log level in this environment"
    )

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return _check_dns_label(value)

    @field_validator("retention")
    @classmethod
    def _retention(cls, value: str) -> str:
        if not _RETENTION.match(value):
            raise ValueError(f"{value!r} is not a retention such as '3d', '72h' or '1w'")
        return value


class Cluster(_Frozen):
    """Facts about the cluster an environment runs on."""

    kube_context: str | None = Field(
        default=None,
        description="kubeconfig context of the cluster; None means the current context "
        "(or the in-cluster service account when there is no kubeconfig)",
    )
    ingress_namespace: str = Field(
        default="kube-system", description="Namespace of the ingress controller (k3s: Traefik)"
    )
    ingress_class: str = Field(default="traefik", description="IngressClass to use")
    cluster_issuer: str = Field(
        default="letsencrypt-prod", description="cert-manager ClusterIssuer for TLS"
    )
    ingress_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "traefik"},
        description="Pod labels of the ingress controller (k3s: Traefik); only those pods "
        "of ingress_namespace may reach the apps and Grafana",
    )
    dns_namespace: str = Field(
        default="kube-system", description="Namespace of the cluster DNS (k3s: CoreDNS)"
    )
    dns_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"k8s-app": "kube-dns"},
        description="Pod labels of the cluster DNS (k3s CoreDNS keeps kube-dns's label); DNS "
        "egress goes to those pods only, on 53",
    )
    api_server_cidrs: tuple[str, ...] = Field(
        default=(),
        description="The API server's addresses as NetworkPolicies see them (after the "
        "kubernetes Service's DNAT: the server nodes' addresses, `kubectl get endpoints "
        "kubernetes`). Needed when they are private: private_cidrs are otherwise cut out "
        "of Prometheus' discovery egress too",
    )
    pod_security_version: str = Field(
        default="v1.33",
        description="Kubernetes version whose Pod Security Standards the namespaces' "
        "enforce/warn/audit labels pin ('latest' follows the cluster)",
    )
    internal_cidrs: tuple[str, ...] = Field(
        # k3s pod and service ranges, and link-local (cloud metadata endpoints).
        default=("10.42.0.0/16", "10.43.0.0/16", "169.254.0.0/16"),
        description="Pod and Service CIDRs (k3s defaults), excluded from internet egress so "
        "no NetworkPolicy's internet rule opens a path to another namespace",
    )
    private_cidrs: tuple[str, ...] = Field(
        # Node addresses live here: a NodePort, hostPort or hostNetwork pod of production
        # on another node would otherwise be one hop away from every staging pod.
        default=("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"),
        description="Private networks (RFC 1918, CGNAT), also cut out of the apps' internet "
        "egress: the nodes' addresses, and so other nodes' NodePorts, are in them",
    )

    @field_validator("ingress_namespace", "dns_namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return _check_dns_label(value)

    @field_validator("internal_cidrs", "private_cidrs", "api_server_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_cidrs(value)

    @field_validator("ingress_pod_labels", "dns_pod_labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    @field_validator("pod_security_version")
    @classmethod
    def _psa_version(cls, value: str) -> str:
        if not _PSA_VERSION.match(value):
            raise ValueError(f"{value!r} is not a Pod Security version such as 'v1.33' or 'latest'")
        return value


class SecretSpec(_Frozen):
    """A credential every environment has its own copy of (RFC 002 section 7)."""

    name: str = Field(description="Logical name; the Secret is '<prefix><name>'")
    # Not "keys": Prefect walks task inputs with dict(), which would call a .keys field.
    data_keys: tuple[str, ...] = Field(min_length=1, description="Keys inside the Secret")
    purpose: str = Field(description="What it is for")


class Environment(_Frozen):
    """Everything that differs between production and staging."""

    name: EnvironmentName
    namespace: str = Field(description="Namespace the applications run in")
    domain: str = Field(description="Apex domain; api. and grafana. hang off it")
    secret_prefix: str = Field(description="Prefix of every Secret name, e.g. 'staging-'")
    cluster: Cluster = Field(default_factory=Cluster)
    apps: tuple[str, ...] = Field(
        default=("rsolv-landing", "rsolv-api"), description="Applications deployed"
    )
    app_resources: Resources = Field(description="Per-application replicas, CPU and memory")
    app_port: int = Field(
        default=4000,
        ge=1,
        le=65535,
        description="The apps' container port 'http' (deployments/base): what the ingress "
        "controller reaches and Prometheus scrapes",
    )
    internet_egress_ports: tuple[int, ...] = Field(
        default=(443,),
        description="TCP ports the apps may reach on the internet (third-party APIs: HTTPS)",
    )
    pod_security: Literal["restricted", "baseline"] = Field(
        default="restricted",
        description="Pod Security Standard enforced (and warned, audited) in both namespaces",
    )
    quota: Quota = Field(description="The namespace's ResourceQuota")
    database: Database
    monitoring: Monitoring
    image_registries: tuple[str, ...] = Field(
        # Where the apps (ghcr.io/rsolv-dev), PostgreSQL (the official image) and the
        # monitoring stack (prom/, grafana/) come from: what the security scan allows.
        default=("ghcr.io/rsolv-dev", "docker.io/library", "docker.io/prom", "docker.io/grafana"),
        min_length=1,
        description="Registries (a host, optionally with a repository path prefix) the "
        "environment's images may come from; 'postgres' counts as docker.io/library/postgres",
    )

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return _check_dns_label(value)

    @field_validator("internet_egress_ports")
    @classmethod
    def _ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        return _check_ports(value)

    @field_validator("image_registries")
    @classmethod
    def _registries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _REGISTRY.match(item):
                raise ValueError(
                    f"{item!r} is not a registry such as 'ghcr.io/rsolv-dev' (a host, "
                    "optionally a path; no scheme, no trailing '/')"
                )
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not _HOSTNAME.match(value):
            raise ValueError(f"{value!r} is not a domain name such as 'rsolv-staging.com'")
        return value

    @field_validator("secret_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9]([-a-z0-9]*-)$", value):
            raise ValueError(f"{value!r} must be lowercase and end with '-', e.g. 'staging-'")
        return value

    @property
    def api_domain(self) -> str:
        return f"api.{self.domain}"

    @property
    def grafana_domain(self) -> str:
        return f"grafana.{self.domain}"

    @property
    def hosts(self) -> tuple[str, str, str]:
        return (self.domain, self.api_domain, self.grafana_domain)

    @property
    def namespaces(self) -> tuple[str, str]:
        return (self.namespace, self.monitoring.namespace)

    def secret_name(self, spec: SecretSpec) -> str:
        return f"{self.secret_prefix}{spec.name}"


class Topology(_Frozen):
    """Production and staging together, with the rules that tie them."""

    production: Environment
    staging: Environment
    resource_ratio: float = Field(gt=0, lt=1, description="Staging's share of production")
    secrets: tuple[SecretSpec, ...]

    @model_validator(mode="after")
    def _staging_below_production(self) -> Topology:
        prod, stag = self.production, self.staging
        if prod.name != "production" or stag.name != "staging":
            raise ValueError("production and staging must be named 'production' and 'staging'")
        checks: list[tuple[str, bool]] = [
            (
                "staging.app_resources.cpu",
                stag.app_resources.millicores < prod.app_resources.millicores,
            ),
            (
                "staging.app_resources.memory",
                stag.app_resources.memory_bytes < prod.app_resources.memory_bytes,
            ),
            (
                "staging.app_resources.replicas",
                stag.app_resources.replicas <= prod.app_resources.replicas,
            ),
            ("staging.quota.pods", stag.quota.pods <= prod.quota.pods),
        ]
        for field, ok in checks:
            if not ok:
                raise ValueError(f"{field} must be below production's (staging >= production)")
        shared = set(prod.namespaces) & set(stag.namespaces)
        if shared:
            raise ValueError(f"staging.namespace: staging shares namespace(s) {sorted(shared)}")
        if prod.domain == stag.domain:
            raise ValueError("staging.domain: staging must not use production's domain")
        if prod.secret_prefix == stag.secret_prefix:
            raise ValueError("staging.secret_prefix: staging must not share production's prefix")
        if (prod.database.host, prod.database.port, prod.database.name) == (
            stag.database.host,
            stag.database.port,
            stag.database.name,
        ):
            raise ValueError("staging.database: staging must not point at production's database")
        if stag.monitoring.paging:
            raise ValueError("staging.monitoring.paging: staging never pages (RFC 002 section 6)")
        return self

    def environment(self, name: str) -> Environment:
        if name == "production":
            return self.production
        if name == "staging":
            return self.staging
        raise ConfigurationError(
            f"unknown environment {name!r}: expected 'production' or 'staging'"
        )


# RFC 002, "Resource Limits" and the monitoring/secret sections. Production is written
# once; staging below is derived from it.
DEFAULTS: dict[str, Any] = {
    "resource_ratio": 0.5,
    "secrets": [
        {"name": "database", "data_keys": ["password"], "purpose": "PostgreSQL password"},
        {
            "name": "convertkit",
            "data_keys": ["api-key", "api-secret"],
            "purpose": "ConvertKit account",
        },
        {"name": "payment", "data_keys": ["api-key"], "purpose": "payment provider credentials"},
        {
            "name": "oauth",
            "data_keys": ["client-id", "client-secret"],
            "purpose": "OAuth application",
        },
        {"name": "monitoring", "data_keys": ["grafana-admin-password"], "purpose": "Grafana admin"},
    ],
    "production": {
        "namespace": "production",
        "domain": "rsolv.dev",
        "secret_prefix": "prod-",
        "app_resources": {"replicas": 2, "cpu": "500m", "memory": "1Gi"},
        "quota": {
            "requests_cpu": "4",
            "requests_memory": "8Gi",
            "limits_cpu": "4",
            "limits_memory": "8Gi",
            "storage": "40Gi",
            "pods": 20,
        },
        "database": {
            "host": "postgres.production.svc.cluster.local",
            "name": "rsolv",
            "service": "postgres",
            "storage": "20Gi",
            "resources": {"replicas": 1, "cpu": "1", "memory": "2Gi"},
        },
        "monitoring": {
            "namespace": "monitoring",
            "retention": "7d",
            "slo_percent": 99.9,
            "paging": True,
            "log_level": "info",
        },
    },
    "staging": {
        "namespace": "staging",
        "domain": "rsolv-staging.com",
        "secret_prefix": "staging-",
        "database": {
            "host": "staging-postgres.staging.svc.cluster.local",
            "name": "rsolv",
            "service": "staging-postgres",
        },
        "monitoring": {
            "namespace": "staging-monitoring",
            "retention": "3d",
            "slo_percent": 99.0,
            "paging": False,
            "log_level": "debug",
        },
    },
}


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _derive_staging(
    production: Environment, ratio: float, raw: Mapping[str, Any]
) -> dict[str, Any]:
    """Staging's settings: its own keys from ``raw``, its size scaled from production."""
    database = dict(raw.get("database", {}))
    database.setdefault(
        "storage", format_memory(int(parse_memory(production.database.storage) * ratio))
    )
    database.setdefault("resources", production.database.resources.scaled(ratio).model_dump())
    database.setdefault("image", production.database.image)
    derived = {
        "name": "staging",
        "cluster": production.cluster.model_dump(),
        "apps": list(production.apps),
        "app_resources": production.app_resources.scaled(ratio).model_dump(),
        "quota": production.quota.scaled(ratio).model_dump(),
        # What is promoted is what was tested: the same images, so the same registries.
        "image_registries": list(production.image_registries),
    }
    # Explicit app_resources/quota for staging are allowed (and then checked against
    # production); they are not needed, because the derived values are the RFC's.
    return _merge(derived, {**raw, "database": database})


def topology_from_mapping(data: Mapping[str, Any] | None = None) -> Topology:
    """Build and validate the topology from a mapping laid over :data:`DEFAULTS`.

    Raises:
        ConfigurationError: a value is invalid; the message names each offending field.
    """
    merged = _merge(DEFAULTS, data or {})
    try:
        production = Environment.model_validate({**merged["production"], "name": "production"})
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc, prefix="production")) from None
    try:
        ratio = float(merged["resource_ratio"])
        staging_raw = _derive_staging(production, ratio, merged.get("staging", {}))
        return Topology.model_validate(
            {
                "production": production,
                "staging": staging_raw,
                "resource_ratio": ratio,
                "secrets": merged["secrets"],
            }
        )
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid environment configuration: {exc}") from None


def default_topology() -> Topology:
    """RFC 002's production and staging, with no overrides."""
    return topology_from_mapping({})


def _describe(exc: ValidationError, *, prefix: str = "") -> str:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in ((prefix,) if prefix else ()) + error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{loc}: {message}" if loc else message)
    return "invalid environment configuration: " + "; ".join(lines)


__all__ = [
    "DEFAULTS",
    "Cluster",
    "Database",
    "Environment",
    "EnvironmentName",
    "Monitoring",
    "Quota",
    "Resources",
    "SecretSpec",
    "Topology",
    "default_topology",
    "topology_from_mapping",
]
