"""Promote to production: the exact digests staging runs, behind a human approval.

RFC 002's "promote-to-prod" job (approval gate, deploy to production, health checks):

1. refuse inside a freeze window (``data/freeze-windows.yaml``, or the operator's
   ``RSOLV_FREEZE_WINDOWS_FILE``) unless an override reason is given, which is
   recorded; checked again after the decision, in case a freeze began meanwhile;
2. check that staging runs exactly the digests being promoted, rolled out and ready,
   and that staging's smoke tests passed for exactly these digests (the deploy flow's
   smoke run records them; a newer failed run, or one that tested other digests, refuses);
3. render the production overlay with the same digests (never rebuilt, never
   re-tagged) and ask the API server what would change (server-side dry run);
4. pause for a decision (Prefect run input: approve/reject, approver, reason). The form
   shows the digests, the staging smoke result and the production diff. ``decision``
   has no default, so an empty resume is refused; ``approver`` is restricted to the
   allowlist minus the requester, so nobody approves their own promotion;
5. reject: production untouched, the run ends in state ``Rejected``, the requester is
   notified. Timeout: production untouched, the run fails (``approval timed out``);
6. approve: the deploy flow deploys the digests to production (rollout watch, production
   smoke checks, automatic rollback), and the outcome is notified;
7. every decision is an audit record: table artifact ``promotion-audit`` (who, when,
   why, digests, diff, outcome) and a ``rsolv.promotion.*`` event.

Why pause and not suspend: ``pause_flow_run`` keeps this process waiting (a worker slot
for as long as the gate is open); ``suspend_flow_run`` would free it but re-runs the flow
from the top on resume and needs persisted results for every earlier step. Approvals
here are expected within hours, so the gate pauses, with ``approval_timeout_seconds``
(default 24 h) as the bound; past it the run fails safe.

Parameters: ``requester`` and ``change_ref`` (required), ``images`` (default: what
staging runs now), ``approval_timeout_seconds``, ``freeze_override_reason``,
``rollout_deadline_seconds``, ``smoke_checks_file`` (production checks).

Needs: the approver allowlist in the Prefect Variable ``promotion_approvers`` (JSON
list), or ``RSOLV_PROMOTION_APPROVERS``. Resume it from the Prefect UI (the run's
"Resume" button shows the form), from the CLI (``rsolv-staging approve RUN_ID``), or
with ``POST /api/flow_runs/{id}/resume``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.states import Completed
from pydantic import BaseModel

from flows.deploy import DeployReport, deploy
from rsolv_staging.deployments import DeployFailed, objects_fingerprint, resolve_images
from rsolv_staging.environments import Environment, Topology
from rsolv_staging.exceptions import ConfigurationError, GuardError, LockTimeout, StagingError
from rsolv_staging.guards import ensure_confined
from rsolv_staging.images import ImageRef
from rsolv_staging.promotion import (
    ApprovalDecision,
    AuditRecord,
    FreezeWindow,
    approval_description,
    approval_form,
    check_freeze,
    eligible_approvers,
    identity,
    load_freeze_windows,
)
from rsolv_staging.provisioning import Manifest, object_key
from rsolv_staging.reports import change_report
from rsolv_staging.settings import REPO_ROOT, Settings, load_settings, load_topology
from rsolv_staging.smoke import checks_for
from tasks.kube import (
    diff_objects,
    preview_apply,
    preview_prune,
    read_objects,
    retrying,
    rollout_verdict,
)
from tasks.manifests import DEPLOYMENTS, render_overlay
from tasks.notify import notify
from tasks.prefect_api import (
    exclusive,
    read_approvers,
    read_last_smoke_run,
    record_audit,
)

PRODUCTION_LOCK = "production-deploy"
DEFAULT_FREEZE_WINDOWS = REPO_ROOT / "data" / "freeze-windows.yaml"  # or RSOLV_FREEZE_WINDOWS_FILE


class PromotionRefused(StagingError):
    """Staging is not in a state that may be promoted; nothing was asked or changed."""


class ApprovalTimedOut(StagingError):
    """Nobody decided in time; production was not touched."""


class PromotionReport(BaseModel):
    record: AuditRecord
    deploy: DeployReport | None = None


@dataclass(frozen=True)
class PromotionRequest:
    """The flow's parameters, as every step after the first needs them."""

    run_id: str
    requested_at: datetime
    requester: str
    change_ref: str
    approval_timeout_seconds: int
    freeze_override_reason: str | None
    rollout_deadline_seconds: float
    smoke_checks_file: str | None
    environments_file: str | None
    manifests_dir: str | None

    @property
    def overrides(self) -> dict[str, str]:
        """The file parameters given, recorded and shown to the approver."""
        return {
            k: v
            for k, v in {
                "smoke_checks_file": self.smoke_checks_file,
                "environments_file": self.environments_file,
                "manifests_dir": self.manifests_dir,
            }.items()
            if v
        }


