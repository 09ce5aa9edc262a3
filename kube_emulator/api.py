"""The API verbs over the store: what each request means, independent of HTTP."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import yaml

from .kinds import Kind, by_path
from .patch import (
    FieldSet,
    PatchError,
    field_set,
    json_patch,
    merge_patch,
    server_side_apply,
    strategic_merge,
    union,
)
from .schema import check, field_validation
from .store import ApiError, Obj, Store, bad_request, not_found, now

MERGE, JSON_PATCH = "application/merge-patch+json", "application/json-patch+json"
STRATEGIC, APPLY = "application/strategic-merge-patch+json", "application/apply-patch+yaml"
PATCH_TYPES = (MERGE, JSON_PATCH, STRATEGIC, APPLY)


@dataclass(frozen=True)
class Target:
    """What a resource URL names: a collection, an object, or an object's subresource."""

    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None

    def verb(self, method: str, watch: bool) -> str:
        """The RBAC verb of a request, as authorization sees it."""
        if method == "GET":
            return "get" if self.name else ("watch" if watch else "list")
        if method == "DELETE":
            return "delete" if self.name else "deletecollection"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())

    @property
    def resource(self) -> str:
        return self.kind.plural + (f"/{self.subresource}" if self.subresource else "")


NOT_FOUND = ApiError(404, "NotFound", "the server could not find the requested resource")
# Subresources besides /status, by resource: what RBAC rules name as "deployments/scale".
SUBRESOURCES: dict[str, tuple[str, ...]] = {
    "deployments": ("scale",),
    "statefulsets": ("scale",),
    "replicasets": ("scale",),
    "pods": ("log",),
    "serviceaccounts": ("token",),
}


def parse_target(path: str) -> Target:
    """``/api/v1/namespaces/ns/pods/name/status`` and friends; raise 404 for anything else."""
    parts = [unquote(p) for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise NOT_FOUND
    namespace = None
    # /namespaces/{name}/status is the Namespace's own subresource, not a kind called "status".
    if rest[:1] == ["namespaces"] and len(rest) >= 3 and rest[2:] not in (["status"], ["finalize"]):
        namespace, rest = rest[1], rest[2:]
    kind = by_path(group, version, rest[0]) if 1 <= len(rest) <= 3 else None
    if kind is None or (namespace and not kind.namespaced):
        raise NOT_FOUND
    subresource = rest[2] if len(rest) == 3 else None
    known = (*(("status",) if kind.status else ()), *SUBRESOURCES.get(kind.plural, ()))
    if subresource is not None and subresource not in known:
        raise NOT_FOUND
    return Target(kind, namespace, rest[1] if len(rest) >= 2 else None, subresource)


def decode(body: bytes, content_type: str) -> Any:
    """Decode a request body; JSON, or YAML where the content type says so."""
    media = content_type.split(";")[0].strip().lower()
    if "protobuf" in media:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown "
            "format - accepted media types include: application/json, "
            "application/yaml, application/merge-patch+json, "
            "application/json-patch+json, application/strategic-merge-patch+json, "
            "application/apply-patch+yaml (this emulator speaks no protobuf)",
        )
    try:
        return json.loads(body)
    except ValueError as err:
        if "yaml" not in media:
            raise bad_request(f"couldn't decode the request body as JSON: {err}") from None
    try:
        return yaml.safe_load(body)
    except yaml.YAMLError as err:
        raise bad_request(f"couldn't decode the request body as YAML: {err}") from None


def _dry_run(query: dict[str, str]) -> bool:
    value = query.get("dryRun")
    if value not in (None, "", "All"):
        raise bad_request(f'unsupported dry run value: "{value}" (only "All" is)')
    return value == "All"


