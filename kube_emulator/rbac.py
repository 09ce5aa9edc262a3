"""Authentication and RBAC authorization, as kube-apiserver does them.

Authentication: bearer tokens only, from a static token file (``--token-auth-file``'s CSV:
``token,user,uid,"group1,group2"``) or issued by TokenRequest
(``POST .../serviceaccounts/{name}/token``) for a ServiceAccount, which then acts as
``system:serviceaccount:<namespace>:<name>``. Every authenticated user is also in
``system:authenticated``; a token that is missing (unless anonymous requests are allowed)
or unknown is a 401.

Authorization, in the real server's order: the ``system:masters`` group may do anything;
then RBAC over the Roles, ClusterRoles and their bindings in the store (verbs, API groups,
resources and subresources, resourceNames, non-resource URLs, aggregated ClusterRoles).
The bootstrap roles the real server creates for discovery and public information are
seeded. Writes of Roles and bindings are held to RBAC's escalation prevention: nobody
grants a right they do not hold, unless they may ``escalate`` (roles) or ``bind`` (the
role a binding references).
"""

from __future__ import annotations

import csv
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .kinds import SERVICE_ACCOUNT, Kind, kind_named
from .store import ApiError, Obj, label_matcher

if TYPE_CHECKING:
    from .store import Store

MASTERS, AUTHENTICATED = "system:masters", "system:authenticated"
UNAUTHENTICATED, ANONYMOUS = "system:unauthenticated", "system:anonymous"
RBAC_GROUP = "rbac.authorization.k8s.io"
ROLE, ROLE_BINDING = kind_named("Role"), kind_named("RoleBinding")
CLUSTER_ROLE, CLUSTER_ROLE_BINDING = kind_named("ClusterRole"), kind_named("ClusterRoleBinding")
RBAC_KINDS = (ROLE, ROLE_BINDING, CLUSTER_ROLE, CLUSTER_ROLE_BINDING)
UNAUTHORIZED = ApiError(401, "Unauthorized", "Unauthorized")


@dataclass(frozen=True)
class Identity:
    """Who a request is from, as authentication found it."""

    user: str
    uid: str = ""
    groups: tuple[str, ...] = ()


ANONYMOUS_IDENTITY = Identity(ANONYMOUS, "", (UNAUTHENTICATED,))


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


@dataclass(frozen=True)
class Request:
    """What authorization looks at: a resource request, or a non-resource ``path``."""

    verb: str
    group: str = ""
    resource: str = ""  # plural, e.g. "deployments"
    subresource: str = ""
    name: str = ""
    namespace: str = ""
    path: str = ""  # non-resource requests only

    @property
    def is_resource(self) -> bool:
        return not self.path


# --- authentication -----------------------------------------------------------------------


@dataclass(frozen=True)
class _IssuedToken:
    namespace: str
    name: str
    uid: str  # the ServiceAccount's: a token dies with the account it was issued to
    expires: float


class Authenticator:
    """Bearer tokens: static ones and those issued to ServiceAccounts."""

    def __init__(self, store: Store, *, anonymous: bool = False) -> None:
        self.store, self.anonymous = store, anonymous
        self._static: dict[str, Identity] = {}
        self._issued: dict[str, _IssuedToken] = {}
        self._lock = threading.Lock()

    def add_token(self, token: str, identity: Identity) -> None:
        with self._lock:
            self._static[token] = identity

    def load_token_file(self, path: str | Path) -> int:
        """Add every token of a ``--token-auth-file`` CSV; returns how many were read.

        Raises:
            ValueError: a record with fewer than three columns (token, user, uid).
        """
        count = 0
        with Path(path).open(newline="") as handle:
            for number, record in enumerate(csv.reader(handle, skipinitialspace=True), 1):
                if not record or not any(field.strip() for field in record):
                    continue
                if len(record) < 3:
                    raise ValueError(
                        f"token file '{path}' must have at least 3 columns (token, user name, "
                        f"user uid), found {len(record)} in record {number}"
                    )
                token, user, uid = record[0], record[1], record[2]
                groups = (
                    [g.strip() for g in record[3].split(",") if g.strip()] if record[3:] else []
                )
                self.add_token(token, Identity(user, uid, tuple(groups)))
                count += 1
        return count

    def issue(self, namespace: str, name: str, expiration_seconds: int) -> tuple[str, float]:
        """A new token for ServiceAccount ``namespace/name``; 404 if it does not exist."""
        account = self.store.get(SERVICE_ACCOUNT, namespace, name)
        if account is None:
            raise ApiError(
                404,
                "NotFound",
                f'serviceaccounts "{name}" not found',
                {"name": name, "kind": "serviceaccounts"},
            )
        token = "kube-emulator-sa." + secrets.token_urlsafe(32)
        expires = time.time() + expiration_seconds
        with self._lock:
            self._issued[token] = _IssuedToken(namespace, name, account["metadata"]["uid"], expires)
        return token, expires

    def authenticate(self, authorization: str | None) -> Identity:
        """The identity behind an ``Authorization`` header; 401 when there is none."""
        if not authorization:
            if self.anonymous:
                return ANONYMOUS_IDENTITY
            raise UNAUTHORIZED
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise UNAUTHORIZED
        with self._lock:
            static, issued = self._static.get(token), self._issued.get(token)
        if static is not None:
            groups = (
                static.groups
                if AUTHENTICATED in static.groups
                else (
                    *static.groups,
                    AUTHENTICATED,
                )
            )
            return Identity(static.user, static.uid, groups)
        if issued is None or issued.expires < time.time():
            raise UNAUTHORIZED
        account = self.store.get(SERVICE_ACCOUNT, issued.namespace, issued.name)
        if account is None or account["metadata"]["uid"] != issued.uid:
            raise UNAUTHORIZED  # a bound token: its account was deleted (or re-created)
        return Identity(
            service_account_user(issued.namespace, issued.name),
            issued.uid,
            ("system:serviceaccounts", f"system:serviceaccounts:{issued.namespace}", AUTHENTICATED),
        )


