"""Provision staging: bring the cluster to RFC 002's staging state, idempotently.

What it applies (server-side, one field manager, built from the environment model in
``data/environments.yaml``):

- namespaces ``staging`` and ``staging-monitoring``, labelled by environment;
- a deployer service account with a Role confined to ``staging``, and a scrape-only
  identity for staging's Prometheus;
- a ResourceQuota and LimitRange at 50% of production;
- NetworkPolicies: nothing from other namespaces except the ingress controller and
  staging's monitoring; nothing from staging to the cluster's internal ranges;
- staging-only secrets (``staging-`` prefix), checked against production's by
  fingerprint so no credential is shared;
- staging PostgreSQL (StatefulSet, Service, PVC), and the Ingress for rsolv-staging.com
  as the staging overlay of ``deployments/`` renders it (one definition, not two);
- the monitoring stack in ``staging-monitoring`` (Prometheus scraping ``staging`` only,
  3-day retention, SLO alerts at 99%, Alertmanager with no paging receiver, Grafana on
  grafana.rsolv-staging.com with production's dashboards), as
  ``deployments/monitoring/overlays/staging`` renders it, refused before any write if it
  disagrees with the environment model.

Parameters:
    dry_run: render and diff against the live cluster (server-side dry run), apply nothing.
    environments_file: the environment model; default ``data/environments.yaml`` or
        ``$RSOLV_ENVIRONMENTS_FILE``.

Secrets: each key of each staging Secret comes from a Prefect Secret block named
``staging-<secret>-<key>`` (e.g. ``staging-database-password``) or the environment
variable ``RSOLV_SECRET_STAGING_DATABASE_PASSWORD``. Cluster access: ``$KUBECONFIG`` (or
``RSOLV_KUBECONFIG``) and the kube context named in the model; in-cluster credentials
when there is no kubeconfig. This is the bootstrap identity (cluster-admin-ish: it creates
namespaces, RBAC, quotas and NetworkPolicies), never staging's deploy identity: the
``staging-deployer`` it creates must not be able to change its own rights or limits.

Run it: ``python -m flows.provision --dry-run``, or the ``provision-staging`` deployment.
A second run reports 0 created and 0 changed. Each run leaves a markdown artifact
(key ``provision-staging``) listing created / changed / unchanged objects.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from rsolv_staging.environments import Topology
from rsolv_staging.guards import ensure_confined
from rsolv_staging.monitoring import ensure_matches_model
from rsolv_staging.provisioning import Manifest, secret_namespace, staging_objects
from rsolv_staging.reports import change_report, counts
from rsolv_staging.settings import Settings, load_settings, load_topology
from tasks.kube import (
    ObjectChange,
    apply_objects,
    preview_apply,
    read_objects,
    read_secret_fingerprints,
    retrying,
    summarize,
)
from tasks.manifests import DEPLOYMENTS, render_overlay
from tasks.reports import publish_markdown
from tasks.secrets import ensure_not_production_values, load_staging_secrets

ARTIFACT_KEY = "provision-staging"
MONITORING = DEPLOYMENTS / "monitoring"


class ProvisionReport(BaseModel):
    """What the run did, also returned to callers of the flow."""

    dry_run: bool
    created: int = Field(description="Objects created (or to create, in a dry run)")
    changed: int = Field(description="Objects changed (or to change, in a dry run)")
    unchanged: int = Field(description="Objects already as the model says")
    changes: list[ObjectChange]


@flow(name="provision-staging", log_prints=True)
def provision_staging(
    dry_run: bool = False,
    environments_file: str | None = None,
) -> ProvisionReport:
    """Bring staging to the state RFC 002 describes; a second run changes nothing."""
    settings = load_settings()
    topology = load_topology(Path(environments_file) if environments_file else None)
    staging = topology.staging

    # Everything that can refuse the run happens before the first write.
    secrets = load_staging_secrets(topology)
    ensure_not_production_values(
        topology, secrets, read_production_fingerprints(topology, settings)
    )
    plain = {
        name: {key: value.get_secret_value() for key, value in keys.items()}
        for name, keys in secrets.items()
    }
    objects = render_staging(topology, plain)

    live = retrying(read_objects, settings)(objects, cluster=staging.cluster, settings=settings)
    if dry_run:
        changes = retrying(preview_apply, settings)(
            objects, live, cluster=staging.cluster, settings=settings
        )
    else:
        applied = retrying(apply_objects, settings)(
            objects, cluster=staging.cluster, settings=settings
        )
        changes = summarize(objects, live, applied)
    return report_changes(changes, dry_run=dry_run, context=staging.cluster.kube_context)


def read_production_fingerprints(
    topology: Topology, settings: Settings
) -> dict[str, dict[str, str]]:
    """Fingerprints of production's secrets, to refuse a staging secret that reuses one.

    Each production secret is read where production keeps it: Grafana's with its
    monitoring stack, not with the apps (a secret not found has nothing to compare,
    silently).
    """
    production = topology.production
    where: dict[str, list[str]] = {}
    for spec in topology.secrets:
        where.setdefault(secret_namespace(production, spec), []).append(
            production.secret_name(spec)
        )
    fingerprints: dict[str, dict[str, str]] = {}
    for namespace, names in where.items():
        fingerprints |= retrying(read_secret_fingerprints, settings)(
            names, namespace=namespace, cluster=production.cluster, settings=settings
        )
    return fingerprints


def render_staging(topology: Topology, secrets: dict[str, dict[str, str]]) -> list[Manifest]:
    """Everything staging is made of, refused before any write if it strays or disagrees.

    The environment model's objects, the Ingress of the staging overlay and the
    monitoring overlay, which must match the model.
    """
    staging, production = topology.staging, topology.production
    routes = [o for o in render_overlay(staging.name) if o["kind"] == "Ingress"]
    monitoring = render_overlay.with_options(task_run_name="render-monitoring-{environment}")(
        staging.name, root=MONITORING
    )
    ensure_matches_model(
        monitoring, topology, staging, source=f"deployments/monitoring/overlays/{staging.name}"
    )
    objects = [*staging_objects(topology, secrets), *routes, *monitoring]
    ensure_confined(objects, staging, production)
    return objects


def report_changes(
    changes: list[ObjectChange], *, dry_run: bool, context: str | None
) -> ProvisionReport:
    """Publish the change report (artifact ``provision-staging``) and log the counts."""
    tally = counts(changes)
    publish_markdown(
        ARTIFACT_KEY,
        change_report(
            "Provision staging", changes, dry_run=dry_run, context=context or "current context"
        ),
        description=f"{tally['created']} created, {tally['changed']} changed, "
        f"{tally['unchanged']} unchanged" + (" (dry run)" if dry_run else ""),
    )
    get_run_logger().info(
        "%s: %d %s, %d %s, %d unchanged",
        "dry run" if dry_run else "provisioned",
        tally["created"],
        "to create" if dry_run else "created",
        tally["changed"],
        "to change" if dry_run else "changed",
        tally["unchanged"],
    )
    return ProvisionReport(dry_run=dry_run, changes=changes, **tally)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Provision RSOLV staging (RFC 002).")
    parser.add_argument("--dry-run", action="store_true", help="diff against the cluster only")
    parser.add_argument("--environments-file", help="environment model (YAML)")
    args = parser.parse_args(argv)
    report = provision_staging(dry_run=args.dry_run, environments_file=args.environments_file)
    for change in report.changes:
        print(f"{change.action:>9}  {change.key}")
    if report.dry_run:
        print(
            f"plan (dry run, nothing applied): {report.created} to create, "
            f"{report.changed} to change, {report.unchanged} unchanged"
        )
    else:
        print(
            f"applied: {report.created} created, {report.changed} changed, "
            f"{report.unchanged} unchanged"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
