"""Tasks that talk to the Kubernetes API, through the official client.

Every write is a server-side apply with one field manager, so each task is idempotent
and safe to retry as a whole. Client errors are classified at this boundary
(:func:`classify`): connection failures, timeouts, 5xx and 429 are transient and retried
by Prefect with backoff and jitter (a 429's Retry-After is honoured first); 4xx are
permanent and fail fast with an actionable message (a 403 names the missing permission).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError
from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from pydantic import BaseModel, SecretStr

from rsolv_staging.environments import Cluster
from rsolv_staging.exceptions import (
    ConfigurationError,
    KubeError,
    PermissionDenied,
    StagingError,
    TransientKubeError,
)
from rsolv_staging.fields import applied_configuration
from rsolv_staging.fingerprint import fingerprint
from rsolv_staging.provisioning import Manifest, object_key
from rsolv_staging.rotation import RESTART_ANNOTATION
from rsolv_staging.settings import Settings

T = TypeVar("T")
Action = Literal["create", "change", "unchanged"]


class ObjectChange(BaseModel):
    """What a run did (or, in a dry run, would do) to one object."""

    key: str
    action: Action
    diff: str = ""


# --------------------------------------------------------------------------- connection


def connect(cluster: Cluster, settings: Settings) -> DynamicClient:
    """A DynamicClient for ``cluster``: its kube context, else in-cluster credentials.

    Raises:
        ConfigurationError: no usable kubeconfig/context and not running in a cluster.
    """
    kubeconfig = settings.kubeconfig or os.environ.get("KUBECONFIG")
    default_file = Path("~/.kube/config").expanduser()
    configuration = k8s.Configuration()
    try:
        if kubeconfig or default_file.exists():
            k8s_config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig else None,
                context=cluster.kube_context,
                client_configuration=configuration,
            )
        else:
            k8s_config.load_incluster_config(client_configuration=configuration)
    except ConfigException as exc:
        where = f"context {cluster.kube_context!r}" if cluster.kube_context else "current context"
        raise ConfigurationError(
            f"cannot configure the Kubernetes client ({where}, kubeconfig "
            f"{kubeconfig or default_file}): {exc}"
        ) from exc
    # Retries are ours (classified, with backoff and Retry-After), not urllib3's silent
    # ones; the pool reads this when the ApiClient is built, so it is set before.
    configuration.retries = urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0)
    api = k8s.ApiClient(configuration)
    return _call(lambda: DynamicClient(api), "discover", "API groups")


def _resource(dyn: DynamicClient, obj: Mapping[str, Any]) -> Any:
    return _call(
        lambda: dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"]),
        "discover",
        f"{obj['apiVersion']}/{obj['kind']}",
    )


# ------------------------------------------------------------------ error classification


def classify(exc: BaseException, verb: str, what: str) -> StagingError:
    """Turn a client exception into a domain error saying what to do about it."""
    status = getattr(exc, "status", None)
    if isinstance(exc, (ApiException, DynamicApiError)) and isinstance(status, int):
        message = _server_message(exc)
        if status == 429:
            header = (getattr(exc, "headers", None) or {}).get("Retry-After")
            retry_after = float(header) if header and str(header).isdigit() else None
            return TransientKubeError(
                f"API server throttled {verb} {what} (429, Retry-After {header})",
                retry_after=retry_after,
            )
        if status >= 500:
            return TransientKubeError(f"API server error {status} on {verb} {what}: {message}")
        if status == 403:
            return PermissionDenied(
                f"RBAC: not allowed to {verb} {what}. Grant the identity in the kubeconfig "
                f"verb '{verb}' on that resource (a Role in its namespace, or a ClusterRole "
                f"for cluster-scoped kinds). The API server said: {message}"
            )
        if status == 401:
            return KubeError(
                f"the API server rejected the credentials while trying to {verb} {what}: "
                "refresh the kubeconfig's token or certificate"
            )
        return KubeError(f"cannot {verb} {what}: {status} {message}")
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
        return TransientKubeError(
            f"connection to the API server failed during {verb} {what}: {exc}"
        )
    if isinstance(exc, StagingError):
        return exc
    return KubeError(f"unexpected error during {verb} {what}: {exc!r}")


def _server_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str):
        import json

        try:
            return str(json.loads(body).get("message", body))
        except ValueError:
            return body
    summary = getattr(exc, "summary", None)
    return summary() if callable(summary) else str(getattr(exc, "reason", exc))


def _call(fn: Callable[[], T], verb: str, what: str) -> T:
    try:
        return fn()
    except (ApiException, DynamicApiError, urllib3.exceptions.HTTPError, OSError) as exc:
        error = classify(exc, verb, what)
        raise error from exc


def is_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry only what may pass; honour Retry-After."""
    exc = state.result(raise_on_failure=False)
    if not isinstance(exc, TransientKubeError):
        return False
    if exc.retry_after:
        cap = Settings().kube_max_retry_after_seconds
        time.sleep(min(exc.retry_after, cap))
    return True


