"""Backup storage: a local path or S3-compatible object storage, through fsspec (s3fs).

A location is a URL (``/var/backups/rsolv``, ``file:///...``, ``s3://bucket/prefix``)
laid out as :class:`rsolv_staging.backups.Layout` says. Credentials for ``s3://``: the
secret source named by the flow (``<name>-access-key-id`` and
``<name>-secret-access-key``, each a Prefect Secret block or ``RSOLV_SECRET_...``
variable, see :mod:`tasks.secrets`); when neither exists, s3fs's own chain (the standard
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` variables,
``~/.aws``, an instance or pod role). The endpoint of S3-compatible storage comes from
the worker's settings (``RSOLV_BACKUP_S3_ENDPOINT_URL``) or ``AWS_ENDPOINT_URL``.

A read-only location (production's backups, in a drill) is never written: every task
that writes refuses one before its first request.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger
from pydantic import BaseModel, Field, ValidationError

from rsolv_staging.backups import (
    MANIFEST,
    BackupFile,
    BackupManifest,
    DrillRecord,
    Layout,
    RetentionPlan,
    RetentionPolicy,
    compare_files,
    plan_retention,
)
from rsolv_staging.exceptions import DataError, GuardError, SecretError
from tasks.secrets import resolve_secret, secret_env_var

_CHUNK = 1 << 20
# Transient storage failures (a dropped connection, a 5xx) are retried; a missing file
# or a refused write are not (OSError subclasses that waiting will not fix).
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class StorageLocation(BaseModel):
    """A backup location and how to reach it (no secret values: only their names)."""

    url: str = Field(description="Local path, file:// or s3:// URL")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint")
    credentials_secret: str | None = Field(
        default=None, description="Secret source name of the S3 access key pair"
    )
    read_only: bool = Field(default=False, description="Never written (production's)")

    @property
    def layout(self) -> Layout:
        return Layout(root=self.url.rstrip("/"))


def _logger() -> Any:
    """The run logger inside a flow or task run; this module's logger elsewhere."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("rsolv_staging.storage")


def _retry_storage(task: Any, task_run: Any, state: Any) -> bool:
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, DataError):
        return exc.transient
    return isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, _PERMANENT)


_retrying: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [1, 4, 10],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _retry_storage,
}


def _options(location: StorageLocation) -> dict[str, Any]:
    """fsspec options: for s3, credentials and endpoint; caches off (listings must be
    current: a backup written by another process must be seen)."""
    if not location.url.startswith(("s3://", "s3a://")):
        return {}
    options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    endpoint = location.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = endpoint
    if location.credentials_secret:
        name = location.credentials_secret
        key = resolve_secret(f"{name}-access-key-id")
        secret = resolve_secret(f"{name}-secret-access-key")
        if (key is None) != (secret is None):
            missing = f"{name}-secret-access-key" if secret is None else f"{name}-access-key-id"
            raise SecretError(
                f"half an S3 key pair: create the Secret block {missing!r} "
                f"(or set {secret_env_var(missing)})"
            )
        if key is not None and secret is not None:
            options["key"] = key.get_secret_value()
            options["secret"] = secret.get_secret_value()
    return options


def open_location(location: StorageLocation) -> tuple[Any, Layout]:
    """The fsspec filesystem of ``location`` and its layout (paths as fsspec spells them)."""
    fs, root = fsspec.core.url_to_fs(location.url, **_options(location))
    return fs, Layout(root=str(root).rstrip("/"))


def _writable(location: StorageLocation) -> None:
    if location.read_only:
        raise GuardError(f"{location.url} is read-only for this flow (production's backups)")


def _is_local(fs: Any) -> bool:
    return isinstance(fs, LocalFileSystem)


