"""Deployment records: what was deployed where, by whom, and how it ended.

Pure: the deploy and promotion flows build these, ``tasks/reports.py`` publishes them as
a table artifact with a stable key per environment (``deployments-staging``), so the
Prefect UI shows each environment's history.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from rsolv_staging.exceptions import ConfigurationError, StagingError
from rsolv_staging.images import ImageRef, parse_image

Result = Literal["succeeded", "rolled back", "failed"]


class DeployFailed(StagingError):
    """A rollout or its smoke tests failed; the message says why and what was undone."""


class DeploymentRecord(BaseModel):
    """One application's deployment to one environment."""

    environment: str
    app: str
    digest: str = Field(description="Image deployed, name@sha256:...")
    previous_digest: str | None = Field(description="Image running before, if any")
    trigger: str = Field(description="Who or what started it (CI run, person)")
    committed_at: datetime | None = Field(
        default=None, description="When the triggering commit was made, if CI said"
    )
    started: datetime
    finished: datetime
    result: Result
    reason: str = ""

    def row(self) -> dict[str, str]:
        return {
            "environment": self.environment,
            "app": self.app,
            "digest": self.digest,
            "previous digest": self.previous_digest or "-",
            "trigger": self.trigger,
            "committed": self.committed_at.isoformat(timespec="seconds")
            if self.committed_at
            else "-",
            "started": self.started.isoformat(timespec="seconds"),
            "finished": self.finished.isoformat(timespec="seconds"),
            "result": self.result,
            "reason": self.reason or "-",
        }


def objects_fingerprint(objects: Sequence[Mapping[str, Any]]) -> str:
    """A digest of rendered manifests: what an approver saw is what gets applied."""
    canonical = json.dumps(list(objects), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def live_image(deployment: Mapping[str, Any] | None) -> str | None:
    """The image of a live Deployment's first container (None when it does not exist)."""
    if deployment is None:
        return None
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return str(containers[0]["image"])


def resolve_images(
    requested: Mapping[str, str],
    apps: tuple[str, ...],
    live: Mapping[str, Mapping[str, Any] | None],
) -> dict[str, ImageRef]:
    """The digest each app will run: as requested, or else kept as it runs now.

    Raises:
        ConfigurationError: an unknown app, a malformed or floating reference, or an app
            that is not running yet and was given no image.
    """
    unknown = sorted(set(requested) - set(apps))
    if unknown:
        raise ConfigurationError(f"images: unknown application(s) {unknown}; known: {list(apps)}")
    resolved: dict[str, ImageRef] = {}
    for app in apps:
        if app in requested:
            resolved[app] = parse_image(requested[app], field=f"images.{app}")
            continue
        current = live_image(live.get(app))
        if current is None:
            raise ConfigurationError(
                f"images.{app}: {app} is not deployed yet, so it needs an image (name@sha256:...)"
            )
        resolved[app] = parse_image(current, field=f"images.{app} (currently running)")
    return resolved
