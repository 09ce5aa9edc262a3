"""One sync at a time: a session advisory lock on staging's own server.

Why not a Prefect global concurrency limit (the sync used ``staging-data-sync`` before):
a limit's slot outlives a killed run until its lease expires (300 s by default, 60 s at
the least, plus the repossessor's loop), and any Prefect API client can take or free it.
An advisory lock lives where the conflict is, on the server both runs write: it is
released the moment the holder's connection closes (a killed worker's kernel closes its
socket at once; TCP keepalives on both ends cover a host that vanished), and taking it
needs staging's admin credentials. While it waits, the run says who holds the lock
(the holder's flow run, host and since when), read from ``pg_locks``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from pydantic import SecretStr

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import DataError, LockTimeout
from tasks.postgres.sessions import _admin, _logger, _with

# pg_advisory_lock(int4, int4): the project ("RSLV") and the sync. Two int4 keys show in
# pg_locks as classid/objid, so the holder can be looked up without bit arithmetic.
LOCK_KEYS = (0x52534C56, 1)
# The holder's connection names its flow run, for the waiting run's log line.
APPLICATION_PREFIX = "rsolv-staging-data-sync"
# A vanished host's lock is freed within idle + interval * count seconds (25 s).
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5}
_SERVER_KEEPALIVES = ("tcp_keepalives_idle", "10"), ("tcp_keepalives_interval", "5")

_HOLDER = """
SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
    SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s::oid AND l.objid = %s::oid AND l.objsubid = 2
"""


@dataclass(frozen=True)
class SyncLock:
    """The held lock: its session, to check it is still held before the swap."""

    conn: psycopg.Connection[Any]
    target: SecretStr

    def ensure_held(self) -> None:
        """Raise unless this session still holds the lock (a lost connection lost it).

        Raises:
            DataError: the lock's connection is gone: another sync may be running, so
                this one must not swap.
        """
        try:
            row = self.conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND classid = %s::oid AND objid = %s::oid",
                LOCK_KEYS,
            ).fetchone()
        except psycopg.Error:
            row = None
        if not row or row[0] != 1:
            raise DataError(
                "the sync lost its lock on staging's server (its connection dropped): "
                "another sync may be running, so this one stops before the swap; the "
                "live database is unchanged"
            )


def _holder(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(_HOLDER, LOCK_KEYS).fetchone()
    if row is None:
        return "a sync that has just ended"
    pid, name, host, since = row
    name = str(name or "")
    who = f"flow run {name.removeprefix(APPLICATION_PREFIX).strip()}"
    if not name.startswith(APPLICATION_PREFIX):
        who = name or "a session without a name"  # not a sync: someone holds it by hand
    where = f"from {host}" if host else "over a local socket"
    return f"{who}, backend {pid} {where}, connected since {since:%Y-%m-%d %H:%M:%S %Z}"


def _try(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", LOCK_KEYS).fetchone()
    return bool(row and row[0])


@contextmanager
def sync_lock(
    target_dsn: SecretStr, production: Database, *, wait_seconds: float, run_id: str
) -> Iterator[SyncLock]:
    """Hold staging's sync lock around a sync; wait up to ``wait_seconds`` for it.

    Raises:
        LockTimeout: another sync held the lock for ``wait_seconds``; nothing changed.
        GuardError: ``target_dsn`` is production's server.
    """
    dsn = _with(target_dsn, application_name=f"{APPLICATION_PREFIX} {run_id}", **_KEEPALIVES)
    with _admin(dsn, production) as conn:
        for name, value in _SERVER_KEEPALIVES:
            conn.execute(f"SET {name} = {value}")
        deadline = time.monotonic() + wait_seconds
        said = 0.0
        while not _try(conn):
            now = time.monotonic()
            if now >= deadline:
                raise LockTimeout(
                    f"another sync held staging's sync lock for {wait_seconds:.0f}s "
                    f"({_holder(conn)}); nothing was changed"
                )
            if now - said >= 60:  # once a minute, not every poll
                _logger().info("Waiting for the sync lock on staging: held by %s", _holder(conn))
                said = now
            time.sleep(min(1.0, max(deadline - now, 0.0)))
        try:
            yield SyncLock(conn, target_dsn)
        finally:
            # Closing the session frees it too; unlocking first keeps a pooled
            # connection (pgbouncer in session mode) from carrying it on.
            with suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", LOCK_KEYS)