def token_request(namespace: str, name: str, body: Any, token: str, expires: float) -> Obj:
    """The TokenRequest the real server answers with (status.token filled in)."""
    spec = dict(body.get("spec") or {}) if isinstance(body, dict) else {}
    spec.setdefault("audiences", ["https://kubernetes.default.svc.cluster.local"])
    spec.setdefault("expirationSeconds", 3600)
    return {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
        "spec": spec,
        "status": {
            "token": token,
            "expirationTimestamp": datetime.fromtimestamp(expires, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        },
    }


def expiration_seconds(body: Any) -> int:
    """The TokenRequest's lifetime; the real server's bounds (10 min to 2^32 s)."""
    spec = body.get("spec") if isinstance(body, dict) else None
    value = (spec or {}).get("expirationSeconds", 3600)
    if isinstance(value, int) and 600 <= value <= 2**32:
        return value
    detail = (
        "may not specify a duration larger than 2^32 seconds"
        if isinstance(value, int) and value > 2**32
        else "may not specify a duration less than 10 minutes"
    )
    raise ApiError(
        422,
        "Invalid",
        f'TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: '
        f"Invalid value: {value}: {detail}",
    )


# --- rules ----------------------------------------------------------------------------------


def _has(values: Iterable[str], wanted: str) -> bool:
    values = list(values or [])
    return "*" in values or wanted in values


def _resource_matches(rule: Obj, resource: str, subresource: str) -> bool:
    combined = f"{resource}/{subresource}" if subresource else resource
    for allowed in rule.get("resources") or []:
        if allowed in ("*", combined) or (subresource and allowed == f"*/{subresource}"):
            return True
    return False


def _url_matches(rule: Obj, path: str) -> bool:
    for allowed in rule.get("nonResourceURLs") or []:
        if allowed == "*" or allowed == path:
            return True
        if allowed.endswith("*") and path.startswith(allowed[:-1]):
            return True
    return False


def rule_allows(rule: Obj, request: Request) -> bool:
    """One PolicyRule against one request, as RBAC's RuleAllows."""
    if not _has(rule.get("verbs") or [], request.verb):
        return False
    if not request.is_resource:
        return _url_matches(rule, request.path)
    names = rule.get("resourceNames") or []
    return (
        _has(rule.get("apiGroups") or [], request.group)
        and _resource_matches(rule, request.resource, request.subresource)
        and (not names or request.name in names)
    )


def _atoms(rule: Obj) -> Iterator[Request]:
    """A rule broken into single requests (how escalation checks compare rule sets)."""
    for verb in rule.get("verbs") or []:
        for url in rule.get("nonResourceURLs") or []:
            yield Request(verb, path=url)
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                plural, _, sub = resource.partition("/")
                for name in rule.get("resourceNames") or [""]:
                    yield Request(verb, group, plural, sub, name)


def _covers(owner: Obj, atom: Request) -> bool:
    """Whether ``owner`` grants ``atom``, literally: a wildcard is only covered by one."""
    if not atom.is_resource:
        return _has(owner.get("verbs") or [], atom.verb) and _url_matches(owner, atom.path)
    names = owner.get("resourceNames") or []
    return (
        _has(owner.get("verbs") or [], atom.verb)
        and _has(owner.get("apiGroups") or [], atom.group)
        and _resource_matches(owner, atom.resource, atom.subresource)
        and (not names or (atom.name != "" and atom.name in names))
    )


def uncovered(owner_rules: list[Obj], rules: list[Obj]) -> list[Obj]:
    """The rules of ``rules`` that ``owner_rules`` do not wholly grant."""
    return [r for r in rules if not all(any(_covers(o, a) for o in owner_rules) for a in _atoms(r))]


def describe_rule(rule: Obj) -> str:
    """A rule as the real server prints it in escalation errors."""

    def field(name: str, key: str) -> str:
        values = rule.get(key) or []
        # Go's %q of a []string: ["a" "b"]
        return f"{name}:[" + " ".join(f'"{v}"' for v in values) + "]" if values else ""

    parts = [
        field("APIGroups", "apiGroups"),
        field("Resources", "resources"),
        field("ResourceNames", "resourceNames"),
        field("NonResourceURLs", "nonResourceURLs"),
        field("Verbs", "verbs"),
    ]
    return "{" + ", ".join(p for p in parts if p) + "}"


# --- the authorizer ---------------------------------------------------------------------------


class Authorizer:
    """RBAC over the store's objects, with the ``system:masters`` bypass in front."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._local = threading.local()
        store.authorize_write = self.check_write

    # -- who is acting (for checks the store makes while serving a request) --

    @contextmanager
    def acting_as(self, identity: Identity) -> Iterator[None]:
        self._local.identity = identity
        try:
            yield
        finally:
            self._local.identity = None

    @property
    def acting(self) -> Identity | None:
        return getattr(self._local, "identity", None)

    # -- decisions --

    def allows(self, identity: Identity, request: Request) -> bool:
        if MASTERS in identity.groups:
            return True
        return any(rule_allows(rule, request) for rule in self.rules(identity, request.namespace))

    def rules(self, identity: Identity, namespace: str) -> list[Obj]:
        """Every rule granted to ``identity`` cluster-wide and, given one, in ``namespace``."""
        out: list[Obj] = []
        with self.store.lock:
            for binding in self.store.list(CLUSTER_ROLE_BINDING)[0]:
                if self._binds(binding, identity, ""):
                    out += self._role_rules(binding.get("roleRef") or {}, "")
            if namespace:
                for binding in self.store.list(ROLE_BINDING, namespace)[0]:
                    if self._binds(binding, identity, namespace):
                        out += self._role_rules(binding.get("roleRef") or {}, namespace)
        return out

    @staticmethod
    def _binds(binding: Obj, identity: Identity, namespace: str) -> bool:
        for subject in binding.get("subjects") or []:
            kind, name = subject.get("kind"), subject.get("name")
            if kind == "User" and name == identity.user:
                return True
            if kind == "Group" and name in identity.groups:
                return True
            if kind == "ServiceAccount":
                account_namespace = subject.get("namespace") or namespace
                if account_namespace and identity.user == service_account_user(
                    account_namespace, str(name)
                ):
                    return True
        return False

    def _role_rules(self, ref: Obj, namespace: str) -> list[Obj]:
        if ref.get("kind") == "Role" and namespace:
            role = self.store.get(ROLE, namespace, str(ref.get("name")))
            return list((role or {}).get("rules") or [])
        if ref.get("kind") == "ClusterRole":
            return self.cluster_role_rules(str(ref.get("name")))
        return []

    def cluster_role_rules(self, name: str) -> list[Obj]:
        """A ClusterRole's rules; an aggregated one's are those of the roles it selects
        (the real server's aggregation controller writes them; here they are read live)."""
        role = self.store.get(CLUSTER_ROLE, None, name)
        if role is None:
            return []
        selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors")
        if not selectors:
            return list(role.get("rules") or [])
        rules: list[Obj] = []
        for other in self.store.list(CLUSTER_ROLE)[0]:
            if other["metadata"]["name"] == name or other.get("aggregationRule"):
                continue
            if any(_selects(selector, other) for selector in selectors):
                rules += [r for r in other.get("rules") or [] if r not in rules]
        return rules

    # -- escalation prevention (called by the store on every create and update) --

    def check_write(self, verb: str, kind: Kind, obj: Obj) -> None:
        """Refuse what the acting user may not do to ``obj``: an SSA create without
        ``create``, or a Role/binding granting rights the user does not hold."""
        identity = self.acting
        if identity is None:
            return  # the emulator's own writes (controllers, seed)
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if verb == "create-by-apply":
            request = Request("create", kind.group, kind.plural, "", name, namespace)
            if not self.allows(identity, request):
                raise forbidden(identity.user, request, kind)
            verb = "create"
        if kind not in RBAC_KINDS or MASTERS in identity.groups:
            return
        if kind in (ROLE, CLUSTER_ROLE):
            granted = list(obj.get("rules") or [])
            if kind is CLUSTER_ROLE and (obj.get("aggregationRule") or {}).get(
                "clusterRoleSelectors"
            ):
                granted = self._selected_rules(obj)
            right = Request("escalate", RBAC_GROUP, kind.plural, "", name, namespace)
        else:
            ref = obj.get("roleRef") or {}
            ref_kind = ROLE if ref.get("kind") == "Role" else CLUSTER_ROLE
            if ref_kind is ROLE and (
                not namespace or self.store.get(ROLE, namespace, ref.get("name", "")) is None
            ):
                raise _role_not_found(ref_kind, str(ref.get("name")))
            if (
                ref_kind is CLUSTER_ROLE
                and self.store.get(CLUSTER_ROLE, None, ref.get("name", "")) is None
            ):
                raise _role_not_found(ref_kind, str(ref.get("name")))
            granted = self._role_rules(ref, namespace)
            right = Request(
                "bind", RBAC_GROUP, ref_kind.plural, "", str(ref.get("name")), namespace
            )
        if self.allows(identity, right):
            return
        missing = uncovered(self.rules(identity, namespace), granted)
        if missing:
            groups = "[" + " ".join(f'"{g}"' for g in identity.groups) + "]"
            raise ApiError(
                403,
                "Forbidden",
                f'{kind.resource} "{name}" is forbidden: user "{identity.user}" '
                f"(groups={groups}) is attempting to grant RBAC permissions not currently "
                "held:\n" + "\n".join(describe_rule(r) for r in missing),
                {"name": name, "group": kind.group, "kind": kind.plural},
            )

    def _selected_rules(self, role: Obj) -> list[Obj]:
        selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors") or []
        rules: list[Obj] = []
        for other in self.store.list(CLUSTER_ROLE)[0]:
            if not other.get("aggregationRule") and any(_selects(s, other) for s in selectors):
                rules += other.get("rules") or []
        return rules


def _role_not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{kind.resource} "{name}" not found',
        {"name": name, "group": RBAC_GROUP, "kind": kind.plural},
    )


def _selects(selector: Obj, obj: Obj) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against an object's labels."""
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(expression.get("values") or [])
        parts.append(
            {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})"}.get(
                operator, key if operator == "Exists" else f"!{key}"
            )
        )
    if not parts:
        return False  # an empty selector in an aggregation rule selects nothing
    return label_matcher(",".join(parts))(obj)