def retrying(task_: Task[..., T], settings: Settings) -> Task[..., T]:
    """``task_`` with the retry policy from settings (exponential backoff, jitter)."""
    delays = [settings.kube_retry_delay_seconds * 2**i for i in range(settings.kube_retries)]
    return task_.with_options(
        retries=settings.kube_retries,
        retry_delay_seconds=delays or 0,
        retry_jitter_factor=settings.kube_retry_jitter,
        retry_condition_fn=is_transient,
    )


# ------------------------------------------------------------------------- normalising

_SERVER_OWNED = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


def _comparable(obj: Mapping[str, Any] | None, redact_key: bytes) -> dict[str, Any]:
    """The object minus what the server owns, with Secret values replaced by fingerprints."""
    if obj is None:
        return {}
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in dict(out.get("metadata", {})).items() if k not in _SERVER_OWNED}
    annotations = {
        k: v
        for k, v in dict(meta.get("annotations") or {}).items()
        if k != "kubectl.kubernetes.io/last-applied-configuration"
    }
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    out["metadata"] = meta
    if obj.get("kind") == "Secret" and isinstance(obj.get("data"), Mapping):
        # Never show a secret, but still show *that* it changed.
        out["data"] = {
            k: f"<redacted {fingerprint(str(v), key=redact_key)}>" for k, v in obj["data"].items()
        }
    return out


def diff_objects(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> str:
    """A unified diff of two versions of an object, secrets redacted."""
    import difflib

    import yaml

    key = random.randbytes(16)  # per-diff key: fingerprints cannot be compared across runs
    a = yaml.safe_dump(_comparable(before, key), sort_keys=True).splitlines() if before else []
    b = yaml.safe_dump(_comparable(after, key), sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "live", "desired", lineterm="", n=2))


# ------------------------------------------------------------------------------ tasks


@contextmanager
def _logged_kube_errors(verb: str) -> Iterator[None]:
    try:
        yield
    except TransientKubeError as exc:
        get_run_logger().warning("transient failure during %s, will retry: %s", verb, exc)
        raise


@task(name="read-objects", cache_policy=NO_CACHE)
def read_objects(
    objects: Sequence[Manifest], *, cluster: Cluster, settings: Settings
) -> dict[str, dict[str, Any] | None]:
    """Read the live version of each object (None where it does not exist).

    Read-only; retried on transient failures.
    """
    with _logged_kube_errors("read"):
        dyn = connect(cluster, settings)
        live: dict[str, dict[str, Any] | None] = {}
        for obj in objects:
            live[object_key(obj)] = _get(dyn, obj, settings)
        return live


def _get(dyn: DynamicClient, obj: Mapping[str, Any], settings: Settings) -> dict[str, Any] | None:
    resource = _resource(dyn, obj)
    meta = obj["metadata"]
    try:
        found = resource.get(
            name=meta["name"],
            namespace=meta.get("namespace"),
            _request_timeout=settings.kube_request_timeout_seconds,
        )
    except (ApiException, DynamicApiError) as exc:
        if getattr(exc, "status", None) == 404:
            return None
        raise classify(exc, "get", object_key(obj)) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise classify(exc, "get", object_key(obj)) from exc
    return dict(found.to_dict())


def _apply(
    dyn: DynamicClient, obj: Mapping[str, Any], settings: Settings, *, dry_run: bool
) -> dict[str, Any]:
    resource = _resource(dyn, obj)
    meta = obj["metadata"]
    extra: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
    result = _call(
        lambda: resource.server_side_apply(
            body=dict(obj),
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=settings.field_manager,
            force_conflicts=True,
            _request_timeout=settings.kube_request_timeout_seconds,
            **extra,
        ),
        "patch",
        object_key(obj),
    )
    return dict(result.to_dict())


