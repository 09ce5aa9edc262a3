"""rotate-staging-secret against the Kubernetes API emulator, real PostgreSQL servers and a
real HTTP smoke target."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prefect.blocks.system import Secret

from flows.rotate_secret import RotationFailed, rotate_staging_secret
from kube_emulator import KubeEmulator
from rsolv_staging.environments import default_topology
from rsolv_staging.exceptions import ConfigurationError, SecretError
from rsolv_staging.rotation import RESTART_ANNOTATION
from rsolv_staging.settings import DEFAULT_ENVIRONMENTS_FILE
from tests.plugins.http import Server
from tests.plugins.postgres import PostgresServer
from tests.plugins.releases import checks_file, latest_artifact

TOPOLOGY = default_topology()
PRODUCTION_NAMESPACES = list(TOPOLOGY.production.namespaces)
IMAGE = "ghcr.io/rsolv-dev/rsolv-api@sha256:" + "1" * 64


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _secret(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {k: _b64(v) for k, v in data.items()},
    }


def _deployment(name: str, pod_spec_extra: dict[str, Any], container_extra: dict[str, Any]) -> Any:
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "staging", "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "app", "image": IMAGE, **container_extra}],
                    **pod_spec_extra,
                },
            },
        },
    }


def _values(kube: KubeEmulator, name: str, namespace: str = "staging") -> dict[str, str] | None:
    obj = kube.get("v1", "Secret", name, namespace)
    if obj is None:
        return None
    return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}


def _block(name: str) -> str | None:
    try:
        return str(Secret.load(name).get())
    except ValueError:
        return None


def _can_login(server: PostgresServer, user: str, password: str) -> bool:
    try:
        with psycopg.connect(
            host=server.host,
            port=server.port,
            user=user,
            password=password,
            dbname="postgres",
            connect_timeout=3,
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def _no_empty(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _no_empty(v) for k, v in node.items() if v != {}}
    return node


@dataclass
class Staging:
    """The emulator holding staging and production, and the credentials the test set."""

    kube: KubeEmulator
    pg: PostgresServer
    role: str
    old_password: str
    production: dict[str, dict[str, str]] = field(default_factory=dict)
    checks: str = ""

    @property
    def blue(self) -> str:
        return f"{self.role}_blue"

    @property
    def green(self) -> str:
        return f"{self.role}_green"

    def production_versions(self) -> dict[str, str]:
        return {
            f"{s['metadata']['namespace']}/{s['metadata']['name']}": s["metadata"][
                "resourceVersion"
            ]
            for ns in PRODUCTION_NAMESPACES
            for s in self.kube.list("Secret", ns)
        }


@pytest.fixture
def staging(
    kube: KubeEmulator,
    kubeconfig: Path,
    pg_staging: PostgresServer,
    pg_production: PostgresServer,
    app_server: Server,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    prefect_api: None,
) -> Iterator[Staging]:
    """Provisioned-looking staging and production in the emulator; a blue/green login pair
    on staging's PostgreSQL with blue in use; DSNs in the environment (no blocks yet)."""
    model = yaml.safe_load(DEFAULT_ENVIRONMENTS_FILE.read_text())
    model["production"]["database"] = {
        "host": pg_production.host,
        "port": pg_production.port,
        "name": "rsolv",
        "service": "postgres",
        "storage": "20Gi",
        "resources": {"replicas": 1, "cpu": "1", "memory": "2Gi"},
    }
    model["staging"]["database"] = {
        "host": pg_staging.host,
        "port": pg_staging.port,
        "name": "rsolv",
        "service": "staging-postgres",
    }
    (tmp_path / "environments.yaml").write_text(yaml.safe_dump(model))
    monkeypatch.setenv("RSOLV_ENVIRONMENTS_FILE", str(tmp_path / "environments.yaml"))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("RSOLV_KUBE_RETRY_DELAY_SECONDS", "0.05")

    role, old = f"rsolv_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    with psycopg.connect(pg_staging.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        conn.execute(f"CREATE ROLE {role}_blue LOGIN PASSWORD '{old}' IN ROLE {role}")
    app_dsn = f"postgresql://{role}_blue:{old}@{pg_staging.host}:{pg_staging.port}/postgres"
    monkeypatch.setenv("RSOLV_SECRET_STAGING_DATABASE_DSN", app_dsn)
    monkeypatch.setenv("RSOLV_SECRET_STAGING_DATABASE_ADMIN_DSN", pg_staging.dsn)

    for ns in ("staging", "staging-monitoring", *PRODUCTION_NAMESPACES):
        kube.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    state = Staging(kube, pg_staging, role, old, checks=checks_file(tmp_path, app_server))
    for spec in TOPOLOGY.secrets:
        stag = {k: secrets.token_urlsafe(16) for k in spec.data_keys}
        if spec.name == "database":
            stag = {"password": old}
        ns = "staging-monitoring" if spec.name == "monitoring" else "staging"
        kube.seed(_secret(TOPOLOGY.staging.secret_name(spec), ns, stag))
        prod = {k: secrets.token_urlsafe(16) for k in spec.data_keys}
        prod_ns = "monitoring" if spec.name == "monitoring" else "production"
        state.production[TOPOLOGY.production.secret_name(spec)] = prod
        kube.seed(_secret(TOPOLOGY.production.secret_name(spec), prod_ns, prod))
    yield state
    for spec in TOPOLOGY.secrets:  # the Prefect API is the session's: leave no block
        for key in spec.data_keys:
            with suppress(ValueError):
                Secret.delete(f"{TOPOLOGY.staging.secret_name(spec)}-{key}")
    for name in ("staging-database-dsn", "staging-database-admin-dsn", "new-payment-key"):
        with suppress(ValueError):
            Secret.delete(name)


