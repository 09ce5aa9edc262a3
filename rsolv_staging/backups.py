"""Staging's database backups and restore drills: the pure decisions (no I/O).

What a backup is (:class:`BackupManifest`: the JSON written next to the dump's files),
where its parts live in a storage location (:class:`Layout`), which backups a retention
policy keeps (:func:`plan_retention`), which scratch database a drill may restore into
(:func:`check_scratch_name`), what a dump's sequence values are (:func:`parse_setvals`)
and when a restore time is a regression against the recorded trend (:func:`rto_regression`).
The tasks that act on them are in ``tasks/storage.py`` (the storage location) and
``tasks/postgres/backup.py`` (pg_dump, pg_restore and the scratch database).
"""

from __future__ import annotations

import re
import secrets
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from rsolv_staging.exceptions import ConfigurationError, GuardError
from rsolv_staging.sync import GONE_SUFFIX, NEW_SUFFIX, OLD_SUFFIX

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# The scratch database of a restore drill must end with this: the drill drops it before
# and after, so a name that is not recognizably a drill's could drop a real database.
SCRATCH_SUFFIX = "_restore_drill"
BACKUP_LOCK = "staging-database-backup"
_PROTECTED = frozenset({"postgres", "template0", "template1"})
_BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


class BackupFile(BaseModel):
    """One file of a backup (a path relative to the backup's directory)."""

    sha256: str = Field(description="Hex SHA-256 of the file's bytes")
    bytes: int = Field(ge=0)


class BackupManifest(BaseModel):
    """What one backup holds, written as ``manifest.json`` after its last file."""

    version: int = MANIFEST_VERSION
    backup_id: str
    database: str = Field(description="The database that was dumped")
    source: str = Field(description="user@host:port/database (no password)")
    server_version: str = Field(description="The source server's version, e.g. 18.6")
    server_version_num: int
    pg_dump_major: int = Field(description="Major version of the pg_dump that wrote it")
    format: Literal["directory"] = "directory"
    jobs: int
    created_at: datetime = Field(description="When the dump's snapshot was taken (UTC)")
    duration_seconds: float = Field(description="Dump, counts and checksums together")
    database_bytes: int = Field(description="pg_database_size of the source")
    rows: dict[str, int] = Field(description="Rows per table (schema.table) in the snapshot")
    sequences: dict[str, tuple[int | None, bool]] = Field(
        description="Sequence -> (last_value, is_called), as the dump sets them"
    )
    objects: dict[str, int] = Field(description="Object counts by kind in the snapshot")
    files: dict[str, BackupFile] = Field(description="Every file of the dump, by name")

    @property
    def size(self) -> int:
        """Bytes of the dump's files (the manifest excluded)."""
        return sum(f.bytes for f in self.files.values())


class DumpFacts(BaseModel):
    """What a dump read and wrote: the manifest less its files."""

    database: str
    source: str
    server_version: str
    server_version_num: int
    pg_dump_major: int
    created_at: datetime
    seconds: float
    database_bytes: int
    rows: dict[str, int]
    sequences: dict[str, tuple[int | None, bool]]
    objects: dict[str, int]


def make_manifest(
    backup_id: str, facts: DumpFacts, files: Mapping[str, BackupFile], *, jobs: int, seconds: float
) -> BackupManifest:
    """The manifest of a dump whose files are ``files`` (``seconds``: the whole backup's
    time so far, dump and checksums)."""
    return BackupManifest(
        backup_id=backup_id,
        database=facts.database,
        source=facts.source,
        server_version=facts.server_version,
        server_version_num=facts.server_version_num,
        pg_dump_major=facts.pg_dump_major,
        jobs=jobs,
        created_at=facts.created_at,
        duration_seconds=round(seconds, 3),
        database_bytes=facts.database_bytes,
        rows=facts.rows,
        sequences=facts.sequences,
        objects=facts.objects,
        files=dict(files),
    )


def choose_backup(manifests: Sequence[BackupManifest], backup_id: str | None) -> BackupManifest:
    """The named backup, or the newest.

    Raises:
        ConfigurationError: there is none, or none of that id (naming the ones there are).
    """
    if not manifests:
        raise ConfigurationError("there is no complete backup in the location")
    if backup_id is None:
        return max(manifests, key=lambda m: m.created_at)
    for m in manifests:
        if m.backup_id == backup_id:
            return m
    newest = ", ".join(m.backup_id for m in sorted(manifests, key=lambda m: m.created_at)[-5:])
    raise ConfigurationError(f"no complete backup {backup_id!r}; the newest are: {newest}")