@task(name="preview-apply", cache_policy=NO_CACHE)
def preview_apply(
    objects: Sequence[Manifest],
    live: Mapping[str, dict[str, Any] | None],
    *,
    cluster: Cluster,
    settings: Settings,
) -> list[ObjectChange]:
    """Server-side dry run of every apply: what would be created or changed, as diffs.

    Writes nothing (``dryRun=All``). An object whose namespace does not exist yet cannot be
    dry-run by the API server; it is reported as a creation.
    """
    with _logged_kube_errors("preview"):
        dyn = connect(cluster, settings)
        changes: list[ObjectChange] = []
        for obj in objects:
            key = object_key(obj)
            before = live.get(key)
            if before is None:
                changes.append(ObjectChange(key=key, action="create", diff=diff_objects(None, obj)))
                continue
            after = _apply(dyn, obj, settings, dry_run=True)
            diff = diff_objects(before, after)
            changes.append(
                ObjectChange(key=key, action="change" if diff else "unchanged", diff=diff)
            )
        return changes


@task(name="apply-objects", cache_policy=NO_CACHE)
def apply_objects(
    objects: Sequence[Manifest], *, cluster: Cluster, settings: Settings
) -> dict[str, dict[str, Any]]:
    """Server-side apply each object, in order, with the project's field manager.

    Idempotent: an apply that changes nothing leaves the object (and its resourceVersion)
    as it was, so a retry after a partial failure is safe.

    Returns:
        The object as stored after the apply, by ``Kind/namespace/name``.
    """
    with _logged_kube_errors("apply"):
        dyn = connect(cluster, settings)
        return {object_key(obj): _apply(dyn, obj, settings, dry_run=False) for obj in objects}


def summarize(
    objects: Sequence[Manifest],
    before: Mapping[str, dict[str, Any] | None],
    after: Mapping[str, dict[str, Any]],
) -> list[ObjectChange]:
    """Created / changed / unchanged, judged by content (status and server fields aside).

    Not by resourceVersion: on a real cluster controllers write status (a Deployment's
    replicas, a ResourceQuota's ``used``) between our read and our apply, which bumps it
    without any change of ours. Judged against the snapshot taken *before* the first
    attempt, so an object that a failed attempt already wrote still counts as created or
    changed by this run.
    """
    changes = []
    for obj in objects:
        key = object_key(obj)
        old, new = before.get(key), after[key]
        if old is None:
            changes.append(ObjectChange(key=key, action="create", diff=diff_objects(None, new)))
            continue
        diff = diff_objects(old, new)
        changes.append(ObjectChange(key=key, action="change" if diff else "unchanged", diff=diff))
    return changes


@task(name="read-secret-fingerprints", cache_policy=NO_CACHE)
def read_secret_fingerprints(
    names: Sequence[str], *, namespace: str, cluster: Cluster, settings: Settings
) -> dict[str, dict[str, str]]:
    """Fingerprints of the keys of existing Secrets in ``namespace`` (read-only).

    Only keyed hashes leave this task, never a value. Secrets that do not exist are
    left out: there is nothing staging could be sharing with them.
    """
    import base64

    with _logged_kube_errors("read secrets"):
        dyn = connect(cluster, settings)
        out: dict[str, dict[str, str]] = {}
        for name in names:
            obj = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
            }
            live = _get(dyn, obj, settings)
            if live is None:
                continue
            data = live.get("data") or {}
            out[name] = {k: fingerprint(base64.b64decode(v)) for k, v in data.items()}
        return out


# ------------------------------------------------------------------- rollouts and undo

WORKLOAD_LABELS = "app.kubernetes.io/part-of=rsolv,app.kubernetes.io/managed-by=rsolv-staging"
PRUNABLE_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("networking.k8s.io/v1", "Ingress"),
)


class RolloutResult(BaseModel):
    """How one Deployment's rollout ended."""

    name: str
    ready: bool
    reason: str = ""
    seconds: float


