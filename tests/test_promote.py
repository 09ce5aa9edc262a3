"""Promotion behind a human approval: real Prefect API, Kubernetes API emulator, real HTTP.

Each test runs the flow in the test's thread while a concurrent resumer waits for the
Paused state and answers through the project's REST client, as a person or CI would.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.context import get_run_context
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling, Running

from flows.deploy import deploy
from flows.promote import ApprovalTimedOut, PromotionRefused, promote_to_production
from flows.smoke_test import smoke_test
from kube_emulator import KubeEmulator
from rsolv_staging.cli import PrefectAPI
from rsolv_staging.deployments import DeployFailed
from rsolv_staging.environments import default_topology
from rsolv_staging.exceptions import ConfigurationError, GuardError, SmokeTestFailed
from rsolv_staging.images import parse_image
from rsolv_staging.settings import Settings
from tasks.kube import apply_objects
from tasks.manifests import DEPLOYMENTS, render_overlay
from tests.plugins.http import Server
from tests.plugins.releases import (
    API,
    app_config_map,
    checks_file,
    images,
    latest_artifact,
    running_images,
)

OLD = "sha256:" + "0" * 64
NEW = "sha256:" + "1" * 64


@pytest.fixture
def promotable(
    kube: KubeEmulator,
    kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api: None,
    app_server: Server,
    tmp_path: Path,
) -> KubeEmulator:
    """Staging runs NEW (deployed and smoke-tested for real); production runs OLD."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("RSOLV_KUBE_RETRY_DELAY_SECONDS", "0.05")
    monkeypatch.setenv("RSOLV_APPROVAL_POLL_SECONDS", "1")
    monkeypatch.setenv("RSOLV_PROMOTION_APPROVERS", "alice,bob,carol")
    monkeypatch.setenv("RSOLV_FREEZE_WINDOWS_FILE", str(tmp_path / "freeze.yaml"))
    for ns in ("staging", "production"):
        kube.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    deploy(images=images(NEW), smoke_checks_file=checks_file(tmp_path, app_server, "staging"))
    production = render_overlay.fn(
        "production", images={a: parse_image(r) for a, r in images(OLD).items()}
    )
    apply_objects.fn(production, cluster=default_topology().production.cluster, settings=Settings())
    return kube