def new_backup_id(now: datetime) -> str:
    """``20261204T224300Z-3f9c0b``: sortable by time, unique between two runs of one second."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def check_backup_id(backup_id: str) -> str:
    """``backup_id`` if it has the shape :func:`new_backup_id` gives (it becomes a path).

    Raises:
        ConfigurationError: anything else (``..``, a slash, another location's name).
    """
    if not _BACKUP_ID.match(backup_id):
        raise ConfigurationError(
            f"backup id {backup_id!r} is not of the form 20261204T224300Z-3f9c0b"
        )
    return backup_id


class Layout(BaseModel):
    """Where a storage location keeps what (paths under its root URL).

    ``backups/<id>/`` holds a complete backup: a directory only counts once its
    ``manifest.json`` exists, which is written last. ``partial/<id>/`` is where a
    backup is written (on a local path, then renamed into ``backups/``, atomically); a
    partial one left by a killed run is removed by the next. ``drills/<source>.json``
    is the restore drills' history.
    """

    root: str

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    @property
    def backups(self) -> str:
        return self._join("backups")

    @property
    def partial(self) -> str:
        return self._join("partial")

    def backup(self, backup_id: str) -> str:
        return self._join("backups", backup_id)

    def partial_backup(self, backup_id: str) -> str:
        return self._join("partial", backup_id)

    def manifest(self, backup_id: str) -> str:
        return self._join("backups", backup_id, MANIFEST)

    def history(self, source: str) -> str:
        return self._join("drills", f"{source}.json")


def _normalized(url: str) -> str:
    return url.rstrip("/") + "/"


def is_within(url: str, location: str) -> bool:
    """Whether ``url`` is ``location`` or lies under it (compared as path prefixes)."""
    return _normalized(url).startswith(_normalized(location))


def ensure_not_production_location(url: str, production_locations: Iterable[str]) -> None:
    """Refuse to write to (or under, or above) a location production's backups live in.

    Raises:
        GuardError: naming the production location.
    """
    for location in production_locations:
        if location and (is_within(url, location) or is_within(location, url)):
            raise GuardError(
                f"refusing to write to {url}: production's backups live in {location} "
                "(a staging flow only ever reads there)"
            )


def check_scratch_name(name: str, live: str) -> str:
    """The scratch database a restore drill may create and drop.

    Raises:
        GuardError: the live database, one of the sync's side databases (the rollback
            copy among them), a system database, or a name not ending in
            ``_restore_drill`` (the drill drops it: only a drill's own name is safe).
    """
    sync_names = {live + suffix for suffix in (NEW_SUFFIX, OLD_SUFFIX, GONE_SUFFIX)}
    if name == live:
        raise GuardError(f"refusing to restore into {name!r}: that is staging's live database")
    if name in sync_names or name in _PROTECTED:
        raise GuardError(f"refusing to restore into {name!r}: it is not a scratch database")
    if not name.endswith(SCRATCH_SUFFIX) or name == SCRATCH_SUFFIX:
        raise GuardError(
            f"refusing to restore into {name!r}: a drill's scratch database must be named "
            f"<something>{SCRATCH_SUFFIX} (it is dropped before and after the drill)"
        )
    if len(name.encode()) > 63:
        raise ConfigurationError(f"scratch database name {name!r} is longer than 63 bytes")
    return name


# --- retention ---------------------------------------------------------------------


class RetentionPolicy(BaseModel):
    """Which complete backups to keep: grandfather-father-son by calendar day and week."""

    last: int = Field(default=1, ge=1, description="The N newest backups, whatever their days")
    daily: int = Field(default=7, ge=0, description="Newest backup of each of the N newest days")
    weekly: int = Field(
        default=4, ge=0, description="Newest backup of each of the N newest ISO weeks"
    )
    max_age_days: float | None = Field(
        default=None, gt=0, description="Nothing older is kept (except the newest backup)"
    )


class RetentionPlan(BaseModel):
    """What a retention pass keeps (with why) and deletes."""

    keep: dict[str, list[str]]
    delete: list[str]


def plan_retention(
    backups: Mapping[str, datetime], policy: RetentionPolicy, now: datetime
) -> RetentionPlan:
    """Decide which backups (id -> created_at) to keep.

    Days and weeks are UTC calendar days and ISO weeks. "7 daily" keeps the newest backup
    of each of the 7 newest days that have one (a day without a backup does not use up a
    slot); "4 weekly" the newest of each of the 4 newest weeks. The newest backup is
    always kept, whatever its age, so retention never leaves a location empty.
    """
    newest_first = sorted(backups, key=lambda b: (backups[b], b), reverse=True)
    keep: dict[str, list[str]] = {}
    if not newest_first:
        return RetentionPlan(keep={}, delete=[])
    for rank, backup_id in enumerate(newest_first[: policy.last], start=1):
        keep[backup_id] = ["newest" if rank == 1 else f"last {rank}"]

    def bucketed(key_of: str, count: int, label: str) -> None:
        seen: list[object] = []
        for backup_id in newest_first:
            created = backups[backup_id].astimezone(UTC)
            bucket = created.date() if key_of == "day" else created.isocalendar()[:2]
            if bucket in seen:
                continue
            if len(seen) == count:
                return
            seen.append(bucket)
            keep.setdefault(backup_id, []).append(f"{label} {_bucket_text(bucket)}")

    bucketed("day", policy.daily, "daily")
    bucketed("week", policy.weekly, "weekly")
    if policy.max_age_days is not None:
        oldest = now - timedelta(days=policy.max_age_days)
        for backup_id in list(keep):
            if backup_id != newest_first[0] and backups[backup_id] < oldest:
                del keep[backup_id]
    delete = [b for b in newest_first if b not in keep]
    return RetentionPlan(keep=keep, delete=delete)


def _bucket_text(bucket: object) -> str:
    if isinstance(bucket, tuple):
        return f"{bucket[0]}-W{bucket[1]:02d}"
    return str(bucket)


# --- what the dump says ------------------------------------------------------------

_SETVAL = re.compile(
    r"^SELECT pg_catalog\.setval\('((?:[^']|'')+)', (-?\d+), (true|false)\);$", re.MULTILINE
)


def _split_qualified(name: str) -> tuple[str, str]:
    """``public."My Seq"`` -> (``public``, ``My Seq``): a qualified identifier's parts."""
    parts: list[str] = []
    current, quoted, i = "", False, 0
    while i < len(name):
        c = name[i]
        if quoted:
            if c == '"' and name[i + 1 : i + 2] == '"':
                current += '"'
                i += 1
            elif c == '"':
                quoted = False
            else:
                current += c
        elif c == '"':
            quoted = True
        elif c == ".":
            parts.append(current)
            current = ""
        else:
            current += c
        i += 1
    parts.append(current)
    if len(parts) != 2:
        raise ConfigurationError(f"cannot read sequence name {name!r} from the dump")
    return parts[0], parts[1]


def parse_setvals(script: str) -> dict[str, tuple[int | None, bool]]:
    """The sequence values a dump sets (``pg_restore -f -`` of its SEQUENCE SET entries),
    keyed ``schema.name`` as :func:`tasks.postgres.read_sequences` reads them back."""
    values: dict[str, tuple[int | None, bool]] = {}
    for literal, value, called in _SETVAL.findall(script):
        schema, name = _split_qualified(literal.replace("''", "'"))
        values[f"{schema}.{name}"] = (int(value), called == "true")
    return values


def toc_sequence_entries(listing: str) -> str:
    """The lines of a ``pg_restore --list`` that set sequence values (a ``-L`` file)."""
    return "".join(line + "\n" for line in listing.splitlines() if " SEQUENCE SET " in line)


def compare_files(
    expected: Mapping[str, BackupFile], actual: Mapping[str, tuple[int, str | None]]
) -> list[str]:
    """Every file that is missing, of the wrong size or with the wrong SHA-256, named.

    ``actual`` maps name -> (bytes, sha256 or None when not computed).
    """
    problems = []
    for name, want in sorted(expected.items()):
        if name not in actual:
            problems.append(f"file {name} is missing")
            continue
        size, digest = actual[name]
        if size != want.bytes:
            problems.append(f"file {name} has {size} bytes, the manifest says {want.bytes}")
        elif digest is not None and digest != want.sha256:
            problems.append(f"file {name} is corrupted: its SHA-256 differs from the manifest")
    for name in sorted(set(actual) - set(expected)):
        problems.append(f"file {name} is not in the manifest")
    return problems


# --- restore drills ----------------------------------------------------------------


class DrillRecord(BaseModel):
    """One restore drill, as the history in the storage location keeps it."""

    backup_id: str
    source: Literal["staging", "production"]
    started_at: datetime
    ok: bool
    rto_seconds: float | None = Field(
        default=None, description="Fetch + checksums + restore: the time to get the data back"
    )
    fetch_seconds: float | None = None
    restore_seconds: float | None = None
    verify_seconds: float | None = None
    backup_bytes: int = 0
    backup_created_at: datetime | None = None
    problems: list[str] = Field(default_factory=list)
    regression: str | None = None


class RtoRule(BaseModel):
    """When a restore time counts as a regression against the recorded trend."""

    ratio: float = Field(default=1.5, gt=1, description="Times the trend's median")
    min_seconds: float = Field(
        default=5.0, ge=0, description="Slack under which a slower restore is noise"
    )
    window: int = Field(default=5, ge=1, description="Successful drills the trend is made of")
    min_history: int = Field(default=3, ge=1, description="Drills needed before judging")


def rto_trend(history: Sequence[DrillRecord], source: str, window: int) -> list[float]:
    """The RTOs of the last ``window`` successful drills of ``source``, oldest first."""
    times = [
        r.rto_seconds
        for r in sorted(history, key=lambda r: r.started_at)
        if r.ok and r.source == source and r.rto_seconds is not None
    ]
    return times[-window:]


def rto_regression(rto: float, trend: Sequence[float], rule: RtoRule) -> str | None:
    """Why ``rto`` regresses against ``trend`` (earlier drills' RTOs), or None.

    A regression is slower than ``ratio`` times the trend's median *and* more than
    ``min_seconds`` above it (a 1.2 s restore after 0.6 s ones is not news). Fewer than
    ``min_history`` drills make no trend.
    """
    if len(trend) < rule.min_history:
        return None
    median = statistics.median(trend)
    limit = max(median * rule.ratio, median + rule.min_seconds)
    if rto <= limit:
        return None
    return (
        f"restore took {rto:.1f} s, over {limit:.1f} s ({rule.ratio:g}x the median "
        f"{median:.1f} s of the last {len(trend)} drills, at least {rule.min_seconds:g} s "
        "above it)"
    )


# --- the recoverability report -----------------------------------------------------


class RollbackCopy(BaseModel):
    """The sync's previous staging database, kept beside the live one."""

    database: str
    bytes: int
    as_of: datetime | None = Field(
        default=None, description="When the last sync swapped it out (its report artifact)"
    )


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "unknown"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def recoverability_markdown(
    *,
    location: str,
    backups: Sequence[BackupManifest],
    history: Sequence[DrillRecord],
    rollback: RollbackCopy | None,
    live: str,
) -> str:
    """What staging can be restored from, from when, and how long the last restore took."""
    lines = [f"# Recoverability of staging's database `{live}`", ""]
    lines += [
        "| what | restores staging to | size | last restore drill |",
        "| --- | --- | --- | --- |",
    ]
    drills = {r.backup_id: r for r in sorted(history, key=lambda r: r.started_at)}
    for m in sorted(backups, key=lambda m: m.created_at, reverse=True):
        drill = drills.get(m.backup_id)
        tested = (
            "never"
            if drill is None
            else (
                f"{'passed' if drill.ok else 'FAILED'} {_when(drill.started_at)}"
                + (f", RTO {drill.rto_seconds:.1f} s" if drill.rto_seconds is not None else "")
            )
        )
        lines.append(
            f"| backup `{m.backup_id}` | {_when(m.created_at)} | {_mb(m.size)} "
            f"({sum(m.rows.values()):,} rows) | {tested} |"
        )
    if rollback is not None:
        lines.append(
            f"| sync rollback copy `{rollback.database}` (rename it back) | staging before "
            f"the sync of {_when(rollback.as_of)} | {_mb(rollback.bytes)} | a rename, seconds |"
        )
    if not backups and rollback is None:
        lines.append("| nothing | - | - | - |")
    lines += ["", f"Backups in `{location}`: {len(backups)}."]
    done = sorted(history, key=lambda r: r.started_at)
    if done:
        last = done[-1]
        outcome = "passed" if last.ok else "FAILED: " + "; ".join(last.problems)[:500]
        lines += [
            "",
            "## Last restore drill",
            "",
            f"- backup `{last.backup_id}` ({last.source}), {_when(last.started_at)}: {outcome}",
        ]
        if last.rto_seconds is not None:
            lines.append(
                f"- RTO {last.rto_seconds:.1f} s (fetch {last.fetch_seconds or 0:.1f} s, "
                f"restore {last.restore_seconds or 0:.1f} s); verification "
                f"{last.verify_seconds or 0:.1f} s"
            )
        if last.regression:
            lines.append(f"- RTO regression: {last.regression}")
        trend = [f"{r.rto_seconds:.1f}" for r in done[-10:] if r.ok and r.rto_seconds]
        if trend:
            lines.append(f"- RTO of the last successful drills (s): {', '.join(trend)}")
    else:
        lines += ["", "No restore drill recorded yet."]
    return "\n".join(lines) + "\n"