def rollout_verdict(dep: Mapping[str, Any]) -> tuple[bool | None, str]:
    """(True, "") when rolled out, (False, why) when it failed, (None, "") while in progress.

    The same reading of a Deployment's status that ``kubectl rollout status`` makes.
    """
    spec, status = dep.get("spec", {}), dep.get("status") or {}
    generation = dep["metadata"].get("generation", 0)
    if status.get("observedGeneration", 0) < generation:
        return None, ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return False, f"ProgressDeadlineExceeded: {cond.get('message', '')}".strip()
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if updated < wanted or status.get("replicas", 0) > updated:
        return None, ""
    if status.get("availableReplicas", 0) < updated:
        return None, ""
    return True, ""


def _failure_details(dyn: DynamicClient, dep: Mapping[str, Any], settings: Settings) -> str:
    """Why pods of ``dep`` are not ready: pods it could not create (admission refused them:
    Pod Security, quota), their container states and Warning events."""
    namespace = dep["metadata"]["namespace"]
    selector = ",".join(
        f"{k}={v}" for k, v in dep["spec"]["selector"].get("matchLabels", {}).items()
    )
    pods = _list(dyn, {"apiVersion": "v1", "kind": "Pod"}, namespace, selector, settings)
    # A refused pod never exists: only the ReplicaFailure condition, which the Deployment
    # copies from its ReplicaSet, says why (e.g. "pods ... is forbidden: violates PodSecurity").
    reasons: list[str] = [
        f"{cond.get('reason', 'ReplicaFailure')}: {cond.get('message', '')}"
        for cond in (dep.get("status") or {}).get("conditions") or []
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True"
    ]
    pod_names = set()
    for pod in pods.get("items", []):
        pod_names.add(pod["metadata"]["name"])
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            state = cs.get("state") or {}
            waiting = state.get("waiting") or (cs.get("lastState") or {}).get("terminated")
            if waiting and waiting.get("reason"):
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                reasons.append(f"container {cs['name']} {waiting['reason']}{detail}")
    events = _list(dyn, {"apiVersion": "v1", "kind": "Event"}, namespace, None, settings)
    for event in events.get("items", []):
        involved = (event.get("involvedObject") or {}).get("name")
        if event.get("type") == "Warning" and (
            involved in pod_names or involved == dep["metadata"]["name"]
        ):
            reasons.append(f"event {event.get('reason')}: {event.get('message', '')}")
    return "; ".join(dict.fromkeys(reasons)) or "no pod reported a reason"


@task(
    name="wait-for-rollout",
    cache_policy=NO_CACHE,
    task_run_name="wait-{namespace}-{name}",
)
def wait_for_rollout(
    name: str,
    *,
    namespace: str,
    deadline_seconds: float,
    cluster: Cluster,
    settings: Settings,
) -> RolloutResult:
    """Watch a Deployment until it is rolled out, fails, or the deadline passes.

    A watch, not a sleep loop: the first status change ends the wait. On failure the
    reason comes from the Deployment's conditions, its pods' container states
    (CrashLoopBackOff, ImagePullBackOff, ...) and Warning events.
    """
    started = time.monotonic()
    dyn = connect(cluster, settings)
    resource = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    stub = {"apiVersion": "apps/v1", "kind": "Deployment"}
    live = _get(dyn, {**stub, "metadata": {"name": name, "namespace": namespace}}, settings)
    if live is None:
        raise KubeError(f"Deployment {namespace}/{name} does not exist; nothing to wait for")
    ready, reason = rollout_verdict(live)
    version = live["metadata"]["resourceVersion"]
    while ready is None:
        remaining = deadline_seconds - (time.monotonic() - started)
        if remaining <= 0:
            break
        try:
            for event in _watch_deployment(resource, name, namespace, version, remaining, settings):
                live = event.get("raw_object") or event["object"]
                version = live["metadata"].get("resourceVersion", version)
                ready, reason = rollout_verdict(live)
                if ready is not None or time.monotonic() - started >= deadline_seconds:
                    break
        except (ApiException, DynamicApiError, urllib3.exceptions.HTTPError, OSError) as exc:
            if getattr(exc, "status", None) in (401, 403):
                # Not allowed to watch: fail fast and say which right is missing, rather
                # than quietly fall back to reading the object once a second.
                raise classify(exc, "watch", f"Deployment/{namespace}/{name}") from exc
            # 410 Gone (history expired), a dropped stream, a timeout: read the object
            # afresh and watch again; only the deadline ends the wait.
            get_run_logger().info("watch of %s/%s restarted: %s", namespace, name, exc)
            time.sleep(min(1.0, max(0.0, deadline_seconds - (time.monotonic() - started))))
            current = _get(
                dyn, {**stub, "metadata": {"name": name, "namespace": namespace}}, settings
            )
            if current is not None:
                live, version = current, current["metadata"]["resourceVersion"]
                ready, reason = rollout_verdict(live)
    elapsed = round(time.monotonic() - started, 2)
    if ready:
        return RolloutResult(name=name, ready=True, seconds=elapsed)
    if ready is None:
        reason = f"not ready within the {deadline_seconds:g}s deadline"
    return RolloutResult(
        name=name,
        ready=False,
        reason=f"{reason}; {_failure_details(dyn, live, settings)}",
        seconds=elapsed,
    )