def paused_promotion(after: datetime, timeout: float = 60) -> str:
    """Wait for a promote-to-production run started after ``after`` to pause; its id."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["promote-to-production"])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                ),
            )
            fresh = [r for r in runs if r.created and r.created >= after]
            if fresh:
                return str(fresh[0].id)
            time.sleep(0.3)
    raise AssertionError("the promotion never paused")


@pytest.fixture
def resumer() -> Iterator[Callable[[Callable[[PrefectAPI, str], None]], None]]:
    """Run ``answer(api, run_id)`` in a thread once a new promotion is paused."""
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def start(answer: Callable[[PrefectAPI, str], None]) -> None:
        after = datetime.now(UTC) - timedelta(seconds=1)
        api = PrefectAPI(PREFECT_API_URL.value())

        def run() -> None:
            try:
                answer(api, paused_promotion(after))
            except BaseException as exc:  # surfaced in the test's thread below
                errors.append(exc)
            finally:
                api.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    for thread in threads:
        thread.join(timeout=30)
    if errors:
        raise errors[0]


def decide(
    decision: str,
    approver: str,
    reason: str = "looks good",
    *,
    first: Callable[[], object] | None = None,
) -> Callable[[PrefectAPI, str], None]:
    """The answer a resumer gives; ``first`` runs while the gate is open, before it."""

    def answer(api: PrefectAPI, run_id: str) -> None:
        if first is not None:
            first()
        result = api.resume(run_id, {"decision": decision, "approver": approver, "reason": reason})
        assert result["status"] == "ACCEPT", result

    return answer


def audit_rows() -> list[dict[str, str]]:
    data = latest_artifact("promotion-audit")
    return list(json.loads(data)) if isinstance(data, str) else list(data)


def freeze_now(tmp_path: Path, name: str) -> None:
    """The freeze calendar the promotions read: one window ``name``, from an hour ago to an
    hour from now."""
    now = datetime.now(UTC).replace(tzinfo=None)
    window = {
        "name": name,
        "start": (now - timedelta(hours=1)).isoformat(),
        "end": (now + timedelta(hours=1)).isoformat(),
        "timezone": "UTC",
    }
    (tmp_path / "freeze.yaml").write_text(yaml.safe_dump({"windows": [window]}))


def promote(tmp_path: Path, server: Server, requester: str = "carol", **kwargs: Any) -> Any:
    freeze = tmp_path / "freeze.yaml"
    if not freeze.exists():
        freeze.write_text("windows: []\n")
    return promote_to_production(
        requester=requester,
        change_ref="PR-42",
        smoke_checks_file=checks_file(tmp_path, server, "production"),
        rollout_deadline_seconds=3,
        # A broken resumer must fail the test, not hang it for the default 24 h.
        **{"approval_timeout_seconds": 60, **kwargs},
    )


def test_approve_deploys_stagings_digest_and_audits_who_and_why(
    promotable: KubeEmulator, resumer: Any, app_server: Server, tmp_path: Path
) -> None:
    """Approved: production runs exactly staging's digests; the audit names approver and reason."""
    resumer(decide("approve", "alice", "smoke tests green, CAB ok"))
    report = promote(tmp_path, app_server)
    assert (
        running_images(promotable, "production")
        == running_images(promotable, "staging")
        == images(NEW)
    )
    assert report.record.approver == "alice"
    (row,) = audit_rows()
    assert row["decision"] == "approved"
    assert row["approver"] == "alice"
    assert row["reason"] == "smoke tests green, CAB ok"
    assert row["requester"] == "carol"
    assert NEW in row["images"]
    assert row["outcome"] == "deployed to production"
    assert "Deployment/production/rsolv-api" in row["diff"]


def test_reject_leaves_production_untouched(
    promotable: KubeEmulator, resumer: Any, app_server: Server, tmp_path: Path
) -> None:
    """Rejected: production keeps OLD and the run ends in the state named Rejected."""
    resumer(decide("reject", "bob", "not before the release notes"))
    state = promote(tmp_path, app_server, return_state=True)
    assert state.name == "Rejected"
    assert running_images(promotable, "production") == images(OLD)
    (row,) = audit_rows()
    assert (row["decision"], row["approver"]) == ("rejected", "bob")


def test_timeout_fails_safe(promotable: KubeEmulator, app_server: Server, tmp_path: Path) -> None:
    """Nobody answers: the run fails after the timeout and production is untouched."""
    with pytest.raises(ApprovalTimedOut, match="production untouched"):
        promote(tmp_path, app_server, approval_timeout_seconds=2)
    assert running_images(promotable, "production") == images(OLD)
    (row,) = audit_rows()
    assert row["decision"] == "timed out"


@pytest.mark.parametrize(
    ("bad_input", "why"),
    [
        ({}, "empty"),
        ({"decision": "maybe", "approver": "alice", "reason": "hmm"}, "malformed decision"),
        ({"decision": "approve", "approver": "mallory", "reason": "I say so"}, "not allowlisted"),
        ({"decision": "approve", "approver": "carol", "reason": "my own"}, "requester"),
        # Issue 18 row 11: a reason of blanks, or of characters that show nothing.
        ({"decision": "approve", "approver": "alice", "reason": "     "}, "blank reason"),
        ({"decision": "approve", "approver": "alice", "reason": "\u200b\u200b\u200b-"}, "no text"),
    ],
)
def test_refused_input_keeps_the_run_waiting(
    promotable: KubeEmulator,
    resumer: Any,
    app_server: Server,
    tmp_path: Path,
    bad_input: dict[str, str],
    why: str,
) -> None:
    """Empty, malformed, non-allowlisted or self approvals are refused; the run still waits."""
    seen: dict[str, Any] = {}

    def answer(api: PrefectAPI, run_id: str) -> None:
        seen["answer"] = api.resume(run_id, bad_input)
        time.sleep(1.5)
        seen["state"] = api.read_run(run_id)["state"]["type"]
        decide("reject", "bob", "ending the test")(api, run_id)

    resumer(answer)
    state = promote(tmp_path, app_server, return_state=True)
    assert seen["answer"]["status"] == "REJECT", why
    assert seen["state"] == "PAUSED", why
    assert state.name == "Rejected"
    assert running_images(promotable, "production") == images(OLD)


