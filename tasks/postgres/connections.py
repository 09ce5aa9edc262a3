"""Targets and the production guard: DSN parsing and redaction, connections, retries.

A DSN arrives as ``SecretStr`` (from a Secret block, see :func:`resolve_dsn`) and never
appears in a log line, an artifact or an exception message: errors are rewritten with
the password masked, and a DSN libpq cannot even parse is reported without its text
(the parser quotes fragments of it). Every task that writes calls
:func:`connect_for_writing`, which refuses a target that is production's PostgreSQL
server twice: on the DSN as written (before connecting) and on where libpq actually
connected (``conn.info``: after environment defaults, multi-host selection and
``hostaddr``).

Why the guard compares *servers* and not only host/port/database: RFC 002 gives staging
its own PostgreSQL instance, so any database on production's server is the wrong
target; and the DSN is a secret nobody sees in the UI, so a pasted production DSN is
the realistic mistake. Host names are compared after folding Kubernetes' spellings of
one Service (``postgres.production``, ``...svc``, ``...svc.cluster.local``) and, where
both names resolve, by address; a production reached through some other alias (a
port-forward on another port, a proxy) cannot be recognized from the DSN alone.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr
from sqlalchemy.exc import DBAPIError

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import ConfigurationError, DataError, GuardError, SecretError
from tasks.secrets import resolve_secret, secret_env_var

APPLICATION_NAME = "rsolv-staging"


# Retries of idempotent tasks on transient failures (connection lost, lock timeout).
RETRIES = 3


RETRY_DELAYS = exponential_backoff(backoff_factor=2)


RETRY_JITTER = 0.5


LOCK_TIMEOUT = "30s"


_MASK = "********"


_PERMANENT_CONNECT_ERRORS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # database or role
    "authentication method",
    "certificate",
)


@dataclass(frozen=True)
class Target:
    """Where a DSN points, without its password (safe to log and to return)."""

    host: str
    port: int
    dbname: str
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


def _is_transient(exc: psycopg.Error) -> bool:
    """Whether retrying may help: the connection or the server, not our request."""
    state = exc.sqlstate
    if state is None:
        # No SQLSTATE: a failed connection attempt (libpq reports only text) or a dropped
        # connection. Refused logins and missing databases will not pass by waiting.
        text = str(exc).lower()
        if any(marker in text for marker in _PERMANENT_CONNECT_ERRORS):
            return False
        return isinstance(exc, psycopg.OperationalError)
    # 08: connection exception; 57P0x: shutdown/crash; 53: out of resources;
    # 40001/40P01: serialization failure/deadlock; 55P03: lock not available.
    return state[:2] in {"08", "53"} or state in {
        "57P01",
        "57P02",
        "57P03",
        "40001",
        "40P01",
        "55P03",
    }


def _redact(text: str, dsn: SecretStr) -> str:
    """``text`` with the DSN's password masked (as written and percent-encoded)."""
    try:
        password = conninfo_to_dict(dsn.get_secret_value()).get("password")
    except psycopg.Error:
        password = None
    if password:
        for form in {str(password), quote(str(password), safe="")}:
            text = text.replace(form, _MASK)
    return text


def _error(message: str, exc: psycopg.Error | DBAPIError, dsn: SecretStr) -> DataError:
    """A DataError for ``exc`` (a psycopg error, or SQLAlchemy's wrapper of one)."""
    if isinstance(exc, DBAPIError):
        original = exc.orig
        if not isinstance(original, psycopg.Error):
            return DataError(f"{message}: {_redact(str(exc).strip(), dsn)}")
        exc = original
    detail = _redact(str(exc).strip() or type(exc).__name__, dsn)
    return DataError(f"{message}: {detail}", transient=_is_transient(exc))


def _endpoints(params: dict[str, Any]) -> list[tuple[str, int]]:
    """The (host, port) pairs libpq would try for these connection parameters."""
    hosts = str(params.get("host") or os.environ.get("PGHOST") or "localhost").split(",")
    ports = str(params.get("port") or os.environ.get("PGPORT") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    pairs = []
    for host, port in zip(hosts, ports, strict=False):
        try:
            pairs.append((host.strip() or "localhost", int(port.strip() or 5432)))
        except ValueError:
            # Not quoted: a misread DSN can put part of the password there.
            raise ConfigurationError("the DSN's port is not a number") from None
    for address in str(params.get("hostaddr") or "").split(","):
        if address.strip():
            pairs.append((address.strip(), pairs[0][1] if pairs else 5432))
    return pairs


_URI_SCHEME = ("postgresql://", "postgres://")


def _misencoded_uri(dsn: str) -> bool:
    """Whether a URI DSN has '@' or '/' unencoded in its user info.

    libpq ends the user info at the first '@' or '/'. A '/' in the password then leaves
    no user info at all, and the password is read as host, port and database; an '@'
    cuts it there, and the rest is read as the host. Either way messages that name the
    target would print it, and no redaction knows to look there. Detected the way libpq
    reads: an '@' left in the host (after the user info) or in the database path (no
    user info). A base64 password holds '/' often enough for this to matter.
    """
    if not dsn.lower().startswith(_URI_SCHEME):
        return False
    rest = dsn.split("://", 1)[1]
    stop = next((i for i, c in enumerate(rest) if c in "@/"), len(rest))
    if stop < len(rest) and rest[stop] == "@":  # user info, then the host
        return "@" in re.split(r"[/?]", rest[stop + 1 :], maxsplit=1)[0]
    host = re.split(r"[/?]", rest, maxsplit=1)[0]
    path = rest[len(host) :].split("?", 1)[0]  # the database name; the query may hold '@'
    return "@" in path


def parse_target(dsn: SecretStr) -> Target:
    """Where ``dsn`` points, as written (libpq's defaults filled in from the environment).

    Raises:
        ConfigurationError: libpq cannot parse the DSN. The parser's message quotes
            parts of the string, so it is not repeated.
    """
    if _misencoded_uri(dsn.get_secret_value()):
        raise ConfigurationError(
            "the database DSN is a URI with '@' or '/' unencoded in its user info (in the "
            "password, say): libpq would read part of it as the host, port or database. "
            "Percent-encode them (%40, %2F); the text is not shown because it holds a "
            "password"
        )
    try:
        params = conninfo_to_dict(dsn.get_secret_value())
    except psycopg.Error:
        raise ConfigurationError(
            "the database DSN is not a valid PostgreSQL connection string "
            "(URI or key=value form); its text is not shown because it holds a password"
        ) from None
    host, port = _endpoints(params)[0]
    user = str(params.get("user") or os.environ.get("PGUSER") or "postgres")
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or user)
    return Target(host=host, port=port, dbname=dbname, user=user)