def _api_deployment() -> Any:
    env = [
        {
            "name": "DATABASE_USER",
            "valueFrom": {
                "secretKeyRef": {"name": "staging-database", "key": "username", "optional": True}
            },
        },
        {
            "name": "DATABASE_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "staging-database", "key": "password"}},
        },
    ]
    return _deployment("rsolv-api", {}, {"env": env})


def test_rotation_rolls_the_consumers_found_in_pod_specs_and_leaves_production_alone(
    staging: Staging,
) -> None:
    """staging-payment: the env, envFrom and volume consumers (and only they) are rolled,
    smoke tests pass, the sources hold the new value, production is provably untouched."""
    kube = staging.kube
    kube.seed(
        _deployment(
            "by-env",
            {},
            {
                "env": [
                    {
                        "name": "KEY",
                        "valueFrom": {
                            "secretKeyRef": {"name": "staging-payment", "key": "api-key"}
                        },
                    }
                ]
            },
        )
    )
    kube.seed(
        _deployment("by-env-from", {}, {"envFrom": [{"secretRef": {"name": "staging-payment"}}]})
    )
    kube.seed(
        _deployment(
            "by-volume",
            {"volumes": [{"name": "creds", "secret": {"secretName": "staging-payment"}}]},
            {},
        )
    )
    kube.seed(_deployment("bystander", {}, {"envFrom": [{"secretRef": {"name": "staging-oauth"}}]}))
    before = _values(kube, "staging-payment")
    assert before is not None
    versions = staging.production_versions()
    kube.clear_log()

    result = rotate_staging_secret(secrets=["staging-payment"], smoke_checks_file=staging.checks)

    (rotated,) = result.results
    assert rotated.outcome == "rotated"
    assert {c.name for c in rotated.consumers} == {"by-env", "by-env-from", "by-volume"}
    after = _values(kube, "staging-payment")
    assert after is not None
    assert after["api-key"] != before["api-key"]
    assert len(after["api-key"]) >= 24
    assert after["api-key"].isascii()
    assert _block("staging-payment-api-key") == after["api-key"]
    for dep in kube.list("Deployment", "staging"):
        annotations = dep["spec"]["template"]["metadata"].get("annotations") or {}
        rolled = RESTART_ANNOTATION in annotations
        assert rolled == (dep["metadata"]["name"] != "bystander"), dep["metadata"]["name"]
        if rolled:
            assert dep["status"]["observedGeneration"] == dep["metadata"]["generation"] == 2
            assert dep["status"]["updatedReplicas"] == dep["status"]["availableReplicas"] == 1
    assert kube.get("v1", "Secret", "staging-payment-previous", "staging") is None
    # Production: only read (GETs of its Secrets by name), never written, nothing changed.
    touched = kube.requests_in(PRODUCTION_NAMESPACES)
    assert touched, "the flow fingerprints production's Secrets before and after"
    assert {(r.method, "/secrets/" in r.path) for r in touched} == {("GET", True)}
    assert staging.production_versions() == versions
    assert result.production_unchanged
    artifact = latest_artifact("rotate-staging-secret")
    assert "Production's Secrets unchanged" in artifact
    assert after["api-key"] not in artifact
    assert before["api-key"] not in artifact


@dataclass
class _Sample:
    rolled: bool  # rsolv-api runs the restarted template, rolled out
    in_progress: bool
    old_works: bool
    secret_works: bool  # what a pod starting now would get


