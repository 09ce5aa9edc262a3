"""The copy of a sync: production's database at one snapshot into ``<live>_sync_new``.

The method and why it is fast are in ``rsolv_staging/sync.py``; in short: one exported
read-only snapshot on the source shared by ``pg_dump --schema-only`` and ``jobs``
binary COPY streams (:mod:`tasks.postgres.streams`), each table's indexes built as soon
as its rows are in (overlapping the rest of the load; :mod:`tasks.postgres.scheduler`
decides what runs when), then the remaining post-data with ``pg_restore -j``.
Staging is written only in databases beside the live one (``<live>_sync_new``); the
live database changes later, in :mod:`tasks.postgres.swap`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from prefect import task
from prefect.artifacts import update_progress_artifact
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import SecretStr

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import ConfigurationError, DataError
from rsolv_staging.sanitize import (
    MaskerFactory,
    MaskShape,
    Rules,
    inherit_rules,
    mask_shapes,
)
from rsolv_staging.settings import load_settings
from rsolv_staging.sync import (
    LARGE_OBJECTS,
    CopyResult,
    DatabaseProperties,
    Phase,
    PostDataJob,
    PostDataObject,
    PostDataPlan,
    SourceFacts,
    TocEntry,
    create_database_options,
    index_cost,
    major_of,
    parse_toc,
    plan_post_data,
    toc_list,
)
from tasks.postgres.catalog import (
    _MATVIEWS,
    _POST_DATA_OBJECTS,
    _TABLES,
    _Table,
    read_objects,
    read_sequences,
)
from tasks.postgres.connections import _error, _redact, connect_for_writing, refuse_production
from tasks.postgres.extensions import (
    _EXTENSION_CONFIG,
    _ConfigRelation,
    _copy_extension_config,
    _copy_large_objects,
    _copyable_properties,
    _set_database_properties,
    large_objects_checksum,
    read_database_properties,
)
from tasks.postgres.plan import SyncPlan, _masked_labels
from tasks.postgres.scheduler import CopySchedule
from tasks.postgres.sessions import (
    _admin,
    _ancestors,
    _logger,
    _read_only,
    _terminate,
    _unbounded,
    _with,
    _with_settings,
    source_session,
)
from tasks.postgres.streams import _frozen_heap, _masker_for, _Masking, _pipe_table, _PipeEnds
from tasks.postgres.tools import _Children, _run_tool, _tool_env
from tasks.postgres.verify import _checksums


@dataclass
class _Copy:
    """What the steps of one copy share: its two ends and their tools, the snapshot, the
    scratch directory, and what the copy records as it goes (phases, what it left out)."""

    source_dsn: SecretStr
    target_dsn: SecretStr
    production: Database
    plan: SyncPlan  # with the columns this snapshot masks, once the rules are fitted
    new_dsn: SecretStr
    source_tool: tuple[str, dict[str, str]]  # conninfo without password, environment
    new_tool: tuple[str, dict[str, str]]
    workdir: Path
    snapshot: str
    jobs: int
    phases: list[Phase] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    @property
    def bindir(self) -> Path:
        return Path(self.plan.tools)

    @property
    def archive(self) -> str:
        return str(self.workdir / "schema.dump")

    def phase(self, name: str, started: float, nbytes: int = 0) -> None:
        self.phases.append(Phase(name=name, seconds=time.perf_counter() - started, bytes=nbytes))

    def leave_out(self, items: Sequence[str]) -> None:
        for item in items:
            _logger().warning("Not copied: %s", item)
        self.left_out += items

    def contents(self, section: str) -> list[TocEntry]:
        """The TOC entries of one section of the schema dump."""
        listing = _run_tool(
            [str(self.bindir / "pg_restore"), "--list", f"--section={section}", self.archive],
            self.new_tool[1],
            self.new_dsn,
            "reading the dump's table of contents",
        )
        return parse_toc(listing)

    def restore(
        self,
        list_name: str,
        entries: Iterable[TocEntry],
        what: str,
        *options: str,
        children: _Children | None = None,
    ) -> None:
        """``pg_restore`` of ``entries`` of the schema dump into the new database."""
        listing = self.workdir / list_name
        listing.write_text(toc_list(entries))
        restore = [
            str(self.bindir / "pg_restore"),
            "--exit-on-error",
            "--no-owner",
            "--no-acl",
            # Tablespaces belong to production's server and disks: on staging's server
            # everything goes to its default tablespace (a missing one fails a restore).
            "--no-tablespaces",
            f"--dbname={self.new_tool[0]}",
        ]
        _run_tool(
            [*restore, *options, f"--use-list={listing}", self.archive],
            self.new_tool[1],
            self.new_dsn,
            what,
            children,
        )


@dataclass
class _Source:
    """The source at the copy's snapshot: what is copied, and the facts to verify."""

    tables: list[_Table]
    post_objects: dict[int, PostDataObject]
    matviews: list[tuple[str, str]]
    sequences: dict[str, tuple[int | None, bool]]
    objects: dict[str, int]
    database: DatabaseProperties
    config: list[_ConfigRelation]

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes for t in self.tables)


