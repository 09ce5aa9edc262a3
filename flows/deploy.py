"""Deploy to staging: render the overlay with exact digests, apply, wait, smoke-test, or roll back.

The pipeline of RFC 002 section 4 ("Deploy to staging namespace, run smoke tests,
notify Slack"):

1. resolve each app's image to a digest (a tag is refused, never deployed floating);
2. render ``deployments/overlays/<environment>`` with those digests and validate it;
3. refuse, before the first write, any object outside the target environment (a
   staging deploy that names the production namespace, a ``prod-`` secret or the
   production domain writes nothing);
4. server-side apply with one field manager;
5. watch each Deployment's rollout against a deadline; on failure (deadline,
   CrashLoopBackOff, ImagePullBackOff, failed probes) roll every changed object back to
   its previous version and fail with the reason from the workload's conditions,
   container states and events;
6. run the smoke tests as a subflow; a failed critical check also rolls back;
7. prune the apps' objects that are no longer rendered;
8. record the deployment (table artifact ``deployments-<environment>``) and notify
   through the ``rsolv-deployments`` notification block when one exists.

Parameters:
    images: app -> ``name@sha256:...``; apps left out keep the digest they run now.
    environment: ``staging`` (default). ``production`` is only deployed by the
        promote-to-production flow, which passes its approval record.
    trigger: who or what started the deploy (e.g. ``ci:push:<sha>``), kept in the record.
    committed_at: when the commit behind the trigger was made (CI passes it), kept in the
        record; the delivery-metrics flow measures lead time from it.
    rollout_deadline_seconds: how long a rollout may take before it is rolled back.
    run_smoke_tests / smoke_checks_file: the smoke tests after the rollout.
    manifests_dir: another kustomize tree laid out like ``deployments/``.
    approved_objects / approved_deletions: production only, from the promotion: the
        digest of the manifests the approver saw (others are refused before any write)
        and the deletions listed to them (nothing else is pruned).

A wrong smoke checks file is refused before the first write. A prune that fails after
a good rollout leaves the deploy standing, and its record says so; a rollback that
fails is recorded and notified as ``failed``.

Identity: staging's deploy acts as ``staging-deployer`` (``RSOLV_STAGING_KUBECONFIG``; in a
cluster, the worker pod's ServiceAccount), whose Role grants the ``staging`` namespace
only: the API server refuses anything else, whatever this flow was given. Production's
deploy acts as ``RSOLV_PRODUCTION_KUBECONFIG``. Either falls back to ``KUBECONFIG``.

Run it: ``python -m flows.deploy --image rsolv-api=ghcr.io/...@sha256:...``, or the
``deploy/deploy-staging`` deployment (CI triggers it through the Prefect API).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel

from flows.smoke_test import smoke_test
from rsolv_staging.deployments import (
    DeployFailed,
    DeploymentRecord,
    live_image,
    objects_fingerprint,
    resolve_images,
)
from rsolv_staging.environments import Cluster, Environment, EnvironmentName
from rsolv_staging.exceptions import GuardError, SmokeTestFailed, StagingError
from rsolv_staging.guards import ensure_confined
from rsolv_staging.images import ImageRef
from rsolv_staging.provisioning import Manifest, object_key
from rsolv_staging.settings import Settings, load_settings, load_topology
from rsolv_staging.smoke import checks_for
from tasks.kube import (
    ObjectChange,
    RolloutResult,
    apply_objects,
    preview_prune,
    prune_objects,
    read_objects,
    restore_objects,
    retrying,
    summarize,
    wait_for_rollout,
)
from tasks.manifests import DEPLOYMENTS, render_overlay
from tasks.notify import notify
from tasks.prefect_api import exclusive, verify_approval
from tasks.reports import publish_table

STAGING_LOCK = "staging-deploy"  # a global concurrency limit, created on first use

Result = Literal["succeeded", "rolled back", "failed"]


class DeployReport(BaseModel):
    """What the deploy did."""

    environment: str
    result: Literal["succeeded", "rolled back", "failed"]
    records: list[DeploymentRecord]
    changes: list[ObjectChange]
    pruned: list[str]
    rollback: list[str]
    reason: str = ""


@dataclass(frozen=True)
class DeployOutcome:
    """How the deploy ended, before it is recorded."""

    result: Result
    changes: list[ObjectChange]
    reason: str = ""  # why it was rolled back (or failed); empty when it succeeded
    rollback: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    note: str = ""  # what went wrong without undoing the deploy (a failed prune)

    @property
    def said(self) -> str:
        """What the record, the notification and the report say."""
        said = self.reason or self.note
        if self.result == "failed":  # half rolled back: whoever picks it up needs what was put back
            said += f". Undone before the failure: {', '.join(self.rollback) or 'nothing'}"
        return said


def _deployment_stub(app: str, namespace: str) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app, "namespace": namespace},
    }


@flow(name="deploy", log_prints=True)
def deploy(
    images: dict[str, str],
    environment: Literal["staging", "production"] = "staging",
    trigger: str = "manual",
    committed_at: datetime | None = None,
    rollout_deadline_seconds: float = 300.0,
    run_smoke_tests: bool = True,
    smoke_checks_file: str | None = None,
    approval_id: str | None = None,
    environments_file: str | None = None,
    manifests_dir: str | None = None,
    approved_objects: str | None = None,
    approved_deletions: list[str] | None = None,
) -> DeployReport:
    """Deploy exact image digests to an environment, or leave it as it was."""
    started = datetime.now(UTC)
    # The environment's own identity: for staging, one RBAC confines to staging.
    settings = load_settings().for_environment(environment)
    topology = load_topology(Path(environments_file) if environments_file else None)
    target = topology.environment(environment)
    other = topology.production if environment == "staging" else topology.staging
    if environment == "production":
        guard_production(approval_id, approved_objects, approved_deletions)
    if run_smoke_tests:
        # A missing or wrong checks file is found now, not after the rollout (which it
        # would roll back for nothing).
        checks_for(topology, environment, smoke_checks_file)

    live_apps, refs = resolve_digests(images, target, settings)
    root = Path(manifests_dir) if manifests_dir else DEPLOYMENTS
    objects = render_overlay(environment, images=refs, root=root)
    guard_objects(objects, target, other, approved_objects)

    with deploy_lock(environment, rollout_deadline_seconds):
        cluster = target.cluster
        before = retrying(read_objects, settings)(objects, cluster=cluster, settings=settings)
        try:
            changes = apply_release(objects, before, cluster=cluster, settings=settings)
            reason = watch_rollouts(target, rollout_deadline_seconds, settings)
            if not reason and run_smoke_tests:
                reason = smoke_test_release(environment, refs, smoke_checks_file, environments_file)
        except Exception as exc:
            # Anything else (an apply failing on object N, a crashed watch or smoke run):
            # we cannot know what was written, so every object goes back to its snapshot.
            reason = f"{type(exc).__name__}: {exc}"
            changes = [ObjectChange(key=object_key(o), action="change") for o in objects]

        if reason:
            result, rollback, reason = roll_back(
                target, objects, before, changes, reason, rollout_deadline_seconds, settings
            )
            outcome = DeployOutcome(result, changes, reason=reason, rollback=rollback)
        else:
            pruned, note = prune(target, objects, approved_deletions, settings)
            outcome = DeployOutcome("succeeded", changes, pruned=pruned, note=note)
        report = record_deploy(
            environment, trigger, started, refs, live_apps, outcome, committed_at=committed_at
        )
        if outcome.reason:
            undone = ", ".join(outcome.rollback) or "nothing"
            raise DeployFailed(
                f"deploy to {environment} {outcome.result}: {outcome.reason}. Undone: {undone}"
            )
        get_run_logger().info("deployed to %s: %s", environment, _summary(report.records, refs))
        return report


def guard_production(
    approval_id: str | None, approved_objects: str | None, approved_deletions: list[str] | None
) -> None:
    """Production is deployed only by an approved promotion, as its subflow.

    Raises:
        GuardError: no approval, an approval this run is not the subflow of, or no
            approved manifests and deletions to hold the deploy to.
    """
    if not approval_id:
        raise GuardError(
            "production is deployed only by the promote-to-production flow, behind an "
            "approval; nothing was applied"
        )
    current = get_run_context().flow_run  # type: ignore[union-attr]
    parent = current.parent_task_run_id if current else None
    verify_approval(approval_id, parent_task_run_id=str(parent) if parent else None)
    if approved_objects is None or approved_deletions is None:
        raise GuardError(
            "production is deployed only with the manifests and deletions its approver "
            "saw; nothing was applied"
        )


def resolve_digests(
    images: dict[str, str], target: Environment, settings: Settings
) -> tuple[dict[str, dict[str, Any] | None], dict[str, ImageRef]]:
    """The apps' live Deployments, and the digest each app will run."""
    stubs = {app: _deployment_stub(app, target.namespace) for app in target.apps}
    running = retrying(read_objects, settings)(
        list(stubs.values()), cluster=target.cluster, settings=settings
    )
    live_apps = {app: running[object_key(stub)] for app, stub in stubs.items()}
    return live_apps, resolve_images(images, target.apps, live_apps)