@dataclass(frozen=True)
class StagingState:
    """What staging runs, verified: the digests to promote and its smoke result."""

    refs: dict[str, ImageRef]
    smoke_summary: str

    @property
    def promoted(self) -> dict[str, str]:
        return {app: str(ref) for app, ref in self.refs.items()}


@dataclass(frozen=True)
class ProductionChange:
    """What the approver is shown, and what the deploy must still match afterwards."""

    objects: list[Manifest]
    before: dict[str, dict[str, Any] | None]
    deletions: list[str]
    diff: str
    record: AuditRecord  # filled in as the promotion goes; audited on every exit


@flow(name="promote-to-production", log_prints=True)
def promote_to_production(
    requester: str,
    change_ref: str,
    images: dict[str, str] | None = None,
    approval_timeout_seconds: int = 86_400,
    freeze_override_reason: str | None = None,
    rollout_deadline_seconds: float = 300.0,
    smoke_checks_file: str | None = None,
    environments_file: str | None = None,
    manifests_dir: str | None = None,
) -> PromotionReport | State:
    """Promote staging's digests to production after a human approves."""
    request = PromotionRequest(
        requested_at=datetime.now(UTC),
        run_id=str(get_run_context().flow_run.id),  # type: ignore[union-attr]
        requester=identity(requester, what="requester") if requester.strip() else "",
        change_ref=change_ref,
        approval_timeout_seconds=approval_timeout_seconds,
        freeze_override_reason=freeze_override_reason,
        rollout_deadline_seconds=rollout_deadline_seconds,
        smoke_checks_file=smoke_checks_file,
        environments_file=environments_file,
        manifests_dir=manifests_dir,
    )
    if not requester.strip() or not change_ref.strip():
        raise ConfigurationError("requester and change_ref are required")
    if approval_timeout_seconds < 1:
        raise ConfigurationError("approval_timeout_seconds must be at least 1")
    # Production's identity for every cluster call (it reads staging, never writes it).
    settings = load_settings().for_environment("production")
    topology = load_topology(Path(environments_file) if environments_file else None)
    # Production's smoke checks are read now: a wrong file found only after the approval
    # would roll production out and back for nothing.
    checks_for(topology, "production", smoke_checks_file)

    # 1. Freeze windows and who may decide: refused before anything is read or asked.
    freeze = check_freeze_windows(settings, request.requested_at, freeze_override_reason)
    approvers = eligible_approvers(read_approvers(), request.requester)
    # 2. Staging runs exactly these digests, ready, and its smoke tests passed.
    verified = verify_staging(settings, topology.staging, images)
    # 3. What would change in production.
    change = plan_production_change(request, settings, topology, verified, freeze)
    # 4. The gate.
    decision = wait_for_approval(request, settings, change, verified, freeze, approvers)
    # 5. Rejected.
    if decision.decision == "reject":
        return reject(request, change.record, decision)
    # 6. Approved: deploy the same digests to production, unless a freeze began while
    #    the gate was open.
    recheck_freeze_windows(request, settings, change.record, freeze)
    return deploy_approved(request, settings, topology.production, change, decision.approver)


def check_freeze_windows(
    settings: Settings, now: datetime, override_reason: str | None
) -> FreezeWindow | None:
    """The freeze window an override lets this promotion go ahead in, if any.

    The calendar is the operator's (a setting), never the requester's (a parameter).

    Raises:
        GuardError: inside a window with no override reason.
    """
    windows = load_freeze_windows(settings.freeze_windows_file or DEFAULT_FREEZE_WINDOWS)
    return check_freeze(windows, now, override_reason=override_reason)


