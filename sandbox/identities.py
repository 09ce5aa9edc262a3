"""The sandbox's cluster identities: one per zone, each held to its rights by the emulator's RBAC.

- bootstrap (``KUBECONFIG``): the admin token (``system:masters``); provisioning, and the
  sandbox playing production's past;
- staging (``RSOLV_STAGING_KUBECONFIG``): provisioning's own ``staging-deployer``
  ServiceAccount, with a token issued to it (TokenRequest): staging's deploys may write
  the ``staging`` namespace only;
- production (``RSOLV_PRODUCTION_KUBECONFIG``): a ``production-deployer`` ServiceAccount
  created here (on a cluster, by production's own zone): writes ``production``, reads
  staging's Deployments (the promotion checks what staging runs), nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsolv_staging.provisioning import deployer_rules, deployer_service_account

if TYPE_CHECKING:
    from kube_emulator import KubeEmulator
    from rsolv_staging.environments import Topology

RBAC = "rbac.authorization.k8s.io/v1"
DAY = 86_400  # the tokens outlive a run that waits long for its approver


def _role(name: str, namespace: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": RBAC,
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules,
    }


def _binding(name: str, namespace: str, account: str, account_namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": RBAC,
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": account_namespace}],
    }


def use_separate_identities(kube: KubeEmulator, state: Path, topology: Topology) -> None:
    """After provisioning: staging's flows act as staging-deployer, production's as
    production-deployer (kubeconfigs in ``state``, named by the settings' variables)."""
    staging, production = topology.staging, topology.production
    account = deployer_service_account(staging)
    staging_config = kube.write_kubeconfig(
        state / f"kubeconfig-{account}",
        token=kube.service_account_token(staging.namespace, account, expiration_seconds=DAY),
        namespace=staging.namespace,
        user=account,
    )
    prod_account = deployer_service_account(production)
    ns = production.namespace
    kube.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kube.seed(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": prod_account, "namespace": ns},
        }
    )
    # Production's overlay also ships its NetworkPolicies (provisioning does staging's).
    policies = {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": ["get", "create", "patch"],
    }
    kube.seed(_role(prod_account, ns, [*deployer_rules(), policies]))
    kube.seed(_binding(prod_account, ns, prod_account, ns))
    reader = f"{prod_account}-reads-staging"
    read_deployments = [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}]
    kube.seed(_role(reader, staging.namespace, read_deployments))
    kube.seed(_binding(reader, staging.namespace, prod_account, ns))
    production_config = kube.write_kubeconfig(
        state / f"kubeconfig-{prod_account}",
        token=kube.service_account_token(ns, prod_account, expiration_seconds=DAY),
        namespace=ns,
        user=prod_account,
    )
    os.environ["RSOLV_STAGING_KUBECONFIG"] = str(staging_config)
    os.environ["RSOLV_PRODUCTION_KUBECONFIG"] = str(production_config)
    print(f"    staging's flows act as system:serviceaccount:{staging.namespace}:{account}")
    print(f"    production's as system:serviceaccount:{ns}:{prod_account}")