def guard_objects(
    objects: list[Manifest], target: Environment, other: Environment, approved: str | None
) -> None:
    """Refuse, before any write, objects outside the target or not the approved ones.

    Raises:
        GuardError: an object belongs to the other environment, or the manifests are not
            the ones the approver saw.
    """
    ensure_confined(objects, target, other)
    if approved is not None and objects_fingerprint(objects) != approved:
        raise GuardError(
            f"the manifests rendered for {target.name} are not the ones approved (the "
            "manifests or the environment model changed since); nothing was applied"
        )


def deploy_lock(environment: str, rollout_deadline_seconds: float) -> AbstractContextManager[None]:
    """One deploy to an environment at a time.

    Production's lock is the promotion's; staging's is taken here (a flow-level lock, not
    the deployment's limit, whose lease loss would cancel a deploy halfway through its
    apply, with no rollback).
    """
    if environment != "staging":
        return nullcontext()
    return exclusive(
        STAGING_LOCK, wait_seconds=rollout_deadline_seconds * 4, holder="deploy to staging"
    )


def apply_release(
    objects: list[Manifest],
    before: Mapping[str, dict[str, Any] | None],
    *,
    cluster: Cluster,
    settings: Settings,
) -> list[ObjectChange]:
    """Server-side apply the objects; what each one's apply changed."""
    applied = retrying(apply_objects, settings)(objects, cluster=cluster, settings=settings)
    return summarize(objects, before, applied)


