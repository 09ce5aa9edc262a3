"""Plan provisioning: the provision flow as a dry run against a local emulator.

No cluster is needed: the Kubernetes API is the project's EMULATOR (an in-process HTTP
server, not a cluster), Prefect runs on a temporary local server (``scripts/plan`` sees
to it, whatever ``PREFECT_API_URL`` says), and the staging
secrets are random values generated for this run unless ``RSOLV_SECRET_*`` variables
are set. Point ``--kubeconfig`` at a real cluster to plan against it instead (still a
dry run unless ``--apply`` is given).
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
from pathlib import Path

from kube_emulator import KubeEmulator
from rsolv_staging.settings import load_topology
from tasks.secrets import secret_env_var, source_name


def _generate_missing_secrets() -> None:
    topology = load_topology()
    for spec in topology.secrets:
        for key in spec.data_keys:
            var = secret_env_var(source_name(topology.staging.secret_name(spec), key))
            os.environ.setdefault(var, secrets.token_urlsafe(24))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", help="a real cluster's kubeconfig (default: emulator)")
    parser.add_argument("--apply", action="store_true", help="apply instead of a dry run")
    args = parser.parse_args()

    from flows.provision import main as provision

    flags = [] if args.apply else ["--dry-run"]
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
        return provision(flags)

    _generate_missing_secrets()
    with tempfile.TemporaryDirectory(prefix="rsolv-local-") as tmp, KubeEmulator() as kube:
        os.environ["KUBECONFIG"] = str(kube.write_kubeconfig(Path(tmp) / "kubeconfig"))
        print(f"Kubernetes API: local EMULATOR at {kube.url} (not a cluster; nothing real changes)")
        return provision(flags)


if __name__ == "__main__":
    raise SystemExit(main())
