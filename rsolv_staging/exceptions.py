"""Domain errors: what went wrong, in words an operator can act on.

Client errors (Kubernetes ``ApiException``, psycopg errors, HTTP errors) are turned
into these at the task boundary and chained with ``raise ... from`` so the cause is
kept for debugging while the message stays actionable.
"""

from __future__ import annotations


class StagingError(Exception):
    """Base class of every error this project raises on purpose.

    ``done`` lists what the failing call had already changed (e.g. the objects a rollback
    put back before its next write failed), so a caller can say exactly what changed.
    """

    done: tuple[str, ...] = ()


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


class SmokeTestFailed(StagingError):
    """A critical smoke check failed: the environment is not healthy (deploys roll back).

    ``failed_checks`` names the failed critical checks; ``report`` is the smoke flow's
    full report (``rsolv_staging.smoke.SmokeReport``), kept here so a caller that catches
    the failure can still read every result.
    """

    def __init__(
        self,
        message: str,
        *,
        failed_checks: tuple[str, ...] = (),
        report: object | None = None,
    ) -> None:
        super().__init__(message)
        self.failed_checks = failed_checks
        self.report = report


class DataError(StagingError):
    """A database operation failed: connection, schema drift, load or verification.

    ``transient`` says whether retrying may help (lost connection, lock timeout, server
    shutting down) or not (bad password, schema drift, a violated constraint). Messages
    never contain a DSN's password.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class LockTimeout(StagingError):
    """Another run held a lock this run needs for longer than it may wait; nothing was
    changed."""


class SecurityScanFailed(StagingError):
    """The security scan found critical problems in staging (named in the message).

    ``report`` is the scan's full report (``rsolv_staging.security_scan.ScanReport``).
    """

    def __init__(self, message: str, *, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report