def _read_json(fs: Any, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def _write_json(fs: Any, path: str, value: Any) -> None:
    """Write a JSON document whole: on a local path by rename (a reader never sees half
    of it), on object storage in one PUT (objects appear whole)."""
    data = json.dumps(value, indent=2, sort_keys=True, default=str).encode()
    if _is_local(fs):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def _manifest_ids(fs: Any, layout: Layout) -> list[str]:
    """The ids under ``backups/`` that have a manifest (the complete ones)."""
    found = fs.glob(f"{layout.backups}/*/{MANIFEST}")
    return sorted(str(p).rstrip("/").split("/")[-2] for p in found)


@task(cache_policy=NO_CACHE, task_run_name="list_backups-{location.url}", **_retrying)
def list_backups(location: StorageLocation) -> list[BackupManifest]:
    """The complete backups of ``location``, oldest first (a manifest that does not
    parse is logged and skipped: it is not a backup one could restore from)."""
    fs, layout = open_location(location)
    manifests = []
    for backup_id in _manifest_ids(fs, layout):
        try:
            manifests.append(
                BackupManifest.model_validate(_read_json(fs, layout.manifest(backup_id)))
            )
        except (ValueError, ValidationError) as exc:
            _logger().warning("backup %s has an unreadable manifest: %s", backup_id, exc)
    return sorted(manifests, key=lambda m: m.created_at)


@task(cache_policy=NO_CACHE, task_run_name="remove_partial_backups-{location.url}", **_retrying)
def remove_partial_backups(location: StorageLocation) -> list[str]:
    """Remove what interrupted backups left: everything under ``partial/``, and any
    ``backups/<id>/`` without its manifest (an upload cut short). Runs with the backup
    lock held, so no backup under way is mistaken for a dead one.

    Returns:
        The ids removed.
    """
    _writable(location)
    fs, layout = open_location(location)
    removed = []
    for path in fs.glob(f"{layout.partial}/*"):
        fs.rm(path, recursive=True)
        removed.append(str(path).rstrip("/").split("/")[-1])
    complete = set(_manifest_ids(fs, layout))
    for path in fs.glob(f"{layout.backups}/*"):
        backup_id = str(path).rstrip("/").split("/")[-1]
        if backup_id not in complete:
            fs.rm(path, recursive=True)
            removed.append(backup_id)
    if removed:
        _logger().warning(
            "Removed %d interrupted backup(s) in %s: %s", len(removed), location.url, removed
        )
    return removed


@task(cache_policy=NO_CACHE, task_run_name="prepare_dump_directory-{backup_id}")
def prepare_dump_directory(location: StorageLocation, backup_id: str) -> Path:
    """Where pg_dump writes: on a local location its ``partial/<id>`` (renamed into
    ``backups/`` once complete: no second copy of the dump); for object storage a local
    temporary directory, uploaded afterwards."""
    _writable(location)
    fs, layout = open_location(location)
    if _is_local(fs):
        directory = Path(layout.partial_backup(backup_id))
        directory.parent.mkdir(parents=True, exist_ok=True)
        return directory
    return Path(tempfile.mkdtemp(prefix="rsolv-backup-")) / backup_id


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)  # hashlib releases the GIL: files hash in parallel
    return digest.hexdigest()


def _hash_files(directory: Path, jobs: int) -> dict[str, BackupFile]:
    paths = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        digests = list(pool.map(_sha256, paths))
    return {
        p.name: BackupFile(sha256=d, bytes=p.stat().st_size)
        for p, d in zip(paths, digests, strict=True)
    }


@task(cache_policy=NO_CACHE, task_run_name="hash_files-{directory.name}")
def hash_files(directory: Path, jobs: int = 2) -> dict[str, BackupFile]:
    """Every file in ``directory`` (not the manifest) with its size and SHA-256, ``jobs``
    files at a time."""
    return _hash_files(directory, jobs)


@task(cache_policy=NO_CACHE, task_run_name="write_manifest-{manifest.backup_id}")
def write_manifest(directory: Path, manifest: BackupManifest) -> BackupManifest:
    """Write ``manifest.json`` beside the dump's files (in its still invisible directory)."""
    data = manifest.model_dump_json(indent=2).encode()
    with (directory / MANIFEST).open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return manifest


@task(cache_policy=NO_CACHE, task_run_name="publish_backup-{manifest.backup_id}", **_retrying)
def publish_backup(location: StorageLocation, directory: Path, manifest: BackupManifest) -> str:
    """Make a complete backup visible: on a local path one ``rename`` of its directory
    into ``backups/`` (atomic); on object storage the files, then the manifest last
    (a backup without its manifest does not count, and the next run removes it).

    Returns:
        The backup's URL.
    """
    _writable(location)
    fs, layout = open_location(location)
    target = layout.backup(manifest.backup_id)
    if _is_local(fs):
        fs.makedirs(layout.backups, exist_ok=True)
        os.rename(directory, target)
        _fsync_directory(layout.backups)
    else:
        files = sorted(manifest.files)
        fs.put([str(directory / n) for n in files], [f"{target}/{n}" for n in files])
        fs.put_file(str(directory / MANIFEST), layout.manifest(manifest.backup_id))
        shutil.rmtree(directory.parent, ignore_errors=True)
    return f"{location.url.rstrip('/')}/backups/{manifest.backup_id}"


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stored_sizes(fs: Any, prefix: str) -> dict[str, int]:
    return {
        str(entry["name"]).rstrip("/").split("/")[-1]: int(entry.get("size") or 0)
        for entry in fs.ls(prefix, detail=True)
        if entry.get("type") == "file"
    }


