"""The emulator: a real HTTP server on 127.0.0.1 with test controls around the store."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import queue
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

import yaml

from .admission import Admission
from .api import NOT_FOUND, Target, decode, handle, parse_target
from .controllers import Behaviour, Controllers, Mode
from .discovery import document, is_discovery
from .kinds import Kind, by_kind, kind_named
from .rbac import (
    MASTERS,
    Authenticator,
    Authorizer,
    Identity,
    Request,
    bootstrap_policy,
    expiration_seconds,
    forbidden,
    token_request,
)
from .store import ApiError, Obj, Store, Watcher, bad_request, not_found
from .tls import certificates, server_context
from .validation import check_update

log = logging.getLogger("kube_emulator")

Fault = Literal[429, 500, 502, 503, 504, "drop"]
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_USER = "kube-emulator-admin"  # the admin token's user, in system:masters
_FAULTS: dict[int, tuple[str, str]] = {
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: fault injected by the kube emulator"),
    502: ("InternalError", "Bad gateway: fault injected by the kube emulator"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted"),
}
ObjList = list[Obj]
Records = list["RequestRecord"]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it. ``status`` is 0 for a dropped connection."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    status: int
    is_write: bool
    dry_run: bool = False
    fault: str | None = None  # the injected fault that answered it, if any
    body: Any = None  # the decoded JSON or YAML body, if any
    user: str = ""  # who authentication found the request is from ("" if nobody)


@dataclass
class _FaultRule:
    fault: Fault
    remaining: int
    retry_after: int | None
    methods: frozenset[str] | None
    path_contains: str | None
    include_discovery: bool

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.methods is None or method in self.methods)
            and (self.path_contains is None or self.path_contains in path)
            and (self.include_discovery or not is_discovery(path))
        )


@dataclass(frozen=True)
class _Denial:
    verb: str
    resource: str
    namespace: str | None
    user: str | None  # None: the requester's name


class KubeEmulator:
    """An EMULATOR of the Kubernetes API server (not a cluster: nothing runs).

    Serves core/v1, apps/v1, batch/v1, rbac and networking kinds over real HTTP for the
    official Python client and kubectl; plays the workload controllers (see
    ``set_workload_behaviour``); and offers test controls: injected faults, RBAC denials, a
    request log and direct store access. Thread safe. Use as a context manager, or call
    ``start()`` and ``stop()``.

    Requests are authenticated and authorized as kube-apiserver does (see rbac.py): a
    bearer token per request, RBAC over the Roles and bindings stored. ``admin_token`` is
    in ``system:masters``; ``write_kubeconfig`` uses it unless given another token (e.g.
    ``service_account_token(...)``). ``token_file`` is a ``--token-auth-file`` CSV;
    ``anonymous_auth`` lets requests without a token in as ``system:anonymous``.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        workloads: Mode = "ready",
        user: str = DEFAULT_USER,
        token_file: str | Path | None = None,
        anonymous_auth: bool = False,
    ) -> None:
        self.store = Store()
        self.controllers = Controllers(self.store, workloads)
        self.admission = Admission(self.store)
        self.store.check_update = check_update
        self.authenticator = Authenticator(self.store, anonymous=anonymous_auth)
        self.authorizer = Authorizer(self.store)
        self.user = user  # the admin token's user
        self.admin_token = "kube-emulator-admin." + secrets.token_urlsafe(24)
        self.authenticator.add_token(self.admin_token, Identity(user, "", (MASTERS,)))
        if token_file is not None:
            self.authenticator.load_token_file(token_file)
        self._address = (host, port)
        self._lock = threading.Lock()
        self._faults: list[_FaultRule] = []
        self._denials: list[_Denial] = []
        self._log: list[RequestRecord] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        for obj in bootstrap_policy():
            self.seed(obj)

    # -- lifecycle --

    def start(self) -> Self:
        if self._server is None:
            self._server = _Server(self._address, self)
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="kube-emulator", daemon=True
            )
            self._thread.start()
            log.info(
                "kube-emulator: EMULATOR of the Kubernetes API (not a cluster) serving at %s",
                self.url,
            )
        return self

    def stop(self) -> None:
        """Stop serving: close the listener, every connection and watch; join the threads."""
        server, self._server = self._server, None
        if server is None:
            return
        self.controllers.stop()
        server.shutdown()
        self.store.close_watches()
        server.close_connections()
        server.server_close()  # joins the request threads, now unblocked
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("kube-emulator: stopped")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the kube emulator is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._address[0]
        return f"https://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The CA that signed the serving certificate (PEM), for raw HTTPS clients."""
        return certificates().ca_file

    def write_kubeconfig(
        self,
        path: str | Path,
        *,
        context: str = "emulator",
        namespace: str = "default",
        user: str = "emulator-admin",
        token: str | None = None,
    ) -> Path:
        """Write a kubeconfig for this emulator (HTTPS, its CA inline) and return its path.

        Its credential is ``token`` (default: the admin token, in ``system:masters``);
        ``user`` is only the kubeconfig's name for it.
        """
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": context,
            "clusters": [
                {
                    "name": context,
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(
                            certificates().ca_pem
                        ).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token or self.admin_token}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": user, "namespace": namespace},
                }
            ],
        }
        path = Path(path)
        path.write_text(
            "# kubeconfig for the kube EMULATOR (not a cluster)\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        return path

    # -- identities --

    def add_token(
        self, token: str, user: str, *, uid: str = "", groups: Iterable[str] = ()
    ) -> None:
        """Accept ``token`` as ``user`` in ``groups`` (a line of a static token file)."""
        self.authenticator.add_token(token, Identity(user, uid, tuple(groups)))

    def service_account_token(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> str:
        """A token for ServiceAccount ``namespace/name``, as a TokenRequest would issue."""
        return self.authenticator.issue(namespace, name, expiration_seconds)[0]

    def auth_headers(self, token: str | None = None) -> dict[str, str]:
        """The header a raw HTTP request needs (default: the admin token)."""
        return {"Authorization": f"Bearer {token or self.admin_token}"}

    # -- store access (no HTTP: no faults, denials or log entries) --

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Obj | None:
        return self.store.get(_kind(api_version, kind), namespace, name)

    def list(
        self, kind: str, namespace: str | None = None, *, label_selector: str | None = None
    ) -> ObjList:
        """Objects of a kind ("Deployment"), in one namespace or all."""
        return self.store.list(kind_named(kind), namespace, label_selector)[0]

    def seed(self, obj: Obj) -> Obj:
        """Create an object as given, status included (e.g. a production Secret to protect)."""
        kind = _kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        return self.store.create(
            kind, obj, obj.get("metadata", {}).get("namespace"), keep_status=True
        )

    # -- test controls --

    def set_workload_behaviour(
        self,
        mode: Mode,
        *,
        namespace: str | None = None,
        name: str | None = None,
        image: str | None = None,
        reason: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """How workloads roll out from now on: "ready", "never-ready" or "failing".

        Without filters, sets the default; with ``namespace``/``name``/``image`` only for the
        workloads that match (the most specific rule wins). ``reason`` is the pods' waiting
        reason; ``delay`` (seconds) postpones the status so a watch sees the transition.
        """
        self.controllers.set_behaviour(Behaviour(mode, reason, delay, namespace, name, image))

    def inject_faults(
        self,
        fault: Fault,
        count: int = 1,
        *,
        retry_after: int | None = None,
        methods: Iterable[str] | None = None,
        only_writes: bool = False,
        path_contains: str | None = None,
        include_discovery: bool = False,
    ) -> None:
        """Answer the next ``count`` matching requests with ``fault`` instead of serving them.

        ``fault`` is an HTTP status (429 carries ``Retry-After``, default 1 s) or "drop" (the
        connection closes without a response). Discovery requests (/version, /api, /apis,
        /openapi) are spared unless ``include_discovery``: clients cache them, and faults are
        meant for the calls the project makes.
        """
        if fault != "drop" and fault not in _FAULTS:
            raise ValueError(f"unsupported fault {fault!r}: one of {[*_FAULTS, 'drop']}")
        chosen = WRITE_METHODS if only_writes else methods
        rule = _FaultRule(
            fault,
            count,
            retry_after if retry_after is not None else (1 if fault == 429 else None),
            frozenset(m.upper() for m in chosen) if chosen is not None else None,
            path_contains,
            include_discovery,
        )
        with self._lock:
            self._faults.append(rule)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def deny(
        self, verb: str, resource: str, namespace: str | None = None, *, user: str | None = None
    ) -> None:
        """Answer 403 Forbidden to ``verb`` ("create", "*", ...) on ``resource`` ("namespaces",
        "deployments/status", "*") in ``namespace`` (None: everywhere, cluster scope too)."""
        with self._lock:
            self._denials.append(_Denial(verb, resource, namespace, user))

    def allow_all(self) -> None:
        with self._lock:
            self._denials.clear()

    def requests(self) -> Records:
        with self._lock:
            return self._log.copy()

    def writes(self) -> Records:
        """The mutating requests (POST, PUT, PATCH, DELETE), dry runs included and flagged."""
        return [r for r in self.requests() if r.is_write]

    def requests_in(self, namespaces: Iterable[str]) -> Records:
        """The requests that reached ``namespaces``: their objects, or a list across all
        namespaces (which returns theirs too), or the Namespace objects themselves."""
        wanted = set(namespaces)
        found = []
        for record in self.requests():
            try:
                target = parse_target(record.path)
            except ApiError:
                continue  # discovery (/api, /apis, /version, /openapi): no namespace
            own = target.namespace in wanted or (
                target.kind.kind == "Namespace" and target.name in wanted
            )
            cluster_wide = target.kind.namespaced and target.namespace is None
            if own or cluster_wide:
                found.append(record)
        return found

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # -- used by the request handler --

    def _take_fault(self, method: str, path: str) -> _FaultRule | None:
        with self._lock:
            rule = next((r for r in self._faults if r.matches(method, path)), None)
            if rule is not None:
                rule.remaining -= 1
                self._faults = [r for r in self._faults if r.remaining > 0]
            return rule

    def _authorize(self, identity: Identity, target: Target, request: Request) -> None:
        """RBAC first, as the real server; then the test's own denials (``deny``)."""
        if not self.authorizer.allows(identity, request):
            raise forbidden(identity.user, request, target.kind)
        verb = request.verb
        with self._lock:
            denial = next(
                (
                    d
                    for d in self._denials
                    if d.verb in (verb, "*")
                    and d.resource in (target.resource, "*")
                    and d.namespace in (None, target.namespace)
                ),
                None,
            )
        if denial is None:
            return
        kind = target.kind
        subject = f'{kind.resource} "{target.name}"' if target.name else kind.resource
        scope = (
            f'in the namespace "{target.namespace}"' if target.namespace else "at the cluster scope"
        )
        raise ApiError(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{denial.user or identity.user}" cannot '
            f'{verb} resource "{target.resource}" in API group "{kind.group}" {scope}',
            {"name": target.name or "", "group": kind.group, "kind": kind.plural},
        )

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)


def _request(target: Target, verb: str, query: dict[str, str]) -> Request:
    """The authorization attributes of a resource request."""
    name = target.name or ""
    if not name and verb in ("list", "watch"):
        # As the real server: a list or watch of one name (fieldSelector=metadata.name=x)
        # is authorized for that name, so resourceNames rules can allow it.
        for part in (query.get("fieldSelector") or "").split(","):
            key, _, value = part.partition("=")  # "metadata.name=x" or "metadata.name==x"
            if key.strip() == "metadata.name" and value.removeprefix("=").strip():
                name = value.removeprefix("=").strip()
    return Request(
        verb,
        target.kind.group,
        target.kind.plural,
        target.subresource or "",
        name,
        target.namespace or "",
    )


def _kind(api_version: str, kind: str) -> Kind:
    found = by_kind(api_version, kind)
    if found is None:
        raise KeyError(f"the kube emulator serves no {api_version} {kind}")
    return found


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], emulator: KubeEmulator) -> None:
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)
        # The handshake runs in the request's thread (see _Handler.setup), not in accept.
        self.socket = server_context().wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )

    # Track live connections: on stop, shutting them down wakes the threads blocked on them
    # (idle keep-alive reads, watches), so that server_close() can join every thread.
    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("kube-emulator: connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked watch streams, as clients expect
    # Headers and body go out in two writes; with Nagle on, the body waits for the
    # client's delayed ACK (~40 ms per request on a kept-alive connection). Go's
    # net/http, and so kube-apiserver, sets TCP_NODELAY on every connection.
    disable_nagle_algorithm = True
    server_version = "kube-emulator"
    server: _Server

    def setup(self) -> None:
        self.request.settimeout(10)  # a client that never finishes its handshake
        self.request.do_handshake()
        self.request.settimeout(None)
        super().setup()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("kube-emulator: " + format, *args)

    def _serve(self) -> None:
        emulator = self.server.emulator
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        content_type = self.headers.get("Content-Type", "")
        raw = self._read_body()
        is_write = self.command in WRITE_METHODS
        who: list[str] = [""]  # the authenticated user, once known

        def record(status: int, fault: str | None = None) -> None:
            try:
                body = yaml.safe_load(raw) if raw else None  # JSON is YAML too
            except yaml.YAMLError:
                body = raw.decode(errors="replace")
            emulator._record(
                RequestRecord(
                    self.command,
                    url.path,
                    query,
                    content_type or None,
                    status,
                    is_write,
                    query.get("dryRun") == "All",
                    fault,
                    body,
                    who[0],
                )
            )

        rule = emulator._take_fault(self.command, url.path)
        if rule is not None:
            record(0 if rule.fault == "drop" else rule.fault, str(rule.fault))
            self._send_fault(rule)
            return
        warnings: list[str] = []
        try:
            identity = emulator.authenticator.authenticate(self.headers.get("Authorization"))
            who[0] = identity.user
            target = self._resource_target(identity, url.path)
            if target is None:  # discovery, authorized as a non-resource URL
                doc = document(url.path, f"{self.server.server_address[0]!s}:{emulator.port}")
                if doc is None:
                    raise NOT_FOUND
                status = 200
            else:
                watch = query.get("watch") in ("true", "1")
                verb = target.verb(self.command, watch)
                emulator._authorize(identity, target, _request(target, verb, query))
                if watch and self.command == "GET" and not target.name:
                    watcher = self._open_watch(target, query)
                    record(200)
                    self._stream(watcher, query)
                    return
                if target.subresource == "log" and self.command == "GET":
                    self._pod_log(target)
                    record(200)
                    return
                if target.subresource == "token":
                    status, doc = self._token_request(target, raw, content_type)
                else:
                    status, doc = self._handle(identity, target, query, raw, content_type, warnings)
        except ApiError as err:
            status, doc = err.code, err.status()
        except Exception as err:  # a bug here must reach the client as a 500, not a hang
            log.exception("kube-emulator: internal error serving %s %s", self.command, self.path)
            status, doc = 500, ApiError(500, "InternalError", f"emulator error: {err}").status()
        record(status)
        # As the real server: each warning a header of its own, code 299, agent "-".
        said = [("Warning", '299 - "' + w.replace('"', '\\"') + '"') for w in warnings]
        self._send(status, doc, extra=said)

    def _send_fault(self, rule: _FaultRule) -> None:
        if rule.fault == "drop":
            self.close_connection = True  # no response at all: the client sees EOF
            return
        reason, message = _FAULTS[rule.fault]
        headers = {} if rule.retry_after is None else {"Retry-After": str(rule.retry_after)}
        details = (
            {} if rule.retry_after is None else {"details": {"retryAfterSeconds": rule.retry_after}}
        )
        self._send(
            rule.fault, {**ApiError(rule.fault, reason, message).status(), **details}, headers
        )

    def _resource_target(self, identity: Identity, path: str) -> Target | None:
        """The resource a path names; None for discovery, once authorized as a
        non-resource URL (other non-resource paths: authorized, then 404)."""
        emulator = self.server.emulator
        resource_like = not is_discovery(path)
        if resource_like:
            try:
                return parse_target(path)
            except ApiError as err:
                if err is not NOT_FOUND:
                    raise
        request = Request(self.command.lower(), path=path)
        if not emulator.authorizer.allows(identity, request):
            raise forbidden(identity.user, request, None)
        if resource_like:
            raise NOT_FOUND
        return None

    def _handle(
        self,
        identity: Identity,
        target: Target,
        query: dict[str, str],
        raw: bytes,
        content_type: str,
        warnings: list[str],
    ) -> tuple[int, Obj]:
        emulator = self.server.emulator
        if target.subresource == "log":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
        emulator.admission.collect(warnings)
        try:
            with emulator.authorizer.acting_as(identity):
                return handle(
                    emulator.store, self.command, target, query, raw, content_type, warnings
                )
        finally:
            emulator.admission.collect(None)

    def _token_request(self, target: Target, raw: bytes, content_type: str) -> tuple[int, Obj]:
        """TokenRequest: a token for the ServiceAccount, mapped to its identity."""
        if self.command != "POST" or not target.name or not target.namespace:
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        # kubectl create token sends protobuf, which this emulator does not decode: such a
        # request gets the defaults (one hour), as a TokenRequest with an empty spec.
        protobuf = "protobuf" in content_type
        body = decode(raw, content_type) if raw and not protobuf else {}
        lifetime = expiration_seconds(body)
        token, expires = self.server.emulator.authenticator.issue(
            target.namespace, target.name, lifetime
        )
        return 201, token_request(target.namespace, target.name, body, token, expires)

    def _pod_log(self, target: Target) -> None:
        """A pod's log: empty, since no container ever runs here (404 for no pod)."""
        if (
            not target.name
            or self.server.emulator.store.get(target.kind, target.namespace, target.name) is None
        ):
            raise not_found(target.kind, target.name or "")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _read_body(self) -> bytes:
        # Clients send bodies with a Content-Length (kubectl and urllib3 alike), never chunked.
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        doc: Obj,
        headers: dict[str, str] | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for name, value in [*(headers or {}).items(), *(extra or [])]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    # -- watches --

    def _open_watch(self, target: Target, query: dict[str, str]) -> Watcher:
        rv, initial = query.get("resourceVersion"), query.get("sendInitialEvents") == "true"
        try:
            since = None if initial or rv in (None, "", "0") else int(rv or 0)
        except ValueError:
            raise bad_request(f"invalid resourceVersion {rv!r}") from None
        args = (
            target.kind,
            target.namespace,
            query.get("labelSelector"),
            query.get("fieldSelector"),
        )
        try:
            return self.server.emulator.store.watch(*args, since, bookmark=initial)
        except ApiError as err:
            if err.code != 410:
                raise
            # Like the real server: an expired resourceVersion is an ERROR event in the stream.
            expired = Watcher(*args)
            expired.queue.put(("ERROR", err.status()))
            expired.close()
            return expired

    def _stream(self, watcher: Watcher, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    item = watcher.queue.get(timeout=min(left, 0.25))
                except queue.Empty:
                    if self._client_gone():
                        self.close_connection = True
                        return
                    continue
                if item is None:  # the end: the emulator stops (or the watch had expired)
                    break
                self._chunk(*item)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        finally:
            self.server.emulator.store.unwatch(watcher)

    def _chunk(self, event_type: str, obj: Obj) -> None:
        data = json.dumps({"type": event_type, "object": obj}).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            # The TCP stream under TLS (an SSLSocket cannot peek): EOF means gone.
            return bool(socket.socket.recv(self.connection, 1, socket.MSG_PEEK) == b"")
        except OSError:
            return True