def verify_staging(
    settings: Settings, staging: Environment, images: dict[str, str] | None
) -> StagingState:
    """Staging runs exactly the digests asked for, rolled out and ready, and smoke-tested.

    Raises:
        PromotionRefused: an app is not ready, other digests were asked for, or staging's
            last smoke run did not pass for exactly these digests.
    """
    stubs: list[dict[str, Any]] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": a, "namespace": staging.namespace},
        }
        for a in staging.apps
    ]
    live = retrying(read_objects, settings)(stubs, cluster=staging.cluster, settings=settings)
    staging_apps = {s["metadata"]["name"]: live[object_key(s)] for s in stubs}
    for app, dep in staging_apps.items():
        if dep is None or rollout_verdict(dep)[0] is not True:
            raise PromotionRefused(f"staging's {app} is not deployed and ready; deploy it first")
    current = resolve_images({}, staging.apps, staging_apps)
    refs = resolve_images(images or {}, staging.apps, staging_apps)
    if refs != current:
        differing = [a for a in staging.apps if refs[a] != current[a]]
        raise PromotionRefused(
            "only what staging runs can be promoted: "
            + ", ".join(f"{a} staging runs {current[a]}, asked {refs[a]}" for a in differing)
        )
    promoted = {app: str(ref) for app, ref in refs.items()}
    smoke_passed, smoke_summary = read_last_smoke_run(staging.name, promoted)
    if not smoke_passed:
        raise PromotionRefused(
            f"staging's smoke tests have not passed for these digests ({smoke_summary}); "
            "deploy them to staging with smoke tests first"
        )
    return StagingState(refs=refs, smoke_summary=smoke_summary)


def plan_production_change(
    request: PromotionRequest,
    settings: Settings,
    topology: Topology,
    verified: StagingState,
    freeze: FreezeWindow | None,
) -> ProductionChange:
    """Render production with staging's digests and ask the API server what would change.

    Nothing is written: a server-side dry run of the apply, and a preview of the prune.
    """
    staging, production = topology.staging, topology.production
    root = Path(request.manifests_dir) if request.manifests_dir else DEPLOYMENTS
    objects = render_overlay(production.name, images=verified.refs, root=root)
    ensure_confined(objects, production, staging)
    before = retrying(read_objects, settings)(
        objects, cluster=production.cluster, settings=settings
    )
    changes = retrying(preview_apply, settings)(
        objects, before, cluster=production.cluster, settings=settings
    )
    # Deletions too: the objects the deploy would prune once the rollout is healthy.
    deletions = retrying(preview_prune, settings)(
        [object_key(o) for o in objects],
        namespace=production.namespace,
        cluster=production.cluster,
        settings=settings,
    )
    diff = change_report(
        "Production changes",
        changes,
        dry_run=True,
        context=production.cluster.kube_context or "current context",
        deleted=deletions,
    )
    reason = request.freeze_override_reason
    record = AuditRecord(
        flow_run=request.run_id,
        requested_at=request.requested_at,
        requester=request.requester,
        change_ref=request.change_ref,
        images=verified.promoted,
        decision="timed out",
        freeze_override=f"{freeze.name}: {reason}" if freeze else None,
        parameters=request.overrides,
        diff=diff,
    )
    return ProductionChange(
        objects=objects, before=before, deletions=deletions, diff=diff, record=record
    )


def wait_for_approval(
    request: PromotionRequest,
    settings: Settings,
    change: ProductionChange,
    verified: StagingState,
    freeze: FreezeWindow | None,
    approvers: list[str],
) -> ApprovalDecision:
    """Pause this flow run until an approver decides; the decision goes into the record.

    Called from the flow itself, not a task: ``pause_flow_run`` pauses the flow run.

    Raises:
        ApprovalTimedOut: nobody decided in time (audited and notified first).
        GuardError: the decision names someone not allowed to approve.
    """
    record = change.record
    form = approval_form(
        approvers,
        approval_description(
            requester=request.requester,
            change_ref=request.change_ref,
            images=record.images,
            diff_markdown=change.diff,
            smoke_summary=verified.smoke_summary,
            freeze=freeze,
            freeze_override=request.freeze_override_reason,
            overrides=request.overrides,
        ),
    )
    notify(
        f"production: promotion of {request.change_ref} awaits approval",
        f"requested by {request.requester}; approvers: {', '.join(approvers)}; "
        f"run {request.run_id}",
    )
    timeout = request.approval_timeout_seconds
    try:
        decision = pause_flow_run(
            wait_for_input=form,
            timeout=timeout,
            poll_interval=settings.approval_poll_seconds,
            key="approval",
        )
    except FlowPauseTimeout:
        record.outcome = "production untouched"
        record_audit(record)
        notify(
            f"production: promotion of {request.change_ref} timed out",
            f"no decision within {timeout}s",
        )
        raise ApprovalTimedOut(
            f"approval timed out after {timeout}s; production untouched"
        ) from None
    if decision.approver not in approvers:  # the form's schema already refuses these
        raise GuardError(f"{decision.approver!r} may not approve this promotion")
    record.approver, record.reason = decision.approver, decision.reason
    record.decided_at = datetime.now(UTC)
    return decision


