"""The delivery metrics' arithmetic, on hand-built run records (no server).

The history below spans ISO weeks 2026-W45 and W46 (W47 is empty); every expected figure
is worked out by hand in the comments next to it, from the timestamps written here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rsolv_staging.metrics import (
    Baseline,
    DeliveryMetrics,
    DeployRun,
    PromotionRun,
    SmokeRun,
    compute_metrics,
    delivery_window,
    freeze_overlap,
    judge_changes,
)
from rsolv_staging.metrics_report import chart_svg, markdown, table_rows
from rsolv_staging.promotion import FreezeWindow

A, B, C, D, X = ({"rsolv-api": f"api@sha256:{c * 64}"} for c in "abcd0")


def at(day: int, hhmm: str) -> datetime:
    """November ``day`` 2026 at ``hh:mm`` UTC (2 Nov is the Monday of W45)."""
    hour, minute = map(int, hhmm.split(":"))
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def staging(
    run: str, start: datetime, end: datetime, result: str, images: dict[str, str], **kw: object
) -> DeployRun:
    return DeployRun(
        run_id=run,
        environment="staging",
        started=start,
        finished=end,
        result=result,
        images=images,
        **kw,
    )  # type: ignore[arg-type]


def production(
    run: str,
    start: datetime,
    end: datetime,
    result: str,
    images: dict[str, str],
    previous: dict[str, str],
    promotion: str,
) -> DeployRun:
    return DeployRun(
        run_id=run,
        environment="production",
        started=start,
        finished=end,
        result=result,  # type: ignore[arg-type]
        images=images,
        previous_images=previous,
        promotion_run=promotion,
    )


FREEZE = FreezeWindow(
    name="maintenance",
    start=datetime(2026, 11, 9, 10),
    end=datetime(2026, 11, 9, 12),
    timezone="UTC",
)

HISTORY = [
    # W44, before the window: links nothing, counted nowhere.
    staging(
        "s0",
        datetime(2026, 10, 30, 9, tzinfo=UTC),
        datetime(2026, 10, 30, 9, 30, tzinfo=UTC),
        "rolled back",
        B,
    ),
    # --- W45
    staging("s1", at(2, "10:00"), at(2, "10:20"), "succeeded", A, committed_at=at(2, "09:30")),
    SmokeRun(
        run_id="k1",
        environment="staging",
        started=at(2, "10:12"),
        finished=at(2, "10:18"),
        passed=True,
        deploy_run="s1",
    ),
    staging("s2", at(3, "10:00"), at(3, "10:50"), "rolled back", B),
    SmokeRun(
        run_id="k2",
        environment="staging",
        started=at(3, "10:10"),
        finished=at(3, "10:40"),
        passed=False,
        deploy_run="s2",
    ),
    PromotionRun(
        run_id="r1",
        requested_at=at(2, "14:00"),
        decision="approved",
        decided_at=at(2, "15:00"),
        finished=at(2, "15:30"),
    ),
    production("p1", at(2, "15:05"), at(2, "15:25"), "succeeded", A, X, "r1"),
    PromotionRun(
        run_id="r2",
        requested_at=at(4, "09:00"),
        decision="rejected",
        decided_at=at(4, "09:45"),
        finished=at(4, "09:46"),
    ),
    PromotionRun(
        run_id="r3", requested_at=at(5, "09:00"), decision="timed out", finished=at(5, "10:00")
    ),
    PromotionRun(
        run_id="r4", requested_at=at(5, "12:00"), finished=at(5, "12:01")
    ),  # refused before the gate
    # --- W46
    staging("s3", at(9, "08:00"), at(9, "08:40"), "succeeded", C),  # no commit time
    SmokeRun(
        run_id="k3",
        environment="staging",
        started=at(9, "08:05"),
        finished=at(9, "08:35"),
        passed=True,
        deploy_run="s3",
    ),
    PromotionRun(
        run_id="r5",
        requested_at=at(9, "13:00"),
        decision="approved",
        decided_at=at(9, "13:30"),
        finished=at(9, "13:55"),
    ),
    production("p2", at(9, "13:32"), at(9, "13:50"), "succeeded", C, A, "r5"),
    # A revert to A, through a promotion that overrode a freeze, 82 min after p2 ended.
    PromotionRun(
        run_id="r6",
        requested_at=at(9, "15:00"),
        decision="approved",
        decided_at=at(9, "15:10"),
        finished=at(9, "15:35"),
        freeze_override=True,
    ),
    production("p3", at(9, "15:12"), at(9, "15:30"), "succeeded", A, C, "r6"),
    PromotionRun(
        run_id="r7",
        requested_at=at(10, "10:00"),
        decision="approved",
        decided_at=at(10, "10:20"),
        finished=at(10, "10:45"),
    ),
    production("p4", at(10, "10:22"), at(10, "10:40"), "rolled back", D, A, "r7"),
]


@pytest.fixture(scope="module")
def metrics() -> DeliveryMetrics:
    return compute_metrics(
        HISTORY,
        start=at(2, "00:00"),
        end=at(23, "00:00"),
        freeze_windows=[FREEZE],
        failure_window=timedelta(hours=8),
    )


def test_weeks_of_the_window_and_the_empty_one(metrics: DeliveryMetrics) -> None:
    """Three ISO weeks; W47 has no run at all, so it has no figures (not zeros)."""
    assert [w.week for w in metrics.weeks] == ["2026-W45", "2026-W46", "2026-W47"]
    assert [w.has_data for w in metrics.weeks] == [True, True, False]
    assert metrics.weeks[2].environments == {}
    assert [w.partial for w in metrics.weeks] == [False, False, False]


def test_deploy_counts_frequency_and_change_failure(metrics: DeliveryMetrics) -> None:
    """W45 staging: s1 ok, s2 rolled back (s0 is W44: not counted); production p1 ok (the
    next production deploy is 6 days later). W46 production: p2 ok but p3 followed it 82
    min later (failed), p3 ok, p4 rolled back (failed): 2 of 3."""
    w45, w46 = (w.environments for w in metrics.weeks[:2])
    s, p = w45["staging"], w45["production"]
    assert (s.deploys, s.succeeded, s.rolled_back, s.failed) == (2, 1, 1, 0)
    assert (s.deployment_frequency, s.failed_changes, s.change_failure_rate) == (1, 1, 0.5)
    assert s.time_to_restore.median == 50  # s2: 10:00 -> 10:50
    assert (p.deploys, p.deployment_frequency, p.failed_changes, p.change_failure_rate) == (
        1,
        1,
        0,
        0,
    )
    assert p.time_to_restore is None
    p = w46["production"]
    assert (p.deploys, p.succeeded, p.rolled_back) == (3, 2, 1)
    assert (p.failed_changes, p.change_failure_rate) == (2, round(2 / 3, 4))
    # p2: its end 13:50 to p3's end 15:30 = 100; p4 rolled back: 10:22 -> 10:40 = 18.
    assert (p.time_to_restore.count, p.time_to_restore.median, p.time_to_restore.max) == (
        2,
        59,
        100,
    )
    assert w46["staging"].change_failure_rate == 0


def test_lead_time_by_stage(metrics: DeliveryMetrics) -> None:
    """p1 (W45): commit 09:30 -> 15:25 = 355 min = 30 CI + 14 staging (20 - 6 smoke) + 6
    smoke + 220 waiting (10:20 -> 14:00) + 60 approval + 25 rollout (15:00 -> 15:25)."""
    lead = metrics.weeks[0].environments["production"].lead_time
    assert (lead.changes, lead.from_commit, lead.total.median) == (1, 1, 355)
    assert lead.stages == {
        "commit to staging deploy": 30,
        "staging deploy": 14,
        "smoke tests": 6,
        "waiting to be promoted": 220,
        "waiting for a freeze to end": 0,
        "waiting for approval": 60,
        "production rollout": 25,
    }


def test_lead_time_without_a_commit_time_and_through_a_freeze(metrics: DeliveryMetrics) -> None:
    """W46: p2 starts at s3's start (no commit time): 08:00 -> 13:50 = 350 = 10 staging +
    30 smoke + 140 waiting + 120 freeze (10:00-12:00 inside 08:40 -> 13:00) + 30 approval
    + 20 rollout. p3 ships A again, so it links to s1 a week earlier: 09:30 (2 Nov) ->
    15:30 (9 Nov) = 10440 = 30 + 14 + 6 + 10240 waiting + 120 freeze + 10 + 20. Stage
    means over the two: they add up to the mean 5395."""
    lead = metrics.weeks[1].environments["production"].lead_time
    assert (lead.changes, lead.from_commit) == (2, 1)
    assert (lead.total.median, lead.total.mean, lead.total.max) == (5395, 5395, 10440)
    assert lead.stages == {
        "commit to staging deploy": 15,  # only p3 had one: 30 / 2 changes
        "staging deploy": 12,
        "smoke tests": 18,
        "waiting to be promoted": 5190,
        "waiting for a freeze to end": 120,
        "waiting for approval": 20,
        "production rollout": 20,
    }
    assert sum(lead.stages.values()) == lead.total.mean
    assert any(
        "2026-W46: 1 of 2 production change(s) had no commit time" in n for n in metrics.notes
    )


def test_time_to_validate_against_thirty_minutes(metrics: DeliveryMetrics) -> None:
    """s1: 10:00 -> smoke passed 10:18 = 18 min (within); s2's smoke failed: not a
    validation; s3: 08:00 -> 08:35 = 35 min (not within)."""
    w45, w46 = (w.environments["staging"] for w in metrics.weeks[:2])
    assert (w45.time_to_validate.count, w45.time_to_validate.median) == (1, 18)
    assert w45.validated_within_target == 1
    assert (w46.time_to_validate.median, w46.validated_within_target) == (35, 0)
    # Staging lead times: s1 30 + 20 = 50 from its commit, s3 40 from its start.
    assert (w45.lead_time.total.median, w45.lead_time.from_commit) == (50, 1)
    assert (w46.lead_time.total.median, w46.lead_time.from_commit) == (40, 0)


def test_approvals(metrics: DeliveryMetrics) -> None:
    """W45: r1 approved after 60 min, r2 rejected after 45, r3 timed out, r4 refused
    before the gate. W46: three approvals after 30, 10, 20 min, one freeze override."""
    a = metrics.weeks[0].environments["production"].approvals
    assert (a.requested, a.approved, a.rejected, a.timed_out, a.refused_before_gate) == (
        4,
        1,
        1,
        1,
        1,
    )
    assert (a.time_to_decision.count, a.time_to_decision.median, a.time_to_decision.max) == (
        2,
        52.5,
        60,
    )
    assert a.freeze_overrides == 0
    a = metrics.weeks[1].environments["production"].approvals
    assert (a.requested, a.approved, a.freeze_overrides, a.time_to_decision.median) == (3, 3, 1, 20)


def test_targets_against_the_first_week(metrics: DeliveryMetrics) -> None:
    """Baseline W45: 1 production deploy, 0 failed changes. W46: 2 deploys (met: >= 2x),
    2 incidents against 0 (cannot be judged); validation median of 18 and 35 = 26.5."""
    t = {x.name: x for x in metrics.targets}
    f = t["Deployment frequency"]
    assert (f.baseline, f.measured, f.status) == (1, 2, "met")
    assert "2026-W45" in f.baseline_source
    i = t["Production incidents from deployments"]
    assert (i.baseline, i.measured, i.status) == (0, 2, "no data")
    v = t["Time to validate changes"]
    assert (v.measured, v.status) == (26.5, "met")
    assert t["Test coverage in staging"].status == "not measured"


def test_targets_against_a_configured_baseline() -> None:
    """A configured baseline compares every week: deploys (1 + 2) / 2 = 1.5 >= 2 x 0.5;
    incidents (0 + 2) / 2 = 1 <= 4 / 2; 3 against 1.5 would not be."""
    got = compute_metrics(
        HISTORY,
        start=at(2, "00:00"),
        end=at(16, "00:00"),
        freeze_windows=[FREEZE],
        baseline=Baseline(deploys_per_week=0.5, incidents_per_week=4, source="2025 spreadsheet"),
    )
    t = {x.name: x for x in got.targets}
    assert (t["Deployment frequency"].measured, t["Deployment frequency"].status) == (1.5, "met")
    assert t["Deployment frequency"].baseline_source == "2025 spreadsheet"
    i = t["Production incidents from deployments"]
    assert (i.baseline, i.measured, i.status) == (4, 1, "met")
    strict = compute_metrics(
        HISTORY,
        start=at(2, "00:00"),
        end=at(16, "00:00"),
        baseline=Baseline(deploys_per_week=1, incidents_per_week=1.5),
    )
    t = {x.name: x for x in strict.targets}
    assert t["Deployment frequency"].status == "not met"  # 1.5 < 2
    assert t["Production incidents from deployments"].status == "not met"  # 1 > 0.75


def test_an_empty_window_says_no_data() -> None:
    """No run between start and end: no figure, every target "no data", and the report says so."""
    got = compute_metrics(HISTORY, start=at(16, "00:00"), end=at(30, "00:00"))
    assert not got.has_data
    assert got.notes[0].startswith("No data")
    assert all(not w.has_data and w.environments == {} for w in got.weeks)
    assert {t.status for t in got.targets} == {"no data", "not measured"}
    assert all(t.measured is None for t in got.targets)
    report = markdown(got, chart_svg(got))
    assert "No data" in report
    assert "| 0 " not in report
    assert {r["deploys"] for r in table_rows(got)} == {"no data"}


def test_a_failed_rollback_is_restored_by_the_next_good_deploy_and_the_window_bounds_fixes() -> (
    None
):
    """A failed rollback at 10:00 is restored when the next deploy that succeeds ends
    (12:30: 150 min). A deploy followed 7 h 59 min after its end is a failed change; one
    followed after 8 h 1 min is not."""
    p = [
        production("f", at(2, "10:00"), at(2, "10:10"), "failed", B, A, "r"),
        production("g", at(2, "12:00"), at(2, "12:30"), "succeeded", A, B, "r"),
        production("h", at(2, "20:29"), at(2, "20:40"), "succeeded", C, A, "r"),  # 7:59 after g
        production("i", at(3, "04:41"), at(3, "05:00"), "succeeded", D, C, "r"),  # 8:01 after h
    ]
    judged = {c.deploy.run_id: c for c in judge_changes(p, "production", timedelta(hours=8))}
    assert (judged["f"].failed, judged["f"].restore_minutes) == (True, 150)
    assert (judged["g"].failed, judged["g"].restore_minutes) == (
        True,
        20 * 60 + 40 - (12 * 60 + 30),
    )
    assert (judged["h"].failed, judged["i"].failed) == (False, False)


def test_freeze_overlap_counts_overlapping_windows_once() -> None:
    """Windows 10-12 and 11-13 inside 09:00-12:30: 10:00-12:30 frozen = 150 min."""
    w = [
        FreezeWindow(
            name="a", start=datetime(2026, 11, 2, 10), end=datetime(2026, 11, 2, 12), timezone="UTC"
        ),
        FreezeWindow(
            name="b", start=datetime(2026, 11, 2, 11), end=datetime(2026, 11, 2, 13), timezone="UTC"
        ),
    ]
    assert freeze_overlap(at(2, "09:00"), at(2, "12:30"), w) == timedelta(minutes=150)


def test_the_report_shows_targets_chart_and_no_data_weeks(metrics: DeliveryMetrics) -> None:
    """The markdown carries the targets table, the chart as a data URI, and W47 as "no
    data"; the SVG draws the 30-minute line and labels the empty week."""
    svg = chart_svg(metrics)
    report = markdown(metrics, svg)
    assert "| Time to validate changes" in report
    assert "](data:image/svg+xml;base64," in report
    assert "| 2026-W47 | no data |" in report
    assert svg.startswith("<svg")
    assert "RFC 002 target: &lt; 30 min" in svg
    assert "no data" in svg
    rows = table_rows(metrics)
    assert rows[-1] == {"week": "2026-W47", "environment": "-", "deploys": "no data"}