def watch_rollouts(target: Environment, deadline_seconds: float, settings: Settings) -> str:
    """Watch every app's rollout at once; why those that failed failed (empty: all ready)."""
    rollouts = [
        wait_for_rollout.submit(
            app,
            namespace=target.namespace,
            deadline_seconds=deadline_seconds,
            cluster=target.cluster,
            settings=settings,
        )
        for app in target.apps
    ]
    failed = [r for r in (f.result() for f in rollouts) if not r.ready]
    return "; ".join(_describe(r) for r in failed)


def smoke_test_release(
    environment: EnvironmentName,
    refs: Mapping[str, ImageRef],
    checks_file: str | None,
    environments_file: str | None,
) -> str:
    """Run the smoke tests as a subflow; why they failed (empty: they passed)."""
    try:
        # smoke_test is an async flow: called from this sync flow it returns a
        # coroutine that would never run unless driven to completion here.
        # The digests go with the run: promotion trusts a pass only for them.
        tested = {app: str(ref) for app, ref in refs.items()}
        run_coro_as_sync(
            smoke_test(
                environment=environment,
                checks_file=checks_file,
                images=tested,
                environments_file=environments_file,
            )
        )
    except SmokeTestFailed as exc:
        return f"smoke tests failed after the rollout: {exc}"
    return ""


def roll_back(
    target: Environment,
    objects: list[Manifest],
    before: Mapping[str, dict[str, Any] | None],
    changes: list[ObjectChange],
    reason: str,
    deadline_seconds: float,
    settings: Settings,
) -> tuple[Result, list[str], str]:
    """Put every changed object back as it was and wait for the restored rollouts.

    Returns:
        ``"rolled back"`` or ``"failed"``, what was put back, and the reason extended
        with why the rollback did not succeed, if it did not.
    """
    get_run_logger().error("deploy to %s failed, rolling back: %s", target.name, reason)
    touched = [c.key for c in changes if c.action != "unchanged"]
    by_key = {object_key(o): o for o in objects}
    rollback: list[str] = []
    try:
        try:
            rollback = retrying(restore_objects, settings)(
                before, keys=touched, stubs=by_key, cluster=target.cluster, settings=settings
            )
        except StagingError as exc:
            rollback = list(exc.done)  # what its last attempt had put back
            raise
        keys = {app: object_key(_deployment_stub(app, target.namespace)) for app in target.apps}
        restored = [
            wait_for_rollout(
                app,
                namespace=target.namespace,
                deadline_seconds=deadline_seconds,
                cluster=target.cluster,
                settings=settings,
            )
            for app, key in keys.items()
            if before.get(key) is not None and key in touched
        ]
        if all(r.ready for r in restored):
            return "rolled back", rollback, reason
        reason += "; the rollback did not become ready either: " + "; ".join(
            _describe(r) for r in restored if not r.ready
        )
    except Exception as exc:
        # Still recorded and notified: the environment is half rolled back, and the
        # message lists what was put back before the failure.
        reason += f"; the rollback itself failed ({type(exc).__name__}: {exc})"
    return "failed", rollback, reason