@task(cache_policy=NO_CACHE, task_run_name="copy_database-{plan.new}")
def copy_database(
    source_dsn: SecretStr,
    target_dsn: SecretStr,
    production: Database,
    plan: SyncPlan,
    *,
    rules: Rules | None = None,
    salt: SecretStr | None = None,
    jobs: int = 2,
    checksums: bool = False,
    progress_artifact_id: UUID | None = None,
) -> CopyResult:
    """Copy the source, at one snapshot, into a fresh ``<live>_sync_new`` on the target.

    Args:
        source_dsn: Production's database (only read).
        target_dsn: Staging's server at a maintenance database.
        production: Production's database in the environment model (refused as a target).
        plan: From :func:`prepare_sync`.
        rules: Sanitization rules (masked in the stream, before the target sees a value).
        salt: Secret key of the deterministic maskers (needed with rules).
        jobs: Parallel COPY streams, and post-data jobs (index builds, keys, ANALYZE)
            running beside them.
        checksums: Also checksum every table on the source (verified after the copy).
        progress_artifact_id: A progress artifact to update while copying.

    Returns:
        Per-phase timings and the source facts to verify against.

    Raises:
        DataError: a step failed; the live staging database is untouched.
    """
    new_dsn = _unbounded(_with(target_dsn, dbname=plan.new), plan.target_version)
    refuse_production(new_dsn, production)
    source_tool, new_tool = _tool_ends(source_dsn, new_dsn, plan)
    factory = MaskerFactory(salt.get_secret_value().encode()) if rules and salt else None
    if rules is not None and factory is None:
        raise ConfigurationError("sanitization rules need a salt secret")
    with (
        tempfile.TemporaryDirectory(prefix="rsolv-sync-") as workdir,
        source_session(source_dsn) as snap,
    ):
        started = time.perf_counter()
        copy = _Copy(
            source_dsn=source_dsn,
            target_dsn=target_dsn,
            production=production,
            plan=plan,
            new_dsn=new_dsn,
            source_tool=source_tool,
            new_tool=new_tool,
            workdir=Path(workdir),
            snapshot=_export_snapshot(snap),
            jobs=jobs,
        )
        source = _read_source(snap)
        rules, shapes = _fit_rules(copy, snap, source.tables, rules)
        source.database = _create_new_database(copy, source.database)
        post = _restore_schema(copy, source)
        copy.phase("schema (pg_dump --schema-only, pre-data restore, sequences)", started)
        maskings = {t.key: _masker_for(t, rules, factory, shapes) for t in source.tables}
        rows = _load_rows(copy, source, post, maskings, progress_artifact_id)
        if source.config:
            rows.update(_copy_config_tables(copy, source.config))
        if source.objects.get(LARGE_OBJECTS):
            _copy_large_objects_of(copy, empty=rules is not None and rules.large_objects == "empty")
        _finish_post_data(copy, source, post)
        source_checksums = _source_checksums(copy, snap, source) if checksums else {}
        snap.rollback()
    if progress_artifact_id is not None:
        _progress(progress_artifact_id, 100.0)
    return _copy_result(copy, source, rows, source_checksums)


