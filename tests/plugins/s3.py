"""Fixtures: an S3-compatible endpoint over real HTTP on 127.0.0.1 (moto's server mode).

The server is a process of its own (``python -m moto.server``), as object storage is
for the flows: s3fs talks to it over HTTP with SigV4-signed requests, multipart uploads
and listings, like to any S3-compatible store. It dies with the test process
(``PR_SET_PDEATHSIG``), so a killed run leaves no server behind. Started once per
session (about 2 s); each test gets a bucket of its own.
"""

from __future__ import annotations

import ctypes
import functools
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest


@dataclass(frozen=True)
class S3Endpoint:
    """A running S3-compatible endpoint and the (arbitrary) keys it accepts."""

    url: str
    access_key_id: str = "rsolv-test-key"
    secret_access_key: str = "rsolv-test-secret"

    def client(self) -> object:
        """A boto3 S3 client for the test's own setup and inspection."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1",
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_us() -> None:
    with_parent = ctypes.CDLL(None, use_errno=True).prctl
    with_parent(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """moto's S3 server on a free port of 127.0.0.1, for the session."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=functools.partial(_die_with_us),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.1)
    yield S3Endpoint(url=url)
    process.terminate()
    process.wait(10)


@pytest.fixture
def s3_bucket(s3_endpoint: S3Endpoint) -> str:
    """A new, empty bucket on the endpoint (its name)."""
    name = "rsolv-backups-" + secrets.token_hex(4)
    client = s3_endpoint.client()
    client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name
