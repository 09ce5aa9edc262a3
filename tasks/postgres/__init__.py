"""Side effects on PostgreSQL, one module per phase (imports only here).

Synthetic data, in the order a load uses them:

- :mod:`~tasks.postgres.connections`: targets, DSN parsing and redaction, the
  production guard (:func:`refuse_production`, :func:`connect_for_writing`),
  transient-error retries, :func:`resolve_dsn`, :func:`check_target`.
- :mod:`~tasks.postgres.schema`: :func:`create_schema`, :func:`describe_schema`,
  :func:`verify_schema`.
- :mod:`~tasks.postgres.loading`: :func:`copy_rows` (truncate, deferred DDL, COPY
  blocks, progress).
- :mod:`~tasks.postgres.checks`: :func:`read_max_ids`, :func:`checksum_tables`,
  :func:`analyze_tables`.

The monthly production -> staging sync, phase by phase:

- :mod:`~tasks.postgres.sessions`: the read-only source snapshot, staging's admin
  session, connection-string helpers, server identity.
- :mod:`~tasks.postgres.tools`: finding and running ``pg_dump``/``pg_restore``/``psql``.
- :mod:`~tasks.postgres.lock`: :func:`sync_lock`, one sync at a time (an advisory lock
  on staging's server, freed with its holder's connection).
- :mod:`~tasks.postgres.plan`: :class:`SyncPlan`, :func:`prepare_sync` and its
  refusals, :func:`drop_leftovers`, :func:`resolve_sanitize_salt`.
- :mod:`~tasks.postgres.catalog`: what the sync reads from the catalogs (tables,
  sequences, object counts, a table's checksum).
- :mod:`~tasks.postgres.pipeline`: :func:`copy_database`, the copy as its steps;
  :mod:`~tasks.postgres.streams` copies one table's rows, and
  :mod:`~tasks.postgres.scheduler` decides which load and post-data job runs when.
- :mod:`~tasks.postgres.extensions`: extensions' configuration tables, large objects,
  database properties.
- :mod:`~tasks.postgres.verify`: :func:`verify_copy`.
- :mod:`~tasks.postgres.swap`: :func:`swap_database`, :func:`measure_staging_disk`,
  :func:`discard_new_copy`.

Staging's backups and restore drills:

- :mod:`~tasks.postgres.backup`: :func:`backup_lock`, :func:`dump_database`,
  :func:`restore_backup`, :func:`verify_restore`, :func:`drop_scratch_database`,
  :func:`read_rollback_copy`.
"""

from __future__ import annotations

from tasks.postgres.backup import (
    backup_lock,
    drop_scratch_database,
    dump_database,
    read_rollback_copy,
    restore_backup,
    verify_restore,
)
from tasks.postgres.catalog import read_objects, read_sequences, table_checksum
from tasks.postgres.checks import TableChecksum, analyze_tables, checksum_tables, read_max_ids
from tasks.postgres.connections import (
    Target,
    check_target,
    connect,
    connect_for_writing,
    is_production_server,
    parse_target,
    refuse_production,
    resolve_dsn,
)

# The load lock's key: the tests hold it to provoke a concurrent load.
from tasks.postgres.loading import _LOAD_LOCK_KEY as _LOAD_LOCK_KEY
from tasks.postgres.loading import (
    DeferredDDL,
    LoadReport,
    TableLoad,
    copy_blocks,
    copy_rows,
    defer_ddl,
    restore_ddl,
    restore_table_ddl,
    truncate_tables,
)
from tasks.postgres.lock import SyncLock, sync_lock
from tasks.postgres.pipeline import copy_database
from tasks.postgres.plan import SyncPlan, drop_leftovers, prepare_sync, resolve_sanitize_salt
from tasks.postgres.schema import create_schema, describe_schema, verify_schema
from tasks.postgres.sessions import source_session
from tasks.postgres.swap import discard_new_copy, measure_staging_disk, swap_database
from tasks.postgres.tools import find_tools
from tasks.postgres.verify import verify_copy

# The secret lookup, for the sync's salt (tasks.secrets is the one shared service).
from tasks.secrets import resolve_secret, secret_env_var

__all__ = [
    "DeferredDDL",
    "LoadReport",
    "SyncLock",
    "SyncPlan",
    "TableChecksum",
    "TableLoad",
    "Target",
    "analyze_tables",
    "backup_lock",
    "check_target",
    "checksum_tables",
    "connect",
    "connect_for_writing",
    "copy_blocks",
    "copy_database",
    "copy_rows",
    "create_schema",
    "defer_ddl",
    "describe_schema",
    "discard_new_copy",
    "drop_leftovers",
    "drop_scratch_database",
    "dump_database",
    "find_tools",
    "is_production_server",
    "measure_staging_disk",
    "parse_target",
    "prepare_sync",
    "read_max_ids",
    "read_objects",
    "read_rollback_copy",
    "read_sequences",
    "refuse_production",
    "resolve_dsn",
    "resolve_sanitize_salt",
    "resolve_secret",
    "restore_backup",
    "restore_ddl",
    "restore_table_ddl",
    "secret_env_var",
    "source_session",
    "swap_database",
    "sync_lock",
    "table_checksum",
    "truncate_tables",
    "verify_copy",
    "verify_restore",
    "verify_schema",
]