def _success(target: Target, obj: Obj) -> Obj:
    details: Obj = {
        "name": obj["metadata"]["name"],
        "kind": target.kind.plural,
        "uid": obj["metadata"]["uid"],
    }
    if target.kind.group:
        details["group"] = target.kind.group
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def handle(
    store: Store,
    method: str,
    target: Target,
    query: dict[str, str],
    body: bytes,
    content_type: str,
    warnings: list[str] | None = None,
) -> tuple[int, Obj]:
    """Serve one non-watch request; returns the HTTP status and the response document.

    ``warnings`` collects what the response's ``Warning`` headers say (dropped fields)."""
    kind, ns, name = target.kind, target.namespace, target.name
    labels, fields = query.get("labelSelector"), query.get("fieldSelector")
    if target.subresource == "scale":
        return _scale(store, target, method, body, content_type, _dry_run(query))
    if method == "GET" and name:
        obj = store.get(kind, ns, name)
        if obj is None:
            raise not_found(kind, name)
        return 200, obj
    if method == "GET":
        items, rv = store.list(kind, ns, labels, fields)
        return 200, {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(rv)},
            "items": items,
        }
    dry_run = _dry_run(query)
    checked = _checker(kind, query, warnings if warnings is not None else [])
    if method == "POST" and not name:
        return 201, store.create(kind, checked(decode(body, content_type)), ns, dry_run=dry_run)
    if method == "DELETE" and name and not target.subresource:
        return 200, _success(target, store.delete(kind, ns, name, dry_run=dry_run))
    if method == "DELETE" and not name:
        items, rv = store.list(kind, ns, labels, fields)
        for item in items:
            store.delete(
                kind,
                ns or item["metadata"].get("namespace"),
                item["metadata"]["name"],
                dry_run=dry_run,
            )
        return 200, {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(rv)},
            "items": items,
        }
    if method == "PUT" and name:
        return 200, _replace(store, target, checked(decode(body, content_type)), dry_run)
    if method == "PATCH" and name:
        return _patch(store, target, query, body, content_type, dry_run, checked)
    raise ApiError(
        405,
        "MethodNotAllowed",
        f"the server does not allow this method on the "
        f"requested resource ({method} {target.resource})",
    )


Checker = Callable[..., Any]


def _checker(kind: Kind, query: dict[str, str], warnings: list[str]) -> Checker:
    """The schema check of this request's writes (see schema.py); passes a body through."""
    mode = field_validation(query)

    def checked(obj: Any, *, apply: bool = False) -> Any:
        if isinstance(obj, dict):
            warnings.extend(w for w in check(kind, obj, mode, apply=apply) if w not in warnings)
        return obj

    return checked


def _replace(store: Store, target: Target, body: Any, dry_run: bool) -> Obj:
    assert target.name is not None
    if not isinstance(body, dict):
        raise bad_request("the body of the request was not a Kubernetes object")

    def change(live: Obj) -> Obj:
        new = copy.deepcopy(body)
        meta = new.setdefault("metadata", {})
        if "managedFields" not in meta:
            meta["managedFields"] = live["metadata"].get("managedFields")
        return new

    obj, _ = store.update(
        target.kind,
        target.namespace,
        target.name,
        change,
        subresource=target.subresource,
        dry_run=dry_run,
    )
    return obj


def _patch(
    store: Store,
    target: Target,
    query: dict[str, str],
    body: bytes,
    content_type: str,
    dry_run: bool,
    checked: Checker,
) -> tuple[int, Obj]:
    assert target.name is not None
    media = content_type.split(";")[0].strip().lower()
    if media not in PATCH_TYPES:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown "
            f"format - accepted media types include: {', '.join(PATCH_TYPES)}",
        )
    patch = decode(body, media)
    if media == APPLY:
        return _apply(store, target, query, checked(patch, apply=True), dry_run)
    if not isinstance(patch, list if media == JSON_PATCH else dict):
        raise bad_request(f"the body of a {media} patch has the wrong shape")

    def change(live: Obj) -> Obj:
        try:
            if media == JSON_PATCH:
                return checked(json_patch(live, patch))  # type: ignore[no-any-return]
            merged = (merge_patch if media == MERGE else strategic_merge)(live, patch)
            return checked(merged)  # type: ignore[no-any-return]
        except PatchError as err:
            raise ApiError(422, "Invalid", f"the patch could not be applied: {err}") from None

    obj, _ = store.update(
        target.kind,
        target.namespace,
        target.name,
        change,
        subresource=target.subresource,
        dry_run=dry_run,
    )
    return 200, obj