def _watch_logins(staging: Staging, stop: threading.Event, samples: list[_Sample]) -> None:
    while not stop.is_set():
        dep = staging.kube.get("apps/v1", "Deployment", "rsolv-api", "staging")
        values = _values(staging.kube, "staging-database") or {}
        assert dep is not None
        restarted = RESTART_ANNOTATION in (
            dep["spec"]["template"]["metadata"].get("annotations") or {}
        )
        status = dep.get("status") or {}
        done = (
            status.get("observedGeneration") == dep["metadata"]["generation"]
            and status.get("availableReplicas") == 1
        )
        samples.append(
            _Sample(
                rolled=restarted and done,
                in_progress=restarted and not done,
                old_works=_can_login(staging.pg, staging.blue, staging.old_password),
                secret_works=_can_login(
                    staging.pg, values.get("username", staging.blue), values.get("password", "")
                ),
            )
        )
        time.sleep(0.03)


def test_database_password_rotation_never_leaves_the_apps_without_a_working_login(
    staging: Staging,
) -> None:
    """Blue -> green: the old login keeps working until rsolv-api runs the new one (a slow
    rollout watched from outside), then stops; the new one works, and so do the DSNs."""
    kube = staging.kube
    kube.seed(_api_deployment())
    kube.set_workload_behaviour("ready", namespace="staging", name="rsolv-api", delay=1.0)
    stop, samples = threading.Event(), list[_Sample]()
    watcher = threading.Thread(target=_watch_logins, args=(staging, stop, samples), daemon=True)
    watcher.start()
    try:
        result = rotate_staging_secret(
            secrets=["staging-database"],
            database_role=staging.role,
            smoke_checks_file=staging.checks,
        )
    finally:
        stop.set()
        watcher.join(10)

    (rotated,) = result.results
    assert rotated.outcome == "rotated"
    assert rotated.login == staging.green
    values = _values(kube, "staging-database")
    assert values is not None
    assert values["username"] == staging.green
    assert _can_login(staging.pg, staging.green, values["password"])
    assert not _can_login(staging.pg, staging.blue, staging.old_password)
    assert any(s.in_progress for s in samples), "the rollout window was not observed"
    assert all(s.old_works for s in samples if not s.rolled)
    assert all(s.secret_works for s in samples)
    dsn = _block("staging-database-dsn")
    assert dsn is not None
    assert f"user={staging.green}" in dsn
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (staging.green,)
    assert _block("staging-database-admin-dsn") is None  # another login: left alone
    assert _block("staging-database-password") == values["password"]


def test_failed_smoke_test_after_the_secret_update_restores_every_old_value(
    staging: Staging, app_server: Server, tmp_path: Path
) -> None:
    """The smoke test fails after the apps rolled: Secret, blocks, DSN, database logins and
    the consumer's template are as before, and the run says what it did and undid."""
    kube = staging.kube
    kube.seed(_api_deployment())
    Secret(value=staging.old_password).save("staging-database-password", overwrite=True)
    template = kube.get("apps/v1", "Deployment", "rsolv-api", "staging")
    assert template is not None
    before = _values(kube, "staging-database")

    with pytest.raises(RotationFailed) as failure:
        rotate_staging_secret(
            secrets=["staging-database"],
            database_role=staging.role,
            smoke_checks_file=checks_file(tmp_path, app_server, path="/500"),
        )

    (result,) = failure.value.results
    assert result.outcome == "rolled back"
    assert "smoke tests failed" in result.reason
    assert [s.ok for s in result.undone] == [True] * len(result.undone)
    assert result.undone
    assert _values(kube, "staging-database") == before  # no username key left behind
    assert _block("staging-database-password") == staging.old_password
    assert _block("staging-database-dsn") is None  # it came from the environment
    assert _can_login(staging.pg, staging.blue, staging.old_password)
    with psycopg.connect(staging.pg.dsn) as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolpassword IS NULL FROM pg_authid WHERE rolname = %s",
            (staging.green,),
        ).fetchone()
    assert row == (False, True)
    api = kube.get("apps/v1", "Deployment", "rsolv-api", "staging")
    assert api is not None
    # The restart annotation is gone again (an API server drops the emptied map).
    assert _no_empty(api["spec"]["template"]) == _no_empty(template["spec"]["template"])
    assert api["status"]["availableReplicas"] == 1
    assert kube.get("v1", "Secret", "staging-database-previous", "staging") is None
    message = str(failure.value)
    assert "did:" in message
    assert "undid:" in message
    assert "roll rsolv-api" in message
    artifact = latest_artifact("rotate-staging-secret")
    assert "rolled back" in artifact
    assert "Rolled back, in order" in artifact


