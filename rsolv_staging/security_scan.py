"""What the security scan of staging finds, and which findings are news: pure rules, no I/O.

The scan (``flows/security_scan.py``) reads what staging runs and serves: the live objects
of its namespaces, its HTTPS endpoints' TLS and headers, and the fingerprints of its
Secrets and of production's. Every judgement on those readings is made here:

- each rule has an id, a fixed severity and a title (:data:`RULES`): a finding's
  severity comes from its rule, so neither a finding nor a baseline entry can lower it;
- a finding names one stable object (a workload, not the pod of the day, so a finding
  survives a rollout and a baseline entry keeps matching it);
- the baseline (``data/security-baseline.yaml``, committed and reviewed) marks findings
  as known; with the previous run's announced findings it decides what is *new*, and so
  what is notified. Neither ever changes whether the run fails: any critical finding
  fails it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rsolv_staging.environments import Topology
from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.images import repository, split_reference
from rsolv_staging.provisioning import POD_SECURITY, network_policies, object_key
from rsolv_staging.provisioning import namespaces as provisioned_namespaces

Severity = Literal["critical", "high", "medium", "low"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")
Status = Literal["new", "seen", "baseline"]


@dataclass(frozen=True)
class Rule:
    """One check: its id (what a baseline entry names), severity and what it means."""

    id: str
    severity: Severity
    title: str


RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule("pod.privileged", "critical", "a container runs privileged (root on the node)"),
        Rule("pod.host-namespace", "high", "the pod shares the node's network, PID or IPC"),
        Rule("pod.host-path", "high", "the pod mounts a directory of the node"),
        Rule("pod.runs-as-root", "high", "a container runs as uid 0"),
        Rule("pod.run-as-non-root-missing", "medium", "nothing stops a container running as root"),
        Rule("pod.security-context-missing", "medium", "a container has no securityContext"),
        Rule("pod.privilege-escalation", "medium", "allowPrivilegeEscalation is not false"),
        Rule("pod.capabilities-added", "high", "a container adds Linux capabilities"),
        Rule("pod.capabilities-not-dropped", "low", "a container does not drop ALL capabilities"),
        Rule("pod.seccomp-missing", "low", "no RuntimeDefault or Localhost seccomp profile"),
        Rule("image.not-pinned", "high", "an image is named by tag, not by digest"),
        Rule("image.registry-not-allowed", "high", "an image comes from an unlisted registry"),
        Rule("secret.volume-unmounted", "medium", "a Secret volume no container mounts"),
        Rule("secret.unreferenced", "low", "a staging Secret nothing references"),
        Rule("secret.equals-production", "critical", "a staging credential is production's"),
        Rule("namespace.missing", "high", "a staging namespace does not exist"),
        Rule("namespace.pod-security-weakened", "high", "Pod Security enforces less"),
        Rule("namespace.pod-security-drift", "low", "Pod Security labels differ from provisioning"),
        Rule("network-policy.missing", "high", "a NetworkPolicy of provisioning is missing"),
        Rule("network-policy.weaker", "high", "a NetworkPolicy allows more than provisioning's"),
        Rule("network-policy.unexpected", "high", "a NetworkPolicy provisioning does not make"),
        Rule("network-policy.drift", "low", "a NetworkPolicy is stricter than provisioning's"),
        Rule("tls.ssl-protocol", "critical", "SSL 2.0 or 3.0 is accepted"),
        Rule("tls.legacy-protocol", "high", "TLS 1.0 or 1.1 is accepted"),
        Rule("tls.no-modern-protocol", "high", "neither TLS 1.2 nor TLS 1.3 is accepted"),
        Rule("tls.weak-cipher", "high", "a weak TLS 1.2 cipher suite is accepted"),
        Rule("tls.certificate-expired", "critical", "the certificate has expired"),
        Rule("tls.certificate-expiring", "high", "the certificate expires within days"),
        Rule("tls.certificate-renewal-late", "medium", "the certificate is not being renewed"),
        Rule("tls.chain-untrusted", "high", "the certificate chain does not validate"),
        Rule("endpoint.not-https", "high", "an endpoint is served over plain HTTP"),
        Rule("endpoint.unreachable", "medium", "an endpoint could not be scanned"),
        Rule("http.hsts-missing", "medium", "no Strict-Transport-Security header"),
        Rule("http.hsts-weak", "low", "Strict-Transport-Security max-age under 180 days"),
        Rule("http.nosniff-missing", "low", "no X-Content-Type-Options: nosniff"),
        Rule("http.framing-unprotected", "medium", "no X-Frame-Options nor CSP frame-ancestors"),
        Rule("http.csp-missing", "low", "no Content-Security-Policy header"),
    )
}


class Finding(BaseModel):
    """One problem on one object."""

    model_config = ConfigDict(frozen=True)

    rule: str
    severity: Severity
    object: str = Field(description="What it is about: Kind/namespace/name, or an URL")
    detail: str

    @property
    def key(self) -> str:
        """What identifies the finding across runs (the detail may change: days left)."""
        return f"{self.rule} {self.object}"


def finding(rule: str, obj: str, detail: str) -> Finding:
    """A finding of ``rule`` (its severity is the rule's, never the caller's)."""
    return Finding(rule=rule, severity=RULES[rule].severity, object=obj, detail=detail)


def unique(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per key (the first), ordered by severity, then rule and object."""
    seen: dict[str, Finding] = {}
    for item in findings:
        seen.setdefault(item.key, item)
    return sorted(seen.values(), key=lambda f: (SEVERITIES.index(f.severity), f.rule, f.object))