def _apply(
    store: Store, target: Target, query: dict[str, str], config: Any, dry_run: bool
) -> tuple[int, Obj]:
    """Server-side apply, simplified: no conflicts between managers (``force`` is moot)."""
    kind, name = target.kind, target.name
    assert name is not None
    manager = query.get("fieldManager")
    if not manager:
        raise ApiError(
            422,
            "Invalid",
            'PatchOptions.meta.k8s.io "" is invalid: fieldManager: '
            "Required value: is required for apply patch",
        )
    if not isinstance(config, dict) or not isinstance(config.get("metadata", {}), dict):
        raise bad_request("the body of an apply patch must be an object")
    config = copy.deepcopy(config)
    config.setdefault("metadata", {}).pop("managedFields", None)
    if config["metadata"].get("name", name) != name:
        raise bad_request("the name of the object does not match the name on the URL")
    applied = field_set(config)

    def change(live: Obj | None) -> Obj:
        if live is None:
            live = {
                "apiVersion": kind.api_version,
                "kind": kind.kind,
                "metadata": {"name": name, "namespace": target.namespace},
            }
        entries = [e for e in live["metadata"].get("managedFields") or [] if isinstance(e, dict)]
        appliers = [
            e
            for e in entries
            if e.get("operation") == "Apply" and e.get("subresource") == target.subresource
        ]
        mine = next((e for e in appliers if e.get("manager") == manager), None)
        others: list[FieldSet] = [e.get("fieldsV1", {}) for e in appliers if e is not mine]
        previous = (mine or {}).get("fieldsV1", {})
        new = server_side_apply(live, config, previous, union(others))
        entry = {
            "manager": manager,
            "operation": "Apply",
            "apiVersion": config.get("apiVersion", kind.api_version),
            "time": now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": applied,
        }
        if target.subresource:
            entry["subresource"] = target.subresource
        if mine is not None and _same(mine, entry) and _unmanaged(new) == _unmanaged(live):
            entry = mine  # nothing changed: keep the old timestamp so the write is a no-op
        at = entries.index(mine) if mine is not None else len(entries)
        new["metadata"]["managedFields"] = [*entries[:at], entry, *entries[at + 1 :]]
        return new

    obj, outcome = store.update(
        kind,
        target.namespace,
        name,
        change,
        subresource=target.subresource,
        dry_run=dry_run,
        create=lambda: change(None),
    )
    return (201 if outcome == "created" else 200), obj


def _same(a: Obj, b: Obj) -> bool:
    return all(a.get(k) == b.get(k) for k in ("apiVersion", "fieldsV1", "subresource"))


def _unmanaged(obj: Obj) -> Obj:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def _scale_of(kind: Kind, obj: Obj) -> Obj:
    """The autoscaling/v1 Scale the real server shows for a workload."""
    meta = obj["metadata"]
    selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
        "status": {
            "replicas": (obj.get("status") or {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in selector.items()),
        },
    }


def _scale(
    store: Store, target: Target, method: str, body: bytes, content_type: str, dry_run: bool
) -> tuple[int, Obj]:
    """GET, PUT and PATCH of ``<workload>/scale``: only ``spec.replicas`` changes."""
    kind, name = target.kind, target.name
    if name is None or method not in ("GET", "PUT", "PATCH"):
        raise NOT_FOUND
    live = store.get(kind, target.namespace, name)
    if live is None:
        raise not_found(kind, name)
    if method == "GET":
        return 200, _scale_of(kind, live)
    sent = decode(body, content_type)
    media = content_type.split(";")[0].strip().lower()
    try:
        if method == "PUT":
            wanted = sent
        elif media == JSON_PATCH:
            wanted = json_patch(_scale_of(kind, live), sent)
        else:
            wanted = merge_patch(_scale_of(kind, live), sent)
    except PatchError as err:
        raise ApiError(422, "Invalid", f"the patch could not be applied: {err}") from None
    replicas = ((wanted or {}).get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        raise ApiError(
            422,
            "Invalid",
            f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
            f"{replicas}: must be greater than or equal to 0",
        )

    def change(obj: Obj) -> Obj:
        obj.setdefault("spec", {})["replicas"] = replicas
        return obj

    obj, _ = store.update(kind, target.namespace, name, change, dry_run=dry_run)
    return 200, _scale_of(kind, obj)
