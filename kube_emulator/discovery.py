"""Discovery documents: /version, /api, /apis, resource lists and a minimal OpenAPI v3.

Legacy (non-aggregated) discovery only: clients that ask for aggregated discovery get plain
``application/json`` back and fall back to it, as they do with older servers.
"""

from __future__ import annotations

from typing import Any

from .kinds import KINDS, VERBS, Kind, group_versions

Doc = dict[str, Any]
VERSION: Doc = {
    "major": "1",
    "minor": "37",
    "gitVersion": "v1.37.0+kube-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25",
    "compiler": "gc",
    "platform": "linux/amd64",
}


_SCALE: Doc = {
    "group": "autoscaling",
    "version": "v1",
    "kind": "Scale",
    "verbs": ["get", "patch", "update"],
}
_SUBRESOURCES: dict[str, dict[str, Doc]] = {
    "deployments": {"scale": _SCALE},
    "statefulsets": {"scale": _SCALE},
    "replicasets": {"scale": _SCALE},
    "pods": {"log": {"kind": "Pod", "verbs": ["get"]}},
    "serviceaccounts": {
        "token": {
            "group": "authentication.k8s.io",
            "version": "v1",
            "kind": "TokenRequest",
            "verbs": ["create"],
        }
    },
}


def _group(name: str, versions: list[str]) -> Doc:
    listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": listed, "preferredVersion": listed[0]}


def _resources(group: str, version: str) -> list[Doc]:
    out: list[Doc] = []
    for k in KINDS:
        if (k.group, k.version) != (group, version):
            continue
        out.append(
            {
                "name": k.plural,
                "singularName": k.singular,
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": list(VERBS),
                "shortNames": list(k.short_names),
                "storageVersionHash": "",
            }
        )
        out += [
            {"name": f"{k.plural}/{sub}", "singularName": "", "namespaced": k.namespaced, **doc}
            for sub, doc in _SUBRESOURCES.get(k.plural, {}).items()
        ]
        if k.status:
            out.append(
                {
                    "name": f"{k.plural}/status",
                    "singularName": "",
                    "namespaced": k.namespaced,
                    "kind": k.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return out


def document(path: str, server_address: str) -> Doc | None:
    """The discovery document served at ``path``, or None when there is none."""
    groups = group_versions()
    parts = [p for p in path.split("/") if p]
    if path == "/version":
        return VERSION
    if parts == ["api"]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
            ],
        }
    if parts == ["apis"]:
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [_group(g, vs) for g, vs in groups.items()],
        }
    if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
        return {"kind": "APIGroup", "apiVersion": "v1", **_group(parts[1], groups[parts[1]])}
    core = parts == ["api", "v1"]
    named = len(parts) == 3 and parts[0] == "apis" and parts[2] in groups.get(parts[1], [])
    if core or named:
        group, version = ("", "v1") if core else (parts[1], parts[2])
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": version if core else f"{group}/{version}",
            "resources": _resources(group, version),
        }
    if parts[:2] == ["openapi", "v3"]:
        return _openapi_v3("/".join(parts[2:]), groups)
    return None


def is_discovery(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    return (
        path == "/version"
        or parts[:1] == ["openapi"]
        or parts in (["api"], ["apis"])
        or (parts[:1] == ["api"] and len(parts) == 2)
        or (parts[:1] == ["apis"] and len(parts) in (2, 3))
    )


# kubectl asks /openapi/v3 whether a kind's PATCH accepts the ``fieldValidation`` parameter
# (so the server validates fields, not kubectl); one PATCH operation per kind answers yes.
# There are no schemas: kubectl explain and client-side validation will find nothing.


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _openapi_v3(gv_path: str, groups: dict[str, list[str]]) -> Doc | None:
    gvs = [("", "v1")] + [(g, v) for g, vs in groups.items() for v in vs]
    if not gv_path:
        return {
            "paths": {
                _gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}?hash=emulator"}
                for g, v in gvs
            }
        }
    for group, version in gvs:
        if gv_path == _gv_path(group, version):
            kinds = [k for k in KINDS if (k.group, k.version) == (group, version)]
            return {
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes (emulator)", "version": VERSION["gitVersion"]},
                "paths": {_item_path(k): _patch_operation(k) for k in kinds},
                "components": {"schemas": {}},
            }
    return None


def _item_path(k: Kind) -> str:
    scope = "/namespaces/{namespace}" if k.namespaced else ""
    return f"/{_gv_path(k.group, k.version)}{scope}/{k.plural}/{{name}}"


def _patch_operation(k: Kind) -> Doc:
    return {
        "patch": {
            "operationId": f"patch{k.kind}",
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {
                "group": k.group,
                "version": k.version,
                "kind": k.kind,
            },
            "parameters": [
                {"name": name, "in": "query", "schema": {"type": "string"}}
                for name in ("dryRun", "fieldManager", "fieldValidation", "force")
            ],
            "responses": {"200": {"description": "OK"}},
        }
    }
