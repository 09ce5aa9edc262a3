"""RFC 002's success metrics from the pipeline's run history: pure computation, no I/O.

Input: typed records of the flow runs that matter (``DeployRun``: one deploy-flow run
with its ``deployments-<environment>`` record; ``SmokeRun``: one smoke-test run;
``PromotionRun``: one promote-to-production run with its ``promotion-audit`` record),
read from the Prefect API by ``tasks/run_history.py``. Output: ``DeliveryMetrics``, per
ISO week and per environment, with RFC 002's targets beside the measured values.

Definitions (the README's ``delivery-metrics`` section repeats them):

- **Deployment frequency**: deploys that succeeded, per week (by the deploy's start).
- **Lead time** of a production change: from the commit that triggered the staging
  deploy of the same digests (``committed_at``, passed by CI) to the end of the
  production deploy. Without a commit time it starts at that staging deploy's start, and
  the figures count how many did. Its stages add up to it: commit to staging deploy,
  staging deploy (rollout, prune, record), smoke tests, waiting to be promoted, waiting
  for a freeze to end (the part of the wait between staging and the promotion request
  that lies inside a freeze window), waiting for approval (request to decision),
  production rollout (decision to the production deploy's end, its smoke tests included).
  Stages are means over the week's changes, so they add up to the mean lead time.
- **Change failure rate**: failed changes / deploys. A production deploy failed when it
  was rolled back (or its rollback failed), or when another production deploy succeeded
  within ``failure_window`` after it ended: one that put back its previous digests (a
  revert), or any new promotion (a fix-forward). A staging deploy failed when it was
  rolled back or failed.
- **Time to restore**: rolled back: the failed deploy's start to its end (the rollback
  done); rollback failed: its start to the end of the next production deploy that
  succeeded; reverted or fixed forward: the bad deploy's end to the end of the one after.
- **Time to validate**: a staging deploy's start to the end of its passing smoke tests.
- **Approvals**: per promotion requested in the week: its decision (approved, rejected,
  timed out, refused after the decision), refusals before the gate (no audit record),
  freeze overrides, and time to decision (request to decision).

A week with no run of any kind has no figures ("no data"), never zeros; a ratio or a
duration with nothing to measure is None.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from rsolv_staging.promotion import FreezeWindow

Result = Literal["succeeded", "rolled back", "failed"]
AuditDecision = Literal["approved", "rejected", "timed out", "refused"]

VALIDATE_TARGET_MINUTES = 30.0  # RFC 002: "Time to validate changes: <30 minutes"
STAGES = (
    "commit to staging deploy",
    "staging deploy",
    "smoke tests",
    "waiting to be promoted",
    "waiting for a freeze to end",
    "waiting for approval",
    "production rollout",
)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeployRun(_Record):
    """One run of the deploy flow that recorded a deployment (``deployments-<env>``)."""

    kind: Literal["deploy"] = "deploy"
    run_id: str
    environment: str
    started: datetime
    finished: datetime
    result: Result
    images: dict[str, str] = Field(description="app -> digest deployed (every app)")
    previous_images: dict[str, str] = Field(default_factory=dict)
    committed_at: datetime | None = Field(
        default=None, description="The triggering commit's time, as CI passed it"
    )
    promotion_run: str | None = Field(
        default=None, description="The promote-to-production run this deploy ran inside"
    )


class SmokeRun(_Record):
    """One finished smoke-test run (alone or inside a deploy)."""

    kind: Literal["smoke"] = "smoke"
    run_id: str
    environment: str
    started: datetime
    finished: datetime
    passed: bool
    deploy_run: str | None = Field(default=None, description="The deploy it ran inside")


class PromotionRun(_Record):
    """One promote-to-production run, with its audit record when it wrote one."""

    kind: Literal["promotion"] = "promotion"
    run_id: str
    requested_at: datetime
    finished: datetime | None = None
    decision: AuditDecision | None = Field(
        default=None, description="From the audit record; None: refused before the gate"
    )
    decided_at: datetime | None = None
    freeze_override: bool = False
    waiting: bool = Field(default=False, description="Not final yet (e.g. paused at the gate)")


RunRecord = Annotated[DeployRun | SmokeRun | PromotionRun, Field(discriminator="kind")]


class Durations(BaseModel):
    """A set of durations, in minutes."""

    count: int
    median: float
    mean: float
    max: float


class LeadTimes(BaseModel):
    changes: int
    from_commit: int = Field(description="Changes whose lead time starts at the commit")
    total: Durations
    stages: dict[str, float | None] = Field(
        description="Mean minutes per stage (None: not measured, e.g. no commit time)"
    )


class Approvals(BaseModel):
    requested: int
    approved: int
    rejected: int
    timed_out: int
    refused_after_decision: int
    refused_before_gate: int
    waiting: int
    freeze_overrides: int
    time_to_decision: Durations | None


class EnvironmentWeek(BaseModel):
    environment: str
    deploys: int
    succeeded: int
    rolled_back: int
    failed: int
    deployment_frequency: int = Field(description="Deploys that succeeded")
    failed_changes: int
    change_failure_rate: float | None
    time_to_restore: Durations | None
    lead_time: LeadTimes | None
    time_to_validate: Durations | None = None
    validated_within_target: int | None = None
    approvals: Approvals | None = None


class Week(BaseModel):
    week: str = Field(description="ISO week, e.g. 2026-W49")
    starts: datetime
    ends: datetime
    partial: bool = Field(description="The window covers only part of this week")
    has_data: bool
    environments: dict[str, EnvironmentWeek] = Field(
        default_factory=dict, description="Empty when the week has no data"
    )


class Target(BaseModel):
    name: str
    target: str
    unit: str
    baseline: float | None
    baseline_source: str
    measured: float | None
    status: Literal["met", "not met", "no data", "not measured"]
    note: str = ""


class Baseline(BaseModel):
    """What the relative targets (2x deploys, -50% incidents) compare to."""

    deploys_per_week: float | None = Field(
        default=None,
        ge=0,
        description="Production deploys per week before (default: the window's first week "
        "with data)",
    )
    incidents_per_week: float | None = Field(
        default=None, ge=0, description="Failed production changes per week before"
    )
    source: str = Field(default="configured", description="Where these numbers come from")


class DeliveryMetrics(BaseModel):
    window_start: datetime
    window_end: datetime
    timezone: str
    failure_window_hours: float
    has_data: bool
    weeks: list[Week]
    targets: list[Target]
    notes: list[str]


def _minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60


def durations(values: Iterable[float]) -> Durations | None:
    """Count, median, mean and max of minutes; None when there are none."""
    got = list(values)
    if not got:
        return None
    return Durations(
        count=len(got),
        median=round(statistics.median(got), 2),
        mean=round(statistics.fmean(got), 2),
        max=round(max(got), 2),
    )


def iso_week(moment: datetime, zone: ZoneInfo) -> str:
    year, week, _ = moment.astimezone(zone).isocalendar()
    return f"{year}-W{week:02d}"


def week_bounds(
    start: datetime, end: datetime, zone: ZoneInfo
) -> list[tuple[str, datetime, datetime]]:
    """Every ISO week the window [start, end) touches: (name, Monday 00:00, next Monday)."""
    local = start.astimezone(zone)
    monday = datetime.combine(local.date() - timedelta(days=local.weekday()), datetime.min.time())
    weeks = []
    cursor = monday.replace(tzinfo=zone)
    while cursor < end:
        following = (cursor.replace(tzinfo=None) + timedelta(days=7)).replace(tzinfo=zone)
        weeks.append((iso_week(cursor, zone), cursor, following))
        cursor = following
    return weeks


def freeze_overlap(start: datetime, end: datetime, windows: Sequence[FreezeWindow]) -> timedelta:
    """How much of [start, end) lies inside freeze windows (overlapping windows count once)."""
    spans = sorted(
        (max(s, start), min(e, end))
        for s, e in (w.bounds() for w in windows)
        if s < end and e > start
    )
    total, reach = timedelta(0), start
    for s, e in spans:
        s = max(s, reach)
        if e > s:
            total += e - s
            reach = e
    return total


class _Change(BaseModel):
    """A production deploy judged: failed or not, and how long until restored."""

    deploy: DeployRun
    failed: bool
    restore_minutes: float | None


def judge_changes(
    deploys: Sequence[DeployRun], environment: str, failure_window: timedelta
) -> list[_Change]:
    """Each deploy to ``environment`` (oldest first), with whether it failed."""
    mine = sorted((d for d in deploys if d.environment == environment), key=lambda d: d.started)
    judged = []
    for i, d in enumerate(mine):
        later = [n for n in mine[i + 1 :] if n.result == "succeeded"]
        if d.result == "rolled back":
            judged.append(
                _Change(deploy=d, failed=True, restore_minutes=_minutes(d.finished - d.started))
            )
        elif d.result == "failed":
            fix = later[0] if later else None
            restore = _minutes(fix.finished - d.started) if fix else None
            judged.append(_Change(deploy=d, failed=True, restore_minutes=restore))
        elif (
            environment == "production"
            and later
            and later[0].started - d.finished <= failure_window
        ):
            # Reverted (the next one put back d's previous digests) or fixed forward: either
            # way d needed another change soon after it.
            restore = _minutes(later[0].finished - d.finished)
            judged.append(_Change(deploy=d, failed=True, restore_minutes=restore))
        else:
            judged.append(_Change(deploy=d, failed=False, restore_minutes=None))
    return judged


class _Lead(BaseModel):
    production: DeployRun
    from_commit: bool
    stages: dict[str, float | None]

    @property
    def total(self) -> float:
        return sum(v for v in self.stages.values() if v is not None)


def _staging_deploy_of(
    production: DeployRun, staging: Sequence[DeployRun], before: datetime
) -> DeployRun | None:
    """The newest staging deploy that succeeded with exactly the production deploy's digests
    before the promotion was requested: the release the promotion shipped."""
    candidates = [
        s
        for s in staging
        if s.environment == "staging"
        and s.result == "succeeded"
        and s.images == production.images
        and s.finished <= before
    ]
    return max(candidates, key=lambda s: s.started, default=None)


def lead_time(
    production: DeployRun,
    promotion: PromotionRun | None,
    staging_deploy: DeployRun | None,
    smoke: SmokeRun | None,
    freeze_windows: Sequence[FreezeWindow],
) -> _Lead | None:
    """The lead time of one production change, by stage (minutes); None when its staging
    deploy is unknown or its timestamps contradict each other."""
    if staging_deploy is None:
        return None
    s = staging_deploy
    requested = promotion.requested_at if promotion else production.started
    decided = (promotion.decided_at if promotion else None) or production.started
    committed = s.committed_at if s.committed_at and s.committed_at <= s.started else None
    smoke_minutes = _minutes(smoke.finished - smoke.started) if smoke else 0.0
    idle = requested - s.finished
    frozen = (
        freeze_overlap(s.finished, requested, freeze_windows)
        if idle > timedelta(0)
        else timedelta(0)
    )
    stages: dict[str, float | None] = {
        "commit to staging deploy": _minutes(s.started - committed) if committed else None,
        "staging deploy": _minutes(s.finished - s.started) - smoke_minutes,
        "smoke tests": smoke_minutes if smoke else None,
        "waiting to be promoted": _minutes(idle - frozen),
        "waiting for a freeze to end": _minutes(frozen),
        "waiting for approval": _minutes(decided - requested),
        "production rollout": _minutes(production.finished - decided),
    }
    if any(v is not None and v < 0 for v in stages.values()):
        return None
    return _Lead(production=production, from_commit=committed is not None, stages=stages)


def _lead_times(leads: Sequence[_Lead]) -> LeadTimes | None:
    if not leads:
        return None
    total = durations(lead.total for lead in leads)
    assert total is not None
    stages: dict[str, float | None] = {}
    for stage in (s for s in STAGES if s in leads[0].stages):
        values = [lead.stages[stage] for lead in leads]
        # A stage missing for some changes (no commit time) counts as zero in the mean,
        # so the stages still add up to the mean lead time; None only if never measured.
        measured = [v for v in values if v is not None]
        stages[stage] = round(sum(measured) / len(leads), 2) if measured else None
    return LeadTimes(
        changes=len(leads),
        from_commit=sum(lead.from_commit for lead in leads),
        total=total,
        stages=stages,
    )


def staging_lead(deploy: DeployRun, smoke: SmokeRun | None) -> _Lead:
    """Lead time to staging: the commit (or the deploy's start) to the deploy's end."""
    committed = (
        deploy.committed_at
        if deploy.committed_at and deploy.committed_at <= deploy.started
        else None
    )
    smoke_minutes = _minutes(smoke.finished - smoke.started) if smoke else None
    stages: dict[str, float | None] = {
        "commit to staging deploy": _minutes(deploy.started - committed) if committed else None,
        "staging deploy": _minutes(deploy.finished - deploy.started) - (smoke_minutes or 0.0),
        "smoke tests": smoke_minutes,
    }
    return _Lead(production=deploy, from_commit=committed is not None, stages=stages)


def approvals(promotions: Sequence[PromotionRun]) -> Approvals:
    """What happened to the promotions requested in one week."""
    decided = [p for p in promotions if p.decided_at is not None and p.decision != "timed out"]
    return Approvals(
        requested=len(promotions),
        approved=sum(p.decision == "approved" for p in promotions),
        rejected=sum(p.decision == "rejected" for p in promotions),
        timed_out=sum(p.decision == "timed out" for p in promotions),
        refused_after_decision=sum(p.decision == "refused" for p in promotions),
        refused_before_gate=sum(p.decision is None and not p.waiting for p in promotions),
        waiting=sum(p.waiting for p in promotions),
        freeze_overrides=sum(p.freeze_override for p in promotions),
        time_to_decision=durations(
            _minutes(p.decided_at - p.requested_at) for p in decided if p.decided_at
        ),
    )


class _History:
    """The records split by kind, with the links between them."""

    def __init__(self, records: Iterable[DeployRun | SmokeRun | PromotionRun]) -> None:
        records = list(records)
        self.deploys = [r for r in records if isinstance(r, DeployRun)]
        self.smoke = [r for r in records if isinstance(r, SmokeRun)]
        self.promotions = {r.run_id: r for r in records if isinstance(r, PromotionRun)}
        self.smoke_of = {s.deploy_run: s for s in self.smoke if s.deploy_run and s.passed}

    def lead(self, production: DeployRun, windows: Sequence[FreezeWindow]) -> _Lead | None:
        promotion = self.promotions.get(production.promotion_run or "")
        before = promotion.requested_at if promotion else production.started
        staging = _staging_deploy_of(production, self.deploys, before)
        smoke = self.smoke_of.get(staging.run_id) if staging else None
        return lead_time(production, promotion, staging, smoke, windows)


def compute_metrics(
    records: Iterable[DeployRun | SmokeRun | PromotionRun],
    *,
    start: datetime,
    end: datetime,
    timezone: str = "UTC",
    freeze_windows: Sequence[FreezeWindow] = (),
    failure_window: timedelta = timedelta(hours=8),
    baseline: Baseline | None = None,
) -> DeliveryMetrics:
    """RFC 002's metrics for the window [start, end), per ISO week and environment.

    ``records`` may reach before ``start`` (a production deploy's staging deploy, a
    change's predecessor) and after ``end`` (what followed a change): those link, they
    are not counted.
    """
    zone = ZoneInfo(timezone)
    history = _History(records)
    changes = {
        env: judge_changes(history.deploys, env, failure_window)
        for env in ("staging", "production")
    }
    notes: list[str] = []
    weeks = []
    for name, monday, following in week_bounds(start, end, zone):
        lo, hi = max(monday, start), min(following, end)
        weeks.append(
            _week(history, changes, name, (monday, following), (lo, hi), freeze_windows, notes)
        )
    has_data = any(w.has_data for w in weeks)
    if not has_data:
        notes.insert(
            0,
            f"No data: no deploy, smoke-test or promotion run between {start.isoformat()} "
            f"and {end.isoformat()}.",
        )
    return DeliveryMetrics(
        window_start=start,
        window_end=end,
        timezone=timezone,
        failure_window_hours=failure_window.total_seconds() / 3600,
        has_data=has_data,
        weeks=weeks,
        targets=targets(weeks, baseline),
        notes=notes,
    )


def _within(moment: datetime, span: tuple[datetime, datetime]) -> bool:
    return span[0] <= moment < span[1]


def _week(
    history: _History,
    changes: dict[str, list[_Change]],
    name: str,
    bounds: tuple[datetime, datetime],
    span: tuple[datetime, datetime],
    windows: Sequence[FreezeWindow],
    notes: list[str],
) -> Week:
    runs = [d.started for d in history.deploys] + [s.started for s in history.smoke]
    runs += [p.requested_at for p in history.promotions.values()]
    has_data = any(_within(t, span) for t in runs)
    week = Week(
        week=name, starts=bounds[0], ends=bounds[1], partial=span != bounds, has_data=has_data
    )
    if not has_data:
        return week
    for env in ("staging", "production"):
        judged = [c for c in changes[env] if _within(c.deploy.started, span)]
        week.environments[env] = _environment_week(history, env, judged, span, windows, notes, name)
    return week


def _environment_week(
    history: _History,
    env: str,
    judged: list[_Change],
    span: tuple[datetime, datetime],
    windows: Sequence[FreezeWindow],
    notes: list[str],
    name: str,
) -> EnvironmentWeek:
    deploys = [c.deploy for c in judged]
    failed = [c for c in judged if c.failed]
    figures = EnvironmentWeek(
        environment=env,
        deploys=len(deploys),
        succeeded=sum(d.result == "succeeded" for d in deploys),
        rolled_back=sum(d.result == "rolled back" for d in deploys),
        failed=sum(d.result == "failed" for d in deploys),
        deployment_frequency=sum(d.result == "succeeded" for d in deploys),
        failed_changes=len(failed),
        change_failure_rate=round(len(failed) / len(deploys), 4) if deploys else None,
        time_to_restore=durations(
            c.restore_minutes for c in failed if c.restore_minutes is not None
        ),
        lead_time=None,
    )
    succeeded = [d for d in deploys if d.result == "succeeded"]
    if env == "staging":
        figures.lead_time = _lead_times(
            [staging_lead(d, history.smoke_of.get(d.run_id)) for d in succeeded]
        )
        validated = [
            _minutes(smoke.finished - d.started)
            for d in deploys
            if (smoke := history.smoke_of.get(d.run_id)) is not None
        ]
        figures.time_to_validate = durations(validated)
        figures.validated_within_target = (
            sum(v < VALIDATE_TARGET_MINUTES for v in validated) if validated else None
        )
        return figures
    leads = [history.lead(d, windows) for d in succeeded]
    unlinked = sum(lead is None for lead in leads)
    if unlinked:
        notes.append(
            f"{name}: {unlinked} production deploy(s) without a lead time: no staging deploy "
            "of the same digests that succeeded before the promotion, in the history read."
        )
    figures.lead_time = _lead_times([lead for lead in leads if lead is not None])
    lead = figures.lead_time
    if lead is not None and lead.from_commit < lead.changes:
        notes.append(
            f"{name}: {lead.changes - lead.from_commit} of {lead.changes} production change(s) "
            "had no commit time (CI passes committed_at to the deploy): their lead time starts "
            "at the staging deploy's start."
        )
    figures.approvals = approvals(
        [p for p in history.promotions.values() if _within(p.requested_at, span)]
    )
    return figures


def targets(weeks: Sequence[Week], baseline: Baseline | None) -> list[Target]:
    """RFC 002's success metrics: target, baseline, measured value and verdict."""
    measured_weeks = [w for w in weeks if w.has_data]
    base_deploys: float | None
    base_incidents: float | None
    prod = [w.environments["production"] for w in measured_weeks]
    if baseline is not None and baseline.deploys_per_week is not None:
        base_deploys, base_incidents = baseline.deploys_per_week, baseline.incidents_per_week
        source, compared = baseline.source, prod
    elif prod:
        first = measured_weeks[0]
        base_deploys = float(prod[0].deployment_frequency)
        base_incidents = float(prod[0].failed_changes)
        if baseline is not None and baseline.incidents_per_week is not None:
            base_incidents = baseline.incidents_per_week
        source = f"first week with data, {first.week}"
        compared = prod[1:]
    else:
        base_deploys = base_incidents = None
        source, compared = "no data", []
    deploys = _mean([p.deployment_frequency for p in compared])
    incidents = _mean([p.failed_changes for p in compared])
    staging = [w.environments["staging"] for w in measured_weeks]
    validated = [m for s in staging if s.time_to_validate for m in [s.time_to_validate.median]]
    return [
        _relative(
            "Deployment frequency",
            "2x the baseline",
            "production deploys per week",
            base_deploys,
            source,
            deploys,
            lambda m, b: m >= 2 * b,
        ),
        _relative(
            "Production incidents from deployments",
            "-50% against the baseline",
            "failed production changes per week",
            base_incidents,
            source,
            incidents,
            lambda m, b: m <= 0.5 * b,
        ),
        Target(
            name="Time to validate changes",
            target=f"< {VALIDATE_TARGET_MINUTES:g} minutes",
            unit="minutes, staging deploy start to smoke tests passed (median of weekly medians)",
            baseline=None,
            baseline_source="absolute target",
            measured=round(statistics.median(validated), 2) if validated else None,
            status=(
                "no data"
                if not validated
                else "met"
                if statistics.median(validated) < VALIDATE_TARGET_MINUTES
                else "not met"
            ),
        ),
        Target(
            name="Test coverage in staging",
            target="> 80%",
            unit="percent",
            baseline=None,
            baseline_source="-",
            measured=None,
            status="not measured",
            note=(
                "The run history records which smoke checks ran and whether they passed, "
                "not how much of the product they exercise: no coverage report reaches "
                "Prefect. Feeding one (e.g. the apps' end-to-end suite run against staging) "
                "would make it measurable."
            ),
        ),
    ]


def _mean(values: Sequence[int]) -> float | None:
    return round(statistics.fmean(values), 2) if values else None


def _relative(
    name: str,
    target: str,
    unit: str,
    base: float | None,
    source: str,
    measured: float | None,
    met: Callable[[float, float], bool],
) -> Target:
    if base is None or measured is None:
        status: Literal["met", "not met", "no data", "not measured"] = "no data"
        note = (
            "needs a baseline and at least one week after it"
            if base is None or measured is None
            else ""
        )
    elif base == 0:
        status, note = (
            "no data",
            "The baseline is 0: a relative target cannot be judged against it.",
        )
    else:
        status, note = ("met" if met(measured, base) else "not met"), ""
    return Target(
        name=name,
        target=target,
        unit=unit,
        baseline=base,
        baseline_source=source,
        measured=measured,
        status=status,
        note=note,
    )


def delivery_window(
    now: datetime,
    *,
    start: datetime | None,
    end: datetime | None,
    weeks: int,
    complete_weeks_only: bool,
    timezone: str,
) -> tuple[datetime, datetime]:
    """The window [start, end) to measure, from the flow's parameters.

    ``end`` defaults to ``now``, or with ``complete_weeks_only`` to the Monday 00:00 that
    starts its week; ``start`` defaults to the Monday 00:00 of the ``weeks``-th ISO week
    counted back from the one ``end`` falls in (an ``end`` on a Monday 00:00 closes the
    previous week). Naive times are read in ``timezone``.

    Raises:
        ValueError: the window is empty or reversed, or ``weeks`` is below 1.
    """
    zone = ZoneInfo(timezone)

    def aware(moment: datetime) -> datetime:
        return moment if moment.tzinfo else moment.replace(tzinfo=zone)

    def monday(moment: datetime) -> datetime:
        local = moment.astimezone(zone)
        day = local.date() - timedelta(days=local.weekday())
        return datetime.combine(day, datetime.min.time()).replace(tzinfo=zone)

    if weeks < 1:
        raise ValueError("weeks must be at least 1")
    stop = aware(end) if end else now
    if complete_weeks_only:
        stop = monday(stop)
    last = monday(stop - timedelta(microseconds=1))
    first = (last.replace(tzinfo=None) - timedelta(days=7 * (weeks - 1))).replace(tzinfo=zone)
    begin = aware(start) if start else first
    if begin >= stop:
        raise ValueError(
            f"the window is empty: {begin.isoformat()} is not before {stop.isoformat()}"
        )
    return begin, stop