# ------------------------------------------------------------------------ workloads

Obj = Mapping[str, Any]
WORKLOAD_KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")


def pod_spec(obj: Obj) -> Mapping[str, Any] | None:
    """The pod spec of a Pod or of a workload's template (None for other kinds)."""
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    elif kind not in WORKLOAD_KINDS:
        return None
    return (spec.get("template") or {}).get("spec") or {}


def _controller(obj: Obj) -> Mapping[str, Any] | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), refs[0] if refs else None)


def owner_key(obj: Obj, index: Mapping[tuple[str, str, str], Obj]) -> str:
    """The top controller of ``obj`` (a pod's Deployment, a Job's CronJob), as
    ``Kind/namespace/name``: stable across rollouts, unlike a pod's generated name."""
    namespace = obj["metadata"].get("namespace", "")
    current, seen = obj, 0
    while seen < 5:  # owner chains are at most pod -> ReplicaSet -> Deployment
        ref = _controller(current)
        if ref is None:
            break
        seen += 1
        parent = index.get((ref["kind"], namespace, ref["name"]))
        if parent is None:
            return f"{ref['kind']}/{namespace}/{ref['name']}"
        current = parent
    return object_key(current)


def _containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        *(spec.get("initContainers") or []),
        *(spec.get("containers") or []),
        *(spec.get("ephemeralContainers") or []),
    ]


def workload_findings(objects: Sequence[Obj], *, registries: Sequence[str]) -> list[Finding]:
    """Pod security and image findings of every Pod and pod template in ``objects``."""
    index = {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects
    }
    out: list[Finding] = []
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            out += pod_findings(owner_key(obj, index), spec, registries=registries)
    return unique(out)


def pod_findings(
    owner: str, spec: Mapping[str, Any], *, registries: Sequence[str]
) -> list[Finding]:
    """What is wrong with one pod spec, attributed to ``owner``."""
    out = [
        finding("pod.host-namespace", owner, f"{flag}: true")
        for flag in ("hostNetwork", "hostPID", "hostIPC")
        if spec.get(flag)
    ]
    volumes = spec.get("volumes") or []
    out += [
        finding("pod.host-path", owner, f"volume {v['name']}: {v['hostPath'].get('path', '')}")
        for v in volumes
        if v.get("hostPath")
    ]
    mounted = {m["name"] for c in _containers(spec) for m in c.get("volumeMounts") or []}
    out += [
        finding(
            "secret.volume-unmounted",
            f"{owner} volume {v['name']}",
            f"Secret(s) {', '.join(names)} are given to the pod but no container mounts them",
        )
        for v in volumes
        if (names := _volume_secrets(v)) and v["name"] not in mounted
    ]
    pod_context = spec.get("securityContext") or {}
    for container in _containers(spec):
        where = f"{owner} container {container.get('name', '?')}"
        out += image_findings(where, str(container.get("image", "")), registries)
        out += container_findings(where, container.get("securityContext"), pod_context)
    return out