def reject(request: PromotionRequest, record: AuditRecord, decision: ApprovalDecision) -> State:
    """Production untouched: audit, notify the requester, end the run as ``Rejected``."""
    record.decision, record.outcome = "rejected", "production untouched"
    record_audit(record)
    notify(
        f"production: promotion of {request.change_ref} rejected",
        f"{request.requester}: rejected by {decision.approver}: {decision.reason}",
    )
    get_run_logger().info("rejected by %s: %s", decision.approver, decision.reason)
    return Completed(
        name="Rejected",
        message=f"rejected by {decision.approver}: {decision.reason}",
        data=PromotionReport(record=record),
    )


def recheck_freeze_windows(
    request: PromotionRequest,
    settings: Settings,
    record: AuditRecord,
    freeze: FreezeWindow | None,
) -> None:
    """After the approval: refuse if a freeze began while the gate was open.

    The calendar is read again: a window added meanwhile counts.

    Raises:
        GuardError: a freeze applies now and there is no override reason (audited first).
    """
    reason = request.freeze_override_reason
    try:
        late = check_freeze_windows(settings, datetime.now(UTC), reason)
    except GuardError as exc:
        record.decision, record.outcome = "refused", f"production untouched: {exc}"
        record_audit(record)
        raise
    if late is not None and freeze is None:
        record.freeze_override = f"{late.name}: {reason}"
    record.decision = "approved"


def deploy_approved(
    request: PromotionRequest,
    settings: Settings,
    production: Environment,
    change: ProductionChange,
    approver: str,
) -> PromotionReport:
    """Deploy what was approved, under the production lock, if production is as shown.

    Raises:
        PromotionRefused: another production change held the lock too long, or production
            changed after the diff was shown (both audited first).
    """
    record = change.record
    wait_seconds = request.rollout_deadline_seconds * 4
    # One production change at a time: several promotions can wait at the gate together,
    # so the apply itself holds a global lock, and what the approver saw must still be
    # what production is.
    try:
        with exclusive(PRODUCTION_LOCK, wait_seconds=wait_seconds, holder="production change"):
            _refuse_if_drifted(settings, production, change)
            return _deploy_and_audit(request, record, change, approver)
    except LockTimeout:
        record.decision = "refused"
        record.outcome = (
            "production untouched: another production change held the lock for "
            f"{wait_seconds:.0f}s; request the promotion again"
        )
        record_audit(record)
        raise PromotionRefused(record.outcome) from None


def _refuse_if_drifted(
    settings: Settings, production: Environment, change: ProductionChange
) -> None:
    now = retrying(read_objects, settings)(
        change.objects, cluster=production.cluster, settings=settings
    )
    drifted = [k for k in now if _differs(change.before.get(k), now[k])]
    if drifted:
        record = change.record
        record.decision = "refused"
        record.outcome = (
            "production untouched: it changed after the diff was shown ("
            + ", ".join(drifted)
            + "); request the promotion again"
        )
        record_audit(record)
        raise PromotionRefused(record.outcome)


def _differs(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    if old is None or new is None:
        return (old is None) != (new is None)
    return bool(diff_objects(old, new))


def _deploy_and_audit(
    request: PromotionRequest, record: AuditRecord, change: ProductionChange, approver: str
) -> PromotionReport:
    """Deploy the approved digests to production as this run's subflow, and audit it."""
    trigger = f"promotion {request.change_ref} by {request.requester}, approved by {approver}"
    try:
        report = deploy(
            images=record.images,
            environment="production",
            trigger=trigger,
            rollout_deadline_seconds=request.rollout_deadline_seconds,
            smoke_checks_file=request.smoke_checks_file,
            approval_id=request.run_id,
            environments_file=request.environments_file,
            manifests_dir=request.manifests_dir,
            approved_objects=objects_fingerprint(change.objects),
            approved_deletions=change.deletions,
        )
    except (GuardError, ConfigurationError) as exc:
        # Refused before its first write (the manifests or the checks file changed, or
        # no longer render, since the approval).
        record.decision, record.outcome = "refused", f"production untouched: {exc}"
        record_audit(record)
        raise
    except DeployFailed as exc:
        record.outcome = f"deploy failed: {exc}"
        record_audit(record)
        raise
    record.outcome = "deployed to production"
    if report.reason:  # e.g. the approved deletions failed: said, not hidden
        record.outcome += f"; {report.reason}"
    record_audit(record)
    return PromotionReport(record=record, deploy=report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Promote staging's digests to production.")
    parser.add_argument("--requester", required=True)
    parser.add_argument("--change-ref", required=True)
    parser.add_argument("--timeout", type=int, default=86_400)
    parser.add_argument("--freeze-override-reason")
    args = parser.parse_args(argv)
    promote_to_production(
        requester=args.requester,
        change_ref=args.change_ref,
        approval_timeout_seconds=args.timeout,
        freeze_override_reason=args.freeze_override_reason,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