@task(cache_policy=NO_CACHE, task_run_name="check_backup_complete-{manifest.backup_id}")
def check_backup_complete(location: StorageLocation, manifest: BackupManifest) -> None:
    """Read the published backup back from storage: its manifest equals the one written
    and every file is there with its size. Retention runs only after this passed.

    Raises:
        DataError: naming each missing or short file.
    """
    fs, layout = open_location(location)
    stored = BackupManifest.model_validate(_read_json(fs, layout.manifest(manifest.backup_id)))
    if stored != manifest:
        raise DataError(f"backup {manifest.backup_id}: the stored manifest differs")
    sizes = _stored_sizes(fs, layout.backup(manifest.backup_id))
    sizes.pop(MANIFEST, None)
    problems = compare_files(manifest.files, {n: (s, None) for n, s in sizes.items()})
    if problems:
        raise DataError(f"backup {manifest.backup_id} is incomplete: " + "; ".join(problems))


@task(cache_policy=NO_CACHE, task_run_name="apply_retention-{location.url}", **_retrying)
def apply_retention(
    location: StorageLocation, policy: RetentionPolicy, now: Any, *, newest: str
) -> RetentionPlan:
    """Delete the complete backups ``policy`` does not keep (never ``newest``, the one
    just verified). A deleted backup's manifest goes first, so a deletion cut short
    leaves a partial backup (removed by the next run), never a broken complete one."""
    _writable(location)
    fs, layout = open_location(location)
    manifests = list_backups.fn(location)
    plan = plan_retention({m.backup_id: m.created_at for m in manifests}, policy, now)
    if newest in plan.delete:  # a clock gone backwards must not delete the new backup
        plan.delete.remove(newest)
        plan.keep[newest] = ["just made"]
    for backup_id in plan.delete:
        fs.rm_file(layout.manifest(backup_id))
        fs.rm(layout.backup(backup_id), recursive=True)
    if plan.delete:
        _logger().info("Retention deleted %s; kept %s", plan.delete, sorted(plan.keep))
    return plan


@task(cache_policy=NO_CACHE, task_run_name="fetch_backup-{manifest.backup_id}", **_retrying)
def fetch_backup(location: StorageLocation, manifest: BackupManifest, workdir: Path) -> Path:
    """A local directory holding the backup's files: a local location's own directory
    (read in place), or object storage's files downloaded into ``workdir``."""
    fs, layout = open_location(location)
    source = layout.backup(manifest.backup_id)
    if _is_local(fs):
        return Path(source)
    directory = workdir / manifest.backup_id
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(_stored_sizes(fs, source))
    fs.get([f"{source}/{n}" for n in names], [str(directory / n) for n in names])
    return directory


@task(cache_policy=NO_CACHE, task_run_name="verify_backup_files-{manifest.backup_id}")
def verify_backup_files(directory: Path, manifest: BackupManifest, *, jobs: int = 2) -> int:
    """Check every file against the manifest's size and SHA-256, before restoring.

    Returns:
        The bytes checked.

    Raises:
        DataError: naming every missing, extra, short or corrupted file.
    """
    actual = {n: (f.bytes, f.sha256) for n, f in _hash_files(directory, jobs).items()}
    problems = compare_files(manifest.files, actual)
    if problems:
        raise DataError(
            f"backup {manifest.backup_id} does not match its manifest: " + "; ".join(problems)
        )
    return manifest.size


@task(cache_policy=NO_CACHE, task_run_name="read_drill_history-{location.url}", **_retrying)
def read_drill_history(location: StorageLocation, source: str) -> list[DrillRecord]:
    """The recorded restore drills of ``source`` backups (empty when none yet)."""
    fs, layout = open_location(location)
    path = layout.history(source)
    if not fs.exists(path):
        return []
    return [DrillRecord.model_validate(r) for r in _read_json(fs, path)]


@task(cache_policy=NO_CACHE, task_run_name="record_drill-{record.backup_id}", **_retrying)
def record_drill(location: StorageLocation, record: DrillRecord, *, keep: int = 200) -> None:
    """Append ``record`` to the drill history (the newest ``keep`` drills are kept)."""
    _writable(location)
    fs, layout = open_location(location)
    history: Sequence[DrillRecord] = read_drill_history.fn(location, record.source)
    records = [*history, record][-keep:]
    _write_json(fs, layout.history(record.source), [r.model_dump(mode="json") for r in records])


def elapsed(started: float) -> float:
    """Seconds since ``started`` (``time.perf_counter``)."""
    return time.perf_counter() - started
