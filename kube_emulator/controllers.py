"""The emulator's stand-in for kube-controller-manager and the kubelet.

After a write that gives a Deployment, StatefulSet or Job a new generation, a controller
writes the status a real cluster would reach, as chosen by a behaviour:

- ``ready``: every replica becomes ready (a Job completes);
- ``never-ready``: the pods never become ready (waiting, default reason CrashLoopBackOff),
  the rollout keeps "progressing";
- ``failing``: like never-ready (default reason ImagePullBackOff), and the Deployment's
  progress deadline is exceeded (a Job fails).

Deployments also get one ReplicaSet per pod template revision, as the real controller keeps
them, so clients (and ``kubectl rollout undo``) can roll back to a previous template.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .kinds import EVENT, POD, REPLICA_SET, SERVICE_ACCOUNT, Kind
from .store import ApiError, Obj, Store, now

Mode = Literal["ready", "never-ready", "failing"]
MODES: tuple[Mode, ...] = ("ready", "never-ready", "failing")
REVISION = "deployment.kubernetes.io/revision"
_DEFAULT_REASON = {"never-ready": "CrashLoopBackOff", "failing": "ImagePullBackOff"}


@dataclass(frozen=True)
class Behaviour:
    mode: Mode = "ready"
    reason: str | None = None  # the pods' waiting reason when not ready
    delay: float = 0.0  # seconds before the status is written, to let tests see a transition
    namespace: str | None = None  # the workloads it applies to (None: any)
    name: str | None = None
    image: str | None = None  # any container image of the pod template equal to this

    def applies(self, namespace: str, name: str, images: list[str]) -> bool:
        return (
            self.namespace in (None, namespace)
            and self.name in (None, name)
            and (self.image is None or self.image in images)
        )

    @property
    def specificity(self) -> int:
        return sum(f is not None for f in (self.namespace, self.name, self.image))


def _normalized(value: Any) -> Any:
    """Without nulls and empty maps or lists: clients that send typed objects (kubectl
    rollout undo) add ``creationTimestamp: null`` and ``resources: {}`` to a template."""
    if isinstance(value, dict):
        value = {k: _normalized(v) for k, v in value.items()}
        return {k: v for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def template_hash(template: Any) -> str:
    """A stable 10-character hash of a pod template, in the alphabet Kubernetes uses."""
    canonical = json.dumps(_normalized(template), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    number, alphabet, out = int.from_bytes(digest[:8], "big"), "bcdfghjklmnpqrstvwxz2456789", ""
    for _ in range(10):
        number, digit = divmod(number, len(alphabet))
        out += alphabet[digit]
    return out


# What a Deployment reports per behaviour: (type, status, reason, message).
_AVAILABLE = ("Available", True, "MinimumReplicasAvailable", "Deployment has minimum availability.")
_UNAVAILABLE = (
    "Available",
    False,
    "MinimumReplicasUnavailable",
    "Deployment does not have minimum availability.",
)
_DEPLOYMENT_CONDITIONS: dict[Mode, list[tuple[str, bool, str, str]]] = {
    "ready": [
        _AVAILABLE,
        (
            "Progressing",
            True,
            "NewReplicaSetAvailable",
            'ReplicaSet "{rs}" has successfully progressed.',
        ),
    ],
    "never-ready": [
        _UNAVAILABLE,
        ("Progressing", True, "ReplicaSetUpdated", 'ReplicaSet "{rs}" is progressing.'),
    ],
    "failing": [
        _UNAVAILABLE,
        (
            "Progressing",
            False,
            "ProgressDeadlineExceeded",
            'ReplicaSet "{rs}" has timed out progressing.',
        ),
    ],
}


def _condition(kind: str, ok: bool, reason: str, message: str, **fill: str) -> Obj:
    stamp = now()
    message = message.format(**fill)
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastUpdateTime": stamp,
        "lastTransitionTime": stamp,
    }


def _images(obj: Obj) -> list[str]:
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return [c.get("image", "") for c in spec.get("containers") or []]


def _owner(obj: Obj) -> Obj:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class Controllers:
    """Reacts to workload writes in the store; behaviours are settable at any time."""

    def __init__(self, store: Store, default: Mode = "ready") -> None:
        self.store = store
        self._rules: list[Behaviour] = [Behaviour(mode=default)]
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        store.on_change = self.on_change

    def set_behaviour(self, behaviour: Behaviour) -> None:
        if behaviour.mode not in MODES:
            raise ValueError(f"unknown workload behaviour {behaviour.mode!r}; one of {MODES}")
        with self._lock:
            key = (behaviour.namespace, behaviour.name, behaviour.image)
            self._rules = [r for r in self._rules if (r.namespace, r.name, r.image) != key]
            self._rules.append(behaviour)

    def behaviour_for(self, obj: Obj) -> Behaviour:
        """The most specific matching rule; among equals, the one set last."""
        meta = obj["metadata"]
        with self._lock:
            matching = [
                r
                for r in self._rules
                if r.applies(meta.get("namespace", ""), meta["name"], _images(obj))
            ]
        return max(reversed(matching), key=lambda r: r.specificity)

    def stop(self) -> None:
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()

    def on_change(self, kind: Kind, old: Obj | None, new: Obj) -> None:
        if kind.kind == "Namespace" and old is None:
            # The service account controller gives every namespace its "default" account.
            self.store.create(
                SERVICE_ACCOUNT,
                {"metadata": {"name": "default", "namespace": new["metadata"]["name"]}},
            )
        if kind.kind not in ("Deployment", "StatefulSet", "Job"):
            return
        generation = new["metadata"]["generation"]
        if old is not None and old["metadata"]["generation"] == generation:
            return  # metadata or status only: nothing for a controller to roll out
        behaviour = self.behaviour_for(new)
        args = (kind, new["metadata"]["namespace"], new["metadata"]["name"], generation)
        if behaviour.delay <= 0:
            self.reconcile(*args)
            return
        timer = threading.Timer(behaviour.delay, self._reconcile_later, args)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    def _reconcile_later(self, kind: Kind, namespace: str, name: str, generation: int) -> None:
        with self._lock:
            self._timers = {t for t in self._timers if t is not threading.current_thread()}
        self.reconcile(kind, namespace, name, generation)

    def reconcile(self, kind: Kind, namespace: str, name: str, generation: int) -> None:
        with self.store.lock:
            obj = self.store.get(kind, namespace, name)
            if obj is None or obj["metadata"]["generation"] != generation:
                return  # deleted or superseded meanwhile: the newer write has its own turn
            behaviour = self.behaviour_for(obj)
            reason = behaviour.reason or _DEFAULT_REASON.get(behaviour.mode, "")
            if kind.kind == "Deployment":
                self._deployment(kind, obj, behaviour.mode, reason)
            elif kind.kind == "StatefulSet":
                self._stateful_set(kind, obj, behaviour.mode, reason)
            else:
                self._job(kind, obj, behaviour.mode, reason)

    # -- per kind --

    def _deployment(self, kind: Kind, dep: Obj, mode: Mode, reason: str) -> None:
        meta, spec = dep["metadata"], dep["spec"]
        ns, replicas = meta["namespace"], spec.get("replicas", 1)
        pod_hash = template_hash(spec.get("template") or {})
        owned = [
            rs
            for rs in self.store.list(REPLICA_SET, ns)[0]
            if any(o.get("uid") == meta["uid"] for o in rs["metadata"].get("ownerReferences") or [])
        ]
        revisions = {
            rs["metadata"]["name"]: int(rs["metadata"]["annotations"].get(REVISION, 0))
            for rs in owned
        }
        latest = max(revisions.values(), default=0)
        current = next(
            (rs for rs in owned if rs["metadata"]["labels"].get("pod-template-hash") == pod_hash),
            None,
        )
        # A template seen before (a rollback) reuses its ReplicaSet under a new revision.
        revision = str(
            latest if current and revisions[current["metadata"]["name"]] == latest else latest + 1
        )
        for rs in owned:  # old revisions scale to zero, the current one to spec.replicas
            rs_meta = rs["metadata"]
            if rs is current and rs_meta["annotations"].get(REVISION) != revision:
                history = rs_meta["annotations"].get(REVISION, "")
                rs_meta["annotations"].update({REVISION: revision, f"{REVISION}-history": history})
            rs["spec"]["replicas"] = replicas if rs is current else 0
            updated, _ = self.store.update(REPLICA_SET, ns, rs_meta["name"], _replace_with(rs))
            current = updated if rs is current else current
            self._delete_pods(ns, rs_meta["uid"])
        if current is None:
            template = copy.deepcopy(spec.get("template") or {})
            labels = {
                **(template.get("metadata") or {}).get("labels", {}),
                "pod-template-hash": pod_hash,
            }
            template.setdefault("metadata", {})["labels"] = labels
            selector = {**spec["selector"].get("matchLabels", {}), "pod-template-hash": pod_hash}
            current = self.store.create(
                REPLICA_SET,
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {
                        "name": f"{meta['name']}-{pod_hash}",
                        "namespace": ns,
                        "labels": labels,
                        "ownerReferences": [_owner(dep)],
                        "annotations": {REVISION: revision},
                    },
                    "spec": {
                        "replicas": replicas,
                        "selector": {"matchLabels": selector},
                        "template": template,
                    },
                },
            )
        revision = current["metadata"]["annotations"][REVISION]
        self.store.update(kind, ns, meta["name"], lambda d: _annotate(d, REVISION, revision))
        rs_name = current["metadata"]["name"]
        refused = self._pods(
            current, mode, reason, [f"{rs_name}-{uuid.uuid4().hex[:5]}" for _ in range(replicas)]
        )
        self._rollout_status(kind, dep, current, mode, refused)

    def _rollout_status(self, kind: Kind, dep: Obj, rs: Obj, mode: Mode, refused: str) -> None:
        """The status of a Deployment and its current ReplicaSet once its pods are made."""
        meta, ns, rs_name = dep["metadata"], dep["metadata"]["namespace"], rs["metadata"]["name"]
        replicas = dep["spec"].get("replicas", 1)
        created = 0 if refused else replicas
        ready = created if mode == "ready" else 0
        rs_status: Obj = {
            "replicas": created,
            "fullyLabeledReplicas": created,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs["metadata"]["generation"],
        }
        # Pods that admission refuses: the ReplicaSet reports ReplicaFailure and the
        # Deployment copies it, while the rollout keeps "progressing" until its deadline.
        failure = [_condition("ReplicaFailure", True, "FailedCreate", "{m}", m=refused)]
        if refused:
            rs_status["conditions"] = failure
        self.store.set_status(REPLICA_SET, ns, rs_name, rs_status)
        shown: Mode = "never-ready" if refused and mode == "ready" else mode
        conditions = [_condition(*c, rs=rs_name) for c in _DEPLOYMENT_CONDITIONS[shown]]
        status = {
            "observedGeneration": meta["generation"],
            "replicas": created,
            "updatedReplicas": created,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": conditions + (failure if refused else []),
        }
        if replicas - ready:
            status["unavailableReplicas"] = replicas - ready
        self.store.set_status(kind, ns, meta["name"], status)

    def _stateful_set(self, kind: Kind, sts: Obj, mode: Mode, reason: str) -> None:
        meta, replicas = sts["metadata"], sts["spec"].get("replicas", 1)
        revision = f"{meta['name']}-{template_hash(sts['spec'].get('template') or {})}"
        refused = self._pods(
            sts,
            mode,
            reason,
            [f"{meta['name']}-{i}" for i in range(replicas)],
            {"controller-revision-hash": revision},
        )
        created = 0 if refused else replicas
        ready = created if mode == "ready" else 0
        status = {
            "observedGeneration": meta["generation"],
            "replicas": created,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": created,
            "updatedReplicas": created,
            "currentRevision": revision,
            "updateRevision": revision,
            "collisionCount": 0,
        }
        self.store.set_status(kind, meta["namespace"], meta["name"], status)

    def _job(self, kind: Kind, job: Obj, mode: Mode, reason: str) -> None:
        meta, started = job["metadata"], now()
        labels = {
            "job-name": meta["name"],
            "batch.kubernetes.io/job-name": meta["name"],
            "controller-uid": meta["uid"],
        }
        refused = self._pods(job, mode, reason, [f"{meta['name']}-{uuid.uuid4().hex[:5]}"], labels)
        status: Obj = {"startTime": started, "active": 0, "ready": 0}
        if refused:
            pass  # no pod: the Job neither runs nor fails (its FailedCreate event says why)
        elif mode == "ready":
            done = "Reached expected number of succeeded pods"
            types = ("SuccessCriteriaMet", "Complete")
            conditions = [_condition(t, True, "CompletionsReached", done) for t in types]
            status.update(succeeded=1, completionTime=started, conditions=conditions)
        elif mode == "failing":
            limit = "Job has reached the specified backoff limit"
            types = ("FailureTarget", "Failed")
            conditions = [_condition(t, True, "BackoffLimitExceeded", limit) for t in types]
            status.update(failed=job["spec"].get("backoffLimit", 6) + 1, conditions=conditions)
        else:
            status["active"] = 1
        self.store.set_status(kind, meta["namespace"], meta["name"], status)

    # -- pods and events, as the kubelet would report them --

    def _delete_pods(self, namespace: str, owner_uid: str) -> None:
        for pod in self.store.list(POD, namespace)[0]:
            if any(o.get("uid") == owner_uid for o in pod["metadata"].get("ownerReferences", [])):
                self.store.delete(POD, namespace, pod["metadata"]["name"])

    def _pods(
        self,
        owner: Obj,
        mode: Mode,
        reason: str,
        names: list[str],
        labels: dict[str, str] | None = None,
    ) -> str:
        """Create the owner's pods; the refusal message of the first one admission refuses
        (the rest would be refused alike), "" when every pod was created."""
        ns = owner["metadata"]["namespace"]
        self._delete_pods(ns, owner["metadata"]["uid"])
        template = owner["spec"].get("template") or {}
        pod_labels = {**(template.get("metadata") or {}).get("labels", {}), **(labels or {})}
        containers = (template.get("spec") or {}).get("containers") or []
        ready, started = mode == "ready", now()
        for name in names:
            statuses = []
            for c in containers:
                image = c.get("image", "")
                message = (
                    f'Back-off pulling image "{image}"'
                    if "Image" in reason
                    else f"back-off restarting failed container {c.get('name')} in pod {name}"
                    f' (image "{image}")'
                )
                state = (
                    {"running": {"startedAt": started}}
                    if ready
                    else {"waiting": {"reason": reason, "message": message}}
                )
                statuses.append(
                    {
                        "name": c.get("name"),
                        "image": image,
                        "imageID": "",
                        "ready": ready,
                        "started": ready,
                        "restartCount": 0 if ready else 3,
                        "state": state,
                    }
                )
            try:
                pod = self.store.create(
                    POD,
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": name,
                            "namespace": ns,
                            "labels": pod_labels,
                            "ownerReferences": [_owner(owner)],
                        },
                        "spec": copy.deepcopy(template.get("spec") or {}),
                        "status": {
                            "phase": "Running" if ready or "Crash" in reason else "Pending",
                            "conditions": [{"type": "Ready", "status": str(ready)}],
                            "containerStatuses": statuses,
                            "startTime": started,
                        },
                    },
                    keep_status=True,
                )
            except ApiError as err:
                if err.code != 403:
                    raise
                self._failed_create(owner, name, err.message)
                return err.message
            for status in [] if ready else statuses:
                self._event(pod, status["name"], status["state"]["waiting"]["message"])
        return ""

    def _failed_create(self, owner: Obj, pod: str, message: str) -> None:
        """The FailedCreate event a workload controller records when a pod is refused."""
        kind, name = owner["kind"], owner["metadata"]["name"]
        if kind == "StatefulSet":
            text = f"create Pod {pod} in StatefulSet {name} failed error: {message}"
        else:
            text = f"Error creating: {message}"
        component = {"StatefulSet": "statefulset-controller", "Job": "job-controller"}
        self._record(owner, "FailedCreate", text, component.get(kind, "replicaset-controller"))

    def _event(self, pod: Obj, container: str, message: str) -> None:
        self._record(pod, "BackOff", message, "kubelet", f"spec.containers{{{container}}}")

    def _record(
        self, about: Obj, reason: str, message: str, component: str, field_path: str = ""
    ) -> None:
        meta, stamp = about["metadata"], now()
        involved = {
            "apiVersion": about.get("apiVersion", "v1"),
            "kind": about.get("kind", "Pod"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        }
        if field_path:
            involved["fieldPath"] = field_path
        self.store.create(
            EVENT,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                    "namespace": meta["namespace"],
                },
                "involvedObject": involved,
                "reason": reason,
                "message": message,
                "type": "Warning",
                "count": 1,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "source": {"component": component},
                "reportingComponent": component,
            },
        )


def _replace_with(new: Obj) -> Callable[[Obj], Obj]:
    return lambda _old: new


def _annotate(obj: Obj, key: str, value: str) -> Obj:
    obj["metadata"].setdefault("annotations", {})[key] = value
    return obj