def _watch_deployment(
    resource: Any, name: str, namespace: str, version: str, remaining: float, settings: Settings
) -> Iterator[dict[str, Any]]:
    """Watch events of one Deployment from ``version`` on, for at most ``remaining`` s."""
    events: Iterator[dict[str, Any]] = watch.Watch().stream(
        resource.get,
        namespace=namespace,
        field_selector=f"metadata.name={name}",
        resource_version=version,
        serialize=False,
        timeout_seconds=max(1, int(remaining)),
        # A client-side bound too: a half-open connection must not outlive the
        # deadline just because the server's timeoutSeconds never arrives.
        _request_timeout=(settings.kube_request_timeout_seconds, remaining + 5),
    )
    return events


def restorable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A live object as it can be applied again: without status and server-owned fields."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in _SERVER_OWNED}
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if k != "deployment.kubernetes.io/revision"
    }
    meta["annotations"] = annotations
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


@task(name="restore-objects", cache_policy=NO_CACHE)
def restore_objects(
    before: Mapping[str, dict[str, Any] | None],
    *,
    keys: Sequence[str],
    stubs: Mapping[str, Manifest],
    cluster: Cluster,
    settings: Settings,
) -> list[str]:
    """Put ``keys`` back as they were in the ``before`` snapshot (the rollback).

    Objects that existed get back what this project's field manager had applied to them
    (its fields, their values then); fields other managers own stay theirs. An object
    this manager never applied is re-applied whole. Objects this run created are
    deleted. Returns what was done, one line per object.
    """
    dyn = connect(cluster, settings)
    done: list[str] = []
    with _reporting(done):
        for key in keys:
            previous = before.get(key)
            if previous is not None:
                ours = applied_configuration(previous, settings.field_manager)
                _apply(
                    dyn, ours if ours is not None else restorable(previous), settings, dry_run=False
                )
                done.append(f"restored {key}")
            else:
                _delete(dyn, stubs[key], settings)
                done.append(f"deleted {key} (created by the failed run)")
    return done


@contextmanager
def _reporting(done: list[str]) -> Iterator[None]:
    """On failure, the error carries ``done`` (what this attempt had changed before it)."""
    try:
        yield
    except StagingError as exc:
        exc.done = tuple(done)
        raise


def _list(
    dyn: DynamicClient,
    stub: Mapping[str, Any],
    namespace: str,
    label_selector: str | None,
    settings: Settings,
) -> dict[str, Any]:
    resource = _resource(dyn, stub)
    return dict(
        _call(
            lambda: resource.get(
                namespace=namespace,
                label_selector=label_selector,
                _request_timeout=settings.kube_request_timeout_seconds,
            ),
            "list",
            f"{stub['kind']} in {namespace}",
        ).to_dict()
    )


def _delete(dyn: DynamicClient, obj: Mapping[str, Any], settings: Settings) -> None:
    resource = _resource(dyn, obj)
    meta = obj["metadata"]
    try:
        resource.delete(
            name=meta["name"],
            namespace=meta.get("namespace"),
            _request_timeout=settings.kube_request_timeout_seconds,
        )
    except (ApiException, DynamicApiError) as exc:
        if getattr(exc, "status", None) == 404:
            return  # already gone: what we wanted
        raise classify(exc, "delete", object_key(obj)) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise classify(exc, "delete", object_key(obj)) from exc


