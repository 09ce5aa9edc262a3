"""Guards that run before the first write: nothing a staging flow sends may reach production.

Pure checks over rendered manifests. Each violation names the object and the reason, so
the refusal tells the operator exactly what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rsolv_staging.environments import Environment
from rsolv_staging.exceptions import GuardError
from rsolv_staging.provisioning import object_key

# Host names inside any string (URLs, DSNs, plain values).
_HOST = re.compile(r"(?<![\w.-])(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z][a-z0-9-]*\.?", re.I)

# Keys under which a manifest names a Secret it reads.
_SECRET_REF_PARENTS = ("secretKeyRef", "secretRef", "secret")


def _walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, path)
    else:
        yield path, node


def violations(obj: Mapping[str, Any], target: Environment, other: Environment) -> list[str]:
    """Reasons why ``obj`` may not be written when deploying to ``target``."""
    found: list[str] = []
    kind = obj.get("kind", "?")
    meta = obj.get("metadata", {})
    if kind == "Namespace":
        if meta.get("name") not in target.namespaces:
            found.append(f"is a namespace outside {target.name} ({', '.join(target.namespaces)})")
    elif meta.get("namespace") not in target.namespaces:
        found.append(
            f"is in namespace {meta.get('namespace')!r}, not one of {target.name}'s "
            f"({', '.join(target.namespaces)})"
        )
    for path, value in _walk(obj):
        if not isinstance(value, str):
            continue
        leaf = path[-1] if path else ""
        parent = path[-2] if len(path) > 1 else ""
        if leaf == "namespace" and value in other.namespaces:
            found.append(f"refers to {other.name} namespace {value!r} at {'.'.join(path)}")
        if (
            parent in _SECRET_REF_PARENTS or leaf in ("secretName", "claimName")
        ) and value.startswith(other.secret_prefix):
            found.append(f"references {other.name} secret {value!r} at {'.'.join(path)}")
        where = ".".join(path)
        if leaf in ("host", "hosts") and (
            value == other.domain or value.endswith("." + other.domain)
        ):
            found.append(f"routes {other.name} domain {value!r} at {where}")
        elif leaf != "namespace" and (hit := _points_at(value, other)):
            # Any other value (ConfigMap data, env values, URLs, DSNs) naming the other
            # environment's domain, database or in-cluster services. Only the host is
            # quoted: the value may be a DSN with a password in it.
            found.append(f"points at {other.name} host {hit!r} at {where}")
    return found


def _points_at(value: str, other: Environment) -> str | None:
    """The other environment's host named in ``value``, if any."""
    for match in _HOST.finditer(value):
        host = match.group(0).lower().rstrip(".")
        if (
            host == other.database.host.lower()
            or host == other.domain
            or host.endswith("." + other.domain)
            or any(f".{ns}.svc" in host or host.endswith(f".{ns}") for ns in other.namespaces)
        ):
            return host
    return None


def ensure_confined(
    objects: Iterable[Mapping[str, Any]], target: Environment, other: Environment
) -> None:
    """Refuse the whole batch if any object would touch ``other``'s namespaces, secrets or domain.

    Raises:
        GuardError: naming every offending object and why.
    """
    problems = [
        f"{object_key(obj)} {reason}"
        for obj in objects
        for reason in violations(obj, target, other)
    ]
    if problems:
        raise GuardError(
            f"refusing to write to {target.name}: nothing was applied because "
            + "; ".join(problems)
        )
