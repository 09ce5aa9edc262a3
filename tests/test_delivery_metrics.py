"""delivery-metrics over a history of real flow runs on the real Prefect API.

The test builds the history with the project's own flows (deploy with its smoke tests,
promote-to-production with its approval gate and production deploy) against the
Kubernetes API emulator and a local app, answers the gates from a thread as a person
would, then runs delivery-metrics over exactly that stretch of time. Every expected
figure is worked out here from the timestamps the test chose (the commit time, the
freeze window) or reads back from the API (each run's start and end, the audit's
decision time), not from the metrics code.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL

from flows.delivery_metrics import delivery_metrics
from flows.deploy import deploy
from flows.promote import promote_to_production
from kube_emulator import KubeEmulator
from rsolv_staging import cli
from rsolv_staging.cli import PrefectAPI
from rsolv_staging.environments import default_topology
from rsolv_staging.images import parse_image
from rsolv_staging.metrics import Baseline
from rsolv_staging.settings import Settings
from tasks.kube import apply_objects
from tasks.manifests import render_overlay
from tests.plugins.http import Server
from tests.plugins.releases import API, checks_file, images, latest_artifact

OLD, NEW, NEXT, BAD = ("sha256:" + c * 64 for c in "0123")
APPROVAL_WAIT = 1.0  # seconds the approver takes to decide


def minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60


def quiet_zone() -> str:
    """A zone in which no ISO week starts during the next few minutes, so the history
    falls in one week whenever the test runs."""
    for name in ("UTC", "Asia/Tokyo"):
        local = datetime.now(ZoneInfo(name))
        if not (local.weekday() == 6 and local.hour == 23 and local.minute >= 50):
            return name
    raise AssertionError("unreachable: the two zones are 9 h apart")


class Approver:
    """Answers the next promotion that pauses, after ``APPROVAL_WAIT`` seconds."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def answer(self, decision: str) -> None:
        after = datetime.now(UTC) - timedelta(seconds=1)

        def run() -> None:
            api = PrefectAPI(PREFECT_API_URL.value())
            try:
                run_id = paused_after(after)
                time.sleep(APPROVAL_WAIT)
                body = {"decision": decision, "approver": "alice", "reason": "checked it"}
                assert api.resume(run_id, body)["status"] == "ACCEPT"
            except BaseException as exc:  # surfaced in the test's thread
                self.errors.append(exc)
            finally:
                api.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)
        if self.errors:
            raise self.errors[0]


def paused_after(after: datetime) -> str:
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["promote-to-production"]))
            )
            paused = [r for r in runs if r.state and r.state.is_paused() and r.created >= after]
            if paused:
                return str(paused[0].id)
            time.sleep(0.2)
    raise AssertionError("no promotion paused")


@pytest.fixture
def approver() -> Iterator[Approver]:
    helper = Approver()
    yield helper
    helper.join()


def run_of(state: Any) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


def child(parent: FlowRun, flow: str) -> FlowRun:
    """The ``flow`` run that ran inside ``parent``."""
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])
            ),
        )
    return run


def audit_of(promotion: FlowRun) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["promotion-audit"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[promotion.id]),
            )
        )
    (row,) = json.loads(str(artifact.data))
    return dict(row)


def span(run: FlowRun) -> tuple[datetime, datetime]:
    assert run.start_time
    assert run.end_time
    return run.start_time, run.end_time


