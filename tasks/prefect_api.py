"""Tasks that read from or write to the Prefect API itself: variables, runs, audit records."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
)
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
from prefect.concurrency.sync import concurrency
from prefect.events import emit_event
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.variables import Variable

from rsolv_staging.exceptions import ConfigurationError, GuardError, LockTimeout
from rsolv_staging.promotion import AuditRecord

AUDIT_KEY = "promotion-audit"
APPROVERS_VARIABLE = "promotion_approvers"


@task(name="read-approvers", cache_policy=NO_CACHE)
def read_approvers() -> list[str]:
    """The approver allowlist: Prefect Variable ``promotion_approvers`` (a JSON list or a
    comma-separated string), else ``$RSOLV_PROMOTION_APPROVERS`` (comma-separated).

    Kept outside the flow's parameters on purpose: whoever starts a promotion must not be
    able to choose who approves it.
    """
    value: Any = Variable.get(APPROVERS_VARIABLE, default=None)
    if value is None:
        value = os.environ.get("RSOLV_PROMOTION_APPROVERS", "")
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        raise ConfigurationError(f"Variable {APPROVERS_VARIABLE!r} must be a list of names")
    return [str(v).strip() for v in value if str(v).strip()]


@task(name="read-last-smoke-run", cache_policy=NO_CACHE, task_run_name="last-smoke-{environment}")
def read_last_smoke_run(environment: str, images: Mapping[str, str]) -> tuple[bool, str]:
    """Whether ``environment``'s smoke tests passed for exactly ``images``, and why.

    Reads the smoke-test flow's runs (alone or as a deploy's subflow) through the API,
    newest first: a failed run refuses (the environment is not healthy now); a passing
    run that names no digests (a plain health check) is skipped; the newest passing run
    that names digests decides: it must have tested exactly ``images``.
    """
    wanted = dict(images)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["smoke-test"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=100,
        )
    for run in runs:
        if run.parameters.get("environment", "staging") != environment:
            continue
        if run.state is None or not run.state.is_final():
            continue
        when = run.end_time.isoformat(timespec="seconds") if run.end_time else "?"
        if not run.state.is_completed():
            return False, f"the newest run {run.name} {str(run.state.name).lower()} at {when}"
        tested = run.parameters.get("images")
        if not tested:
            continue
        if tested != wanted:
            other = ", ".join(f"{a}={r}" for a, r in sorted(tested.items()))
            return False, f"the newest smoke-tested digests are other ones ({other}; {run.name})"
        return True, f"{run.name} passed for these digests at {when}"
    return False, f"no passing smoke-test run of these digests on {environment}"


@task(name="verify-approval", cache_policy=NO_CACHE)
def verify_approval(approval_id: str, *, parent_task_run_id: str | None) -> None:
    """Check that this deploy runs *inside* the running promotion ``approval_id``.

    The promotion calls the deploy flow as a subflow only after a decision to approve,
    so requiring it to be our parent (not merely running) means that no one can reach
    production by starting the deploy flow with a promotion's id from outside.

    Raises:
        GuardError: the id is not our parent, or not a running promote-to-production run.
    """
    refusal = (
        f"approval {approval_id!r} is not the running promote-to-production run that "
        "started this deploy; production is deployed only through an approved promotion"
    )
    if parent_task_run_id is None:
        raise GuardError(refusal)
    with get_client(sync_client=True) as client:
        try:
            parent = client.read_task_run(UUID(parent_task_run_id))
            run = client.read_flow_run(UUID(approval_id))
        except Exception as exc:  # any failure here means "not verified"
            raise GuardError(refusal) from exc
        flow = client.read_flow(run.flow_id)
    if (
        str(parent.flow_run_id) != approval_id
        or flow.name != "promote-to-production"
        or run.state is None
        or not run.state.is_running()
    ):
        raise GuardError(refusal)


@task(name="record-audit", cache_policy=NO_CACHE)
def record_audit(record: AuditRecord) -> UUID:
    """Keep a promotion decision: a table artifact version under ``promotion-audit`` (the
    UI shows the history; ``rsolv-staging audit`` lists it) and a Prefect event."""
    emit_event(
        event=f"rsolv.promotion.{record.decision.replace(' ', '-')}",
        resource={"prefect.resource.id": f"rsolv.promotion.{record.flow_run}"},
        payload=record.model_dump(mode="json", exclude={"diff"}),
    )
    return cast(
        UUID,
        create_table_artifact(
            key=AUDIT_KEY,
            table=[record.row()],
            description=f"{record.decision} by {record.approver or '-'}: {record.outcome}",
        ),
    )


@task(name="ensure-concurrency-limit", cache_policy=NO_CACHE)
def ensure_concurrency_limit(name: str, *, limit: int = 1) -> None:
    """Create global concurrency limit ``name`` (``limit`` slots) if it is missing."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Two first runs at once: the other one's creation is as good as ours.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit)
                )


@contextmanager
def exclusive(name: str, *, wait_seconds: float, holder: str) -> Iterator[None]:
    """Hold global concurrency limit ``name`` (one slot; created if missing) around a change.

    Strict, so a missing limit is an error rather than an open door; a lease renewal that
    fails mid-change does not stop it halfway (an apply under way must finish or roll back).

    Raises:
        LockTimeout: another ``holder`` kept the slot for ``wait_seconds``; raised only
            for the wait, before the body ran, so nothing was changed.
    """
    ensure_concurrency_limit(name)
    held = False
    try:
        with concurrency(
            name,
            occupy=1,
            timeout_seconds=wait_seconds,
            strict=True,
            raise_on_lease_renewal_failure=False,
        ):
            held = True
            yield
    except TimeoutError:
        if held:  # the body's own, not the wait for the slot
            raise
        raise LockTimeout(
            f"another {holder} held {name!r} for {wait_seconds:.0f}s; nothing was applied"
        ) from None


SECURITY_ANNOUNCED_VARIABLE = "security_scan_announced"


@task(name="read-announced-findings", cache_policy=NO_CACHE)
def read_announced_findings(name: str = SECURITY_ANNOUNCED_VARIABLE) -> list[str]:
    """The ids of the findings earlier scans announced (Prefect Variable ``name``).

    Anyone with API access can write the Variable, so it only decides what is notified,
    never whether a scan fails. A value that is not a list of strings is ignored (every
    finding is then announced again): a broken record errs towards telling too much.
    """
    value: Any = Variable.get(name, default=None)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return []
    return list(value)


@task(name="record-announced-findings", cache_policy=NO_CACHE)
def record_announced_findings(
    ids: list[str], *, name: str = SECURITY_ANNOUNCED_VARIABLE, limit: int = 300
) -> int:
    """Keep ``ids`` (at most ``limit``: a Variable holds 5000 characters) for the next scan.

    Returns:
        How many were kept; those left out are announced again by the next scan.
    """
    kept = sorted(set(ids))[:limit]
    Variable.set(name, kept, overwrite=True)
    return len(kept)


@task(name="read-artifact-time", cache_policy=NO_CACHE, task_run_name="artifact-time-{key}")
def read_artifact_time(key: str) -> datetime | None:
    """When the newest artifact with ``key`` was created, or None when there is none
    (the backup report dates the sync's rollback copy by its last report)."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return artifacts[0].created if artifacts and artifacts[0].created else None
