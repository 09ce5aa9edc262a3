"""Staging's database logins: the blue/green pair the password rotation alternates.

Every write goes through :func:`connect_for_writing` (the production guard). Passwords
are hashed (SCRAM-SHA-256) by libpq on this side before ``ALTER ROLE`` is sent, so the
plain password never reaches the server's statement log; no value appears in a log line,
an exception message or a task result.
"""

from __future__ import annotations

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import ConfigurationError
from tasks.postgres.connections import _error, _retrying, connect_for_writing, parse_target


def dsn_user(dsn: SecretStr) -> str:
    """The login a DSN uses (libpq's default filled in)."""
    return parse_target(dsn).user


def with_login(dsn: SecretStr, user: str, password: SecretStr) -> SecretStr:
    """``dsn`` with another user and password, everything else kept (key=value form)."""
    params = conninfo_to_dict(dsn.get_secret_value())
    params.update(user=user, password=password.get_secret_value())
    return SecretStr(make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}))


@task(name="read-logins", cache_policy=NO_CACHE, **_retrying)
def read_logins(admin_dsn: SecretStr, names: list[str], production: Database) -> dict[str, bool]:
    """Which of ``names`` exist as roles on staging's server, and whether each may log in.

    Read-only, but through the writing guard: this is the server the rotation will write.

    Returns:
        role name -> rolcanlogin, for the roles that exist.
    """
    with connect_for_writing(admin_dsn, production) as conn:
        try:
            rows = conn.execute(
                "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)", (names,)
            ).fetchall()
        except psycopg.Error as exc:
            raise _error("cannot read staging's roles", exc, admin_dsn) from None
    return {str(name): bool(login) for name, login in rows}


@task(
    name="set-login-password",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="set-password-{login}",
    **_retrying,
)
def set_login_password(
    admin_dsn: SecretStr, *, login: str, role: str, password: SecretStr, production: Database
) -> None:
    """Give ``login`` (created if missing, a member of ``role``) LOGIN and ``password``.

    Idempotent: a retry sets the same hash again. Sessions of ``login`` act as ``role``
    (``ALTER ROLE ... SET role``), so objects the apps create belong to the group role,
    not to whichever login created them, and the next rotation's login owns the same.

    Raises:
        ConfigurationError: the group role ``role`` does not exist.
        GuardError: the admin DSN is production's server.
    """
    with connect_for_writing(admin_dsn, production, autocommit=True) as conn:
        try:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if exists is None:
                raise ConfigurationError(
                    f"group role {role!r} does not exist on staging's server: create it "
                    f"(README, rotate-staging-secret)"
                )
            hashed = conn.pgconn.encrypt_password(
                password.get_secret_value().encode(), login.encode(), b"scram-sha-256"
            ).decode()
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,)).fetchone():
                conn.execute(
                    sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                        sql.Identifier(login), sql.Literal(hashed)
                    )
                )
            else:
                conn.execute(
                    sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(
                        sql.Identifier(login), sql.Literal(hashed)
                    )
                )
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(login))
            )
            conn.execute(
                sql.SQL("ALTER ROLE {} SET role = {}").format(
                    sql.Identifier(login), sql.Literal(role)
                )
            )
        except psycopg.Error as exc:
            raise _error(f"cannot set the password of {login}", exc, admin_dsn) from None


@task(name="retire-login", cache_policy=NO_CACHE, task_run_name="retire-{login}", **_retrying)
def retire_login(admin_dsn: SecretStr, *, login: str, production: Database) -> None:
    """Take away ``login``'s password and its right to log in (NOLOGIN, PASSWORD NULL).

    Sessions already open stay (a rollout has replaced the pods that held them); new
    ones are refused. Idempotent; a missing login is already retired.
    """
    with connect_for_writing(admin_dsn, production, autocommit=True) as conn:
        try:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,)).fetchone():
                conn.execute(
                    sql.SQL("ALTER ROLE {} WITH NOLOGIN PASSWORD NULL").format(
                        sql.Identifier(login)
                    )
                )
        except psycopg.Error as exc:
            raise _error(f"cannot retire {login}", exc, admin_dsn) from None


@task(name="check-login", cache_policy=NO_CACHE, task_run_name="check-login-{login}", **_retrying)
def check_login(dsn: SecretStr, *, login: str, production: Database) -> None:
    """Log in with ``dsn`` (as ``login``) and make sure the session is that login.

    Raises:
        DataError: the login is refused (the password does not work).
    """
    with connect_for_writing(dsn, production) as conn:
        try:
            row = conn.execute("SELECT session_user").fetchone()
        except psycopg.Error as exc:
            raise _error(f"cannot query as {login}", exc, dsn) from None
    if row is None or row[0] != login:
        raise ConfigurationError(f"the DSN logs in as {row[0] if row else None!r}, not {login!r}")