@pytest.fixture
def history(
    kube: KubeEmulator,
    kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api: None,
    app_server: Server,
    tmp_path: Path,
    approver: Approver,
) -> dict[str, Any]:
    """Staging deploys (one failing its smoke tests), six promotions (approved after a
    wait, rejected, timed out, refused by a freeze, a freeze override whose production
    rollout is rolled back, a freeze override that ships), all with real flows."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("RSOLV_KUBE_RETRY_DELAY_SECONDS", "0.05")
    monkeypatch.setenv("RSOLV_APPROVAL_POLL_SECONDS", "1")
    monkeypatch.setenv("RSOLV_PROMOTION_APPROVERS", "alice,bob")
    freeze_file = tmp_path / "freeze.yaml"
    freeze_file.write_text("windows: []\n")
    monkeypatch.setenv("RSOLV_FREEZE_WINDOWS_FILE", str(freeze_file))
    for ns in ("staging", "production"):
        kube.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    objects = render_overlay.fn(
        "production", images={a: parse_image(r) for a, r in images(OLD).items()}
    )
    apply_objects.fn(objects, cluster=default_topology().production.cluster, settings=Settings())

    good = checks_file(tmp_path, app_server, "staging")
    prod_checks = checks_file(tmp_path, app_server, "production")

    def promote(**kw: Any) -> FlowRun:
        state = promote_to_production(
            requester="carol",
            change_ref="PR-1",
            smoke_checks_file=prod_checks,
            rollout_deadline_seconds=2,
            return_state=True,
            **{"approval_timeout_seconds": 30, **kw},
        )
        return run_of(state)

    h: dict[str, Any] = {"start": datetime.now(UTC)}
    # A release whose smoke tests fail: rolled back.
    h["bad"] = run_of(
        deploy(
            images=images(BAD),
            return_state=True,
            smoke_checks_file=checks_file(tmp_path, app_server, "staging", path="/missing"),
        )
    )
    # The release, with the commit time CI passes: validated, then approved after a wait.
    h["commit"] = datetime.now(UTC) - timedelta(minutes=42)
    h["new"] = run_of(
        deploy(
            images=images(NEW), committed_at=h["commit"], smoke_checks_file=good, return_state=True
        )
    )
    approver.answer("approve")
    h["r_approved"] = promote()
    approver.answer("reject")
    h["r_rejected"] = promote()
    h["r_timeout"] = promote(approval_timeout_seconds=1)
    # The next release, no commit time; a freeze begins after its staging deploy.
    h["next"] = run_of(deploy(images=images(NEXT), smoke_checks_file=good, return_state=True))
    h["freeze"] = datetime.now(UTC)
    window = {
        "name": "launch",
        "timezone": "UTC",
        "start": h["freeze"].replace(tzinfo=None).isoformat(),
        "end": (h["freeze"] + timedelta(hours=1)).replace(tzinfo=None).isoformat(),
    }
    freeze_file.write_text(yaml.safe_dump({"windows": [window]}))
    h["r_frozen"] = promote()  # refused before the gate: no override
    kube.set_workload_behaviour("never-ready", namespace="production", image=f"{API}@{NEXT}")
    approver.answer("approve")
    h["r_rolled_back"] = promote(freeze_override_reason="INC-1 fix")
    kube.set_workload_behaviour("ready", namespace="production", image=f"{API}@{NEXT}")
    approver.answer("approve")
    h["r_shipped"] = promote(freeze_override_reason="INC-1 fix, take two")
    approver.join()
    h["end"] = datetime.now(UTC) + timedelta(seconds=1)
    h["freeze_file"] = freeze_file
    return h


def test_delivery_metrics_over_real_runs(
    history: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each figure of the week equals what the runs the test made say, read back from the
    API: counts, change failure, time to restore, time to validate, lead time by stage
    (commit time given once, missing once), approvals and the RFC's targets."""
    h = history
    zone = quiet_zone()
    result = delivery_metrics(
        start=h["start"],
        end=h["end"],
        timezone=zone,
        lookback_days=0,
        failure_window_hours=8,
        baseline=Baseline(deploys_per_week=1, incidents_per_week=4, source="before staging"),
        json_path=str(tmp_path / "metrics.json"),
        chart_path=str(tmp_path / "chart.svg"),
    )
    # What CI and the UI get: the JSON artifact, the file, the flow's return value agree.
    published = json.loads(
        latest_artifact("delivery-metrics-json").strip().removeprefix("```json").removesuffix("```")
    )
    assert (
        published
        == json.loads((tmp_path / "metrics.json").read_text())
        == result.model_dump(mode="json")
    )
    assert (tmp_path / "chart.svg").read_text().startswith("<svg")
    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
    capsys.readouterr()
    assert cli.main(["metrics", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == published
    assert "data:image/svg+xml;base64," in latest_artifact("delivery-metrics")
    (week,) = [w for w in published["weeks"] if w["has_data"]]
    staging, production = week["environments"]["staging"], week["environments"]["production"]

    bad, new, nxt = h["bad"], h["new"], h["next"]
    # Staging: three deploys, the first rolled back by its failed smoke tests.
    assert (staging["deploys"], staging["succeeded"], staging["rolled_back"]) == (3, 2, 1)
    assert staging["change_failure_rate"] == round(1 / 3, 4)
    assert staging["time_to_restore"]["median"] == pytest.approx(
        minutes(bad.end_time - bad.start_time), abs=0.01
    )
    validations = [minutes(child(d, "smoke-test").end_time - d.start_time) for d in (new, nxt)]
    assert staging["time_to_validate"]["count"] == 2
    assert staging["time_to_validate"]["median"] == pytest.approx(
        statistics.median(validations), abs=0.01
    )
    assert staging["validated_within_target"] == 2

    # Production: shipped NEW (p1), NEXT rolled back (p2), NEXT again (p3). p1 was followed
    # by p3 within 8 h (a fix-forward), p2 rolled back: 2 failed changes of 3.
    p1, p2, p3 = (child(h[k], "deploy") for k in ("r_approved", "r_rolled_back", "r_shipped"))
    assert (production["deploys"], production["succeeded"], production["rolled_back"]) == (3, 2, 1)
    assert (production["deployment_frequency"], production["failed_changes"]) == (2, 2)
    assert production["change_failure_rate"] == round(2 / 3, 4)
    restores = [minutes(p2.end_time - p2.start_time), minutes(p3.end_time - p1.end_time)]
    assert production["time_to_restore"]["median"] == pytest.approx(
        statistics.median(restores), abs=0.01
    )
    assert production["time_to_restore"]["max"] == pytest.approx(max(restores), abs=0.01)

    # Lead time: p1 from the commit time CI gave, p3 from NEXT's staging deploy (none given).
    decided = {
        k: datetime.fromisoformat(audit_of(h[k])["decided_at"]) for k in ("r_approved", "r_shipped")
    }
    requested = {k: h[k].start_time for k in decided}
    leads = [minutes(p1.end_time - h["commit"]), minutes(p3.end_time - nxt.start_time)]
    lead = production["lead_time"]
    assert (lead["changes"], lead["from_commit"]) == (2, 1)
    assert lead["total"]["mean"] == pytest.approx(statistics.fmean(leads), abs=0.02)
    stages = lead["stages"]
    assert stages["commit to staging deploy"] == pytest.approx(
        minutes(new.start_time - h["commit"]) / 2, abs=0.01
    )
    smokes = [span(child(d, "smoke-test")) for d in (new, nxt)]
    assert stages["smoke tests"] == pytest.approx(
        statistics.fmean(minutes(e - s) for s, e in smokes), abs=0.01
    )
    # p1 waited from NEW's deploy end to its request, unfrozen; p3 from NEXT's deploy end to
    # the freeze (waiting), then from the freeze to its request (frozen).
    waiting = [minutes(requested["r_approved"] - new.end_time), minutes(h["freeze"] - nxt.end_time)]
    assert stages["waiting to be promoted"] == pytest.approx(statistics.fmean(waiting), abs=0.01)
    assert stages["waiting for a freeze to end"] == pytest.approx(
        minutes(requested["r_shipped"] - h["freeze"]) / 2, abs=0.01
    )
    approvals_waits = [minutes(decided[k] - requested[k]) for k in decided]
    assert min(approvals_waits) >= APPROVAL_WAIT / 60
    assert stages["waiting for approval"] == pytest.approx(
        statistics.fmean(approvals_waits), abs=0.01
    )
    rollouts = [
        minutes(p1.end_time - decided["r_approved"]),
        minutes(p3.end_time - decided["r_shipped"]),
    ]
    assert stages["production rollout"] == pytest.approx(statistics.fmean(rollouts), abs=0.01)
    assert sum(stages.values()) == pytest.approx(lead["total"]["mean"], abs=0.05)

    # Approvals: six requested; approved (three), rejected, timed out, refused by the freeze.
    a = production["approvals"]
    assert (a["requested"], a["approved"], a["rejected"], a["timed_out"]) == (6, 3, 1, 1)
    assert (a["refused_before_gate"], a["freeze_overrides"], a["waiting"]) == (1, 2, 0)
    times = [
        minutes(datetime.fromisoformat(audit_of(h[k])["decided_at"]) - h[k].start_time)
        for k in ("r_approved", "r_rejected", "r_rolled_back", "r_shipped")
    ]
    assert a["time_to_decision"]["count"] == 4
    assert a["time_to_decision"]["median"] == pytest.approx(statistics.median(times), abs=0.01)

    # Targets against the configured baseline: 2 deploys >= 2 x 1; 2 incidents <= 4 / 2.
    t = {x["name"]: x for x in published["targets"]}
    assert (t["Deployment frequency"]["measured"], t["Deployment frequency"]["status"]) == (
        2,
        "met",
    )
    assert t["Production incidents from deployments"]["status"] == "met"
    assert t["Time to validate changes"]["status"] == "met"
    assert t["Test coverage in staging"]["status"] == "not measured"


def test_an_empty_window_says_no_data(prefect_api: None) -> None:
    """A window in which nothing ran: the report says "no data" and shows no figure."""
    result = delivery_metrics(
        start=datetime(2001, 1, 1, tzinfo=UTC), end=datetime(2001, 1, 15, tzinfo=UTC)
    )
    assert not result.has_data
    report = latest_artifact("delivery-metrics")
    assert "No data: no deploy, smoke-test or promotion run" in report
    assert "![" not in report
    rows = json.loads(latest_artifact("delivery-metrics-table"))
    assert {r["deploys"] for r in rows} == {"no data"}
    published = json.loads(
        latest_artifact("delivery-metrics-json").strip().removeprefix("```json").removesuffix("```")
    )
    assert [t["measured"] for t in published["targets"]] == [None] * 4
