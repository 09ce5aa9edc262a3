"""Small values the flows pass between their steps (pure: no services)."""

from __future__ import annotations

from datetime import UTC, datetime

from flows.deploy import DeployOutcome
from flows.promote import PromotionRequest
from tasks.kube import ObjectChange


def test_a_failed_deploy_says_what_was_undone_before_the_failure() -> None:
    """Half rolled back: the reason names what was put back, or that nothing was."""
    changes = [ObjectChange(key="apps/v1/Deployment/staging/rsolv-api", action="change")]
    partly = DeployOutcome("failed", changes, reason="boom", rollback=["restored a"])
    assert partly.said == "boom. Undone before the failure: restored a"
    nothing = DeployOutcome("failed", changes, reason="boom")
    assert nothing.said == "boom. Undone before the failure: nothing"


def test_a_rolled_back_or_succeeded_deploy_says_its_reason_or_note() -> None:
    """Rolled back: the reason alone. Succeeded: the prune's note, if there is one."""
    assert DeployOutcome("rolled back", [], reason="rollout failed").said == "rollout failed"
    assert DeployOutcome("succeeded", [], note="pruning failed").said == "pruning failed"
    assert DeployOutcome("succeeded", []).said == ""


def test_a_promotion_records_only_the_file_parameters_given() -> None:
    """The audit record's parameters: the overrides given, none of the defaults."""
    request = PromotionRequest(
        requested_at=datetime(2025, 1, 1, tzinfo=UTC),
        run_id="run",
        requester="alice",
        change_ref="CHG-1",
        approval_timeout_seconds=60,
        freeze_override_reason=None,
        rollout_deadline_seconds=300.0,
        smoke_checks_file="checks.yaml",
        environments_file=None,
        manifests_dir="",
    )
    assert request.overrides == {"smoke_checks_file": "checks.yaml"}
