"""An EMULATOR of the Kubernetes API server, for tests and laptop sandboxes (not a cluster).

It speaks real HTTP on 127.0.0.1, so the official Python client (typed APIs, the
DynamicClient and its server-side apply) and kubectl run unmodified against it. Nothing runs:
a built-in stand-in for the workload controllers writes the status a cluster would reach.

    with KubeEmulator() as kube:
        kube.write_kubeconfig(tmp_path / "kubeconfig")
        kube.set_workload_behaviour("never-ready", name="web")
        kube.inject_faults(503, count=2, only_writes=True)

Run it alone with ``python -m kube_emulator --help``.
"""

from __future__ import annotations

from .controllers import MODES, Mode
from .emulator import DEFAULT_USER, Fault, KubeEmulator, RequestRecord
from .kinds import KINDS, Kind

__all__ = [
    "DEFAULT_USER",
    "KINDS",
    "MODES",
    "Fault",
    "Kind",
    "KubeEmulator",
    "Mode",
    "RequestRecord",
]
