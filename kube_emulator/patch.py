"""Patch semantics: JSON merge patch, JSON patch, strategic merge patch and server-side apply.

All functions are pure: they return new values and never modify their arguments.
"""

from __future__ import annotations

import copy
import json
from typing import Any

Obj = dict[str, Any]
FieldSet = dict[str, Any]  # the managedFields "FieldsV1" shape: {"f:spec": {"f:replicas": {}}}


class PatchError(ValueError):
    """A patch that cannot be applied (the server answers 422 or 400)."""


# Lists the API merges by a key (patchMergeKey in the Go types) instead of replacing them.
# Only the common ones; every other list is atomic, as most lists in the API are.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
}


def merge_key(field: str, items: list[Any]) -> str | None:
    """The key a list named ``field`` is merged by, or None when it is replaced whole."""
    key = _MERGE_KEYS.get(field)
    if field == "ports":  # container ports merge by containerPort, service ports by port
        container = any(isinstance(i, dict) and "containerPort" in i for i in items)
        key = "containerPort" if container else "port"
    if key is None or not all(isinstance(i, dict) and key in i for i in items):
        return None
    return key


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge recursively, null deletes, lists replace."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge patch: a merge patch whose keyed lists merge item by item.

    Supports the ``$patch: replace|delete`` directives and ``$deleteFromPrimitiveList/``;
    other directives (``$setElementOrder/``, ``$retainKeys``) are accepted and ignored.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field, []) if v not in value]
        elif key.startswith("$"):
            continue
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value, strategic_merge)
        else:
            result[key] = strategic_merge(result.get(key), value)
    return result


def _merge_list(field: str, live: list[Any], patch: list[Any], merge: Any) -> list[Any]:
    key = merge_key(field, live + patch)
    if key is None:
        return [_strip_directives(i) for i in patch]
    out = copy.deepcopy(live)
    for item in patch:
        at = next((n for n, cur in enumerate(out) if cur.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if at is not None:
                del out[at]
        elif at is None:
            out.append(_strip_directives(item))
        else:
            out[at] = merge(out[at], item)
    return out


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def json_patch(target: Obj, ops: Any) -> Obj:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc: Any = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("move", "copy"):
            value = copy.deepcopy(_pointer_get(doc, op["from"]))
            if kind == "move":
                doc = _pointer_remove(doc, op["from"])
            doc = _pointer_add(doc, path, value)
        elif kind == "add":
            doc = _pointer_add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _pointer_remove(doc, path)
        elif kind == "replace":
            _pointer_get(doc, path)  # must exist
            doc = _pointer_add(_pointer_remove(doc, path), path, copy.deepcopy(op.get("value")))
        elif kind == "test":
            if _pointer_get(doc, path) != op.get("value"):
                raise PatchError(f"test operation failed at {path}")
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    if not isinstance(doc, dict):
        raise PatchError("a JSON patch must leave an object")
    return doc


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _step(node: Any, token: str, path: str) -> Any:
    try:
        return node[int(token)] if isinstance(node, list) else node[token]
    except (KeyError, IndexError, ValueError, TypeError):
        raise PatchError(f"path {path} does not exist") from None


def _pointer_get(doc: Any, path: str) -> Any:
    for token in _pointer(path):
        doc = _step(doc, token, path)
    return doc


def _pointer_add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    *parents, last = tokens
    node = doc
    for token in parents:
        node = _step(node, token, path)
    if isinstance(node, list):
        if last != "-" and not (last.isdigit() and int(last) <= len(node)):
            raise PatchError(f"path {path} does not exist")
        node.insert(len(node) if last == "-" else int(last), value)
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise PatchError(f"path {path} does not exist")
    return doc


def _pointer_remove(doc: Any, path: str) -> Any:
    *parents, last = _pointer(path)
    node = doc
    for token in parents:
        node = _step(node, token, path)
    _step(node, last, path)
    del node[int(last) if isinstance(node, list) else last]
    return doc


# --- server-side apply --------------------------------------------------------------------

# Identity and server-owned fields: never part of what a manager "owns".
_NOT_OWNED = {"apiVersion", "kind", "status"}
_META_NOT_OWNED = {
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
}


def field_set(config: Obj) -> FieldSet:
    """The fields an applied configuration sets, in the managedFields FieldsV1 notation."""
    top = {k: v for k, v in config.items() if k not in _NOT_OWNED}
    meta = {k: v for k, v in top.pop("metadata", {}).items() if k not in _META_NOT_OWNED}
    if meta:
        top["metadata"] = meta
    return _fields(top)


def _fields(value: Obj) -> FieldSet:
    out: FieldSet = {}
    for name, child in value.items():
        if isinstance(child, dict) and child:
            out[f"f:{name}"] = _fields(child)
        elif isinstance(child, list) and child and (key := merge_key(name, child)):
            items = {_item_id(key, i): {".": {}, **_fields(i)} for i in child}
            out[f"f:{name}"] = items
        else:
            out[f"f:{name}"] = {}
    return out


def _item_id(key: str, item: Obj) -> str:
    return "k:" + json.dumps({key: item[key]}, separators=(",", ":"))


def union(sets: list[FieldSet]) -> FieldSet:
    out: FieldSet = {}
    for fs in sets:
        for k, v in fs.items():
            out[k] = union([out.get(k, {}), v])
    return out


def server_side_apply(live: Obj, config: Obj, previous: FieldSet, others: FieldSet) -> Obj:
    """Apply ``config`` for one manager onto ``live``.

    Fields the manager applied before (``previous``) but omits now are removed unless another
    applier (``others``) owns them; then the configuration is merged in: maps recursively,
    keyed lists item by item, every other list replaced.
    """
    result = copy.deepcopy(live)
    _prune(result, previous, field_set(config), others)
    merged: Obj = _apply_merge(result, config)
    return merged


def _prune(live: Any, old: FieldSet, new: FieldSet, others: FieldSet) -> None:
    for el, old_sub in old.items():
        if el == ".":
            continue
        if el.startswith("f:") and isinstance(live, dict):
            name = el[2:]
            if name not in live:
                continue
            if el not in new and el not in others:
                del live[name]
            elif old_sub:
                _prune(live[name], old_sub, new.get(el, {}), others.get(el, {}))
        elif el.startswith("k:") and isinstance(live, list):
            ((key, value),) = json.loads(el[2:]).items()
            at = next(
                (n for n, i in enumerate(live) if isinstance(i, dict) and i.get(key) == value), None
            )
            if at is None:
                continue
            if el not in new and el not in others:
                del live[at]
            else:
                _prune(live[at], old_sub, new.get(el, {}), others.get(el, {}))


def _apply_merge(live: Any, config: Any) -> Any:
    if not isinstance(config, dict) or not isinstance(live, dict):
        return copy.deepcopy(config)
    result = copy.deepcopy(live)
    for key, value in config.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value, _apply_merge)
        else:
            result[key] = _apply_merge(result.get(key), value)
    return result