def test_a_requester_name_that_only_looks_like_an_approver_cannot_approve_itself(
    promotable: KubeEmulator, resumer: Any, app_server: Server, tmp_path: Path
) -> None:
    """Issue 18 row 9: the requester's name in full-width letters still names carol, so
    carol may not approve; a name with a look-alike letter (Cyrillic o) or U+2010 HYPHEN
    is refused before anything is read or asked."""
    seen: dict[str, Any] = {}

    def answer(api: PrefectAPI, run_id: str) -> None:
        seen["self"] = api.resume(
            run_id,
            {"decision": "approve", "approver": "carol", "reason": "approving my own change"},
        )
        decide("reject", "bob", "ending the test")(api, run_id)

    resumer(answer)
    state = promote(
        tmp_path, app_server, requester="\uff43\uff41\uff52\uff4f\uff4c", return_state=True
    )
    assert seen["self"]["status"] == "REJECT"
    assert state.name == "Rejected"
    (row,) = audit_rows()
    assert row["requester"] == "carol"
    for look_alike in ("car\u043el", "ali\u2010ce", "carol\u200b"):
        with pytest.raises(ConfigurationError, match="look-alike characters are refused"):
            promote(tmp_path, app_server, requester=look_alike)
    assert running_images(promotable, "production") == images(OLD)
    assert len(audit_rows()) == 1


def test_freeze_window_refuses_and_an_override_is_recorded(
    promotable: KubeEmulator, resumer: Any, app_server: Server, tmp_path: Path
) -> None:
    """Inside a freeze window the promotion is refused; with an override it goes ahead."""
    freeze_now(tmp_path, "launch-week")
    with pytest.raises(GuardError, match=r"'launch-week'.*in force until"):
        promote(tmp_path, app_server)
    assert running_images(promotable, "production") == images(OLD)

    resumer(decide("approve", "alice", "hotfix for outage"))
    promote(tmp_path, app_server, freeze_override_reason="INC-7 hotfix")
    assert running_images(promotable, "production") == images(NEW)
    (row,) = audit_rows()
    assert row["freeze_override"] == "launch-week: INC-7 hotfix"


def test_a_freeze_window_added_during_the_wait_refuses_the_approval(
    promotable: KubeEmulator, resumer: Any, app_server: Server, tmp_path: Path
) -> None:
    """The calendar is read again after the decision: a freeze declared while the gate
    was open stops the approved promotion, audited, production untouched."""

    resumer(decide("approve", "alice", first=lambda: freeze_now(tmp_path, "incident-freeze")))
    with pytest.raises(GuardError, match="incident-freeze"):
        promote(tmp_path, app_server)
    assert running_images(promotable, "production") == images(OLD)
    (row,) = audit_rows()
    assert row["decision"] == "refused"


