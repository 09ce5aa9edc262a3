"""Validation kube-apiserver answers with 422 Invalid: immutable fields on update.

The messages are the real server's: ``<Kind>.<group> "<name>" is invalid: <field>: <detail>``,
and the Status names each field in ``details.causes``.
"""

from __future__ import annotations

import json
from typing import Any

from .kinds import Kind
from .quantity import parse
from .store import ApiError, Obj

Cause = tuple[str, str, str]  # (reason, field, message) as in a Status cause

_STS_MUTABLE = (
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
)
_STS_FORBIDDEN = (
    "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', "
    "'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and "
    "'minReadySeconds' are forbidden"
)
_IMMUTABLE_SET = "Forbidden: field is immutable when `immutable` is set"


def invalid(kind: Kind, name: str, causes: list[Cause]) -> ApiError:
    """A 422 naming every cause, worded as the real server words it."""
    qualified = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
    listed = [f"{field}: {message}" for _, field, message in causes]
    text = listed[0] if len(listed) == 1 else f"[{', '.join(listed)}]"
    details: Obj = {
        "name": name,
        "kind": kind.kind,
        "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes],
    }
    if kind.group:
        details["group"] = kind.group
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {text}', details)


def check_update(kind: Kind, old: Obj, new: Obj) -> None:
    """Refuse (422) an update that changes what the real server keeps immutable."""
    causes = _causes(kind.kind, old, new)
    if causes:
        raise invalid(kind, new["metadata"]["name"], causes)


def _causes(kind: str, old: Obj, new: Obj) -> list[Cause]:
    was, now = old.get("spec") or {}, new.get("spec") or {}
    if kind == "Deployment" and _plain(was.get("selector")) != _plain(now.get("selector")):
        return [_immutable("spec.selector", _go_selector(now.get("selector")))]
    if kind == "StatefulSet":
        kept = {k: v for k, v in was.items() if k not in _STS_MUTABLE}
        if _plain(kept) != _plain({k: v for k, v in now.items() if k not in _STS_MUTABLE}):
            return [("FieldValueForbidden", "spec", _STS_FORBIDDEN)]
    if kind == "Job":
        return [
            _immutable(f"spec.{f}", json.dumps(now.get(f), sort_keys=True))
            for f in ("selector", "template")
            if _plain(was.get(f)) != _plain(now.get(f))
        ]
    if kind == "Service":
        before, after = was.get("clusterIP"), now.get("clusterIP")
        if before and after and before != after:
            value = "[]string{" + f'"{after}"' + "}"
            return [
                (
                    "FieldValueInvalid",
                    "spec.clusterIPs[0]",
                    _value(value, "may not change once set"),
                )
            ]
    if kind == "PersistentVolumeClaim":
        return _pvc(was, now)
    if kind in ("ConfigMap", "Secret") and old.get("immutable") is True:
        return [
            ("FieldValueForbidden", f, _IMMUTABLE_SET)
            for f in ("immutable", "data", "binaryData", "stringData")
            if _plain(old.get(f)) != _plain(new.get(f))
        ]
    return []


def _pvc(was: Obj, now: Obj) -> list[Cause]:
    def size(spec: Obj) -> Any:
        return ((spec.get("resources") or {}).get("requests") or {}).get("storage")

    def rest(spec: Obj) -> Any:
        resources = dict(spec.get("resources") or {})
        resources.pop("requests", None)
        out = {k: v for k, v in spec.items() if k not in ("resources", "volumeName")}
        return _plain({**out, "resources": resources})

    if rest(was) != rest(now):
        detail = (
            "Forbidden: spec is immutable after creation except resources.requests and "
            "volumeAttributesClassName for bound claims"
        )
        return [("FieldValueForbidden", "spec", detail)]
    before, after = size(was), size(now)
    if before is not None and after is not None and parse(after) < parse(before):
        field = "spec.resources.requests.storage"
        return [
            ("FieldValueForbidden", field, "Forbidden: field can not be less than previous value")
        ]
    return []


def _immutable(field: str, value: str) -> Cause:
    return ("FieldValueInvalid", field, _value(value, "field is immutable"))


def _value(value: str, detail: str) -> str:
    return f"Invalid value: {value}: {detail}"


def _go_selector(selector: Any) -> str:
    """A LabelSelector as Go's ``%#v`` prints it in the real message."""
    selector = selector or {}
    labels = ", ".join(
        f'"{k}":"{v}"' for k, v in sorted((selector.get("matchLabels") or {}).items())
    )
    expressions = selector.get("matchExpressions")
    listed = "[]v1.LabelSelectorRequirement(nil)" if not expressions else json.dumps(expressions)
    return (
        f"v1.LabelSelector{{MatchLabels:map[string]string{{{labels}}}, MatchExpressions:{listed}}}"
    )


def _plain(value: Any) -> Any:
    """Without nulls and empty maps or lists, which clients add or leave out at will."""
    if isinstance(value, dict):
        value = {k: _plain(v) for k, v in value.items()}
        return {k: v for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
