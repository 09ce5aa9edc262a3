"""Admission, as kube-apiserver's built-in plugins admit or refuse a create.

In the real server's order: defaulting, then the mutating LimitRanger (default requests and
limits), then the validating PodSecurity, LimitRanger and ResourceQuota. A refusal is a
403 Forbidden naming the object, with the plugin's own wording after the colon. The quota
controller's part, ``status.used``, is kept current after every write.
"""

from __future__ import annotations

import copy
import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from . import podsecurity
from .kinds import KINDS, Kind, kind_named
from .quantity import format_quantity, parse
from .store import ApiError, Obj

if TYPE_CHECKING:
    from .store import Store

RESOURCE_QUOTA, LIMIT_RANGE = kind_named("ResourceQuota"), kind_named("LimitRange")
_COMPUTE = ("cpu", "memory", "ephemeral-storage")
# Quota names that are the older spelling of another ("cpu" is "requests.cpu").
_ALIASES = {"cpu": "requests.cpu", "memory": "requests.memory"}
_ALIASES["ephemeral-storage"] = "requests.ephemeral-storage"
# Object-count quotas with a legacy name, besides the general "count/<resource>".
_LEGACY_COUNTS = {
    "Pod": "pods",
    "Service": "services",
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "ResourceQuota": "resourcequotas",
}


def forbidden(kind: Kind, name: str, message: str) -> ApiError:
    details: Obj = {"name": name, "kind": kind.plural}
    if kind.group:
        details["group"] = kind.group
    return ApiError(403, "Forbidden", f'{kind.resource} "{name}" is forbidden: {message}', details)


class Admission:
    """The admission chain of one store: ``admit`` before a create, ``refresh`` after writes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.admit = self.admit
        store.after_write = self.refresh
        # Where the request being served on this thread collects its Warning headers.
        self._local = threading.local()

    def collect(self, warnings: list[str] | None) -> None:
        """Send this thread's warnings to ``warnings`` from now on (None: nowhere)."""
        self._local.warnings = warnings

    def _warn(self, kind: Kind, obj: Obj, labels: dict[str, str]) -> None:
        target: list[str] | None = getattr(self._local, "warnings", None)
        if target is None or obj["metadata"].get("ownerReferences"):
            return  # a controller's pod: no client is there to read a warning
        target.extend(w for w in podsecurity.warnings(labels, kind.kind, obj) if w not in target)

    def admit(self, kind: Kind, obj: Obj) -> None:
        """Default and check ``obj``, about to be created in its namespace; 403 if refused."""
        namespace = obj["metadata"].get("namespace")
        if not namespace:
            return
        name = obj["metadata"].get("name", "")
        ns = self.store.get(kind_named("Namespace"), None, namespace) or {}
        labels = ns.get("metadata", {}).get("labels") or {}
        if kind.kind == "Pod":
            _default_requests(obj)
            limit_ranges = self.store.list(LIMIT_RANGE, namespace)[0]
            for limit_range in limit_ranges:
                _apply_defaults(limit_range, obj)
            level, version = podsecurity.policy(labels)
            detail = podsecurity.violations(level, obj)
            if detail:
                message = f'violates PodSecurity "{level}:{version}": {detail}'
                raise forbidden(kind, name, message)
            problems = [p for lr in limit_ranges for p in _limit_problems(lr, obj)]
            if problems:
                raise forbidden(
                    kind, name, problems[0] if len(problems) == 1 else f"[{', '.join(problems)}]"
                )
        self._warn(kind, obj, labels)
        for quota in self.store.list(RESOURCE_QUOTA, namespace)[0]:
            problem = self._quota_problem(quota, kind, obj)
            if problem:
                raise forbidden(kind, name, problem)

    def _quota_problem(self, quota: Obj, kind: Kind, obj: Obj) -> str:
        hard = {k: parse(v) for k, v in ((quota.get("spec") or {}).get("hard") or {}).items()}
        wanted = usage(kind, obj)
        name = quota["metadata"]["name"]
        if kind.kind == "Pod":
            missing = _unspecified(obj, hard)
            if missing:
                return f"failed quota: {name}: must specify {missing}"
        touched = sorted(r for r in hard if wanted.get(r, Decimal(0)) > 0)
        if not touched:
            return ""
        used = self._used(quota["metadata"]["namespace"], touched)
        over = [r for r in touched if used[r] + wanted[r] > hard[r]]
        if not over:
            return ""

        def listed(values: dict[str, Decimal]) -> str:
            return ",".join(f"{r}={format_quantity(values[r], r)}" for r in over)

        return (
            f"exceeded quota: {name}, requested: {listed(wanted)}, used: {listed(used)}, "
            f"limited: {listed(hard)}"
        )

    def _used(self, namespace: str, resources: list[str]) -> dict[str, Decimal]:
        totals = {r: Decimal(0) for r in resources}
        for kind in _kinds_counted(resources):
            for obj in self.store.list(kind, namespace)[0]:
                for r, value in usage(kind, obj).items():
                    if r in totals:
                        totals[r] += value
        return totals

    def refresh(self, kind: Kind, namespace: str) -> None:
        """Write every quota's ``status`` (hard, used) in ``namespace``, as the quota controller."""
        if not namespace:
            return
        for quota in self.store.list(RESOURCE_QUOTA, namespace)[0]:
            hard = (quota.get("spec") or {}).get("hard") or {}
            used = self._used(namespace, sorted(hard))
            status = {
                "hard": dict(hard),
                "used": {r: format_quantity(v, r) for r, v in used.items()},
            }
            if quota.get("status") != status:
                self.store.set_status(RESOURCE_QUOTA, namespace, quota["metadata"]["name"], status)


# --- usage ----------------------------------------------------------------------------------