def _tool_ends(
    source_dsn: SecretStr, new_dsn: SecretStr, plan: SyncPlan
) -> tuple[tuple[str, dict[str, str]], tuple[str, dict[str, str]]]:
    """The client tools' conninfo and environment on the source (read-only, exempt from
    timeouts) and on the new database (with the sync's ``maintenance_work_mem``)."""
    source_tool = _tool_env(_unbounded(_read_only(source_dsn), plan.source_version))
    new_conninfo, new_env = _tool_env(new_dsn)
    new_conninfo = _with_settings(
        new_conninfo, f"maintenance_work_mem={load_settings().sync_maintenance_work_mem}"
    )
    return source_tool, (new_conninfo, new_env)


def _export_snapshot(snap: psycopg.Connection[Any]) -> str:
    """Export the source session's snapshot, for every other session of the copy."""
    snapshot_row = snap.execute("SELECT pg_export_snapshot()").fetchone()
    assert snapshot_row is not None
    return str(snapshot_row[0])


def _read_source(snap: psycopg.Connection[Any]) -> _Source:
    """What the source holds at the snapshot: tables, post-data objects, the facts."""
    tables = [
        _Table(
            schema_name=str(s),
            name=str(n),
            bytes=int(b),
            root=str(root),
            columns=list(cols or []),
            unique_columns=list(uniq or []),
            max_lengths=dict(lengths or {}),
            own_autovacuum=bool(own_autovacuum),
        )
        for s, n, b, root, cols, uniq, lengths, own_autovacuum in snap.execute(_TABLES)
    ]
    post_objects = {
        int(oid): PostDataObject(
            table=str(table),
            cost=index_cost(int(size or 0), str(am or "")),
            references=None if ref is None else str(ref),
            requires=None if requires is None else int(requires),
        )
        for oid, table, size, am, ref, requires in snap.execute(_POST_DATA_OBJECTS)
    }
    matviews = [(str(s), str(n)) for s, n in snap.execute(_MATVIEWS)]
    sequences = read_sequences(snap)
    objects = read_objects(snap)
    database = read_database_properties(snap)
    config = [
        _ConfigRelation(
            extension=str(ext),
            version=str(version),
            kind=str(kind),
            schema_name=str(schema),
            name=str(name),
            columns=[str(c) for c in cols],
            references=[str(r) for r in refs],
        )
        for ext, version, kind, schema, name, cols, refs in snap.execute(_EXTENSION_CONFIG)
    ]
    return _Source(tables, post_objects, matviews, sequences, objects, database, config)


def _fit_rules(
    copy: _Copy, snap: psycopg.Connection[Any], tables: Sequence[_Table], rules: Rules | None
) -> tuple[Rules | None, dict[str, MaskShape]]:
    """The rules as they apply to this snapshot's tables, and the shape of each masked
    column (``copy.plan`` then lists what this snapshot masks)."""
    if rules is None:
        return None, {}
    # Read under the snapshot: a child table created since prepare_sync is masked.
    rules = inherit_rules(
        rules, _ancestors(snap), (f"{t.root}.{c}" for t in tables for c in t.columns)
    )
    # Checksums skip, and the report lists, what this snapshot masks.
    plan = copy.plan
    copy.plan = plan.model_copy(update={"masked": {**plan.masked, **_masked_labels(rules)}})
    shapes, problems = mask_shapes(
        rules,
        (
            (f"{t.root}.{c}", c in t.unique_columns, t.max_lengths.get(c))
            for t in tables
            for c in t.columns
        ),
    )
    if problems:
        raise ConfigurationError(
            "sanitize rules do not fit the source, nothing was copied: " + "; ".join(problems)
        )
    return rules, shapes


