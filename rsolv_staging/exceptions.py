"""Domain errors: what went wrong, in words an operator can act on.

Client errors (Kubernetes ``ApiException``, psycopg errors, HTTP errors) are turned
into these at the task boundary and chained with ``raise ... from`` so the cause is
kept for debugging while the message stays actionable.
"""

from __future__ import annotations


class StagingError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigurationError(StagingError):
    """Invalid configuration or parameters; raised before any side effect."""


class SecretError(StagingError):
    """A secret is missing, or a staging secret equals its production counterpart."""


class GuardError(StagingError):
    """A write would reach an environment the flow must not touch (e.g. production)."""


class KubeError(StagingError):
    """A Kubernetes API call failed for a reason retrying will not fix."""


class TransientKubeError(StagingError):
    """A Kubernetes API call failed for a reason that may pass (5xx, 429, connection)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermissionDenied(KubeError):
    """The identity in use lacks an RBAC permission; the message names it."""
