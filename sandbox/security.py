"""Sandbox step: scan-staging-security over the sandbox's staging.

The emulator's staging (provisioned, the release deployed) must come out clean. The one
endpoint the sandbox has is its stand-in app on plain HTTP with no security headers, so
its findings are known: they go into a baseline written for this run, each with its
reason, and anything else the scan finds fails the sandbox (a regression in what the
project deploys, e.g. an image by tag or a container without its securityContext).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from sandbox.__main__ import Services

# What a plain-HTTP stand-in without headers is bound to show (not staging's real hosts:
# those are HTTPS behind the ingress controller).
STAND_IN_FINDINGS = (
    "endpoint.not-https",
    "http.nosniff-missing",
    "http.framing-unprotected",
    "http.csp-missing",
)


def scan_security(state: Path, services: Services) -> None:
    """Run the scan on the sandbox's staging; fail on any finding not known here."""
    from flows.security_scan import scan_staging_security

    print("\n==> Security scan of staging (emulator objects + the stand-in app)", flush=True)
    endpoint = f"{services.staging_app.url}/"
    baseline = state / "security-baseline.yaml"
    reason = "the sandbox's stand-in app serves plain HTTP without security headers"
    baseline.write_text(
        yaml.safe_dump(
            {
                "findings": [
                    {"rule": r, "object": endpoint, "reason": reason} for r in STAND_IN_FINDINGS
                ]
            }
        )
    )
    report = scan_staging_security(endpoints=[endpoint], baseline_file=str(baseline))
    unknown = [f for f in report.findings if f.status != "baseline"]
    print(f"    {report.summary()}; {len(report.findings) - len(unknown)} known (stand-in app)")
    if unknown:
        listed = "; ".join(f"[{f.severity}] {f.rule} {f.object}: {f.detail}" for f in unknown)
        raise RuntimeError(f"the sandbox's staging has security findings: {listed}")
