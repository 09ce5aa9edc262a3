"""Tasks that read the pipeline's run history from the Prefect API, for the metrics.

Read only. The flow runs of ``deploy``, ``smoke-test`` and ``promote-to-production``
(their states and timestamps, who ran inside whom), joined with the records those flows
wrote: the ``deployments-<environment>`` table artifacts and the ``promotion-audit``
records. Anyone who can reach the API can write runs and artifacts, so every record is
validated into ``rsolv_staging.metrics`` types; what does not validate is skipped and
counted, never guessed at.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterStartTime,
    TaskRunFilter,
    TaskRunFilterId,
)
from prefect.client.schemas.objects import Artifact, FlowRun
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
from pydantic import ValidationError

from rsolv_staging.metrics import DeployRun, PromotionRun, SmokeRun

PAGE = 200  # the server's default maximum page
FLOWS = ("deploy", "smoke-test", "promote-to-production")
AUDIT_KEY = "promotion-audit"
Record = DeployRun | SmokeRun | PromotionRun


@task(name="read-delivery-history", cache_policy=NO_CACHE, task_run_name="history-{since:%Y-%m-%d}")
def read_delivery_history(since: datetime, until: datetime) -> tuple[list[Record], list[str]]:
    """The delivery records of runs started in [since, until), and notes on what was skipped.

    Returns:
        The records (deploys that recorded a deployment, finished smoke runs, promotions)
        and one note per kind of record left out, with its count.
    """
    with get_client(sync_client=True) as client:
        runs = {name: list(_flow_runs(client, name, since, until)) for name in FLOWS}
        everything = [r for group in runs.values() for r in group]
        parents = _parent_flow_runs(client, [r for r in everything if r.parent_task_run_id])
        artifacts = _artifact_rows(client, [str(r.id) for r in everything])
    records: list[Record] = []
    skipped: dict[str, int] = {}
    for name, group in runs.items():
        for run in group:
            try:
                record = _record(
                    name, run, parents.get(str(run.id)), artifacts.get(str(run.id), {})
                )
            except (ValidationError, ValueError, KeyError, TypeError):
                record, why = None, f"{name} runs whose records do not validate"
            else:
                why = _why_none(name)
            if record is None:
                skipped[why] = skipped.get(why, 0) + 1
            else:
                records.append(record)
    notes = [f"{count} {why}: not counted." for why, count in sorted(skipped.items())]
    return records, notes


def _why_none(flow: str) -> str:
    return {
        "deploy": "deploy runs with no deployment record (refused before any write, "
        "crashed, or still running)",
        "smoke-test": "smoke-test runs not finished",
        "promote-to-production": "promotion runs with no start",
    }[flow]


def _flow_runs(
    client: SyncPrefectClient, flow: str, since: datetime, until: datetime
) -> Iterator[FlowRun]:
    window = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since, before_=until))
    offset = 0
    while True:
        page = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
            flow_run_filter=window,
            sort=FlowRunSort.START_TIME_ASC,
            limit=PAGE,
            offset=offset,
        )
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


def _chunks(items: Sequence[Any], size: int = PAGE) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _parent_flow_runs(client: SyncPrefectClient, children: Sequence[FlowRun]) -> dict[str, str]:
    """Subflow run id -> the id of the flow run it ran inside (through its parent task run)."""
    by_task = {str(r.parent_task_run_id): str(r.id) for r in children}
    parents: dict[str, str] = {}
    for chunk in _chunks(list(by_task)):
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=[UUID(t) for t in chunk])),
            limit=PAGE,
        )
        for task_run in tasks:
            parents[by_task[str(task_run.id)]] = str(task_run.flow_run_id)
    return parents


def _artifact_rows(
    client: SyncPrefectClient, run_ids: Sequence[str]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Flow run id -> artifact key -> the rows of its newest table artifact under that key."""
    keys = ["deployments-staging", "deployments-production", AUDIT_KEY]
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for chunk in _chunks(list(run_ids)):
        for artifact in _artifacts(client, keys, chunk):
            rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
            mine = found.setdefault(str(artifact.flow_run_id), {})
            if artifact.key and artifact.key not in mine and isinstance(rows, list):
                mine[artifact.key] = [r for r in rows if isinstance(r, dict)]
    return found


def _artifacts(
    client: SyncPrefectClient, keys: list[str], run_ids: Sequence[str]
) -> Iterator[Artifact]:
    """The artifacts under ``keys`` of these runs, newest first, page by page."""
    offset = 0
    while True:
        page = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=keys),
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(i) for i in run_ids]),
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=PAGE,
            offset=offset,
        )
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


def _record(
    flow: str, run: FlowRun, parent: str | None, rows: dict[str, list[dict[str, Any]]]
) -> Record | None:
    if flow == "deploy":
        return _deploy(run, parent, rows)
    if flow == "smoke-test":
        return _smoke(run, parent)
    return _promotion(run, rows.get(AUDIT_KEY, []))


def _deploy(
    run: FlowRun, parent: str | None, rows: dict[str, list[dict[str, Any]]]
) -> DeployRun | None:
    environment = str(run.parameters.get("environment", "staging"))
    records = rows.get(f"deployments-{environment}")
    if not records or run.start_time is None or run.end_time is None:
        return None
    committed = {r.get("committed") for r in records} - {None, "", "-"}
    return DeployRun(
        run_id=str(run.id),
        environment=environment,
        started=run.start_time,
        finished=run.end_time,
        result=records[0]["result"],
        images={str(r["app"]): str(r["digest"]) for r in records},
        previous_images={
            str(r["app"]): str(r["previous digest"])
            for r in records
            if r.get("previous digest") not in (None, "", "-")
        },
        committed_at=datetime.fromisoformat(str(committed.pop())) if len(committed) == 1 else None,
        promotion_run=parent if environment == "production" else None,
    )


def _smoke(run: FlowRun, parent: str | None) -> SmokeRun | None:
    state = run.state
    if state is None or not state.is_final() or run.start_time is None or run.end_time is None:
        return None
    return SmokeRun(
        run_id=str(run.id),
        environment=str(run.parameters.get("environment", "staging")),
        started=run.start_time,
        finished=run.end_time,
        passed=state.is_completed(),
        deploy_run=parent,
    )


def _promotion(run: FlowRun, audit: Iterable[dict[str, Any]]) -> PromotionRun | None:
    if run.start_time is None:
        return None
    row = next(iter(audit), None)
    final = run.state is not None and run.state.is_final()
    decided = (row or {}).get("decided_at") or None
    return PromotionRun(
        run_id=str(run.id),
        requested_at=run.start_time,
        finished=run.end_time if final else None,
        decision=row["decision"] if row else None,
        decided_at=datetime.fromisoformat(str(decided)) if decided else None,
        freeze_override=bool(row and row.get("freeze_override")),
        waiting=not final,
    )
