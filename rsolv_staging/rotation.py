"""Secret rotation, the decisions: which secret, what new value, who consumes it, which login.

Pure code (no I/O): the rotate-staging-secret flow (``flows/rotate_secret.py``) reads the
cluster and the secret sources, and asks this module what to do with what it read.

The database password alternates two login roles (blue/green) because a PostgreSQL role
has exactly one password: changing it in place would lock out every pod that still
holds the old one until its rollout ends. With two logins, the new password is set on
the login nobody uses, the apps move to it by a rollout, and only then does the old
login lose its password (see :func:`next_login`).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from rsolv_staging.environments import SecretSpec, Topology
from rsolv_staging.exceptions import ConfigurationError

# What `kubectl rollout restart` sets on the pod template: a new template, so the
# Deployment rolls its pods, which read the Secret afresh when they start.
RESTART_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
# The Secret key the apps read their database login from (DATABASE_USER, optional in
# the pod spec so an environment that never rotated keeps its default user).
USERNAME_KEY = "username"
PREVIOUS_SUFFIX = "-previous"
BLUE, GREEN = "blue", "green"
MIN_LENGTH = 24

Shape = Literal["hex", "urlsafe", "alnum", "printable"]
_URLSAFE = string.ascii_letters + string.digits + "-_"
_PRINTABLE = string.ascii_letters + string.digits + "!#%+,.:=?^_~-"


class Consumer(BaseModel):
    """A Deployment whose pod template reads the Secret, and how it reads it."""

    name: str
    namespace: str
    references: list[str] = Field(description="e.g. 'env DATABASE_PASSWORD', 'volume creds'")
    restarted_at: str | None = Field(
        default=None, description="The restart annotation before this run (None: absent)"
    )


def shape_of(value: str) -> Shape:
    """The alphabet a current value is drawn from, so its successor looks the same."""
    if value and all(c in string.hexdigits.lower() for c in value):
        return "hex"
    if value.isascii() and value.isalnum():
        return "alnum"
    if value and all(c in _URLSAFE for c in value):
        return "urlsafe"
    return "printable"


def generate_like(current: str | None, *, min_length: int = MIN_LENGTH) -> str:
    """A new random value of the same shape and at least the same length as ``current``.

    Provisioning takes staging's secrets from their sources as they are (random
    ``token_urlsafe`` values in the sandbox and the tests); the successor keeps the
    alphabet (a hex key stays hex, a URL-safe password needs no escaping in a DSN) and
    never gets shorter than ``min_length``: rotation does not weaken a secret.
    """
    shape = shape_of(current or "") if current else "urlsafe"
    length = max(len(current or ""), min_length)
    alphabet = {
        "hex": "0123456789abcdef",
        "urlsafe": _URLSAFE,
        "alnum": string.ascii_letters + string.digits,
        "printable": _PRINTABLE,
    }[shape]
    return "".join(secrets.choice(alphabet) for _ in range(length))


def staging_spec(topology: Topology, name: str) -> SecretSpec:
    """The staging secret called ``name`` (``staging-database``), or a refusal saying why.

    Raises:
        ConfigurationError: ``name`` is production's, or not a staging secret of the model.
    """
    staging, production = topology.staging, topology.production
    if name.startswith(production.secret_prefix):
        raise ConfigurationError(
            f"{name!r} is a production secret: rotate-staging-secret never touches "
            f"production (nothing was changed)"
        )
    known = {staging.secret_name(s): s for s in topology.secrets}
    if name not in known:
        raise ConfigurationError(
            f"{name!r} is not a staging secret; expected one of {sorted(known)} "
            f"(nothing was changed)"
        )
    return known[name]


def chosen_specs(topology: Topology, names: Sequence[str] | None) -> list[SecretSpec]:
    """The secrets a run rotates: those named, or every staging secret (the schedule)."""
    if not names:
        return list(topology.secrets)
    return [staging_spec(topology, name) for name in dict.fromkeys(names)]


def _refs_in_container(container: Mapping[str, Any], secret: str) -> Iterable[str]:
    for env in container.get("env") or []:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
        if ref.get("name") == secret:
            yield f"env {env.get('name')} (key {ref.get('key')})"
    for source in container.get("envFrom") or []:
        if (source.get("secretRef") or {}).get("name") == secret:
            yield f"envFrom (prefix {source.get('prefix', '') or 'none'})"


def _refs_in_volume(volume: Mapping[str, Any], secret: str) -> Iterable[str]:
    if (volume.get("secret") or {}).get("secretName") == secret:
        yield f"volume {volume.get('name')}"
    for source in (volume.get("projected") or {}).get("sources") or []:
        if (source.get("secret") or {}).get("name") == secret:
            yield f"projected volume {volume.get('name')}"


def references(pod_spec: Mapping[str, Any], secret: str) -> list[str]:
    """How a pod spec reads Secret ``secret``: env, envFrom and (projected) volumes.

    Every container kind counts (init and sidecar containers read Secrets too).
    """
    found: list[str] = []
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod_spec.get(field) or []:
            found += [
                f"{container.get('name')}: {r}" for r in _refs_in_container(container, secret)
            ]
    for volume in pod_spec.get("volumes") or []:
        found += list(_refs_in_volume(volume, secret))
    return found


def consumers(deployments: Iterable[Mapping[str, Any]], secret: str) -> list[Consumer]:
    """The Deployments (as read live) whose pod template reads ``secret``."""
    found = []
    for dep in deployments:
        template = (dep.get("spec") or {}).get("template") or {}
        refs = references(template.get("spec") or {}, secret)
        if refs:
            annotations = (template.get("metadata") or {}).get("annotations") or {}
            found.append(
                Consumer(
                    name=dep["metadata"]["name"],
                    namespace=dep["metadata"]["namespace"],
                    references=refs,
                    restarted_at=annotations.get(RESTART_ANNOTATION),
                )
            )
    return sorted(found, key=lambda c: (c.namespace, c.name))


def login_pair(role: str) -> tuple[str, str]:
    """The two login roles that take turns for group role ``role``."""
    return f"{role}_{BLUE}", f"{role}_{GREEN}"


def next_login(current: str, role: str) -> str:
    """The login the apps move to: the other one of the pair.

    Raises:
        ConfigurationError: ``current`` is not one of the pair (first rotation: create the
            pair as the README says).
    """
    blue, green = login_pair(role)
    if current == blue:
        return green
    if current == green:
        return blue
    raise ConfigurationError(
        f"the apps' database login is {current!r}, not one of the blue/green pair "
        f"{blue!r}/{green!r} of role {role!r}: create the pair first (README, "
        f"rotate-staging-secret), nothing was changed"
    )


def previous_name(secret: str) -> str:
    """The Secret that keeps the previous values until the new ones are proven."""
    return secret + PREVIOUS_SUFFIX


class Step(BaseModel):
    """One thing the rotation did (or undid), in order, for the report."""

    action: str
    ok: bool = True
    detail: str = ""


class RotationResult(BaseModel):
    """What happened to one secret."""

    secret: str
    data_keys: list[str]
    source: str = Field(description="'generated' or the Secret block the value came from")
    outcome: Literal["rotated", "rolled back", "rollback incomplete", "not attempted"] = (
        "not attempted"
    )
    reason: str = ""
    consumers: list[Consumer] = Field(default_factory=list)
    steps: list[Step] = Field(default_factory=list)
    undone: list[Step] = Field(default_factory=list)
    login: str | None = Field(default=None, description="The database login now in use")


class ProductionProof(BaseModel):
    """Production's Secrets before and after: resourceVersion and keyed fingerprints."""

    before: dict[str, dict[str, str]]
    after: dict[str, dict[str, str]]

    @property
    def unchanged(self) -> bool:
        return self.before == self.after