def _create_new_database(copy: _Copy, database: DatabaseProperties) -> DatabaseProperties:
    """Create ``<live>_sync_new`` with the source's encoding and locale; returns the
    database properties the copy gives it (the settings staging can take)."""
    create_options = create_database_options(database, copy.plan.target_version)
    name = copy.plan.new
    with _admin(copy.target_dsn, copy.production) as admin:
        database, settings_left_out = _copyable_properties(admin, database)
        copy.leave_out(settings_left_out)
        try:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 {}").format(
                    sql.Identifier(name),
                    sql.SQL(" ").join(
                        sql.SQL("{} {}").format(sql.SQL(keyword), sql.Literal(value))
                        for keyword, value in create_options
                    ),
                )
            )
        except (
            psycopg.errors.WrongObjectType,  # "invalid LC_COLLATE locale name"
            psycopg.errors.InvalidParameterValue,
            psycopg.errors.UndefinedObject,
            psycopg.errors.FeatureNotSupported,
            psycopg.errors.InvalidTextRepresentation,
        ) as exc:
            raise ConfigurationError(
                "staging's server cannot create a database with the source's encoding "
                f"and locale ({', '.join(f'{k} {v}' for k, v in create_options)}), "
                f"nothing was copied: {_redact(str(exc).strip(), copy.target_dsn)}"
            ) from None
        except psycopg.Error as exc:
            raise _error(f"creating {name} failed", exc, copy.target_dsn) from None
        created = read_database_properties(admin, name)
    if created.locale != database.locale:
        # ICU locales are stored in canonical form from PostgreSQL 16 (en_US ->
        # en-US): the same locale, spelled as the target spells it.
        _logger().info(
            "The %s locale %s is %s on staging's server",
            database.locale_provider,
            database.locale,
            created.locale,
        )
        database = database.model_copy(update={"locale": created.locale})
    return database


def _restore_schema(copy: _Copy, source: _Source) -> PostDataPlan:
    """``pg_dump --schema-only`` at the snapshot, its pre-data restored into the new
    database, the sequences set and autovacuum paused; returns the post-data plan."""
    source_conninfo, source_env = copy.source_tool
    _run_tool(
        [
            str(copy.bindir / "pg_dump"),
            "--schema-only",
            "--format=custom",
            "--compress=0",
            # A subscription on staging would hold production's replication
            # credentials and, once enabled, consume its publisher's slot.
            "--no-subscriptions",
            f"--snapshot={copy.snapshot}",
            f"--file={copy.archive}",
            f"--dbname={source_conninfo}",
        ],
        source_env,
        copy.source_dsn,
        "pg_dump --schema-only",
    )
    pre_data = copy.contents("pre-data")
    # User mappings hold the credentials production uses on its foreign servers:
    # staging has its own secrets, and must not reach production through them.
    mappings = [e for e in pre_data if e.desc == "USER MAPPING"]
    if mappings:
        copy.leave_out(
            [
                f"{len(mappings)} user mapping(s) of foreign servers: they hold production's "
                "credentials; create staging's own"
            ]
        )
    copy.restore(
        "pre-data.list",
        (e for e in pre_data if e.desc != "USER MAPPING"),
        "restoring the schema",
        "--section=pre-data",
    )
    toc = copy.contents("post-data")
    post = plan_post_data(toc, source.post_objects, [t.key for t in source.tables])
    with connect_for_writing(copy.new_dsn, copy.production, autocommit=True) as conn:
        for name, (value, called) in source.sequences.items():
            schema, seq = name.split(".", 1)
            conn.execute(
                "SELECT setval(%s::regclass, %s, %s)",
                (sql.Identifier(schema, seq).as_string(conn), value, called),
            )
        for table in source.tables:
            # Autovacuum would visit each table the moment its rows commit, and hold
            # a lock the index builds wait for; ANALYZE runs anyway once the table
            # is built, and resumes it.
            _pause_autovacuum(conn, table, paused=True)
    return post