def _canonical_host(host: str) -> str:
    """Fold case, a trailing dot and Kubernetes' spellings of one Service name."""
    host = host.strip().lower().rstrip(".")
    for suffix in (".svc.cluster.local", ".svc"):
        if host.endswith(suffix):
            return host.removesuffix(suffix)
    return host


def _addresses(host: str) -> set[str]:
    if host.startswith("/"):  # a Unix socket directory
        return set()
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()  # unresolvable here (e.g. cluster DNS from outside): compare names


def is_production_server(host: str, port: int, production: Database) -> bool:
    """Whether ``host:port`` is production's PostgreSQL server per the environment model."""
    if port != production.port:
        return False
    if _canonical_host(host) == _canonical_host(production.host):
        return True
    return bool(_addresses(host) & _addresses(production.host))


def refuse_production(dsn: SecretStr, production: Database) -> Target:
    """Return the target of ``dsn`` unless it is production's server.

    Raises:
        GuardError: ``dsn`` points at production's PostgreSQL server.
        ConfigurationError: ``dsn`` cannot be parsed.
    """
    target = parse_target(dsn)  # raises ConfigurationError when it cannot be parsed
    for host, port in _endpoints(conninfo_to_dict(dsn.get_secret_value())):
        if is_production_server(host, port, production):
            raise _guard_error(target, production)
    return target


def _guard_error(target: Target, production: Database) -> GuardError:
    return GuardError(
        f"refusing to write to {target}: that is production's PostgreSQL server "
        f"({production.host}:{production.port}, database {production.name}) in the "
        "environment model. Staging must be a separate instance (RFC 002); check the "
        "DSN secret the flow was given."
    )


def connect(dsn: SecretStr, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a connection; on failure raise a :class:`DataError` without the password.

    Raises:
        DataError: the server cannot be reached or refuses the login.
        ConfigurationError: the DSN cannot be parsed.
    """
    target = parse_target(dsn)
    params = conninfo_to_dict(dsn.get_secret_value())
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = 10
    if "application_name" not in params:
        extra["application_name"] = APPLICATION_NAME
    try:
        conn = psycopg.connect(dsn.get_secret_value(), autocommit=autocommit, **extra)
    except psycopg.Error as exc:
        failure = _error(f"cannot connect to {target}", exc, dsn)
    else:
        return conn
    # Raised outside the except block so that the original error, whose text may quote
    # the connection string, is not kept as __context__ and printed in tracebacks.
    raise failure


@contextmanager
def connect_for_writing(
    dsn: SecretStr, production: Database, *, autocommit: bool = False
) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a target that is verifiably not production's server.

    Raises:
        GuardError: the DSN, or where libpq actually connected, is production's server.
    """
    target = refuse_production(dsn, production)
    conn = connect(dsn, autocommit=autocommit)
    with conn:
        info = conn.info
        actual = [(info.host, info.port)]
        if info.hostaddr:
            actual.append((info.hostaddr, info.port))
        if any(is_production_server(host, port, production) for host, port in actual):
            raise _guard_error(target, production)
        yield conn


def _retry_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retry condition: retry connection-level failures, never logic errors."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, DataError):
        return exc.transient
    return isinstance(exc, psycopg.Error) and _is_transient(exc)


_retrying: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_jitter_factor": RETRY_JITTER,
    "retry_condition_fn": _retry_transient,
}


@task(cache_policy=NO_CACHE, persist_result=False)
def resolve_dsn(secret_name: str) -> SecretStr:
    """Read a database DSN from its Prefect Secret block or environment variable.

    Args:
        secret_name: Secret block name, e.g. ``staging-database-dsn`` (or the variable
            ``RSOLV_SECRET_STAGING_DATABASE_DSN``).

    Returns:
        The DSN, as ``SecretStr``; never persisted (``persist_result=False``).

    Raises:
        SecretError: neither source holds the secret.
    """
    value = resolve_secret(secret_name)
    if value is None:
        raise SecretError(
            f"no DSN: create the Prefect Secret block {secret_name!r} (or set the environment "
            f"variable {secret_env_var(secret_name)})"
        )
    return value


@task(cache_policy=NO_CACHE, **_retrying)
def check_target(dsn: SecretStr, production: Database) -> Target:
    """Connect to the target and make sure it is not production, before any write.

    Args:
        dsn: The target database's DSN.
        production: Production's database in the environment model.

    Returns:
        Where the DSN points (no password).

    Raises:
        GuardError: the target is production's server.
        DataError: the target cannot be reached (``transient``) or refuses the login.
    """
    target = parse_target(dsn)
    with connect_for_writing(dsn, production) as conn:
        version = conn.info.server_version
    get_run_logger().info(
        "Target %s is PostgreSQL %d.%d", target, version // 10_000, version % 10_000
    )
    return target
