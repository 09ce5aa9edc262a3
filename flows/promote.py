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
from rsolv_staging.exceptions import ConfigurationError, GuardError, LockTimeout, StagingError
from rsolv_staging.guards import ensure_confined
from rsolv_staging.promotion import (
    AuditRecord,
    approval_description,
    approval_form,
    check_freeze,
    eligible_approvers,
    load_freeze_windows,
)
from rsolv_staging.provisioning import object_key
from rsolv_staging.reports import change_report
from rsolv_staging.settings import REPO_ROOT, load_settings, load_topology
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
    logger = get_run_logger()
    requested_at = datetime.now(UTC)
    run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    if not requester.strip() or not change_ref.strip():
        raise ConfigurationError("requester and change_ref are required")
    if approval_timeout_seconds < 1:
        raise ConfigurationError("approval_timeout_seconds must be at least 1")
    settings = load_settings()
    topology = load_topology(Path(environments_file) if environments_file else None)
    staging, production = topology.staging, topology.production
    # Production's smoke checks are read now: a wrong file found only after the approval
    # would roll production out and back for nothing.
    checks_for(topology, "production", smoke_checks_file)

    # 1. Freeze windows and who may decide: refused before anything is read or asked.
    # The calendar is the operator's (a setting), never the requester's (a parameter).
    windows = load_freeze_windows(settings.freeze_windows_file or DEFAULT_FREEZE_WINDOWS)
    freeze = check_freeze(windows, requested_at, override_reason=freeze_override_reason)
    approvers = eligible_approvers(read_approvers(), requester)

    # 2. Staging runs exactly these digests, ready, and its smoke tests passed.
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

    # 3. What would change in production.
    root = Path(manifests_dir) if manifests_dir else DEPLOYMENTS
    objects = render_overlay(production.name, images=refs, root=root)
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
    overrides = {
        k: v
        for k, v in {
            "smoke_checks_file": smoke_checks_file,
            "environments_file": environments_file,
            "manifests_dir": manifests_dir,
        }.items()
        if v
    }
    record = AuditRecord(
        flow_run=run_id,
        requested_at=requested_at,
        requester=requester,
        change_ref=change_ref,
        images=promoted,
        decision="timed out",
        freeze_override=f"{freeze.name}: {freeze_override_reason}" if freeze else None,
        parameters=overrides,
        diff=diff,
    )

    # 4. The gate.
    form = approval_form(
        approvers,
        approval_description(
            requester=requester,
            change_ref=change_ref,
            images=record.images,
            diff_markdown=diff,
            smoke_summary=smoke_summary,
            freeze=freeze,
            freeze_override=freeze_override_reason,
            overrides=overrides,
        ),
    )
    notify(
        f"production: promotion of {change_ref} awaits approval",
        f"requested by {requester}; approvers: {', '.join(approvers)}; run {run_id}",
    )
    try:
        decision = pause_flow_run(
            wait_for_input=form,
            timeout=approval_timeout_seconds,
            poll_interval=settings.approval_poll_seconds,
            key="approval",
        )
    except FlowPauseTimeout:
        record.outcome = "production untouched"
        record_audit(record)
        notify(
            f"production: promotion of {change_ref} timed out",
            f"no decision within {approval_timeout_seconds}s",
        )
        raise ApprovalTimedOut(
            f"approval timed out after {approval_timeout_seconds}s; production untouched"
        ) from None
    if decision.approver not in approvers:  # the form's schema already refuses these
        raise GuardError(f"{decision.approver!r} may not approve this promotion")
    record.approver, record.reason = decision.approver, decision.reason
    record.decided_at = datetime.now(UTC)

    # 5. Rejected.
    if decision.decision == "reject":
        record.decision, record.outcome = "rejected", "production untouched"
        record_audit(record)
        notify(
            f"production: promotion of {change_ref} rejected",
            f"{requester}: rejected by {decision.approver}: {decision.reason}",
        )
        logger.info("rejected by %s: %s", decision.approver, decision.reason)
        return Completed(
            name="Rejected",
            message=f"rejected by {decision.approver}: {decision.reason}",
            data=PromotionReport(record=record),
        )

    # 6. Approved: deploy the same digests to production, unless a freeze began while
    #    the gate was open (the calendar read again: a window added meanwhile counts).
    try:
        windows = load_freeze_windows(settings.freeze_windows_file or DEFAULT_FREEZE_WINDOWS)
        late = check_freeze(windows, datetime.now(UTC), override_reason=freeze_override_reason)
    except GuardError as exc:
        record.decision, record.outcome = "refused", f"production untouched: {exc}"
        record_audit(record)
        raise
    if late is not None and freeze is None:
        record.freeze_override = f"{late.name}: {freeze_override_reason}"
    record.decision = "approved"
    # One production change at a time: several promotions can wait at the gate together,
    # so the apply itself holds a global lock, and what the approver saw must still be
    # what production is.
    try:
        with exclusive(
            PRODUCTION_LOCK,
            wait_seconds=rollout_deadline_seconds * 4,
            holder="production change",
        ):
            now = retrying(read_objects, settings)(
                objects, cluster=production.cluster, settings=settings
            )
            drifted = [k for k in now if _differs(before.get(k), now[k])]
            if drifted:
                record.decision = "refused"
                record.outcome = (
                    "production untouched: it changed after the diff was shown ("
                    + ", ".join(drifted)
                    + "); request the promotion again"
                )
                record_audit(record)
                raise PromotionRefused(record.outcome)
            return _deploy_approved(
                record,
                requester=requester,
                change_ref=change_ref,
                approver=decision.approver,
                run_id=run_id,
                rollout_deadline_seconds=rollout_deadline_seconds,
                smoke_checks_file=smoke_checks_file,
                environments_file=environments_file,
                manifests_dir=manifests_dir,
                approved_objects=objects_fingerprint(objects),
                approved_deletions=deletions,
            )
    except LockTimeout:
        record.decision = "refused"
        record.outcome = (
            "production untouched: another production change held the lock for "
            f"{rollout_deadline_seconds * 4:.0f}s; request the promotion again"
        )
        record_audit(record)
        raise PromotionRefused(record.outcome) from None


def _differs(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    if old is None or new is None:
        return (old is None) != (new is None)
    return bool(diff_objects(old, new))


def _deploy_approved(
    record: AuditRecord,
    *,
    requester: str,
    change_ref: str,
    approver: str,
    run_id: str,
    rollout_deadline_seconds: float,
    smoke_checks_file: str | None,
    environments_file: str | None,
    manifests_dir: str | None,
    approved_objects: str,
    approved_deletions: list[str],
) -> PromotionReport:
    """Deploy the approved digests to production as this run's subflow, and audit it."""
    try:
        report = deploy(
            images=record.images,
            environment="production",
            trigger=f"promotion {change_ref} by {requester}, approved by {approver}",
            rollout_deadline_seconds=rollout_deadline_seconds,
            smoke_checks_file=smoke_checks_file,
            approval_id=run_id,
            environments_file=environments_file,
            manifests_dir=manifests_dir,
            approved_objects=approved_objects,
            approved_deletions=approved_deletions,
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
