"""Sandbox step: rotate one staging secret with the real flow (rotate-staging-secret)."""

from __future__ import annotations

from pathlib import Path


def rotate_one_secret(state: Path) -> None:
    """Rotate ``staging-payment``: rsolv-api (its consumer) is rolled, smoke-tested
    against the staging stand-in, production's Secrets reported unchanged."""
    from flows.rotate_secret import rotate_staging_secret

    print(
        "\n==> Rotate staging secret staging-payment (consumers rolled, smoke-tested)", flush=True
    )
    report = rotate_staging_secret(
        secrets=["staging-payment"],
        smoke_checks_file=str(state / "smoke-staging.yaml"),
        rollout_deadline_seconds=60,
    )
    for result in report.results:
        rolled = ", ".join(c.name for c in result.consumers) or "no consumer"
        print(f"    {result.secret}: {result.outcome} ({rolled} rolled)")
    print(f"    production's Secrets unchanged: {report.production_unchanged}")