# Below this estimate an index is batched with other cheap ones into one
# pg_restore: a process and a connection per tiny index would cost more.
_SMALL = index_cost(8 << 20, "btree")


def _load_rows(
    copy: _Copy,
    source: _Source,
    post: PostDataPlan,
    maskings: dict[str, _Masking | None],
    progress_artifact_id: UUID | None,
) -> dict[str, int]:
    """The rows of every table; each table's indexes, keys, foreign keys and statistics
    as soon as what they need is in, beside the loads of the other tables. Returns the
    rows per table the source sent."""
    started = time.perf_counter()
    masked = {key for key, masking in maskings.items() if masking is not None}
    schedule = CopySchedule(
        {t.key: t.bytes for t in source.tables},
        post,
        masked=masked,
        loads=max(1, copy.jobs),
        builds=copy.jobs,
        small=_SMALL,
    )
    work = _RowsWork(copy, {t.key: t for t in source.tables}, schedule, maskings)
    _run_rows(work, masked=bool(masked), progress_artifact_id=progress_artifact_id)
    copy.phase(
        "rows (parallel binary COPY; indexes, keys, foreign keys, ANALYZE of loaded tables)",
        started,
        source.total_bytes,
    )
    rows, loaded = work.rows, work.loaded
    short = {k: (n, loaded.get(k)) for k, n in rows.items() if loaded.get(k) != n}
    if short:
        raise DataError(f"rows the target took differ from the rows the source sent: {short}")
    _logger().info(
        "Copied %d rows of %d tables (%.0f MB); %d indexes, keys and foreign "
        "keys built beside the load",
        sum(rows.values()),
        len(rows),
        source.total_bytes / 1e6,
        len(work.built),
    )
    return rows


@dataclass
class _RowsWork:
    """The loads and post-data jobs running in the copy's pool, and what they did."""

    copy: _Copy
    by_key: dict[str, _Table]
    schedule: CopySchedule
    maskings: dict[str, _Masking | None]
    children: _Children = field(default_factory=_Children)
    running: dict[Future[Any], tuple[str, Any]] = field(default_factory=dict)
    # The source's count under the snapshot is the reference the new database is
    # recounted against (verify_copy); ``loaded`` is what the target took.
    rows: dict[str, int] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)
    built: list[str] = field(default_factory=list)
    builds: int = 0
    last_progress: float = -1.0

    def load(self, src: psycopg.Connection[Any], table: _Table) -> tuple[int, int]:
        copy = self.copy
        ends = _PipeEnds(
            source=(*copy.source_tool, copy.source_dsn),
            target=(*copy.new_tool, copy.new_dsn),
        )
        return _pipe_table(
            copy.bindir, src, table, copy.snapshot, ends, self.children, self.maskings[table.key]
        )

    def build(self, job: PostDataJob, number: int) -> None:
        copy = self.copy
        if job.analyze is not None:
            table = self.by_key[job.analyze]
            with connect_for_writing(copy.new_dsn, copy.production, autocommit=True) as conn:
                conn.execute(sql.SQL("ANALYZE {}").format(table.ident))
                _pause_autovacuum(conn, table, paused=False)
            return
        copy.restore(
            f"build-{number}.list",
            job.entries,
            "building " + ", ".join(_toc_name(e) for e in job.entries)[:300],
            children=self.children,
        )

    def start(self, pool: ThreadPoolExecutor, idle: list[psycopg.Connection[Any]]) -> None:
        """Start what the schedule allows: loads on idle source sessions, then builds."""
        while idle and (key := self.schedule.next_load()) is not None:
            src, table = idle.pop(), self.by_key[key]
            self.running[pool.submit(self.load, src, table)] = ("load", (src, table))
        for job in self.schedule.next_builds():
            self.builds += 1
            self.running[pool.submit(self.build, job, self.builds)] = ("build", job)

    def collect(self, done: Iterable[Future[Any]], idle: list[psycopg.Connection[Any]]) -> None:
        """Record what finished; the first failure is raised (and stops the copy)."""
        for future in done:
            kind, item = self.running.pop(future)
            result = future.result()  # the first failure stops the copy
            if kind == "load":
                src, table = item
                self.rows[table.key], self.loaded[table.key] = result
                idle.append(src)
                self.schedule.loaded(table.key)
            elif kind == "build":
                self.schedule.built(item)
                self.built.extend(_toc_name(e) for e in item.entries)

    def report(self, monitor: psycopg.Connection[Any], artifact_id: UUID | None) -> None:
        total_bytes = sum(t.bytes for t in self.by_key.values())
        if artifact_id is None or total_bytes <= 0:
            return
        # Loaded tables count at their size on the source, running
        # COPYs at the bytes streamed so far: an estimate, capped at 99%.
        copied = sum(self.by_key[k].bytes for k in self.loaded)
        copied += _bytes_in_flight(monitor, self.copy.plan.new)
        percent = round(min(99.0, 100.0 * copied / total_bytes), 1)
        if percent != self.last_progress:
            _progress(artifact_id, percent)
            self.last_progress = percent