@pytest.mark.parametrize(
    ("secret", "block", "error"),
    [
        ("staging-payment", "production", SecretError),
        ("prod-payment", None, ConfigurationError),
        ("staging-nope", None, ConfigurationError),
    ],
    ids=["value-equals-production", "production-secret", "unknown-secret"],
)
def test_refusals_happen_before_any_write(
    staging: Staging, secret: str, block: str | None, error: type[Exception]
) -> None:
    """A new value equal to a production credential (another secret's, even), a production
    Secret's name or an unknown one: refused with no write anywhere."""
    if block:
        # production's OAuth secret offered as staging's payment key
        Secret(value=staging.production["prod-oauth"]["client-secret"]).save(
            "new-payment-key", overwrite=True
        )
    kube = staging.kube
    kube.clear_log()
    before = _values(kube, "staging-payment")
    with pytest.raises(error) as refused:
        rotate_staging_secret(
            secrets=[secret],
            new_value_block="new-payment-key" if block else None,
            smoke_checks_file=staging.checks,
        )
    assert "prod-oauth/client-secret" in str(refused.value) if block else True
    assert kube.writes() == []
    assert _values(kube, "staging-payment") == before
    assert _block("staging-payment-api-key") is None


def test_a_leftover_previous_secret_stops_the_rotation_before_any_write(staging: Staging) -> None:
    """``<secret>-previous`` left by a run that died: refused, nothing written, nothing lost."""
    kube = staging.kube
    kube.seed(_secret("staging-payment-previous", "staging", {"api-key": "before-the-crash"}))
    kube.clear_log()
    with pytest.raises(ConfigurationError, match="did not finish"):
        rotate_staging_secret(secrets=["staging-payment"], smoke_checks_file=staging.checks)
    assert kube.writes() == []
    assert _values(kube, "staging-payment-previous") == {"api-key": "before-the-crash"}


def test_a_failed_rollout_is_undone_and_an_undo_that_fails_is_reported(
    staging: Staging,
) -> None:
    """The consumer's new pods never get ready: the Secret and its block are put back, the
    other undos still run, and the roll back that fails too is named with its reason."""
    kube = staging.kube
    kube.seed(
        _deployment(
            "by-env",
            {},
            {
                "env": [
                    {
                        "name": "KEY",
                        "valueFrom": {
                            "secretKeyRef": {"name": "staging-payment", "key": "api-key"}
                        },
                    }
                ]
            },
        )
    )
    kube.set_workload_behaviour("failing", namespace="staging", name="by-env")
    before = _values(kube, "staging-payment")

    with pytest.raises(RotationFailed) as failure:
        rotate_staging_secret(
            secrets=["staging-payment"],
            smoke_checks_file=staging.checks,
            rollout_deadline_seconds=5,
        )

    (result,) = failure.value.results
    assert result.outcome == "rollback incomplete"
    assert "rollout of by-env failed" in result.reason
    assert "ImagePullBackOff" in result.reason
    undone = {s.action: s for s in result.undone}
    assert not undone["roll by-env back to their previous template"].ok
    assert undone["apply Secret staging/staging-payment (previous values)"].ok
    assert undone["delete Secret block staging-payment-api-key"].ok
    assert _values(kube, "staging-payment") == before
    assert _block("staging-payment-api-key") is None
    assert kube.get("v1", "Secret", "staging-payment-previous", "staging") is None
    assert "FAILED: roll by-env back" in latest_artifact("rotate-staging-secret")


def test_the_scheduled_run_rotates_every_secret_and_rolls_a_shared_consumer_each_time(
    staging: Staging,
) -> None:
    """No names (the monthly schedule): every staging secret gets a new value; rsolv-api,
    which reads four of them, is rolled once per secret (a new template each time)."""
    kube = staging.kube
    env = [
        {"name": n, "valueFrom": {"secretKeyRef": {"name": f"staging-{s}", "key": k}}}
        for n, s, k in [
            ("P", "payment", "api-key"),
            ("O", "oauth", "client-id"),
            ("C", "convertkit", "api-secret"),
        ]
    ]
    api = _api_deployment()
    api["spec"]["template"]["spec"]["containers"][0]["env"] += env
    kube.seed(api)
    before = {
        s["metadata"]["name"]: _values(kube, s["metadata"]["name"], s["metadata"]["namespace"])
        for ns in ("staging", "staging-monitoring")
        for s in kube.list("Secret", ns)
    }

    result = rotate_staging_secret(database_role=staging.role, smoke_checks_file=staging.checks)

    assert [r.outcome for r in result.results] == ["rotated"] * len(TOPOLOGY.secrets)
    for spec in TOPOLOGY.secrets:
        name = TOPOLOGY.staging.secret_name(spec)
        ns = "staging-monitoring" if spec.name == "monitoring" else "staging"
        after = _values(kube, name, ns)
        assert after is not None
        old = before[name]
        assert old is not None
        assert all(after[k] != old[k] for k in spec.data_keys), name
    rolled = kube.get("apps/v1", "Deployment", "rsolv-api", "staging")
    assert rolled is not None
    assert rolled["metadata"]["generation"] == 1 + 4
    assert not _can_login(staging.pg, staging.blue, staging.old_password)