def _prunable(
    dyn: Any, keep: Sequence[str], namespace: str, settings: Settings
) -> list[dict[str, Any]]:
    found = []
    for api_version, kind in PRUNABLE_KINDS:
        stub = {"apiVersion": api_version, "kind": kind}
        listed = _list(dyn, stub, namespace, WORKLOAD_LABELS, settings)
        for item in listed.get("items", []):
            obj = {**stub, "metadata": {"name": item["metadata"]["name"], "namespace": namespace}}
            if object_key(obj) not in keep:
                found.append(obj)
    return found


@task(name="preview-prune", cache_policy=NO_CACHE, task_run_name="preview-prune-{namespace}")
def preview_prune(
    keep: Sequence[str], *, namespace: str, cluster: Cluster, settings: Settings
) -> list[str]:
    """What :func:`prune_objects` would delete now (reads only)."""
    return [object_key(o) for o in _prunable(connect(cluster, settings), keep, namespace, settings)]


@task(name="prune-objects", cache_policy=NO_CACHE, task_run_name="prune-{namespace}")
def prune_objects(
    keep: Sequence[str],
    *,
    namespace: str,
    cluster: Cluster,
    settings: Settings,
    only: Collection[str],
) -> list[str]:
    """Delete ``only`` (the deletions an approver saw, or a preview) of the apps' objects
    (by label) that the rendered manifests no longer contain.

    Only kinds the kustomize tree produces, only objects carrying both the ``part-of``
    and ``managed-by`` labels, only in ``namespace``: provisioning's objects are never
    candidates. What ``only`` names that is no longer there counts as pruned: a retry
    then reports what an earlier attempt deleted, not only its own deletions.
    """
    dyn = connect(cluster, settings)
    pruned: list[str] = []
    with _reporting(pruned):
        present = _prunable(dyn, keep, namespace, settings)
        listed = {object_key(obj) for obj in present}
        pruned.extend(key for key in only if key not in listed)
        for obj in present:
            if object_key(obj) in only:
                _delete(dyn, obj, settings)
                pruned.append(object_key(obj))
    return pruned


# ----------------------------------------------------------------- the live state, read

SCANNED_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "Pod"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("apps/v1", "ReplicaSet"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("v1", "Secret"),
    ("v1", "ServiceAccount"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("networking.k8s.io/v1", "Ingress"),
)


def _redacted_secret(secret: Mapping[str, Any]) -> dict[str, Any]:
    """A Secret without its values: keyed fingerprints per key, and no annotations
    (``kubectl apply`` leaves the whole Secret, values included, in one of them)."""
    import base64

    meta = secret.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "uid") if k in meta},
        "type": secret.get("type", "Opaque"),
        "fingerprints": {
            k: fingerprint(base64.b64decode(v)) for k, v in (secret.get("data") or {}).items()
        },
    }


@task(name="read-live-state", cache_policy=NO_CACHE, task_run_name="read-live-{namespaces}")
def read_live_state(
    namespaces: Sequence[str],
    *,
    cluster: Cluster,
    settings: Settings,
    kinds: Sequence[tuple[str, str]] = SCANNED_KINDS,
) -> dict[str, list[dict[str, Any]]]:
    """Every object of ``kinds`` in ``namespaces``, and the namespaces themselves.

    Read-only (get and list). Secret values never leave this task: each Secret comes back
    with a keyed fingerprint per key instead of its ``data``. A 403 fails the read with
    the permission to grant: a scan that cannot see an object must not report it clean.

    Returns:
        Kind -> objects (each with ``kind`` and ``apiVersion`` set, managedFields dropped).
    """
    with _logged_kube_errors("read live state"):
        dyn = connect(cluster, settings)
        out: dict[str, list[dict[str, Any]]] = {"Namespace": []}
        for namespace in namespaces:
            stub = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            found = _get(dyn, stub, settings)
            if found is not None:
                out["Namespace"].append({**found, "kind": "Namespace", "apiVersion": "v1"})
            for api_version, kind in kinds:
                listed = _list(
                    dyn, {"apiVersion": api_version, "kind": kind}, namespace, None, settings
                )
                for item in listed.get("items") or []:
                    item = {**item, "kind": kind, "apiVersion": api_version}
                    item["metadata"] = {
                        k: v
                        for k, v in (item.get("metadata") or {}).items()
                        if k != "managedFields"
                    }
                    out.setdefault(kind, []).append(
                        _redacted_secret(item) if kind == "Secret" else item
                    )
        return out