def _run_rows(work: _RowsWork, *, masked: bool, progress_artifact_id: UUID | None) -> None:
    """Run the loads and post-data jobs until all are done or the first one fails."""
    copy = work.copy
    # Source sessions of the load slots: they quote the COPY statements and hold the
    # snapshot open; one per slot, reused table after table.
    with (
        _admin(copy.target_dsn, copy.production) as monitor,
        ExitStack() as sessions,
        ThreadPoolExecutor(max_workers=2 * copy.jobs + 1, thread_name_prefix="sync") as pool,
        _frozen_heap() if masked else nullcontext(),
    ):
        idle = [
            sessions.enter_context(source_session(copy.source_dsn, copy.snapshot))
            for _ in range(max(1, copy.jobs))
        ]
        try:
            while True:
                work.start(pool, idle)
                if work.schedule.finished():  # raises on work left unscheduled
                    break
                done, _ = wait(work.running, timeout=1.0, return_when=FIRST_COMPLETED)
                work.collect(done, idle)
                work.report(monitor, progress_artifact_id)
        except BaseException:
            for future in work.running:
                future.cancel()
            # The others would run to their end (a big table's load, still reading
            # production) before the pool lets the failure through. Their backends
            # on staging would too (an index build does not notice its client is
            # gone): ended with them, so the new database is free to drop.
            work.children.kill_all()
            with suppress(psycopg.Error):
                _terminate(monitor, copy.plan.new)
            raise


def _copy_config_tables(copy: _Copy, config: Sequence[_ConfigRelation]) -> dict[str, int]:
    """The extensions' configuration tables; returns their rows."""
    started = time.perf_counter()
    config_rows, config_left_out = _copy_extension_config(
        copy.source_dsn, copy.snapshot, copy.new_dsn, copy.production, config
    )
    copy.leave_out(config_left_out)
    copy.phase("extensions' configuration tables", started)
    return config_rows


def _copy_large_objects_of(copy: _Copy, *, empty: bool) -> None:
    started = time.perf_counter()
    count, nbytes = _copy_large_objects(
        copy.source_dsn, copy.snapshot, copy.new_dsn, copy.production, empty=empty
    )
    _logger().info("Copied %d large objects (%.0f MB)", count, nbytes / 1e6)
    copy.phase("large objects", started, nbytes)


