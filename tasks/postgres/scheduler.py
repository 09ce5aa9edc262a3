"""Which table load and which post-data job a copy starts next (bookkeeping, no I/O).

:func:`~tasks.postgres.pipeline.copy_database` runs the loads (one source session
each) and the post-data jobs (index builds, keys, foreign keys, ``ANALYZE``) in a pool
of threads; this schedule tells it what to start whenever something finishes: tables
in :func:`~rsolv_staging.sync.load_order` (a masked table not beside another one,
:func:`~rsolv_staging.sync.next_load`), and each post-data job as soon as its tables'
rows are in (:class:`~rsolv_staging.sync.PostDataQueue`), at most ``builds`` at once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from rsolv_staging.exceptions import DataError
from rsolv_staging.sync import PostDataJob, PostDataPlan, PostDataQueue, load_order, next_load


class CopySchedule:
    """The loads and post-data jobs of one copy: what is pending, running and next.

    The caller starts what :meth:`next_load` and :meth:`next_builds` return, reports
    each as it ends (:meth:`loaded`, :meth:`built`) and stops once :meth:`finished`.
    On a failure the caller stops asking: a table whose load failed is never reported
    loaded, so nothing that needs its rows is ever handed out.
    """

    def __init__(
        self,
        table_bytes: Mapping[str, int],
        post: PostDataPlan,
        *,
        masked: Collection[str] = (),
        loads: int,
        builds: int,
        small: float,
    ) -> None:
        """
        Args:
            table_bytes: The tables to load, by their size on the source.
            post: The post-data work of :func:`~rsolv_staging.sync.plan_post_data`.
            masked: Tables whose rows are masked on the way (in Python, under the GIL).
            loads: Loads at once (one source session each).
            builds: Post-data jobs at once.
            small: Below this estimate a build is batched with other cheap ones.
        """
        self._pending = load_order(table_bytes, post)
        self._masked = set(masked)
        self._queue = PostDataQueue(post)
        self._loads = loads
        self._builds = builds
        self._small = small
        self._loading: set[str] = set()
        self._building = 0

    def next_load(self) -> str | None:
        """The table to load now, or ``None`` (all started, or every load slot busy)."""
        if not self._pending or len(self._loading) >= self._loads:
            return None
        masking = bool(self._loading & self._masked)
        table = self._pending.pop(next_load(self._pending, self._masked, masking=masking))
        self._loading.add(table)
        return table

    def next_builds(self) -> list[PostDataJob]:
        """The post-data jobs to start now (as many as free build slots allow)."""
        jobs: list[PostDataJob] = []
        while self._building < self._builds:
            job = self._queue.next_job(self._small)
            if job is None:
                break
            self._building += 1
            jobs.append(job)
        return jobs

    def loaded(self, table: str) -> None:
        """``table``'s rows are in: its own indexes and keys may be built."""
        self._loading.discard(table)
        self._queue.loaded(table)

    def built(self, job: PostDataJob) -> None:
        """``job`` is done: what waited on it may start."""
        self._building -= 1
        self._queue.finished(job)

    def finished(self) -> bool:
        """Whether every load and post-data job has run (nothing pending or running).

        Raises:
            DataError: nothing is left to run, yet post-data work never became ready (a
                bug in the bookkeeping, not in the data).
        """
        if self._pending or self._loading or self._building:
            return False
        if not self._queue.done:
            raise DataError("post-data work was left unscheduled")
        return True


__all__ = ["CopySchedule"]
