"""The kinds the emulator serves: one row of ``KINDS`` per kind, everything else derives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What a name must look like, as the real API server validates it per kind: most kinds take
# an RFC 1123 subdomain, a few (Namespace, Service) a DNS label, RBAC kinds any path segment
# (so "system:controller:foo" is a valid ClusterRole name).
NameRule = Literal["subdomain", "label", "path"]

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Kind:
    """One API resource: where it lives in the URL space and how discovery describes it."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    status: bool = False  # has a /status subresource that alone may change .status
    names: NameRule = "subdomain"

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def resource(self) -> str:
        """``plural.group`` as the API server names a resource in its messages."""
        return self.plural if not self.group else f"{self.plural}.{self.group}"


RBAC, NET, APPS, BATCH = "rbac.authorization.k8s.io", "networking.k8s.io", "apps", "batch"

KINDS: tuple[Kind, ...] = (
    Kind("", "v1", "Namespace", "namespaces", False, ("ns",), status=True, names="label"),
    Kind("", "v1", "ServiceAccount", "serviceaccounts", True, ("sa",)),
    Kind("", "v1", "Secret", "secrets"),
    Kind("", "v1", "ConfigMap", "configmaps", True, ("cm",)),
    Kind("", "v1", "Service", "services", True, ("svc",), status=True, names="label"),
    Kind("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ("pvc",), status=True),
    Kind("", "v1", "Pod", "pods", True, ("po",), status=True),
    Kind("", "v1", "Event", "events", True, ("ev",)),
    Kind("", "v1", "ResourceQuota", "resourcequotas", True, ("quota",), status=True),
    Kind("", "v1", "LimitRange", "limitranges", True, ("limits",)),
    Kind(RBAC, "v1", "Role", "roles", names="path"),
    Kind(RBAC, "v1", "RoleBinding", "rolebindings", names="path"),
    Kind(RBAC, "v1", "ClusterRole", "clusterroles", False, names="path"),
    Kind(RBAC, "v1", "ClusterRoleBinding", "clusterrolebindings", False, names="path"),
    Kind(NET, "v1", "NetworkPolicy", "networkpolicies", True, ("netpol",)),
    Kind(NET, "v1", "Ingress", "ingresses", True, ("ing",), status=True),
    Kind(APPS, "v1", "Deployment", "deployments", True, ("deploy",), status=True),
    Kind(APPS, "v1", "StatefulSet", "statefulsets", True, ("sts",), status=True),
    Kind(APPS, "v1", "ReplicaSet", "replicasets", True, ("rs",), status=True),
    # Served (stored, listed, Pod Security warnings) but not reconciled: no pods are made.
    Kind(APPS, "v1", "DaemonSet", "daemonsets", True, ("ds",), status=True),
    Kind(BATCH, "v1", "Job", "jobs", True, status=True),
    Kind(BATCH, "v1", "CronJob", "cronjobs", True, ("cj",), status=True),
)

_BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}
_BY_KIND = {(k.api_version, k.kind): k for k in KINDS}


def by_path(group: str, version: str, plural: str) -> Kind | None:
    return _BY_PATH.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> Kind | None:
    return _BY_KIND.get((api_version, kind))


def kind_named(kind: str) -> Kind:
    """Kind by its bare name ("Deployment"): unique in this table, handy for assertions."""
    for k in KINDS:
        if k.kind == kind:
            return k
    raise KeyError(f"the emulator serves no kind {kind!r}")


NAMESPACE, POD, EVENT = kind_named("Namespace"), kind_named("Pod"), kind_named("Event")
REPLICA_SET, SERVICE_ACCOUNT = kind_named("ReplicaSet"), kind_named("ServiceAccount")


def group_versions() -> dict[str, list[str]]:
    """Named API groups (the core group excluded) and their versions, in table order."""
    out: dict[str, list[str]] = {}
    for k in KINDS:
        if k.group and k.version not in out.setdefault(k.group, []):
            out[k.group].append(k.version)
    return out
