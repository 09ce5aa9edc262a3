"""Pod Security Admission: the Pod Security Standards checks, worded as kube-apiserver words them.

A namespace's ``pod-security.kubernetes.io/enforce`` label picks the level (privileged,
baseline, restricted); an unlabelled namespace is privileged, as the real default. Only
Pods are refused: controllers that create pods (Deployments' ReplicaSets, StatefulSets,
Jobs) are admitted and then fail to create their pods, as on a real cluster.

The checks mirror k8s.io/pod-security-admission/policy (the "latest" version): each one
has an ID (the order of the message is the IDs' order), a level, a reason and a detail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

Obj = dict[str, Any]
Check = Callable[[Obj, Obj], "tuple[str, str] | None"]  # (pod metadata, pod spec) -> violation

LEVELS = ("privileged", "baseline", "restricted")

_BASELINE_CAPABILITIES = frozenset(
    [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ]
)
_SAFE_SYSCTLS = frozenset(
    [
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    ]
)
_RESTRICTED_VOLUMES = frozenset(
    [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ]
)
_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
_VERSION = re.compile(r"^(latest|v1\.\d+)$")


def policy(labels: dict[str, str], mode: str = "enforce") -> tuple[str, str]:
    """(level, version) a namespace's labels set for ``mode`` (enforce, warn, audit);
    ("privileged", "latest") if none.

    An unparsable level is taken as restricted, as the real admission does.
    """
    key = f"pod-security.kubernetes.io/{mode}"
    level = labels.get(key)
    version = labels.get(f"{key}-version", "latest")
    version = version if _VERSION.match(version) else "latest"
    if level is None:
        return "privileged", version
    return (level if level in LEVELS else "restricted"), version


def template_pod(kind: str, obj: Obj) -> Obj | None:
    """The pod a workload would create (its template as a pod), None if not a workload."""
    spec = obj.get("spec") or {}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    elif kind not in ("Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "Job"):
        return None
    template = spec.get("template") or {}
    return {"metadata": template.get("metadata") or {}, "spec": template.get("spec") or {}}


def warnings(labels: dict[str, str], kind: str, obj: Obj) -> list[str]:
    """The ``Warning`` headers Pod Security adds to an admitted create.

    A Pod: the warn level's violations. A workload: its pod template against the enforce
    and the warn level, since its pods will be checked (and refused) only when created.
    """
    modes = ["enforce", "warn"] if kind != "Pod" else ["warn"]
    pod = obj if kind == "Pod" else template_pod(kind, obj)
    if pod is None:
        return []
    out: list[str] = []
    for mode in modes:
        level, version = policy(labels, mode)
        detail = violations(level, pod)
        said = f'would violate PodSecurity "{level}:{version}": {detail}'
        if detail and said not in out:
            out.append(said)
    return out


def violations(level: str, pod: Obj) -> str:
    """The forbidden detail of ``pod`` at ``level`` ("" when it is allowed)."""
    if level == "privileged":
        return ""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    checks = dict(_BASELINE)
    if level == "restricted":
        for overridden in _OVERRIDES:
            checks.pop(overridden)
        checks.update(_RESTRICTED)
    found = [checks[cid](meta, spec) for cid in sorted(checks)]
    return ", ".join(f"{r} ({d})" if d else r for r, d in (v for v in found if v is not None))


# --- helpers --------------------------------------------------------------------------------


def _containers(spec: Obj) -> Iterator[Obj]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        yield from (c for c in spec.get(field) or [] if isinstance(c, dict))


def _sc(obj: Obj) -> Obj:
    return obj.get("securityContext") or {}


def _quote(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _who(names: list[str], one: str = "container", many: str = "containers") -> str:
    return f"{one if len(names) == 1 else many} {_quote(names)}"


def _pod_or(names: list[str]) -> str:
    return f"pod or {_who(names)}"


# --- baseline -------------------------------------------------------------------------------


def _host_namespaces(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = [f"{f}=true" for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f) is True]
    return ("host namespaces", ", ".join(bad)) if bad else None


def _privileged(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = [c.get("name", "") for c in _containers(spec) if _sc(c).get("privileged") is True]
    if not bad:
        return None
    return "privileged", f"{_who(bad)} must not set securityContext.privileged=true"


def _added(spec: Obj, allowed: frozenset[str]) -> tuple[list[str], list[str]]:
    names: list[str] = []
    caps: list[str] = []
    for c in _containers(spec):
        extra = [a for a in (_sc(c).get("capabilities") or {}).get("add") or [] if a not in allowed]
        if extra:
            names.append(c.get("name", ""))
            caps.extend(a for a in extra if a not in caps)
    return names, caps


def _capabilities_baseline(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    names, caps = _added(spec, _BASELINE_CAPABILITIES)
    if not names:
        return None
    detail = f"{_who(names)} must not include {_quote(caps)} in securityContext.capabilities.add"
    return "non-default capabilities", detail


def _host_path_volumes(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = [v.get("name", "") for v in spec.get("volumes") or [] if "hostPath" in v]
    return ("hostPath volumes", _who(bad, "volume", "volumes")) if bad else None


def _host_ports(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    names: list[str] = []
    ports: list[str] = []
    for c in _containers(spec):
        used = [str(p["hostPort"]) for p in c.get("ports") or [] if p.get("hostPort")]
        if used:
            names.append(c.get("name", ""))
            ports.extend(p for p in used if p not in ports)
    if not names:
        return None
    verb = "uses" if len(names) == 1 else "use"
    noun = "hostPort" if len(ports) == 1 else "hostPorts"
    return "hostPort", f"{_who(names)} {verb} {noun} {', '.join(ports)}"


def _app_armor(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = []
    if (_sc(spec).get("appArmorProfile") or {}).get("type") == "Unconfined":
        bad.append('pod must not set securityContext.appArmorProfile.type to "Unconfined"')
    names = [
        c.get("name", "")
        for c in _containers(spec)
        if (_sc(c).get("appArmorProfile") or {}).get("type") == "Unconfined"
    ]
    if names:
        bad.append(
            f'{_who(names)} must not set securityContext.appArmorProfile.type to "Unconfined"'
        )
    prefix = "container.apparmor.security.beta.kubernetes.io/"
    for key, value in sorted((meta.get("annotations") or {}).items()):
        if (
            key.startswith(prefix)
            and value != "runtime/default"
            and not value.startswith("localhost/")
        ):
            bad.append(f'{key}="{value}"')
    return (
        ("forbidden AppArmor profile" + ("s" if len(bad) > 1 else ""), ", ".join(bad))
        if bad
        else None
    )


def _se_linux(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    def bad(options: Obj) -> list[str]:
        out = []
        if options.get("type", "") not in _SELINUX_TYPES:
            out.append(f'type "{options["type"]}"')
        out += [f'{f} "{options[f]}"' for f in ("user", "role") if options.get(f)]
        return out

    problems, names = bad(_sc(spec).get("seLinuxOptions") or {}), []
    for c in _containers(spec):
        more = bad(_sc(c).get("seLinuxOptions") or {})
        if more:
            names.append(c.get("name", ""))
            problems += [p for p in more if p not in problems]
    if not problems:
        return None
    pod_too = bool(bad(_sc(spec).get("seLinuxOptions") or {}))
    who = " and ".join([*(["pod"] if pod_too else []), *([_who(names)] if names else [])])
    verb = "sets" if len(names) == 1 and not pod_too else "set"
    return (
        "seLinuxOptions",
        f"{who} {verb} forbidden securityContext.seLinuxOptions: {', '.join(problems)}",
    )


def _proc_mount(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = [
        c.get("name", "")
        for c in _containers(spec)
        if _sc(c).get("procMount") not in (None, "Default")
    ]
    if not bad:
        return None
    return "procMount", f'{_who(bad)} must not set securityContext.procMount to "Unmasked"'


def _seccomp_baseline(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = []
    if (_sc(spec).get("seccompProfile") or {}).get("type") == "Unconfined":
        bad.append('pod must not set securityContext.seccompProfile.type to "Unconfined"')
    names = [
        c.get("name", "")
        for c in _containers(spec)
        if (_sc(c).get("seccompProfile") or {}).get("type") == "Unconfined"
    ]
    if names:
        bad.append(
            f'{_who(names)} must not set securityContext.seccompProfile.type to "Unconfined"'
        )
    return ("seccompProfile", "; ".join(bad)) if bad else None


def _sysctls(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = [
        s.get("name", "")
        for s in _sc(spec).get("sysctls") or []
        if s.get("name") not in _SAFE_SYSCTLS
    ]
    return ("forbidden sysctls", ", ".join(bad)) if bad else None


# --- restricted -----------------------------------------------------------------------------


def _restricted_volumes(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    names: list[str] = []
    kinds: list[str] = []
    for v in spec.get("volumes") or []:
        used = [k for k in v if k != "name" and k not in _RESTRICTED_VOLUMES]
        if used:
            names.append(v.get("name", ""))
            kinds.extend(k for k in used if k not in kinds)
    if not names:
        return None
    verb = "uses" if len(names) == 1 else "use"
    noun = "type" if len(kinds) == 1 else "types"
    detail = f"{_who(names, 'volume', 'volumes')} {verb} restricted volume {noun} {_quote(kinds)}"
    return "restricted volume types", detail


def _allow_privilege_escalation(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = [
        c.get("name", "")
        for c in _containers(spec)
        if _sc(c).get("allowPrivilegeEscalation") is not False
    ]
    if not bad:
        return None
    detail = f"{_who(bad)} must set securityContext.allowPrivilegeEscalation=false"
    return "allowPrivilegeEscalation != false", detail


def _run_as_non_root(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    pod = _sc(spec).get("runAsNonRoot")
    explicit_false = [
        c.get("name", "") for c in _containers(spec) if _sc(c).get("runAsNonRoot") is False
    ]
    unset = [c.get("name", "") for c in _containers(spec) if _sc(c).get("runAsNonRoot") is None]
    bad = []
    if pod is False:
        bad.append("pod must not set securityContext.runAsNonRoot=false")
    if explicit_false:
        bad.append(f"{_who(explicit_false)} must not set securityContext.runAsNonRoot=false")
    if pod is not True and unset:
        if pod is None:
            bad.append(f"{_pod_or(unset)} must set securityContext.runAsNonRoot=true")
        else:
            bad.append(f"{_who(unset)} must set securityContext.runAsNonRoot=true")
    return ("runAsNonRoot != true", "; ".join(bad)) if bad else None


def _run_as_user(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = ["pod must not set runAsUser=0"] if _sc(spec).get("runAsUser") == 0 else []
    names = [c.get("name", "") for c in _containers(spec) if _sc(c).get("runAsUser") == 0]
    if names:
        bad.append(f"{_who(names)} must not set runAsUser=0")
    return ("runAsUser=0", "; ".join(bad)) if bad else None


def _seccomp_restricted(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    good = ("RuntimeDefault", "Localhost")
    pod = (_sc(spec).get("seccompProfile") or {}).get("type")
    bad: list[str] = []
    wrong: list[str] = []
    unset: list[str] = []
    for c in _containers(spec):
        kind = (_sc(c).get("seccompProfile") or {}).get("type")
        (unset if kind is None else wrong if kind not in good else []).append(c.get("name", ""))
    if pod is not None and pod not in good:
        bad.append(f'pod must not set securityContext.seccompProfile.type to "{pod}"')
    if wrong:
        bad.append(
            f'{_who(wrong)} must not set securityContext.seccompProfile.type to "Unconfined"'
        )
    if unset and pod not in good:
        who = _pod_or(unset) if pod is None else _who(unset)
        bad.append(
            f'{who} must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"'
        )
    return ("seccompProfile", "; ".join(bad)) if bad else None


def _capabilities_restricted(_meta: Obj, spec: Obj) -> tuple[str, str] | None:
    no_drop = [
        c.get("name", "")
        for c in _containers(spec)
        if "ALL" not in ((_sc(c).get("capabilities") or {}).get("drop") or [])
    ]
    bad = [f'{_who(no_drop)} must set securityContext.capabilities.drop=["ALL"]'] if no_drop else []
    names, caps = _added(spec, frozenset({"NET_BIND_SERVICE"}))
    if names:
        bad.append(
            f"{_who(names)} must not include {_quote(caps)} in securityContext.capabilities.add"
        )
    return ("unrestricted capabilities", "; ".join(bad)) if bad else None


_BASELINE: dict[str, Check] = {
    "appArmorProfile": _app_armor,
    "capabilities_baseline": _capabilities_baseline,
    "hostNamespaces": _host_namespaces,
    "hostPathVolumes": _host_path_volumes,
    "hostPorts": _host_ports,
    "privileged": _privileged,
    "procMount": _proc_mount,
    "seLinuxOptions": _se_linux,
    "seccompProfile_baseline": _seccomp_baseline,
    "sysctls": _sysctls,
}
# Restricted checks that replace a baseline one (the real registry's OverrideCheckIDs).
_OVERRIDES = ("capabilities_baseline", "hostPathVolumes", "seccompProfile_baseline")
_RESTRICTED: dict[str, Check] = {
    "allowPrivilegeEscalation": _allow_privilege_escalation,
    "capabilities_restricted": _capabilities_restricted,
    "restrictedVolumes": _restricted_volumes,
    "runAsNonRoot": _run_as_non_root,
    "runAsUser": _run_as_user,
    "seccompProfile_restricted": _seccomp_restricted,
}
