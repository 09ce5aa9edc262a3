"""Scan staging's security: what it actually runs and serves, not what the repository says.

Steps (RFC 002, "Regular security scans in staging"):

1. read the environment model (``data/environments.yaml``) and the baseline of known
   findings (``data/security-baseline.yaml``); refuse an endpoint of production's;
2. read the LIVE objects of staging's namespaces (``staging``, ``staging-monitoring``, as
   the model names them): pods and every pod template, Secrets (fingerprints only),
   ServiceAccounts, NetworkPolicies, Ingresses and the namespaces;
3. read production's Secret fingerprints (the provisioning check, re-run read-only);
4. scan each HTTPS endpoint's TLS with sslyze (protocol versions, weak TLS 1.2 suites,
   certificate expiry and chain) and read its security headers with httpx;
5. judge (``rsolv_staging.security_scan``): pods running as root or privileged, host
   namespaces and paths, missing securityContext, added capabilities, images not pinned
   by digest or from a registry the model does not list, Secret volumes no container
   mounts, Secrets nothing references, NetworkPolicies missing or weaker than
   provisioning's, Pod Security weakened, TLS 1.0/1.1 (or SSL) accepted, certificates
   expiring or untrusted, HSTS/nosniff/framing/CSP headers missing, and any staging
   credential equal to a production one;
6. publish the findings as a table artifact (key ``scan-staging-security``), notify the
   NEW ones, remember what was announced, and fail the run on any critical finding.

Parameters:
    endpoints: URLs to probe; default ``https://<host>/`` for each of staging's hosts.
    baseline_file: known findings (YAML); default ``data/security-baseline.yaml``.
    ca_bundle: extra CA certificates (PEM) the TLS chain may validate against.
    tls_expiring_days: fewer days left on a certificate is a high finding (default 7).
    tls_renewal_days: fewer days left is a medium finding: renewal is failing (21).
    notification_block: Prefect notification block for new findings (``rsolv-deployments``).
    environments_file: the environment model; default ``data/environments.yaml``.

Blocks and variables: the notification block (optional: none, no message); the Variable
``security_scan_announced`` (what earlier runs announced). Anyone with API access can
write that Variable: it can only silence re-announcements, never a failure. Cluster
access: like provision-staging (``$KUBECONFIG``, the model's kube contexts), read-only.

Run it: ``python -m flows.security_scan`` or the ``scan-staging-security`` deployment
(daily). Exit status 1 when a critical finding fails the run.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from flows.provision import read_production_fingerprints
from rsolv_staging.exceptions import SecurityScanFailed
from rsolv_staging.security_scan import (
    ScanReport,
    announced_id,
    classify,
    notification,
    scan_findings,
    scan_targets,
)
from rsolv_staging.settings import load_security_baseline, load_settings, load_topology
from tasks.http import read_security_headers
from tasks.kube import read_live_state, retrying
from tasks.notify import DEFAULT_BLOCK, notify
from tasks.prefect_api import read_announced_findings, record_announced_findings
from tasks.reports import publish_table
from tasks.tls import scan_tls

ARTIFACT_KEY = "scan-staging-security"


@flow(name="scan-staging-security", log_prints=True)
def scan_staging_security(
    endpoints: list[str] | None = None,
    baseline_file: str | None = None,
    ca_bundle: str | None = None,
    tls_expiring_days: Annotated[float, Field(ge=0, le=90)] = 7,
    tls_renewal_days: Annotated[float, Field(ge=0, le=90)] = 21,
    notification_block: str = DEFAULT_BLOCK,
    environments_file: str | None = None,
) -> ScanReport:
    """Scan what staging runs and serves; fail on any critical finding.

    Args:
        endpoints: URLs to probe (TLS for https ones, headers for all); default
            https://<host>/ for staging's apex, api. and grafana. hosts.
        baseline_file: Known findings (YAML); default data/security-baseline.yaml.
        ca_bundle: Extra CA certificates (PEM file) a certificate chain may validate against.
        tls_expiring_days: A certificate with fewer days left is a high finding.
        tls_renewal_days: A certificate with fewer days left is a medium finding.
        notification_block: Notification block that announces new findings.
        environments_file: The environment model; default data/environments.yaml.
    """
    settings = load_settings()
    topology = load_topology(Path(environments_file) if environments_file else None)
    staging = topology.staging
    # Everything that can refuse the run happens before the first request.
    baseline = load_security_baseline(Path(baseline_file) if baseline_file else None)
    targets = scan_targets(topology, endpoints)

    live = retrying(read_live_state, settings)(
        staging.namespaces, cluster=staging.cluster, settings=settings
    )
    production = read_production_fingerprints(topology, settings)
    tls = scan_tls([t for t in targets if t.startswith("https://")], ca_bundle=ca_bundle)
    headers = read_security_headers(targets)

    findings = scan_findings(
        topology,
        live,
        production_fingerprints=production,
        tls=tls,
        headers=headers,
        now=dt.datetime.now(dt.UTC),
        expiring_days=tls_expiring_days,
        renewal_days=tls_renewal_days,
    )
    report = classify(
        findings, baseline, announced=read_announced_findings(), today=dt.date.today()
    )
    publish_table(ARTIFACT_KEY, report.table(), description=report.summary())
    announce_new_findings(report, block_name=notification_block)

    if report.critical:
        raise SecurityScanFailed(
            f"staging has {len(report.critical)} critical security finding(s): "
            + "; ".join(f"{f.rule} {f.object}: {f.detail}" for f in report.critical),
            report=report,
        )
    return report


def announce_new_findings(report: ScanReport, *, block_name: str) -> bool:
    """Notify the new findings (none: no message), then record what has been announced.

    A finding stays "new" until a notification about it was sent: with no block, or a
    failed send, the next run announces it again. Baseline findings are never recorded.
    """
    logger = get_run_logger()
    logger.info("security scan: %s", report.summary())
    for key in report.resolved_baseline:
        logger.warning("baseline entry %r matches no finding any more: remove it", key)
    for key in report.expired_baseline:
        logger.warning("baseline entry %r has expired: it no longer counts as known", key)
    sent = False
    if report.new:
        subject, body = notification(report)
        sent = notify(subject, body, block_name=block_name)
    announced = [
        announced_id(f.key)
        for f in report.findings
        if f.status == "seen" or (f.status == "new" and sent)
    ]
    record_announced_findings(announced)
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Security scan of RSOLV staging (RFC 002).")
    parser.add_argument("--endpoint", action="append", dest="endpoints", help="URL to probe")
    parser.add_argument("--baseline-file", help="known findings (YAML)")
    parser.add_argument("--ca-bundle", help="extra CA certificates to trust (PEM)")
    parser.add_argument("--environments-file", help="environment model (YAML)")
    args = parser.parse_args(argv)
    report: ScanReport | None
    try:
        report = scan_staging_security(
            endpoints=args.endpoints,
            baseline_file=args.baseline_file,
            ca_bundle=args.ca_bundle,
            environments_file=args.environments_file,
        )
    except SecurityScanFailed as exc:
        report = exc.report if isinstance(exc.report, ScanReport) else None
        code = 1
    else:
        code = 0
    for row in report.table() if report else []:
        print(f"{row['severity']:<8} {row['status']:<9} {row['rule']:<30} {row['object']}")
    print(report.summary() if report else "scan failed")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