def container_findings(
    where: str, context: Mapping[str, Any] | None, pod: Mapping[str, Any]
) -> list[Finding]:
    """Security context findings of one container (its own context over the pod's)."""
    if not context and not pod:
        return [
            finding("pod.security-context-missing", where, "neither pod nor container sets one")
        ]
    sc = dict(context or {})
    out: list[Finding] = []
    privileged = sc.get("privileged") is True
    if privileged:
        out.append(finding("pod.privileged", where, "securityContext.privileged: true"))
    uid = sc.get("runAsUser", pod.get("runAsUser"))
    non_root = sc.get("runAsNonRoot", pod.get("runAsNonRoot"))
    if uid == 0:
        out.append(finding("pod.runs-as-root", where, "runAsUser: 0"))
    elif uid is None and non_root is not True:
        out.append(finding("pod.run-as-non-root-missing", where, "runAsNonRoot is not true"))
    if sc.get("allowPrivilegeEscalation") is not False and not privileged:
        value = sc.get("allowPrivilegeEscalation")
        out.append(finding("pod.privilege-escalation", where, f"allowPrivilegeEscalation: {value}"))
    capabilities = sc.get("capabilities") or {}
    added = sorted(set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"})
    if added:
        out.append(finding("pod.capabilities-added", where, "adds " + ", ".join(added)))
    if "ALL" not in (capabilities.get("drop") or []):
        out.append(finding("pod.capabilities-not-dropped", where, "capabilities.drop lacks ALL"))
    seccomp = (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        out.append(finding("pod.seccomp-missing", where, f"seccompProfile.type: {seccomp}"))
    return out


def image_findings(where: str, image: str, registries: Sequence[str]) -> list[Finding]:
    """An image not pinned by digest, or from a registry the model does not list."""
    parts = split_reference(image)
    if parts is None:
        return [finding("image.not-pinned", where, f"{image!r} is not an image reference")]
    name, tag, digest = parts
    out = []
    if digest is None:
        shown = f"tag {tag!r}" if tag else "no tag (latest)"
        out.append(finding("image.not-pinned", where, f"{image}: {shown} can move; pin a digest"))
    repo = repository(name)
    if not any(repo == r or repo.startswith(r + "/") for r in registries):
        out.append(
            finding(
                "image.registry-not-allowed",
                where,
                f"{repo} is from none of the model's registries ({', '.join(registries)})",
            )
        )
    return out


def _volume_secrets(volume: Mapping[str, Any]) -> list[str]:
    names = [volume["secret"].get("secretName", "?")] if volume.get("secret") else []
    for source in (volume.get("projected") or {}).get("sources") or []:
        if source.get("secret"):
            names.append(source["secret"].get("name", "?"))
    return names


# -------------------------------------------------------------------------- secrets


def referenced_secrets(objects: Sequence[Obj]) -> set[tuple[str, str]]:
    """``(namespace, name)`` of every Secret a pod, template, Ingress or ServiceAccount names."""
    refs: set[tuple[str, str]] = set()
    for obj in objects:
        ns = obj["metadata"].get("namespace", "")
        spec = pod_spec(obj)
        names: list[str] = []
        if spec is not None:
            names += [p["name"] for p in spec.get("imagePullSecrets") or [] if p.get("name")]
            for volume in spec.get("volumes") or []:
                names += _volume_secrets(volume)
            for container in _containers(spec):
                names += [
                    e["valueFrom"]["secretKeyRef"].get("name", "")
                    for e in container.get("env") or []
                    if (e.get("valueFrom") or {}).get("secretKeyRef")
                ]
                names += [
                    e["secretRef"].get("name", "")
                    for e in container.get("envFrom") or []
                    if e.get("secretRef")
                ]
        elif obj.get("kind") == "Ingress":
            names += [t["secretName"] for t in obj["spec"].get("tls") or [] if t.get("secretName")]
        elif obj.get("kind") == "ServiceAccount":
            for field in ("secrets", "imagePullSecrets"):
                names += [s["name"] for s in obj.get(field) or [] if s.get("name")]
        refs.update((ns, name) for name in names)
    return refs


def unreferenced_secret_findings(secrets: Sequence[Obj], objects: Sequence[Obj]) -> list[Finding]:
    """Staging Secrets nothing uses: a credential kept where nobody needs it."""
    used = referenced_secrets(objects)
    return [
        finding(
            "secret.unreferenced",
            object_key(s),
            "no pod, template, Ingress or "
            "ServiceAccount of its namespace references it; delete it or say why",
        )
        for s in secrets
        if s.get("type") != "kubernetes.io/service-account-token"
        and (s["metadata"].get("namespace", ""), s["metadata"]["name"]) not in used
    ]


def shared_credential_findings(
    staging: Mapping[str, Mapping[str, str]], production: Mapping[str, Mapping[str, str]]
) -> list[Finding]:
    """Each staging Secret key whose fingerprint is any production credential's.

    ``staging`` maps ``Secret/namespace/name`` -> key -> fingerprint; ``production``
    maps production Secret name -> key -> fingerprint (as provisioning's check reads it).
    """
    owners: dict[str, list[str]] = {}
    for name, keys in sorted(production.items()):
        for key, print_ in sorted(keys.items()):
            owners.setdefault(print_, []).append(f"{name}/{key}")
    return [
        finding(
            "secret.equals-production",
            secret,
            f"key {key} equals production's {', '.join(owners[print_])} (RFC 002 section 7); "
            "rotate it",
        )
        for secret, keys in sorted(staging.items())
        for key, print_ in sorted(keys.items())
        if print_ in owners
    ]


# ----------------------------------------------------------------------- namespaces

_LEVELS = ("privileged", "baseline", "restricted")


def namespace_findings(expected: Sequence[Obj], live: Mapping[str, Obj | None]) -> list[Finding]:
    """Missing namespaces, and Pod Security labels other than provisioning's."""
    out = []
    for want in expected:
        name = want["metadata"]["name"]
        got = live.get(name)
        key = f"Namespace/{name}"
        if got is None:
            out.append(finding("namespace.missing", key, "not found; run provision-staging"))
            continue
        wanted = {k: v for k, v in want["metadata"]["labels"].items() if k.startswith(POD_SECURITY)}
        labels = (got.get("metadata") or {}).get("labels") or {}
        have = {k: v for k, v in labels.items() if k.startswith(POD_SECURITY)}
        enforce = f"{POD_SECURITY}/enforce"
        level = have.get(enforce, "privileged")  # no label: the API server's default
        if _rank(level) < _rank(wanted[enforce]):
            out.append(
                finding(
                    "namespace.pod-security-weakened",
                    key,
                    f"enforces {level!r}, provisioning {wanted[enforce]!r}: pods it would "
                    "refuse are admitted",
                )
            )
        elif have != wanted:
            diff = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
            out.append(finding("namespace.pod-security-drift", key, "differs: " + ", ".join(diff)))
    return out


def _rank(level: str) -> int:
    # An unknown level is read as restricted, as Pod Security admission does.
    return _LEVELS.index(level) if level in _LEVELS else len(_LEVELS) - 1


# ------------------------------------------------------------------ network policies


def _canonical(value: Any) -> Any:
    """A JSON-ready form in which equal policies are equal: list order ignored, empty
    selectors dropped, a port's protocol defaulted to TCP (as the API server does)."""
    if isinstance(value, Mapping):
        out = {k: _canonical(v) for k, v in value.items() if v not in (None, {}, [])}
        if "port" in out and "protocol" not in out:
            out["protocol"] = "TCP"
        return out
    if isinstance(value, list):
        return sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return value


def _rules(spec: Mapping[str, Any], way: str) -> set[str]:
    return {json.dumps(_canonical(r), sort_keys=True) for r in spec.get(way) or []}


def policy_differences(want: Obj, got: Obj) -> tuple[list[str], list[str]]:
    """(what makes ``got`` allow more than ``want``, what makes it allow less)."""
    w, g = want.get("spec") or {}, got.get("spec") or {}
    weaker: list[str] = []
    stricter: list[str] = []
    if _canonical(w.get("podSelector") or {}) != _canonical(g.get("podSelector") or {}):
        weaker.append(
            f"selects other pods: {g.get('podSelector')} (provisioning {w.get('podSelector')})"
        )
    lost = sorted(set(w.get("policyTypes") or []) - set(g.get("policyTypes") or []))
    if lost:
        weaker.append(f"no longer restricts {', '.join(lost)}")
    for way in ("ingress", "egress"):
        added, removed = _rules(g, way) - _rules(w, way), _rules(w, way) - _rules(g, way)
        weaker += [f"{way} rule provisioning does not have: {rule}" for rule in sorted(added)]
        stricter += [f"{way} rule of provisioning missing: {rule}" for rule in sorted(removed)]
    return weaker, stricter


def network_policy_findings(
    expected: Sequence[Obj], live: Sequence[Obj], namespaces: Sequence[str]
) -> list[Finding]:
    """Provisioning's NetworkPolicies against the live ones of ``namespaces``.

    Policies add up (a pod may do what ANY policy selecting it allows), so a policy that
    provisioning does not make and that allows anything weakens isolation too.
    """
    wanted = {object_key(p): p for p in expected}
    have = {object_key(p): p for p in live if p["metadata"].get("namespace") in namespaces}
    out = []
    for key, want in wanted.items():
        got = have.get(key)
        if got is None:
            out.append(finding("network-policy.missing", key, "run provision-staging"))
            continue
        weaker, stricter = policy_differences(want, got)
        if weaker:
            out.append(finding("network-policy.weaker", key, "; ".join(weaker)))
        elif stricter:
            out.append(finding("network-policy.drift", key, "; ".join(stricter)))
    for key, got in have.items():
        spec = got.get("spec") or {}
        if key not in wanted and (spec.get("ingress") or spec.get("egress")):
            out.append(
                finding("network-policy.unexpected", key, "allows traffic provisioning does not")
            )
    return out


# ------------------------------------------------------------------------ endpoints


class TlsProbe(BaseModel):
    """What the TLS scan of one endpoint saw (``tasks/tls.py`` fills it)."""

    endpoint: str
    error: str | None = None
    accepted: list[str] = Field(default_factory=list, description="e.g. 'TLS 1.2'")
    weak_ciphers: list[str] = Field(default_factory=list)
    not_after: dt.datetime | None = None
    trusted: bool | None = None
    trust_error: str = ""


class HeaderProbe(BaseModel):
    """The response headers of one endpoint (names lower case)."""

    endpoint: str
    status: int | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    error: str | None = None


LEGACY = ("TLS 1.0", "TLS 1.1")
SSL = ("SSL 2.0", "SSL 3.0")
HSTS_MIN_SECONDS = 180 * 86400


def tls_findings(
    probe: TlsProbe, *, now: dt.datetime, expiring_days: float, renewal_days: float
) -> list[Finding]:
    """Protocol versions, weak ciphers, certificate expiry and chain of one endpoint."""
    where = probe.endpoint
    if probe.error is not None:
        return [finding("endpoint.unreachable", where, f"TLS scan: {probe.error}")]
    out = [finding("tls.ssl-protocol", where, f"{p} accepted") for p in SSL if p in probe.accepted]
    out += [
        finding("tls.legacy-protocol", where, f"{p} accepted")
        for p in LEGACY
        if p in probe.accepted
    ]
    if not {"TLS 1.2", "TLS 1.3"} & set(probe.accepted):
        out.append(finding("tls.no-modern-protocol", where, f"accepted: {probe.accepted}"))
    if probe.weak_ciphers:
        out.append(finding("tls.weak-cipher", where, ", ".join(probe.weak_ciphers)))
    expired = False
    if probe.not_after is not None:
        days = (probe.not_after - now).total_seconds() / 86400
        stamp = probe.not_after.isoformat()
        expired = days <= 0
        if expired:
            out.append(finding("tls.certificate-expired", where, f"expired {stamp}"))
        elif days < expiring_days:
            out.append(
                finding("tls.certificate-expiring", where, f"{days:.1f} days left ({stamp})")
            )
        elif days < renewal_days:
            out.append(
                finding("tls.certificate-renewal-late", where, f"{days:.1f} days left ({stamp})")
            )
    if probe.trusted is False and not expired:
        out.append(finding("tls.chain-untrusted", where, probe.trust_error or "not trusted"))
    return out


def header_findings(probe: HeaderProbe) -> list[Finding]:
    """HSTS, nosniff, framing and CSP of one endpoint's response."""
    where = probe.endpoint
    if probe.error is not None:
        return [finding("endpoint.unreachable", where, f"HTTP request: {probe.error}")]
    headers = {k.lower(): v for k, v in probe.headers.items()}
    out = []
    if where.startswith("http://"):
        out.append(finding("endpoint.not-https", where, "no TLS: serve it over HTTPS only"))
    else:
        hsts = headers.get("strict-transport-security")
        if hsts is None:
            out.append(finding("http.hsts-missing", where, "browsers may be downgraded to HTTP"))
        elif _max_age(hsts) < HSTS_MIN_SECONDS:
            out.append(finding("http.hsts-weak", where, f"Strict-Transport-Security: {hsts}"))
    if headers.get("x-content-type-options", "").strip().lower() != "nosniff":
        out.append(finding("http.nosniff-missing", where, "X-Content-Type-Options is not nosniff"))
    csp = headers.get("content-security-policy")
    frame_options = headers.get("x-frame-options", "").strip().upper()
    if frame_options not in ("DENY", "SAMEORIGIN") and "frame-ancestors" not in (csp or ""):
        out.append(
            finding("http.framing-unprotected", where, "the page can be framed (clickjacking)")
        )
    if csp is None:
        out.append(finding("http.csp-missing", where, "no Content-Security-Policy"))
    return out


def _max_age(hsts: str) -> int:
    for part in hsts.split(";"):
        name, _, value = part.strip().partition("=")
        if name.lower() == "max-age":
            try:
                return int(value.strip().strip('"'))
            except ValueError:
                return 0
    return 0


def scan_targets(topology: Topology, endpoints: Sequence[str] | None) -> list[str]:
    """The endpoints to probe: ``endpoints``, else ``https://<host>/`` for each of
    staging's hosts (the apex, api., grafana.).

    Raises:
        ConfigurationError: an endpoint is not an http(s) URL with a host, or it is one
            of production's hosts (this is staging's scan).
    """
    targets = (
        list(endpoints)
        if endpoints is not None
        else [f"https://{host}/" for host in topology.staging.hosts]
    )
    production = topology.production.domain
    for target in targets:
        parts = urlsplit(target)
        host = (parts.hostname or "").lower().rstrip(".")
        if parts.scheme not in ("http", "https") or not host:
            raise ConfigurationError(f"endpoints: {target!r} is not an http(s):// URL")
        if host == production or host.endswith("." + production):
            raise ConfigurationError(
                f"endpoints: {target!r} is production's ({production}); this scan is staging's"
            )
    return list(dict.fromkeys(targets))


# ---------------------------------------------------------------------- everything

LiveState = Mapping[str, Sequence[Obj]]
"""Kind -> the live objects of staging's namespaces (Secrets carry ``fingerprints``, not
``data``), as ``tasks/kube.py:read_live_state`` returns them."""


def scan_findings(
    topology: Topology,
    live: LiveState,
    *,
    production_fingerprints: Mapping[str, Mapping[str, str]],
    tls: Sequence[TlsProbe],
    headers: Sequence[HeaderProbe],
    now: dt.datetime,
    expiring_days: float,
    renewal_days: float,
) -> list[Finding]:
    """Every finding of one scan, each once, most severe first."""
    staging = topology.staging
    objects = [o for kind in WORKLOAD_KINDS for o in live.get(kind, ())]
    referrers = [*objects, *live.get("Ingress", ()), *live.get("ServiceAccount", ())]
    secrets = list(live.get("Secret", ()))
    out = workload_findings(objects, registries=staging.image_registries)
    out += unreferenced_secret_findings(secrets, referrers)
    out += shared_credential_findings(
        {object_key(s): s.get("fingerprints") or {} for s in secrets}, production_fingerprints
    )
    namespaces_live = {n["metadata"]["name"]: n for n in live.get("Namespace", ())}
    out += namespace_findings(provisioned_namespaces(staging), namespaces_live)
    out += network_policy_findings(
        network_policies(topology), live.get("NetworkPolicy", ()), staging.namespaces
    )
    for probe in tls:
        out += tls_findings(probe, now=now, expiring_days=expiring_days, renewal_days=renewal_days)
    for answer in headers:
        out += header_findings(answer)
    return unique(out)


# ------------------------------------------------------------------------- baseline


class BaselineEntry(BaseModel):
    """A known finding the operator accepted, with why (and until when)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: str
    object: str
    reason: str = Field(min_length=3, description="Why it is accepted (reviewed in the repo)")
    expires: dt.date | None = Field(default=None, description="Known until this day only")

    @field_validator("rule")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in RULES:
            raise ValueError(f"unknown rule {value!r}; rules: {', '.join(sorted(RULES))}")
        return value

    @property
    def key(self) -> str:
        return f"{self.rule} {self.object}"


class Baseline(BaseModel):
    """``data/security-baseline.yaml``: findings known and accepted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    findings: tuple[BaselineEntry, ...] = ()

    def active(self, today: dt.date) -> dict[str, BaselineEntry]:
        return {e.key: e for e in self.findings if e.expires is None or e.expires >= today}


def parse_baseline(text: str, *, source: str) -> Baseline:
    """Read a baseline file's text.

    Raises:
        ConfigurationError: not YAML, an unknown field or rule, an entry without a reason.
    """
    try:
        raw = yaml.safe_load(text) or {}
        return Baseline.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"baseline {source} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigurationError(f"baseline {source}: {problems}") from None


def announced_id(key: str) -> str:
    """What the previous-run record holds per finding: a short hash of its key (the
    Prefect Variable's value is limited to 5000 characters)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class ClassifiedFinding(Finding):
    """A finding and whether it is news: ``new``, ``seen`` (announced by an earlier run)
    or ``baseline`` (known, in the committed baseline)."""

    status: Status
    reason: str = ""


class ScanReport(BaseModel):
    """The run's findings, classified, and what the baseline holds that no longer applies."""

    findings: list[ClassifiedFinding]
    resolved_baseline: list[str] = Field(description="Entries matching no finding: remove them")
    expired_baseline: list[str] = Field(description="Entries past their expiry date")

    @property
    def critical(self) -> list[ClassifiedFinding]:
        return [f for f in self.findings if f.severity == "critical"]

    @property
    def new(self) -> list[ClassifiedFinding]:
        return [f for f in self.findings if f.status == "new"]

    def counts(self) -> dict[str, int]:
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    def summary(self) -> str:
        tally = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n) or "no findings"
        return f"{tally}; {len(self.new)} new"

    def table(self) -> list[dict[str, str]]:
        return [
            {
                "severity": f.severity,
                "rule": f.rule,
                "object": f.object,
                "detail": f.detail,
                "status": f.status + (f" ({f.reason})" if f.reason else ""),
            }
            for f in self.findings
        ]


def classify(
    findings: Sequence[Finding],
    baseline: Baseline,
    *,
    announced: Iterable[str],
    today: dt.date,
) -> ScanReport:
    """Mark each finding new, seen or baseline.

    ``announced`` (ids from :func:`announced_id`) comes from a Prefect Variable that
    anyone with API access can write: it only decides what is notified. Failing on
    critical findings looks at severity alone.
    """
    active = baseline.active(today)
    before = set(announced)
    out = []
    for item in unique(findings):
        entry = active.get(item.key)
        status: Status = (
            "baseline" if entry else "seen" if announced_id(item.key) in before else "new"
        )
        out.append(
            ClassifiedFinding(
                **item.model_dump(), status=status, reason=entry.reason if entry else ""
            )
        )
    keys = {f.key for f in out}
    return ScanReport(
        findings=out,
        resolved_baseline=sorted(k for k in active if k not in keys),
        expired_baseline=sorted(e.key for e in baseline.findings if e.key not in active),
    )


def notification(report: ScanReport, *, limit: int = 20) -> tuple[str, str]:
    """Subject and body announcing the new findings (at most ``limit`` listed)."""
    new = report.new
    subject = f"staging security scan: {len(new)} new finding{'s' if len(new) != 1 else ''}"
    lines = [f"[{f.severity}] {f.rule} {f.object}: {f.detail}" for f in new[:limit]]
    if len(new) > limit:
        lines.append(f"... and {len(new) - limit} more (see the scan-staging-security artifact)")
    return subject, f"{report.summary()}\n" + "\n".join(lines)


__all__ = [
    "RULES",
    "SEVERITIES",
    "Baseline",
    "BaselineEntry",
    "ClassifiedFinding",
    "Finding",
    "HeaderProbe",
    "Rule",
    "ScanReport",
    "TlsProbe",
    "announced_id",
    "classify",
    "finding",
    "header_findings",
    "namespace_findings",
    "network_policy_findings",
    "notification",
    "parse_baseline",
    "scan_findings",
    "scan_targets",
    "shared_credential_findings",
    "tls_findings",
    "unique",
    "unreferenced_secret_findings",
    "workload_findings",
]
