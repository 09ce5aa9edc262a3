"""Real HTTP(S) servers on 127.0.0.1 for the smoke checks, each in its own thread.

An app server stands in for rsolv-landing and RSOLV-api:

- ``/``                     200, an HTML page titled RSOLV
- ``/api/health``           200, ``{"status": "ok", "database": "ok", ...}``;
  ``?database=down`` answers ``"database": "down"`` (the app is up, its DB is not)
- ``/slow?ms=300``          200 after the given delay (default 300 ms)
- ``/500``                  500
- ``/flaky/<key>?fail=3``   503 (``Retry-After: 0``) for the first ``fail`` requests of
  that key, then 200 JSON; keys keep tests independent on a shared server

TLS servers serve the same routes over HTTPS with certificates issued by a test CA made
here with ``cryptography``: one leaf expires in 2 days, one in 90 days; both name
``localhost`` and ``127.0.0.1``. Servers are session-wide (starting one costs
milliseconds, but there is no reason to do it per test) and shut down at teardown.

``serve_app`` and ``make_pki`` are public so that the benchmark can start the same
server outside pytest.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SLOW_DEFAULT_MS = 300
HEALTH = {"status": "ok", "database": "ok", "version": "test", "checks": [{"name": "postgres"}]}
LANDING = (
    b"<!doctype html><html><head><title>RSOLV</title></head>"
    b"<body><h1>RSOLV</h1><p>Security fixes, automated.</p></body></html>"
)


# ------------------------------------------------------------------------- servers


@dataclass
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    flaky: dict[str, int] = field(default_factory=dict)

    def hit(self, key: str) -> int:
        with self.lock:
            self.flaky[key] = self.flaky.get(key, 0) + 1
            return self.flaky[key]


class _AppHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as behind a real ingress
    # Headers and body go out in two writes; with Nagle on, the second waits for the
    # client's delayed ACK (~40 ms) on a kept-alive connection, a test-server artifact.
    disable_nagle_algorithm = True
    server: _AppServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if path == "/":
            self._send(200, LANDING, "text/html; charset=utf-8")
        elif path == "/api/health":
            body = {**HEALTH, "database": query.get("database", "ok")}
            self._json(200, body)
        elif path == "/slow":
            time.sleep(int(query.get("ms", SLOW_DEFAULT_MS)) / 1000)
            self._json(200, {"status": "ok", "slept_ms": int(query.get("ms", SLOW_DEFAULT_MS))})
        elif path == "/500":
            self._send(500, b"internal server error", "text/plain")
        elif path.startswith("/flaky/"):
            count = self.server.counters.hit(path.removeprefix("/flaky/"))
            if count <= int(query.get("fail", 3)):
                self._send(503, b"starting", "text/plain", {"Retry-After": "0"})
            else:
                self._json(200, {"status": "ok", "after": count - 1})
        else:
            self._send(404, b"not found", "text/plain")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest's output for the tests


class _AppServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: with more concurrent connects the
    # kernel drops SYNs and clients retry after 1 s, which looked like our checks
    # running in waves. An ingress controller listens with a backlog in the hundreds.
    request_queue_size = 128
    tls: ssl.SSLContext | None = None

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.counters = _Counters()
        super().__init__(("127.0.0.1", 0), _AppHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so a slow or
        # refusing client never blocks the accept loop.
        if self.tls is not None:
            request.settimeout(10)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # e.g. the client rejected our certificate: that is its test
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up are part of the tests


@dataclass(frozen=True)
class Server:
    """A running server: its base URL (no trailing slash) and port."""

    url: str
    port: int


@contextmanager
def serve_app(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """Run the app server (HTTPS when ``tls`` is given) until the block ends."""
    server = _AppServer(tls)
    thread = threading.Thread(target=server.serve_forever, name="smoke-app", daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield Server(url=f"{'https' if tls else 'http'}://127.0.0.1:{port}", port=port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ----------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class PKI:
    """A test CA and two server certificates it issued, as PEM files."""

    ca_file: Path
    expiring: tuple[Path, Path]  # (certificate, key), expires in 2 days
    valid: tuple[Path, Path]  # (certificate, key), expires in 90 days
    expiring_not_after: dt.datetime
    valid_not_after: dt.datetime

    def server_context(self, which: tuple[Path, Path]) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*map(str, which))
        return context


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_pki(directory: Path, *, expiring_days: float = 2, valid_days: float = 90) -> PKI:
    """Write a test CA and two leaf certificates for localhost/127.0.0.1 to ``directory``.

    EC P-256 keys: generating them takes milliseconds (RSA would take a good part of a
    second), and TLS clients accept them everywhere.
    """
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsolv-staging test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(name: str, days: float) -> tuple[tuple[Path, Path], dt.datetime]:
        key = ec.generate_private_key(ec.SECP256R1())
        not_after = now + dt.timedelta(days=days)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_file, key_file = directory / f"{name}.pem", directory / f"{name}-key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return (cert_file, key_file), not_after

    expiring, expiring_not_after = leaf("expiring", expiring_days)
    valid, valid_not_after = leaf("valid", valid_days)
    return PKI(
        ca_file=ca_file,
        expiring=expiring,
        valid=valid,
        expiring_not_after=expiring_not_after,
        valid_not_after=valid_not_after,
    )


class LosingProxy:
    """A TCP proxy on 127.0.0.1 to an HTTP server that loses one answer.

    Everything is relayed both ways, except the response to the first request whose
    bytes contain ``marker``: once the server has handled that request, the client's
    connection is closed instead (a reply lost on the way, after the server acted).
    """

    def __init__(self, upstream: str, marker: bytes) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._marker = marker
        self._lock = threading.Lock()  # one marked request across connections
        self._fired = False
        self.lost = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        self.url = f"{parts.scheme}://127.0.0.1:{port}{parts.path}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            marked = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, marked), daemon=True).start()
            threading.Thread(
                target=self._down, args=(client, upstream, marked), daemon=True
            ).start()

    def _up(self, client: socket.socket, upstream: socket.socket, marked: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if not self._fired and self._marker in data:
                        self._fired = True
                        marked.set()  # before the server can possibly answer
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

    def _down(
        self, client: socket.socket, upstream: socket.socket, marked: threading.Event
    ) -> None:
        try:
            while data := upstream.recv(65536):
                if marked.is_set():  # the marked request's reply: lose it
                    self.lost += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def app_server() -> Iterator[Server]:
    """The app over plain HTTP on 127.0.0.1."""
    with serve_app() as server:
        yield server


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A test CA with a 2-day and a 90-day server certificate (PEM files)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_expiring_server(test_pki: PKI) -> Iterator[Server]:
    """The app over HTTPS with a certificate that expires in 2 days."""
    with serve_app(test_pki.server_context(test_pki.expiring)) as server:
        yield server


@pytest.fixture(scope="session")
def tls_valid_server(test_pki: PKI) -> Iterator[Server]:
    """The app over HTTPS with a certificate valid for 90 more days."""
    with serve_app(test_pki.server_context(test_pki.valid)) as server:
        yield server
