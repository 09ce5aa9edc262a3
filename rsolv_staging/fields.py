"""What one field manager applied to a live object, read back from its ``managedFields``.

Pure. A rollback re-applies, under this project's field manager, only the fields that
manager had applied before the failed deploy, with their values then. Fields another
manager owns (an HPA's replicas, an operator's annotation) are left to it: re-applying
the whole previous object would make this project co-own them, so their owner could no
longer remove them, and would revert what they changed meanwhile.

FieldsV1 notation (Kubernetes' structured-merge-diff): ``f:<name>`` a map field,
``k:{json}`` a list item by its merge keys, ``v:<json>`` a set value, ``i:<n>`` a list
index, ``.`` the node itself; an empty node owns the whole value below it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

FieldSet = Mapping[str, Any]


def applied_configuration(obj: Mapping[str, Any], manager: str) -> dict[str, Any] | None:
    """The part of live ``obj`` that ``manager`` owns by Apply, as an apply configuration.

    ``None`` when ``manager`` never applied the object (another tool made it).
    """
    meta = obj.get("metadata") or {}
    entry = next(
        (
            e
            for e in meta.get("managedFields") or []
            if e.get("manager") == manager
            and e.get("operation") == "Apply"
            and not e.get("subresource")
        ),
        None,
    )
    if entry is None:
        return None
    body: dict[str, Any] = _pick(obj, entry.get("fieldsV1") or {})
    identity = {k: meta[k] for k in ("name", "namespace") if k in meta}
    body["metadata"] = {**(body.get("metadata") or {}), **identity}
    body["apiVersion"], body["kind"] = obj["apiVersion"], obj["kind"]
    return body


def _owns_below(fields: FieldSet) -> bool:
    return any(k != "." for k in fields)


def _pick(value: Any, fields: FieldSet) -> Any:
    if not _owns_below(fields):
        return copy.deepcopy(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for element, below in fields.items():
            name = element[2:]
            if element.startswith("f:") and name in value:
                out[name] = _pick(value[name], below)
        return out
    if isinstance(value, list):
        keyed = {k: json.loads(k[2:]) for k in fields if k.startswith("k:")}
        values = [json.loads(k[2:]) for k in fields if k.startswith("v:")]
        items = []
        for index, item in enumerate(value):
            if f"i:{index}" in fields:
                items.append(_pick(item, fields[f"i:{index}"]))
            elif item in values:
                items.append(copy.deepcopy(item))
            elif isinstance(item, Mapping):
                for element, keys in keyed.items():
                    if all(item.get(k) == v for k, v in keys.items()):
                        # The merge keys name the item, whether or not they are listed.
                        items.append({**_pick(item, fields[element]), **keys})
                        break
        return items
    return copy.deepcopy(value)