def forbidden(user: str, request: Request, kind: Kind | None) -> ApiError:
    """The real server's 403 Status for a request its authorizer did not allow."""
    if not request.is_resource:
        return ApiError(
            403,
            "Forbidden",
            f'forbidden: User "{user}" cannot {request.verb} path "{request.path}"',
            {},
        )
    group_resource = (
        kind.resource
        if kind is not None
        else (f"{request.resource}.{request.group}" if request.group else request.resource)
    )
    subject = f'{group_resource} "{request.name}"' if request.name else group_resource
    scope = (
        f'in the namespace "{request.namespace}"' if request.namespace else "at the cluster scope"
    )
    resource = request.resource + (f"/{request.subresource}" if request.subresource else "")
    details: Obj = {"name": request.name, "kind": request.resource}
    if request.group:
        details["group"] = request.group
    return ApiError(
        403,
        "Forbidden",
        f'{subject} is forbidden: User "{user}" cannot {request.verb} resource "{resource}" '
        f'in API group "{request.group}" {scope}',
        details,
    )


# --- bootstrap policy -------------------------------------------------------------------------

_BOOTSTRAP = {"kubernetes.io/bootstrapping": "rbac-defaults"}
_DISCOVERY_URLS = [
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/openapi",
    "/openapi/*",
    "/readyz",
    "/version",
    "/version/",
]
_PUBLIC_URLS = ["/healthz", "/livez", "/readyz", "/version", "/version/"]


def _cluster_role(name: str, rules: list[Obj]) -> Obj:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": dict(_BOOTSTRAP),
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "rules": rules,
    }


def _cluster_binding(name: str, role: str, *groups: str) -> Obj:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": dict(_BOOTSTRAP),
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": g} for g in groups],
    }


def bootstrap_policy() -> list[Obj]:
    """The real server's bootstrap roles this emulator needs: cluster-admin (bound to
    system:masters), discovery for every authenticated user, public info for everyone."""
    return [
        _cluster_role(
            "cluster-admin",
            [
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ],
        ),
        _cluster_role("system:discovery", [{"nonResourceURLs": _DISCOVERY_URLS, "verbs": ["get"]}]),
        _cluster_role(
            "system:public-info-viewer", [{"nonResourceURLs": _PUBLIC_URLS, "verbs": ["get"]}]
        ),
        _cluster_binding("cluster-admin", "cluster-admin", MASTERS),
        _cluster_binding("system:discovery", "system:discovery", AUTHENTICATED),
        _cluster_binding(
            "system:public-info-viewer", "system:public-info-viewer", AUTHENTICATED, UNAUTHENTICATED
        ),
    ]