def prune(
    target: Environment,
    objects: list[Manifest],
    approved_deletions: list[str] | None,
    settings: Settings,
) -> tuple[list[str], str]:
    """Delete the apps' objects no longer rendered; what was deleted, and a note if it failed."""
    keep = [object_key(o) for o in objects]
    try:
        # The deletions are fixed before the first attempt (for production, by its
        # approver), so a retried prune still reports what its first attempt deleted.
        deletions = approved_deletions
        if deletions is None:
            deletions = retrying(preview_prune, settings)(
                keep, namespace=target.namespace, cluster=target.cluster, settings=settings
            )
        pruned = retrying(prune_objects, settings)(
            keep,
            namespace=target.namespace,
            cluster=target.cluster,
            settings=settings,
            only=deletions,
        )
    except Exception as exc:
        # The new digests are live and tested: the deploy stands, and says so.
        pruned = list(exc.done) if isinstance(exc, StagingError) else []
        note = f"pruning failed, the next deploy prunes again ({type(exc).__name__}: {exc})"
        get_run_logger().warning("deploy to %s: %s", target.name, note)
        return pruned, note
    return pruned, ""


def record_deploy(
    environment: str,
    trigger: str,
    started: datetime,
    refs: Mapping[str, ImageRef],
    live_apps: Mapping[str, dict[str, Any] | None],
    outcome: DeployOutcome,
    *,
    committed_at: datetime | None = None,
) -> DeployReport:
    """Record the deploy (table artifact ``deployments-<environment>``) and notify."""
    finished = datetime.now(UTC)
    said = outcome.said
    records = [
        DeploymentRecord(
            environment=environment,
            app=app,
            digest=str(refs[app]),
            previous_digest=live_image(live_apps[app]),
            trigger=trigger,
            committed_at=committed_at,
            started=started,
            finished=finished,
            result=outcome.result,
            reason=said,
        )
        for app in live_apps  # one per app of the environment
    ]
    publish_table(
        f"deployments-{environment}",
        [r.row() for r in records],
        description=f"Deployment to {environment}: {outcome.result}",
    )
    summary = _summary(records, refs)
    notify(f"{environment}: deploy {outcome.result}", f"{summary} ({trigger}). {said}".strip())
    return DeployReport(
        environment=environment,
        result=outcome.result,
        records=records,
        changes=outcome.changes,
        pruned=outcome.pruned,
        rollback=outcome.rollback,
        reason=said,
    )


def _summary(records: list[DeploymentRecord], refs: Mapping[str, ImageRef]) -> str:
    return ", ".join(f"{r.app} {refs[r.app].short}" for r in records)


def _describe(result: RolloutResult) -> str:
    return f"{result.name}: {result.reason}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Deploy RSOLV to staging (RFC 002).")
    parser.add_argument(
        "--image", action="append", default=[], metavar="APP=NAME@sha256:...", help="repeatable"
    )
    parser.add_argument("--trigger", default="manual")
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--no-smoke-tests", action="store_true")
    parser.add_argument("--smoke-checks-file")
    args = parser.parse_args(argv)
    images = dict(item.split("=", 1) for item in args.image)
    report = deploy(
        images=images,
        trigger=args.trigger,
        rollout_deadline_seconds=args.deadline,
        run_smoke_tests=not args.no_smoke_tests,
        smoke_checks_file=args.smoke_checks_file,
    )
    print(f"{report.result}: " + ", ".join(f"{r.app}={r.digest}" for r in report.records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