# ------------------------------------------------------------------ secret rotation


@task(name="list-deployments", cache_policy=NO_CACHE, task_run_name="list-deployments-{namespace}")
def list_deployments(
    *, namespace: str, cluster: Cluster, settings: Settings
) -> list[dict[str, Any]]:
    """Every Deployment in ``namespace`` as it is live (pod templates included). Read-only."""
    with _logged_kube_errors("list deployments"):
        dyn = connect(cluster, settings)
        stub = {"apiVersion": "apps/v1", "kind": "Deployment"}
        return list(_list(dyn, stub, namespace, None, settings).get("items", []))


@task(
    name="read-secret-states",
    cache_policy=NO_CACHE,
    task_run_name="read-secret-states-{namespace}",
)
def read_secret_states(
    names: Sequence[str], *, namespace: str, cluster: Cluster, settings: Settings
) -> dict[str, dict[str, str]]:
    """resourceVersion (under ``@resourceVersion``) and per-key keyed fingerprints of the
    Secrets that exist among ``names`` (read-only: only hashes leave this task).

    What "production was not touched" is measured by: any write to a Secret changes its
    resourceVersion, any new value its fingerprint.
    """
    import base64

    with _logged_kube_errors("read secrets"):
        dyn = connect(cluster, settings)
        out: dict[str, dict[str, str]] = {}
        for name in names:
            stub = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
            }
            live = _get(dyn, stub, settings)
            if live is None:
                continue
            data = live.get("data") or {}
            out[name] = {
                "@resourceVersion": str(live["metadata"]["resourceVersion"]),
                **{k: fingerprint(base64.b64decode(v)) for k, v in data.items()},
            }
        return out


@task(
    name="read-secret-values",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="read-secret-{namespace}-{name}",
)
def read_secret_values(
    name: str, *, namespace: str, cluster: Cluster, settings: Settings
) -> dict[str, SecretStr] | None:
    """The decoded values of Secret ``namespace/name`` (None: no such Secret).

    As ``SecretStr`` and never persisted: the rotation keeps them only to put them back.
    """
    import base64

    with _logged_kube_errors("read secret"):
        dyn = connect(cluster, settings)
        stub = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
        }
        live = _get(dyn, stub, settings)
        if live is None:
            return None
        return {
            k: SecretStr(base64.b64decode(v).decode()) for k, v in (live.get("data") or {}).items()
        }


@task(
    name="restart-deployments",
    cache_policy=NO_CACHE,
    task_run_name="restart-deployments-{namespace}",
)
def restart_deployments(
    names: Mapping[str, str | None], *, namespace: str, cluster: Cluster, settings: Settings
) -> list[str]:
    """Set each Deployment's pod-template restart annotation (name -> value), as
    ``kubectl rollout restart`` does; a None value removes the annotation (a roll back to
    the template before a restart).

    A JSON merge patch under its own field manager, not a server-side apply: an apply by
    the deploy flow's field manager with only this annotation would drop every other
    field that manager owns. Idempotent: the same value again is no new template.
    """
    dyn = connect(cluster, settings)
    resource = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    done: list[str] = []
    with _reporting(done):
        for name, value in names.items():
            body = {
                "spec": {"template": {"metadata": {"annotations": {RESTART_ANNOTATION: value}}}}
            }
            _call(
                lambda name=name, body=body: resource.patch(  # type: ignore[misc]
                    body=body,
                    name=name,
                    namespace=namespace,
                    content_type="application/merge-patch+json",
                    field_manager=f"{settings.field_manager}-rotation",
                    _request_timeout=settings.kube_request_timeout_seconds,
                ),
                "patch",
                f"Deployment/{namespace}/{name}",
            )
            done.append(f"Deployment/{namespace}/{name}")
    return done


@task(name="delete-objects", cache_policy=NO_CACHE)
def delete_objects(
    objects: Sequence[Manifest], *, cluster: Cluster, settings: Settings
) -> list[str]:
    """Delete each object (already gone counts as deleted). Idempotent."""
    with _logged_kube_errors("delete"):
        dyn = connect(cluster, settings)
        for obj in objects:
            _delete(dyn, obj, settings)
        return [object_key(obj) for obj in objects]