MONDAY = datetime(2026, 11, 9, tzinfo=UTC)  # 00:00, the start of W46


@pytest.mark.parametrize(
    ("now", "kwargs", "expected"),
    [
        # Thursday of W46, 4 weeks: W43 to W46 so far.
        (at(12, "15:00"), {}, (MONDAY - timedelta(weeks=3), at(12, "15:00"))),
        # Only complete weeks: W42 to W45, up to W46's Monday.
        (at(12, "15:00"), {"complete_weeks_only": True}, (MONDAY - timedelta(weeks=4), MONDAY)),
        # An end on a Monday 00:00 closes the week before it.
        (at(20, "00:00"), {"end": MONDAY, "weeks": 1}, (MONDAY - timedelta(weeks=1), MONDAY)),
        # Naive times are read in the zone; weeks start at local midnight.
        (
            at(12, "15:00"),
            {
                "start": datetime(2026, 11, 9),
                "end": datetime(2026, 11, 10),
                "timezone": "Asia/Tokyo",
            },
            (datetime(2026, 11, 8, 15, tzinfo=UTC), datetime(2026, 11, 9, 15, tzinfo=UTC)),
        ),
    ],
)
def test_the_window_from_the_parameters(
    now: datetime, kwargs: dict[str, Any], expected: tuple[datetime, datetime]
) -> None:
    """weeks counts ISO weeks back from end's week; complete_weeks_only stops at this Monday."""
    args = {"start": None, "end": None, "weeks": 4, "complete_weeks_only": False, "timezone": "UTC"}
    assert delivery_window(now, **{**args, **kwargs}) == expected


def test_an_empty_or_reversed_window_is_refused() -> None:
    """start at or after end, or fewer than one week, is a usage error before any read."""
    with pytest.raises(ValueError, match="empty"):
        delivery_window(
            at(12, "15:00"),
            start=at(12, "16:00"),
            end=at(12, "15:00"),
            weeks=4,
            complete_weeks_only=False,
            timezone="UTC",
        )
    with pytest.raises(ValueError, match="at least 1"):
        delivery_window(
            at(12, "15:00"),
            start=None,
            end=None,
            weeks=0,
            complete_weeks_only=False,
            timezone="UTC",
        )