def test_production_refuses_a_parent_that_is_not_the_approving_promotion(
    promotable: KubeEmulator,
) -> None:
    """As a subflow, the deploy still refuses production unless its parent is the
    promote-to-production run named by the approval: not a flow of another name giving
    its own id, not one giving the id of some other running promotion, not a promotion
    that is no longer running (cancelled while it was waiting)."""
    with get_client(sync_client=True) as client:
        other = client.create_flow_run(
            promote_to_production, parameters={"requester": "x", "change_ref": "y"}
        )
        client.set_flow_run_state(other.id, Running(), force=True)

    @flow(name="not-a-promotion")
    def impostor(approval: str | None) -> None:
        own = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
        deploy(
            images=images(NEW),
            environment="production",
            approval_id=approval or own,
            run_smoke_tests=False,
            approved_objects="0" * 64,
            approved_deletions=[],
        )

    @flow(name="promote-to-production")
    def cancelled_promotion() -> None:
        """The right name and the parent, but cancelled by the time it deploys."""
        own = get_run_context().flow_run.id  # type: ignore[union-attr]
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(own, Cancelling(), force=True)
        deploy(
            images=images(NEW),
            environment="production",
            approval_id=str(own),
            run_smoke_tests=False,
            approved_objects="0" * 64,
            approved_deletions=[],
        )

    promotable.clear_log()
    for approval in (None, str(other.id)):
        with pytest.raises(GuardError, match="not the running promote-to-production run"):
            impostor(approval)
    with pytest.raises(GuardError, match="not the running promote-to-production run"):
        cancelled_promotion()
    assert promotable.writes() == []


def test_failed_production_rollout_is_rolled_back(
    promotable: KubeEmulator, resumer: Any, app_server: Server, tmp_path: Path
) -> None:
    """Approved, but production never becomes ready: it is rolled back to OLD, and audited."""
    promotable.set_workload_behaviour("never-ready", namespace="production", image=f"{API}@{NEW}")
    resumer(decide("approve", "alice"))
    with pytest.raises(DeployFailed, match="rolled back"):
        promote(tmp_path, app_server)
    assert running_images(promotable, "production") == images(OLD)
    (row,) = audit_rows()
    assert row["outcome"].startswith("deploy failed")