def _finish_post_data(copy: _Copy, source: _Source, post: PostDataPlan) -> None:
    """The rest of post-data, materialized views, and the source database's properties."""
    started = time.perf_counter()
    if post.rest:
        copy.restore(
            "post-data.list",
            post.rest,
            "restoring the rest of post-data (triggers, partitioned indexes, rules)",
            f"--jobs={copy.jobs}",
        )
    with connect_for_writing(copy.new_dsn, copy.production, autocommit=True) as conn:
        for schema, name in source.matviews:
            # As pg_restore does; ANALYZE too, as vacuumdb --analyze-only would.
            ident = sql.Identifier(schema, name)
            conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(ident))
            conn.execute(sql.SQL("ANALYZE {}").format(ident))
    # Last: the source's own settings (a statement_timeout, a read-only default) take
    # effect in the new database's sessions, and none of the copy's may be one.
    _set_database_properties(copy.target_dsn, copy.production, copy.plan.new, source.database)
    copy.phase(
        "post-data (triggers, partitioned indexes, rules, materialized views, database settings)",
        started,
    )


def _source_checksums(
    copy: _Copy, snap: psycopg.Connection[Any], source: _Source
) -> dict[str, str]:
    """Checksums of the source's tables (and large objects) under the snapshot."""
    started = time.perf_counter()
    plan = copy.plan
    checksums = _checksums(
        copy.source_dsn, copy.snapshot, source.tables, plan, copy.jobs, source=True
    )
    if source.objects.get(LARGE_OBJECTS) and plan.masked.get(LARGE_OBJECTS) != "empty":
        checksums[LARGE_OBJECTS] = large_objects_checksum(snap)
    copy.phase("source checksums", started, source.total_bytes)
    return checksums


def _copy_result(
    copy: _Copy, source: _Source, rows: dict[str, int], checksums: dict[str, str]
) -> CopyResult:
    plan = copy.plan
    return CopyResult(
        source=plan.source,
        target=f"{plan.target} -> {plan.new}",
        tools=plan.tools,
        source_version=major_of(plan.source_version),
        target_version=major_of(plan.target_version),
        facts=SourceFacts(
            rows=rows,
            sequences=source.sequences,
            objects=source.objects,
            checksums=checksums,
            bytes=source.total_bytes,
            database=source.database,
        ),
        phases=copy.phases,
        masked=plan.masked,
        unmasked_personal=plan.unmasked_personal,
        left_out=copy.left_out,
    )


def _progress(artifact_id: UUID, percent: float) -> None:
    """Update the progress artifact; a Prefect API that is down for longer than its
    client's retries must not end a copy that has run for hours."""
    try:
        update_progress_artifact(artifact_id, percent)
    except Exception as exc:
        _logger().warning("Progress not updated (%.0f%%): %s", percent, type(exc).__name__)


def _pause_autovacuum(conn: psycopg.Connection[Any], table: _Table, *, paused: bool) -> None:
    """Pause or resume autovacuum on a table of the copy; a table whose source sets
    ``autovacuum_enabled`` itself keeps the source's setting throughout."""
    if table.own_autovacuum:
        return
    statement = (
        "ALTER TABLE {} SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)"
        if paused
        else "ALTER TABLE {} RESET (autovacuum_enabled, toast.autovacuum_enabled)"
    )
    conn.execute(sql.SQL(statement).format(table.ident))


def _bytes_in_flight(conn: psycopg.Connection[Any], database: str) -> int:
    """Bytes the target's running ``COPY ... FROM STDIN`` into ``database`` took so far."""
    row = conn.execute(
        "SELECT coalesce(sum(bytes_processed), 0) FROM pg_stat_progress_copy WHERE datname = %s",
        (database,),
    ).fetchone()
    return int(row[0]) if row else 0


def _toc_name(entry: TocEntry) -> str:
    """``INDEX public users_profile`` of a TOC line (kind, schema, name)."""
    return " ".join(entry.line.split()[3:-1])
