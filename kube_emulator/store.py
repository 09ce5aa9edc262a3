"""The object store: versioned objects, server-owned metadata, selectors and watch fan-out.

One re-entrant lock guards everything, so a write, its watch events and the controller
reaction to it are atomic as seen from other requests.
"""

from __future__ import annotations

import base64
import copy
import queue
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from .kinds import NAMESPACE, Kind

Obj = dict[str, Any]
Outcome = Literal["created", "updated", "unchanged"]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error the API answers with a ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(kind: Kind, name: str, **extra: Any) -> Obj:
    details: Obj = {"name": name, "kind": kind.plural, **extra}
    if kind.group:
        details["group"] = kind.group
    return details


def not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind.resource} "{name}" not found', _details(kind, name))


def invalid(kind: Kind, name: str, field: str, detail: str) -> ApiError:
    cause = {"reason": "FieldValueInvalid", "message": f"{field}: {detail}", "field": field}
    details = {**_details(kind, name, causes=[cause]), "kind": kind.kind}
    return ApiError(422, "Invalid", f'{kind.kind} "{name}" is invalid: {field}: {detail}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


# --- names and selectors ------------------------------------------------------------------

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME_RULES = {
    "label": (
        re.compile(f"^{_LABEL}$"),
        63,
        "a lowercase RFC 1123 label must consist of lower "
        "case alphanumeric characters or '-', and must start and end with an alphanumeric "
        "character",
    ),
    "subdomain": (
        re.compile(rf"^{_LABEL}(\.{_LABEL})*$"),
        253,
        "a lowercase RFC 1123 "
        "subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
        "must start and end with an alphanumeric character",
    ),
    "path": (re.compile(r"^[^/%]+$"), 253, "may not contain '/' or '%'"),
}


def check_name(kind: Kind, name: Any) -> None:
    if not name:
        raise invalid(kind, "", "metadata.name", "Required value: name or generateName is required")
    pattern, limit, rule = _NAME_RULES[kind.names]
    if not isinstance(name, str) or not pattern.match(name) or len(name) > limit:
        raise invalid(kind, str(name), "metadata.name", f'Invalid value: "{name}": {rule}')


_REQUIREMENT = re.compile(
    r"^(?P<not>!)?\s*(?P<key>[A-Za-z0-9][-A-Za-z0-9_./]*)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[-A-Za-z0-9_.]*)|\s(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?$"
)


def label_matcher(selector: str | None) -> Callable[[Obj], bool]:
    """Compile a label selector (``a=b,c!=d,e in (f,g),h notin (i),j,!k``) to a predicate."""
    # Each requirement as (key, wanted, values): "a=b" is ("a", True, {"b"}), "c!=d" is
    # ("c", False, {"d"}); existence tests use None as the values.
    requirements: list[tuple[str, bool, frozenset[str] | None]] = []
    for raw in re.split(r",(?![^(]*\))", selector or ""):
        if not raw.strip():
            continue
        m = _REQUIREMENT.match(raw.strip())
        if m is None or (m["not"] and (m["op"] or m["set"])):
            raise bad_request(f"unable to parse requirement: {raw.strip()!r}")
        if m["op"] or m["set"]:
            values = m["value"] if m["op"] else m["values"]
            wanted = m["op"] in ("=", "==") or m["set"] == "in"
            requirements.append((m["key"], wanted, frozenset(v.strip() for v in values.split(","))))
        else:
            requirements.append((m["key"], not m["not"], None))

    def matches(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(
            (key in labels if values is None else labels.get(key) in values) is wanted
            for key, wanted, values in requirements
        )

    return matches


def field_matcher(selector: str | None) -> Callable[[Obj], bool]:
    """Compile a field selector (``metadata.name=x,status.phase!=Running``) to a predicate."""
    checks: list[tuple[list[str], str, bool]] = []
    for raw in (selector or "").split(","):
        if not raw.strip():
            continue
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", raw)
        if m is None:
            raise bad_request(f"invalid field selector: {raw!r}")
        checks.append((m[1].split("."), m[3], m[2] != "!="))
    return lambda obj: all((_field(obj, path) == value) is equal for path, value, equal in checks)


def _field(obj: Any, path: list[str]) -> str:
    for part in path:
        obj = obj.get(part) if isinstance(obj, dict) else None
    if isinstance(obj, bool):
        return "true" if obj else "false"
    return "" if obj is None else str(obj)


# --- watches ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    type: str  # ADDED, MODIFIED, DELETED
    kind: Kind
    obj: Obj
    old: Obj | None
    rv: int


class Watcher:
    """One open watch: events for its kind and selectors queue up until the stream sends them."""

    def __init__(self, kind: Kind, namespace: str | None, labels: str | None, fields: str | None):
        self.kind, self.namespace = kind, namespace
        matches_labels, matches_fields = label_matcher(labels), field_matcher(fields)
        self.matches: Callable[[Obj], bool] = lambda o: matches_labels(o) and matches_fields(o)
        self.queue: queue.Queue[tuple[str, Obj] | None] = queue.Queue()

    def offer(self, event: Event) -> None:
        if event.kind != self.kind:
            return
        if self.namespace and event.obj["metadata"].get("namespace") != self.namespace:
            return
        # Like the real server, an object that moves into or out of the selection is seen as
        # ADDED or DELETED by this watch.
        now_in = event.type != "DELETED" and self.matches(event.obj)
        was_in = event.old is not None and self.matches(event.old)
        seen_as = {(True, True): "MODIFIED", (True, False): "ADDED", (False, True): "DELETED"}
        if (now_in, was_in) in seen_as:
            self.queue.put((seen_as[now_in, was_in], event.obj))

    def close(self) -> None:
        self.queue.put(None)


# --- the store ----------------------------------------------------------------------------

Key = tuple[Kind, str, str]  # kind, namespace ("" when cluster-scoped), name
ChangeHook = Callable[[Kind, "Obj | None", Obj], None]

_DEFAULTS: dict[str, Obj] = {
    # The few defaults clients rely on: kubectl rollout status reads the strategies.
    "Deployment": {
        "replicas": 1,
        "revisionHistoryLimit": 10,
        "progressDeadlineSeconds": 600,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
        },
    },
    "StatefulSet": {
        "replicas": 1,
        "revisionHistoryLimit": 10,
        "podManagementPolicy": "OrderedReady",
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
    },
    "ReplicaSet": {"replicas": 1},
    "Job": {"backoffLimit": 6, "completions": 1, "parallelism": 1},
}


# The status a create starts with (then only controllers and /status writes change it), where
# the real server's is not empty: the typed client insists on "replicas" in these.
_INITIAL_STATUS: dict[str, Obj] = {
    "Namespace": {"phase": "Active"},
    "Pod": {"phase": "Pending"},
    "StatefulSet": {"replicas": 0, "availableReplicas": 0},
    "ReplicaSet": {"replicas": 0},
}


def _with_defaults(kind: Kind, obj: Obj) -> Obj:
    if kind.kind == "Secret" and "stringData" in obj:
        # The real server folds the write-only stringData into data (base64) and never
        # stores it; readers (and fingerprint checks) only ever see data.
        data = obj.setdefault("data", {}) or {}
        for key, value in (obj.pop("stringData") or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data
    defaults = _DEFAULTS.get(kind.kind)
    if defaults is not None:
        spec = obj.setdefault("spec", {})
        for key, value in defaults.items():
            spec.setdefault(key, copy.deepcopy(value))
    return obj


def _content(obj: Obj) -> Obj:
    """What ``metadata.generation`` tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._objects: dict[Key, Obj] = {}
        self._rv = 1
        self._history: deque[Event] = deque(maxlen=10_000)
        self._watchers: set[Watcher] = set()
        self.on_change: ChangeHook | None = None  # the workload controllers
        # Admission (see admission.py): checks and defaults a create, and keeps the
        # quotas' usage after each write.
        self.admit: Callable[[Kind, Obj], None] | None = None
        self.after_write: Callable[[Kind, str], None] | None = None
        # Validation of an update against the object it replaces (immutable fields).
        self.check_update: Callable[[Kind, Obj, Obj], None] | None = None
        # Authorization that needs the object written (rbac.py): "create" (a POST),
        # "create-by-apply" (an apply that creates: the real server authorizes it as a
        # create too) or "update"; escalation prevention for Roles and bindings.
        self.authorize_write: Callable[[str, Kind, Obj], None] | None = None

    @property
    def resource_version(self) -> int:
        return self._rv

    # -- reads --

    def get(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        with self.lock:
            obj = self._objects.get((kind, namespace or "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> tuple[list[Obj], int]:
        matches_labels, matches_fields = label_matcher(labels), field_matcher(fields)
        with self.lock:
            items = [
                copy.deepcopy(o)
                for (k, ns, _), o in sorted(self._objects.items(), key=lambda kv: kv[0][1:])
                if k == kind
                and (not namespace or ns == namespace)
                and matches_labels(o)
                and matches_fields(o)
            ]
            return items, self._rv

    def namespace_exists(self, name: str) -> bool:
        return (NAMESPACE, "", name) in self._objects

    # -- writes --

    def create(
        self,
        kind: Kind,
        obj: Obj,
        namespace: str | None = None,
        *,
        dry_run: bool = False,
        keep_status: bool = False,
        by_apply: bool = False,
    ) -> Obj:
        obj = copy.deepcopy(obj)
        self._check_type(kind, obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        check_name(kind, meta.get("name"))
        namespace = self._check_namespace(kind, meta, namespace)
        with self.lock:
            key = (kind, namespace, meta["name"])
            if key in self._objects:
                message = f'{kind.resource} "{meta["name"]}" already exists'
                raise ApiError(409, "AlreadyExists", message, _details(kind, meta["name"]))
            if namespace and not self.namespace_exists(namespace):
                raise not_found(NAMESPACE, namespace)
            if kind.status and (not keep_status or "status" not in obj):
                obj["status"] = copy.deepcopy(_INITIAL_STATUS.get(kind.kind, {}))
            if kind.kind == "Namespace":
                obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            _with_defaults(kind, obj)
            for server_owned in ("resourceVersion", "uid", "generation", "creationTimestamp"):
                meta.pop(server_owned, None)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
            if self.admit is not None:
                self.admit(kind, obj)
            if self.authorize_write is not None:
                self.authorize_write("create-by-apply" if by_apply else "create", kind, obj)
            if dry_run:
                return obj
            self._commit(kind, key, None, obj)
            return copy.deepcopy(obj)

    def update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        change: Callable[[Obj], Obj],
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        create: Callable[[], Obj] | None = None,
    ) -> tuple[Obj, Outcome]:
        """Write ``change(current)`` if it differs from the current object.

        A missing object is created from ``create()`` if given (server-side apply), else 404.
        A change that leaves the object as it is keeps its resourceVersion and emits no event.
        """
        with self.lock:
            key = (kind, namespace or "", name)
            old = self._objects.get(key)
            if old is None:
                if create is None or subresource:
                    raise not_found(kind, name)
                created = self.create(kind, create(), namespace, dry_run=dry_run, by_apply=True)
                return created, "created"
            new = change(copy.deepcopy(old))
            self._check_type(kind, new)
            meta = new.setdefault("metadata", {})
            sent_rv = meta.get("resourceVersion")
            if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Operation cannot be fulfilled on {kind.resource}"
                    f' "{name}": the object has been modified; please apply your '
                    "changes to the latest version and try again",
                    _details(kind, name),
                )
            if meta.get("name", name) != name:
                raise bad_request("the name of the object does not match the name on the URL")
            self._check_namespace(kind, meta, namespace)
            if subresource == "status":  # /status writes change the status and nothing else
                new = {**copy.deepcopy(old), "status": new.get("status", {})}
            elif kind.status:  # the main resource ignores status
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
            _with_defaults(kind, new)
            meta = new["metadata"]
            for server_owned in ("uid", "creationTimestamp", "resourceVersion", "generation"):
                meta[server_owned] = old["metadata"][server_owned]
            if not meta.get("managedFields"):
                meta.pop("managedFields", None)
            if subresource != "status" and self.check_update is not None:
                self.check_update(kind, old, new)
            if subresource != "status" and self.authorize_write is not None:
                self.authorize_write("update", kind, new)
            if new == old:
                return copy.deepcopy(old), "unchanged"
            if _content(new) != _content(old):
                meta["generation"] = old["metadata"]["generation"] + 1
            if dry_run:
                return new, "updated"
            self._commit(kind, key, old, new)
            return copy.deepcopy(new), "updated"

    def set_status(self, kind: Kind, namespace: str, name: str, status: Obj) -> None:
        self.update(
            kind, namespace, name, lambda obj: {**obj, "status": status}, subresource="status"
        )

    def delete(self, kind: Kind, namespace: str | None, name: str, *, dry_run: bool = False) -> Obj:
        with self.lock:
            key = (kind, namespace or "", name)
            old = self._objects.get(key)
            if old is None:
                raise not_found(kind, name)
            if not dry_run:
                self._remove(key)
            return copy.deepcopy(old)

    def _remove(self, key: Key) -> None:
        obj = self._objects.pop(key)
        self._rv += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(Event("DELETED", key[0], gone, gone, self._rv))
        if self.after_write is not None:
            self.after_write(key[0], key[1])
        # Garbage collection, done at once: what the object owned, and a namespace's content.
        uid = obj["metadata"]["uid"]
        for other_key, other in list(self._objects.items()):
            owners = other["metadata"].get("ownerReferences") or []
            in_namespace = key[0].kind == "Namespace" and other_key[1] == key[2]
            if (
                in_namespace or any(o.get("uid") == uid for o in owners)
            ) and other_key in self._objects:
                self._remove(other_key)

    def _commit(self, kind: Kind, key: Key, old: Obj | None, new: Obj) -> None:
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[key] = new
        self._emit(
            Event(
                "ADDED" if old is None else "MODIFIED",
                kind,
                copy.deepcopy(new),
                copy.deepcopy(old) if old is not None else None,
                self._rv,
            )
        )
        if self.on_change is not None:
            self.on_change(kind, old, copy.deepcopy(new))
        if self.after_write is not None:
            self.after_write(kind, key[1])

    def _emit(self, event: Event) -> None:
        self._history.append(event)
        for watcher in self._watchers:
            watcher.offer(event)

    def _check_type(self, kind: Kind, obj: Obj) -> None:
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata", {}), dict):
            raise bad_request("the body of the request was not a Kubernetes object")
        # Typed clients often omit apiVersion and kind: the endpoint names them, as it does
        # for the real server's decoder. A different kind, though, is a client bug.
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        if (obj["apiVersion"], obj["kind"]) != (kind.api_version, kind.kind):
            raise bad_request(
                f"the API version in the data ({obj['apiVersion']}) does not match "
                f"the expected API version ({kind.api_version}) or the kind "
                f"({obj['kind']}) is not {kind.kind}"
            )
        if kind.kind in ("Deployment", "StatefulSet", "ReplicaSet"):
            spec = obj.get("spec") or {}
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                name = obj["metadata"].get("name", "")
                raise invalid(
                    kind,
                    name,
                    "spec.template.metadata.labels",
                    "Invalid value: `selector` does not match template `labels`",
                )

    def _check_namespace(self, kind: Kind, meta: Obj, namespace: str | None) -> str:
        if not kind.namespaced:
            meta.pop("namespace", None)
            return ""
        namespace = namespace or meta.get("namespace") or "default"
        if meta.setdefault("namespace", namespace) != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the "
                "namespace sent on the request"
            )
        return namespace

    # -- watches --

    def watch(
        self,
        kind: Kind,
        namespace: str | None,
        labels: str | None,
        fields: str | None,
        since: int | None,
        *,
        bookmark: bool = False,
    ) -> Watcher:
        """Open a watch whose queue starts with the events after ``since``, or else with the
        current objects as ADDED (then, if ``bookmark``, the initial-events-end BOOKMARK)."""
        watcher = Watcher(kind, namespace, labels, fields)
        with self.lock:
            if since is None:
                for obj in self.list(kind, namespace, labels, fields)[0]:
                    watcher.queue.put(("ADDED", obj))
                if bookmark:  # client-go's watch-list waits for it before trusting the list
                    watcher.queue.put(
                        (
                            "BOOKMARK",
                            {
                                "kind": kind.kind,
                                "apiVersion": kind.api_version,
                                "metadata": {
                                    "resourceVersion": str(self._rv),
                                    "annotations": {"k8s.io/initial-events-end": "true"},
                                },
                            },
                        )
                    )
            elif since < self._rv and (not self._history or self._history[0].rv > since + 1):
                raise ApiError(410, "Expired", f"too old resource version: {since}")
            else:
                for event in self._history:
                    if event.rv > since:
                        watcher.offer(event)
            self._watchers.add(watcher)
            return watcher

    def unwatch(self, watcher: Watcher) -> None:
        with self.lock:
            self._watchers.discard(watcher)

    def close_watches(self) -> None:
        with self.lock:
            for watcher in self._watchers:
                watcher.close()
            self._watchers.clear()
