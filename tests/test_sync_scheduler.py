"""The copy's schedule of table loads and post-data jobs (pure: no database, no processes)."""

from __future__ import annotations

import pytest

from rsolv_staging.exceptions import DataError
from rsolv_staging.sync import PostDataJob, PostDataObject, parse_toc, plan_post_data
from tasks.postgres.scheduler import CopySchedule

_LISTING = """\
3350; 2606 16392 CONSTRAINT app accounts accounts_pkey postgres
3352; 1259 16400 INDEX app accounts_doc_gin postgres
3354; 2606 16402 CONSTRAINT app orders orders_pkey postgres
3360; 2606 16410 FK CONSTRAINT app orders orders_account_id_fkey postgres
3362; 1259 16430 INDEX app audit audit_at postgres
"""
_OBJECTS = {
    16392: PostDataObject(table="app.accounts", cost=10),
    16400: PostDataObject(table="app.accounts", cost=500),
    16402: PostDataObject(table="app.orders", cost=30),
    16410: PostDataObject(table="app.orders", cost=40, references="app.accounts", requires=16392),
    16430: PostDataObject(table="app.audit", cost=5),
}
_SIZES = {"app.accounts": 100, "app.orders": 300, "app.audit": 50}


def _schedule(
    *, loads: int = 3, builds: int = 4, masked: tuple[str, ...] = (), small: float = 0
) -> CopySchedule:
    plan = plan_post_data(parse_toc(_LISTING), _OBJECTS, _SIZES)
    return CopySchedule(_SIZES, plan, masked=masked, loads=loads, builds=builds, small=small)


def _oids(jobs: list[PostDataJob]) -> list[list[int]]:
    return [[e.oid for e in job.entries] for job in jobs]


def test_tables_load_longest_chain_first_within_the_load_slots() -> None:
    """Tables start in load order (the one behind the costliest index first, though
    smaller), never more at once than there are load slots; a finished load frees one."""
    schedule = _schedule(loads=2)
    assert schedule.next_load() == "app.accounts"  # 100 bytes + a 500 index
    assert schedule.next_load() == "app.orders"
    assert schedule.next_load() is None  # both slots busy
    schedule.loaded("app.orders")
    assert schedule.next_load() == "app.audit"
    assert schedule.next_load() is None  # nothing left


def test_a_masked_table_waits_while_another_masked_one_loads() -> None:
    """Masking runs under the GIL: beside a masked load the next unmasked table goes
    first, and a masked one only when nothing else is left."""
    schedule = _schedule(masked=("app.accounts", "app.orders"))
    assert schedule.next_load() == "app.accounts"
    assert schedule.next_load() == "app.audit"  # out of turn: orders is masked too
    assert schedule.next_load() == "app.orders"


def test_nothing_is_built_before_its_tables_rows_are_in() -> None:
    """No post-data job before any load ends; a table's own keys and indexes as soon
    as its rows are in, while other tables still load."""
    schedule = _schedule()
    for _ in range(3):
        schedule.next_load()
    assert schedule.next_builds() == []
    schedule.loaded("app.audit")
    assert _oids(schedule.next_builds()) == [[16430]]
    schedule.loaded("app.accounts")
    # The key heads the chain of the GIN build, which conflicts with it: one at a time.
    assert _oids(schedule.next_builds()) == [[16392]]
    assert not schedule.finished()


def test_a_foreign_key_waits_for_both_tables_and_analyze_for_the_foreign_key() -> None:
    """Dependencies are honoured: the foreign key once both its tables are built, each
    table's ANALYZE once its foreign keys are in; everything runs exactly once and the
    schedule then reports the copy finished."""
    schedule = _schedule()
    while schedule.next_load() is not None:
        pass
    started: list[PostDataJob] = []
    for table in ("app.accounts", "app.orders", "app.audit"):
        schedule.loaded(table)
        started += schedule.next_builds()
    ran: list[PostDataJob] = []
    while started:
        job = started.pop(0)
        assert job.entries or job.analyze
        if job.entries and job.entries[0].oid == 16410:
            assert {16392, 16402} <= {e.oid for j in ran for e in j.entries}
        if job.analyze in ("app.accounts", "app.orders"):
            assert 16410 in {e.oid for j in ran for e in j.entries}
        ran.append(job)
        schedule.built(job)
        started += schedule.next_builds()
    assert sorted(e.oid for j in ran for e in j.entries) == [16392, 16400, 16402, 16410, 16430]
    assert sorted(str(j.analyze) for j in ran if j.analyze) == [
        "app.accounts",
        "app.audit",
        "app.orders",
    ]
    assert schedule.finished()


def test_no_more_builds_run_at_once_than_there_are_build_slots() -> None:
    """Ready work beyond the build slots waits for a running job to end."""
    schedule = _schedule(builds=1)
    while schedule.next_load() is not None:
        pass
    schedule.loaded("app.audit")
    schedule.loaded("app.orders")
    first = schedule.next_builds()
    assert len(first) == 1
    assert schedule.next_builds() == []
    schedule.built(first[0])
    assert len(schedule.next_builds()) == 1


def test_a_failed_load_holds_back_only_the_work_that_needs_its_rows() -> None:
    """A load that fails is never reported loaded: its table's builds and the foreign
    key to it are never handed out (the copy stops instead), other tables' work is,
    and the schedule never reports the copy finished."""
    schedule = _schedule()
    while schedule.next_load() is not None:
        pass
    schedule.loaded("app.orders")
    schedule.loaded("app.audit")  # app.accounts' load failed: never reported
    handed: list[PostDataJob] = []
    while jobs := schedule.next_builds():
        for job in jobs:
            handed.append(job)
            schedule.built(job)
    oids = {e.oid for job in handed for e in job.entries}
    assert oids == {16402, 16430}
    assert "app.accounts" not in {job.analyze for job in handed}
    assert "app.orders" not in {job.analyze for job in handed}  # its foreign key waits
    assert not schedule.finished()


def test_work_left_unscheduled_when_nothing_runs_is_an_error() -> None:
    """Nothing left to run but ready post-data work never handed out (no build slot):
    finished() raises instead of ending the copy without it."""
    schedule = _schedule(builds=0)
    while (table := schedule.next_load()) is not None:
        schedule.loaded(table)
    assert schedule.next_builds() == []
    with pytest.raises(DataError, match="left unscheduled"):
        schedule.finished()