def test_only_stagings_digest_can_be_promoted(
    promotable: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """Asking for a digest staging does not run is refused before anyone is asked."""
    with pytest.raises(PromotionRefused, match="only what staging runs"):
        promote(tmp_path, app_server, images=images(OLD))


def test_only_digests_that_passed_stagings_smoke_tests_can_be_promoted(
    promotable: KubeEmulator, app_server: Server, tmp_path: Path
) -> None:
    """Staging's last passing smoke run tested NEW; OLD deployed to staging without smoke
    tests is refused, and a later plain health check (no digests) does not vouch for it;
    once OLD's own deploy smoke-tests it, a failed health check still refuses."""
    deploy(images=images(OLD), run_smoke_tests=False)
    assert running_images(promotable, "staging") == images(OLD)
    promotable.clear_log()
    # A short timeout: without the guard the run would pause for an approval instead.
    with pytest.raises(PromotionRefused, match="digests are other ones.*" + NEW):
        promote(tmp_path, app_server, images=images(OLD), approval_timeout_seconds=2)
    asyncio.run(smoke_test(checks_file=checks_file(tmp_path, app_server, "staging")))
    with pytest.raises(PromotionRefused, match="other ones"):
        promote(tmp_path, app_server, images=images(OLD), approval_timeout_seconds=2)
    deploy(images=images(OLD), smoke_checks_file=checks_file(tmp_path, app_server, "staging"))
    broken = checks_file(tmp_path, app_server, "staging", path="/missing")
    with pytest.raises(SmokeTestFailed):
        asyncio.run(smoke_test(checks_file=broken, warmup_seconds=0))
    with pytest.raises(PromotionRefused, match=r"newest run .* failed"):
        promote(tmp_path, app_server, images=images(OLD), approval_timeout_seconds=2)
    assert [w for w in promotable.writes() if "/namespaces/production/" in w.path] == []


def test_deploy_to_production_needs_a_running_promotion(promotable: KubeEmulator) -> None:
    """The deploy flow refuses production with an approval id that is not a running promotion."""
    promotable.clear_log()
    with pytest.raises(GuardError, match="not the running promote-to-production run"):
        deploy(
            images=images(NEW),
            environment="production",
            approval_id="00000000-0000-0000-0000-000000000000",
            run_smoke_tests=False,
        )
    assert promotable.writes() == []


def test_a_running_promotions_id_does_not_open_production_from_outside(
    promotable: KubeEmulator,
) -> None:
    """The id of a promotion that is Running (e.g. before its pause) is refused when the
    deploy flow is started on its own: production needs the promotion as its parent."""
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(
            promote_to_production, parameters={"requester": "x", "change_ref": "y"}
        )
        client.set_flow_run_state(run.id, Running(), force=True)
    promotable.clear_log()
    with pytest.raises(GuardError, match="not the running promote-to-production run"):
        deploy(
            images=images(NEW),
            environment="production",
            approval_id=str(run.id),
            run_smoke_tests=False,
        )
    assert promotable.writes() == []


def test_production_changed_while_waiting_is_refused(
    promotable: KubeEmulator, resumer: Any, app_server: Server, tmp_path: Path
) -> None:
    """If production changes after the diff was shown, the approval does not apply it."""
    from kubernetes import client, config

    def change() -> None:
        core = client.CoreV1Api(config.new_client_from_config(config_file=os.environ["KUBECONFIG"]))
        core.patch_namespaced_config_map(
            "rsolv-config", "production", {"data": {"LOG_LEVEL": "debug"}}
        )

    resumer(decide("approve", "alice", first=change))
    with pytest.raises(PromotionRefused, match="changed after the diff was shown"):
        promote(tmp_path, app_server)
    assert running_images(promotable, "production") == images(OLD)
    (row,) = audit_rows()
    assert row["decision"] == "refused"
    assert "ConfigMap/production/rsolv-config" in row["outcome"]


def test_manifests_changed_while_waiting_are_refused(
    promotable: KubeEmulator, resumer: Any, app_server: Server, tmp_path: Path
) -> None:
    """What the approver saw is what production gets: manifests edited during the wait
    (a pull on the worker, say) are refused before the first write, and audited."""
    tree = tmp_path / "deployments"
    shutil.copytree(DEPLOYMENTS, tree)

    def edit() -> None:
        config = tree / "overlays" / "production" / "config.yaml"
        config.write_text(config.read_text().replace("LOG_LEVEL: info", "LOG_LEVEL: debug"))

    resumer(decide("approve", "alice", first=edit))
    with pytest.raises(GuardError, match="not the ones approved"):
        promote(tmp_path, app_server, manifests_dir=str(tree))
    assert running_images(promotable, "production") == images(OLD)
    (row,) = audit_rows()
    assert row["decision"] == "refused"
    assert row["outcome"].startswith("production untouched")


def test_the_approver_sees_deletions_and_only_those_happen(
    promotable: KubeEmulator, resumer: Any, app_server: Server, tmp_path: Path
) -> None:
    """Objects the deploy will prune are in the diff the approver reads; one that appears
    during the wait is not deleted, since nobody approved its deletion."""
    promotable.seed(app_config_map("old-flags", "production"))

    added = app_config_map("added-while-waiting", "production")
    resumer(decide("approve", "alice", first=lambda: promotable.seed(added)))
    report = promote(tmp_path, app_server)
    deleted = report.record.diff.split("## Deleted once the rollout is healthy", 1)[1]
    assert "ConfigMap/production/old-flags" in deleted
    assert "added-while-waiting" not in deleted
    assert report.deploy.pruned == ["ConfigMap/production/old-flags"]
    assert promotable.get("v1", "ConfigMap", "old-flags", "production") is None
    assert promotable.get("v1", "ConfigMap", "added-while-waiting", "production") is not None
