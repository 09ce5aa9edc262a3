"""Smoke test: is the environment answering as it should, right now?

Runs every check of the environment's checks file (``data/smoke/<environment>.yaml``)
concurrently over HTTPS: rsolv-landing's home page, RSOLV-api's health endpoint and its
database as the app sees it, Grafana (warning only), each with a status, body or JSON
expectation, a p95 latency budget over N requests and a TLS days-to-expiry threshold.
URLs are templates filled from the environment model (``data/environments.yaml``), so
the same checks follow the environment if its domain changes.

A check is ``critical`` or ``warning``. Any failed critical check fails the run with
``SmokeTestFailed`` naming the checks (the deploy flow calls this flow as a subflow and
rolls back on that); failed warnings are reported and the run still passes. Services
that have just rolled out get a warm-up: connection errors, 502, 503 and 504 are retried
with exponential backoff and jitter for up to ``warmup_seconds`` per check.

Parameters:
    environment: ``staging`` (default) or ``production``.
    checks_file: another checks file (YAML); it must be written for ``environment``.
    requests_per_check: requests behind each p95 figure (checks with a latency budget).
    warmup_seconds: how long each check may wait for a starting service.
    ca_bundle: extra CA certificates (PEM) to trust, e.g. a private issuer; TLS
        verification itself can only be relaxed per check, in a staging file.
    environments_file: the environment model; default ``data/environments.yaml`` or
        ``$RSOLV_ENVIRONMENTS_FILE``.
    images: app -> the image reference (``name@sha256:...``) under test. The deploy flow
        passes the digests it rolled out; Prefect keeps them with the run's parameters,
        and promote-to-production accepts a passing run as evidence only for the digests
        it names (a run without ``images`` is a health check of whatever runs).

Blocks and variables: none. Every check is an anonymous HTTPS request.

Returns a ``SmokeReport`` (``rsolv_staging.smoke``): ``passed``, one result per check,
``critical_failures``, ``warnings``. On failure the same report rides on the exception
(``SmokeTestFailed.report``). Each run publishes a table artifact, key
``smoke-<environment>``, one row per check: severity, passed, status, p95 ms, budget,
TLS days left and what went wrong.

Run it: ``python -m flows.smoke_test`` (staging) or
``python -m flows.smoke_test --environment production``; exit status 1 when a critical
check fails. From another flow: ``smoke_test(environment="staging")`` (a sync parent
gets the report; an async parent awaits it).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from pydantic import Field

from rsolv_staging.exceptions import SmokeTestFailed
from rsolv_staging.settings import load_topology
from rsolv_staging.smoke import (
    SmokeReport,
    WarmupPolicy,
    checks_for,
)
from tasks.http import run_checks
from tasks.reports import publish_table


def artifact_key(environment: str) -> str:
    """The table artifact's key; stable per environment so the UI keeps its history."""
    return f"smoke-{environment}"


@flow(name="smoke-test", log_prints=True)
async def smoke_test(
    environment: Literal["staging", "production"] = "staging",
    checks_file: str | None = None,
    requests_per_check: Annotated[int, Field(ge=1, le=100)] = 5,
    warmup_seconds: Annotated[float, Field(ge=0, le=1800)] = 60.0,
    ca_bundle: str | None = None,
    environments_file: str | None = None,
    images: dict[str, str] | None = None,
) -> SmokeReport:
    """Check the environment's endpoints; fail on any failed critical check.

    Args:
        environment: The environment to check: staging or production.
        checks_file: Checks file (YAML) to use instead of data/smoke/<environment>.yaml;
            it must be written for the same environment.
        requests_per_check: Requests behind each p95 latency figure (checks with a
            latency budget and no `requests` of their own).
        warmup_seconds: Per check, how long to keep retrying a service that is still
            starting (connection errors, 502, 503, 504).
        ca_bundle: Extra CA certificates (PEM file) to trust; verification stays on.
        environments_file: The environment model; default data/environments.yaml.
        images: App -> image reference under test (the deploy flow passes the digests
            it rolled out); recorded with the run, the evidence promotion looks for.
    """
    logger = get_run_logger()
    topology = load_topology(Path(environments_file) if environments_file else None)
    checks = checks_for(topology, environment, checks_file)

    if images:
        logger.info("testing %s", ", ".join(f"{a}={r}" for a, r in sorted(images.items())))
    started = time.perf_counter()
    results = await run_checks(
        checks,
        requests_per_check=requests_per_check,
        warmup=WarmupPolicy(budget_seconds=warmup_seconds),
        ca_bundle=ca_bundle,
    )
    report = SmokeReport.from_results(environment, results, duration=time.perf_counter() - started)
    publish_table(artifact_key(environment), report.table(), description=report.summary())

    if not report.passed:
        details = "; ".join(
            f"{r.name}: {r.detail}" for r in report.results if r.name in report.critical_failures
        )
        raise SmokeTestFailed(
            f"smoke test of {environment} failed: critical check(s) "
            f"{', '.join(report.critical_failures)} failed ({details})",
            failed_checks=tuple(report.critical_failures),
            report=report,
        )
    if report.warnings:
        logger.warning("passed with warnings: %s", report.summary())
    else:
        logger.info("passed: %s", report.summary())
    return report


def _print(report: SmokeReport) -> None:
    for r in report.results:
        p95 = f"{r.p95_ms:.0f}" if r.p95_ms is not None else "-"
        budget = f"{r.budget_ms:.0f}" if r.budget_ms is not None else "-"
        tls = f"{r.tls_days_left:.1f}" if r.tls_days_left is not None else "-"
        print(
            f"{r.outcome.upper():4}  {r.name:<22} {r.status or '-':>4}  p95 {p95:>5}/{budget:<5} ms"
            f"  TLS {tls:>5} d  {r.detail}"
        )
    print(report.summary())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Smoke-test an RSOLV environment (RFC 002).")
    parser.add_argument("--environment", choices=("staging", "production"), default="staging")
    parser.add_argument("--checks-file", help="checks file (YAML)")
    parser.add_argument("--requests-per-check", type=int, default=5)
    parser.add_argument("--warmup-seconds", type=float, default=60.0)
    parser.add_argument("--ca-bundle", help="extra CA certificates to trust (PEM)")
    parser.add_argument("--environments-file", help="environment model (YAML)")
    args = parser.parse_args(argv)
    try:
        report = asyncio.run(
            smoke_test(
                environment=args.environment,
                checks_file=args.checks_file,
                requests_per_check=args.requests_per_check,
                warmup_seconds=args.warmup_seconds,
                ca_bundle=args.ca_bundle,
                environments_file=args.environments_file,
            )
        )
    except SmokeTestFailed as exc:
        if isinstance(exc.report, SmokeReport):
            _print(exc.report)
        print(exc)
        return 1
    _print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