def _kinds_counted(resources: list[str]) -> list[Kind]:
    kinds = {kind_named(k) for k, legacy in _LEGACY_COUNTS.items() if legacy in resources}
    if any(r.split(".")[-1] in _COMPUTE or r in _ALIASES for r in resources):
        kinds.add(kind_named("Pod"))
    if "requests.storage" in resources:
        kinds.add(kind_named("PersistentVolumeClaim"))
    for r in resources:
        if r.startswith("count/"):
            plural, _, group = r[len("count/") :].partition(".")
            kinds.update(k for k in KINDS if k.plural == plural and k.group == group)
    return sorted(kinds, key=lambda k: k.kind)


def usage(kind: Kind, obj: Obj) -> dict[str, Decimal]:
    """What one object counts against a quota, by quota resource name."""
    one = Decimal(1)
    out: dict[str, Decimal] = {f"count/{kind.resource}": one}
    if kind.kind in _LEGACY_COUNTS:
        out[_LEGACY_COUNTS[kind.kind]] = one
    if kind.kind == "Pod":
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return {}  # terminal pods no longer count, as the quota evaluator says
        for resource, value in pod_totals(obj).items():
            out[resource] = value
            if resource in _ALIASES.values():
                out[next(a for a, full in _ALIASES.items() if full == resource)] = value
    if kind.kind == "PersistentVolumeClaim":
        storage = (
            ((obj.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
        )
        out["requests.storage"] = parse(storage) if storage is not None else Decimal(0)
    return out


def pod_totals(pod: Obj) -> dict[str, Decimal]:
    """``requests.cpu`` and friends of a pod: its containers' sum, or its largest init
    container's if larger (init containers run one at a time, before the others)."""
    spec = pod.get("spec") or {}
    totals: dict[str, Decimal] = {}
    for side in ("requests", "limits"):
        for resource in _COMPUTE:
            key = f"{side}.{resource}"

            def of(c: Any, side: str = side, resource: str = resource) -> Decimal:
                value = ((c.get("resources") or {}).get(side) or {}).get(resource)
                return parse(value) if value is not None else Decimal(0)

            regular = sum((of(c) for c in spec.get("containers") or []), Decimal(0))
            init = max((of(c) for c in spec.get("initContainers") or []), default=Decimal(0))
            if max(regular, init) > 0:
                totals[key] = max(regular, init)
    return totals


def _unspecified(pod: Obj, hard: dict[str, Decimal]) -> str:
    """The "must specify" part of a quota refusal: compute resources a quota limits that
    some container does not state ("" if none)."""
    wanted = sorted(
        {_ALIASES.get(r, r) for r in hard}
        & {f"{s}.{r}" for s in ("requests", "limits") for r in ("cpu", "memory")}
    )
    parts = []
    spec = pod.get("spec") or {}
    for key in wanted:
        side, resource = key.split(".")
        names = [
            c.get("name", "")
            for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
            if resource not in ((c.get("resources") or {}).get(side) or {})
        ]
        if names:
            parts.append(f"{key} for: {','.join(names)}")
    return "; ".join(parts)


# --- defaults and LimitRange ----------------------------------------------------------------


def _default_requests(pod: Obj) -> None:
    """The API server's own pod defaulting: a container stating a limit but no request
    requests its limit."""
    for c in _containers(pod):
        resources = c.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        for resource, value in limits.items():
            requests.setdefault(resource, value)
        if requests:
            c["resources"] = {**resources, "requests": requests}


def _containers(pod: Obj) -> list[Obj]:
    spec = pod.get("spec") or {}
    return [
        c
        for f in ("initContainers", "containers")
        for c in spec.get(f) or []
        if isinstance(c, dict)
    ]


def _container_items(limit_range: Obj) -> list[Obj]:
    """The LimitRange's Container items, defaulted as the API server stores them: default
    from max, defaultRequest from default, then from min."""
    items = []
    for item in (limit_range.get("spec") or {}).get("limits") or []:
        if item.get("type") != "Container":
            continue
        item = copy.deepcopy(item)
        default = {**(item.get("max") or {}), **(item.get("default") or {})}
        request = {**(item.get("min") or {}), **default, **(item.get("defaultRequest") or {})}
        item.update(default=default, defaultRequest=request)
        items.append(item)
    return items


def _apply_defaults(limit_range: Obj, pod: Obj) -> None:
    for item in _container_items(limit_range):
        for c in _containers(pod):
            resources = c.setdefault("resources", {}) or {}
            c["resources"] = resources
            for side, defaults in (
                ("limits", item["default"]),
                ("requests", item["defaultRequest"]),
            ):
                stated = resources.get(side) or {}
                for resource, value in defaults.items():
                    stated.setdefault(resource, value)
                if stated:
                    resources[side] = stated


def _limit_problems(limit_range: Obj, pod: Obj) -> list[str]:
    problems = []
    for item in _container_items(limit_range):
        for c in _containers(pod):
            resources = c.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            for resource, low in sorted((item.get("min") or {}).items()):
                if resource not in requests:
                    problems.append(
                        f"minimum {resource} usage per Container is {low}.  No request is specified"
                    )
                elif parse(requests[resource]) < parse(low):
                    asked = requests[resource]
                    problems.append(
                        f"minimum {resource} usage per Container is {low}, but request is {asked}"
                    )
            for resource, high in sorted((item.get("max") or {}).items()):
                if resource not in limits:
                    problems.append(
                        f"maximum {resource} usage per Container is {high}.  No limit is specified"
                    )
                elif parse(limits[resource]) > parse(high):
                    capped = limits[resource]
                    problems.append(
                        f"maximum {resource} usage per Container is {high}, but limit is {capped}"
                    )
    return problems