def report_markdown(results: Sequence[RotationResult], proof: ProductionProof | None) -> str:
    """The run's report: per secret its outcome, consumers, steps and undo; production's proof."""
    lines = ["# Rotate staging secrets", ""]
    lines += ["| secret | keys | value from | outcome | consumers rolled |", "| --- " * 5 + "|"]
    for r in results:
        rolled = ", ".join(f"{c.namespace}/{c.name}" for c in r.consumers) or "none"
        lines.append(
            f"| {r.secret} | {', '.join(r.data_keys)} | {r.source} | {r.outcome} | {rolled} |"
        )
    for r in results:
        lines += ["", f"## {r.secret}: {r.outcome}", ""]
        if r.reason:
            lines += [f"**Why:** {r.reason}", ""]
        if r.login:
            lines += [f"Database login in use: `{r.login}`", ""]
        for c in r.consumers:
            lines.append(f"- consumer `{c.namespace}/{c.name}`: {'; '.join(c.references)}")
        lines += ["", "Done, in order:", ""]
        lines += [
            f"{i}. {'ok' if s.ok else 'FAILED'}: {s.action} {s.detail}".rstrip()
            for i, s in enumerate(r.steps, 1)
        ] or ["(nothing)"]
        if r.undone:
            lines += ["", "Rolled back, in order:", ""]
            lines += [
                f"{i}. {'ok' if s.ok else 'FAILED'}: {s.action} {s.detail}".rstrip()
                for i, s in enumerate(r.undone, 1)
            ]
    lines += ["", "## Production", ""]
    if proof is None:
        lines.append("Not measured (the run stopped before reading production).")
    else:
        verdict = "unchanged" if proof.unchanged else "**CHANGED**"
        lines += [
            f"Production's Secrets {verdict} (read-only: resourceVersion and keyed "
            "fingerprints, never values):",
            "",
            "| secret | before | after |",
            "| --- | --- | --- |",
        ]
        for name in sorted(set(proof.before) | set(proof.after)):
            lines.append(
                f"| {name} | {_state(proof.before.get(name))} | {_state(proof.after.get(name))} |"
            )
    return "\n".join(lines) + "\n"


def _state(state: Mapping[str, str] | None) -> str:
    if state is None:
        return "absent"
    return ", ".join(f"{k} {v}" for k, v in sorted(state.items()))
