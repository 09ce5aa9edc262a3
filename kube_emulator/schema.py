"""The OpenAPI schema check of a write, as kube-apiserver's decoder and field validation do it.

- A value of the wrong type (``replicas: "two"``) never decodes: 400 BadRequest, whatever
  the request asks.
- An unknown field (``spec.replicaz``) depends on the request's ``fieldValidation``:
  ``Strict`` (what kubectl sends) refuses it with 400 BadRequest ("strict decoding error:
  unknown field ..."; for server-side apply "field not declared in schema"); ``Warn`` (the
  server's default, what the Python client gets) and ``Ignore`` drop the field, ``Warn``
  with a ``Warning`` header naming it.

The schemas are kubernetes-validate's strict JSON schemas, one validator per kind built once
per process, as the product's offline manifest check builds them.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jsonschema
from kubernetes_validate.utils import all_versions, major_minor, schema_contents
from referencing import Registry, Resource

from .kinds import Kind
from .store import ApiError, Obj

SCHEMA_VERSION = "1.33"  # the Kubernetes minor the project runs (k3s), as tasks/manifests.py
MODES = ("Strict", "Warn", "Ignore")


def field_validation(query: dict[str, str]) -> str:
    mode = query.get("fieldValidation") or "Warn"
    if mode not in MODES:
        raise ApiError(
            400,
            "BadRequest",
            f'fieldValidation must be one of "Ignore", "Warn" or "Strict", got "{mode}"',
        )
    return mode


def check(kind: Kind, obj: Obj, mode: str, *, apply: bool = False) -> list[str]:
    """Check ``obj`` (in place: unknown fields are dropped unless Strict refuses them).

    Returns the warnings to send; raises 400 for a wrong type or, if Strict, unknown fields.
    """
    validator = _validator(kind.api_version, kind.kind)
    if validator is None:
        return []
    body = {k: v for k, v in obj.items() if k != "status"}
    unknown: list[tuple[list[str | int], str]] = []
    wrong: list[tuple[str, str]] = []  # (field, message)
    for error in validator.iter_errors(body):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            declared = error.schema.get("properties") or {}
            unknown += [(path, k) for k in error.instance if k not in declared]
        elif error.validator == "type" and error.instance is not None:  # null decodes always
            wrong.append((_dotted(path), _type_message(kind, path, error)))
    if wrong:
        raise ApiError(400, "BadRequest", wrong[0][1], _causes("FieldValueTypeInvalid", wrong))
    unknown.sort(key=lambda u: _dotted([*u[0], u[1]]))
    names = [_dotted([*p, k]) for p, k in unknown]
    if unknown and mode == "Strict":
        if apply:
            meta = obj.get("metadata") or {}
            where = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
            group = f"{kind.group}/{kind.version}" if kind.group else f"/{kind.version}"
            message = (
                f"failed to create typed patch object ({where}; {group}, Kind={kind.kind}): "
                + ", ".join(f".{n}: field not declared in schema" for n in names)
            )
        else:
            message = (
                f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                "strict decoding error: " + ", ".join(f'unknown field "{n}"' for n in names)
            )
        causes = [(n, f'unknown field "{n}"') for n in names]
        raise ApiError(400, "BadRequest", message, _causes("FieldValueInvalid", causes))
    for path, key in unknown:
        _drop(obj, path, key)
    return [f'unknown field "{n}"' for n in names] if mode == "Warn" else []


def _causes(reason: str, fields: list[tuple[str, str]]) -> Obj:
    # The real BadRequest names the fields in its message only; causes are a convenience
    # (the same shape as a 422's) for clients and tests that read the field.
    return {"causes": [{"reason": reason, "field": f, "message": m} for f, m in fields]}


def _type_message(kind: Kind, path: list[str | int], error: jsonschema.ValidationError) -> str:
    wanted = error.validator_value
    if isinstance(wanted, list):  # ["integer", "null"]: null always decodes
        wanted = next((w for w in wanted if w != "null"), "object")
    go = {"integer": "int32", "string": "string", "boolean": "bool", "number": "float64"}
    wanted_text = go.get(str(wanted), str(wanted))
    got = type(error.instance).__name__
    got = {"str": "string", "int": "number", "float": "number", "bool": "bool"}.get(got, got)
    got = {"dict": "object", "list": "array"}.get(got, got)
    return (
        f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
        f"json: cannot unmarshal {got} into Go struct field {_dotted(path)} of type {wanted_text}"
    )


def _dotted(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _drop(obj: Any, path: list[str | int], key: str) -> None:
    for part in path:
        obj = obj[part]
    if isinstance(obj, dict):
        obj.pop(key, None)


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator | None:
    version = [v for v in all_versions() if major_minor(v) <= major_minor(SCHEMA_VERSION)][-1]
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    except FileNotFoundError:
        return None
    definitions = _definitions(folder, version)
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=definitions @ registry)


@functools.cache
def _definitions(folder: str, version: str) -> Resource[Any]:
    return Resource.from_contents(schema_contents(f"{folder}/_definitions.json", version))
