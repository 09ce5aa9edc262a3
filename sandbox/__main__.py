"""The whole RFC 002 pipeline on a laptop: no cluster, no installed database.

    scripts/run                      # = python -m sandbox; approve when it asks
    python -m sandbox --auto-approve # non-interactive (what the test runs)

Starts (all on 127.0.0.1, all stopped on exit or Ctrl-C): a Prefect server with its UI,
two PostgreSQL servers (production and staging), the Kubernetes API EMULATOR, and a
stand-in app per environment. Then runs the real flows, unchanged:

1. synthetic data into production's database (the sandbox plays production's app);
2. provision-staging;
3. deploy a release to staging (rollout watched, smoke tests against the staging app);
4. promote-to-production: it pauses for approval; approve in the Prefect UI (the URL is
   printed) or from a second terminal with the printed ``rsolv-staging approve`` line;
5. production is deployed and smoke-tested;
6. the monthly production->staging data sync runs once (when the flow is present);
7. scan-staging-security over staging (clean but for the stand-in app's known findings);
8. a report artifact links every artifact the run produced.

State lives in ``.sandbox/``; each run starts clean (the directory is wiped first).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import yaml

from rsolv_staging.provisioning import STAGING_POSTGRES_SETTINGS
from sandbox.identities import use_separate_identities
from sandbox.metrics import measure_delivery
from sandbox.rotation import rotate_one_secret
from sandbox.security import scan_security
from sandbox.services import AppServer, app_server, prefect_server

if TYPE_CHECKING:
    from kube_emulator import KubeEmulator
    from rsolv_staging.environments import Topology
    from sandbox.postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
OLD = "sha256:" + "a" * 64  # what "production" runs before the sandbox's release
NEW = "sha256:" + "b" * 64  # the release the sandbox ships
APPS = {
    "rsolv-api": "ghcr.io/rsolv-dev/rsolv-api",
    "rsolv-landing": "ghcr.io/rsolv-dev/rsolv-landing",
}
REQUESTER, APPROVER = "sandbox-requester", "sandbox-approver"


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def images(digest: str) -> dict[str, str]:
    return {app: f"{name}@{digest}" for app, name in APPS.items()}


def _checks(path: Path, environment: str, url: str) -> str:
    path.write_text(
        yaml.safe_dump(
            {
                "environment": environment,
                "checks": [
                    {"name": "landing", "url": f"{url}/", "status": 200, "body_contains": "RSOLV"},
                    {
                        "name": "api-database",
                        "url": f"{url}/api/health",
                        "status": 200,
                        "json_equals": {"$.status": "ok", "$.database": "ok"},
                    },
                ],
            }
        )
    )
    return str(path)


def _approval_helper(api_url: str, ui_url: str, auto: bool, started: datetime) -> threading.Thread:
    """Print how to approve once the promotion pauses; with --auto-approve, approve it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from rsolv_staging.cli import PrefectAPI

    def run() -> None:
        with get_client(sync_client=True) as client:
            while True:
                runs = client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["promote-to-production"]))
                )
                paused = [
                    r
                    for r in runs
                    if r.state and r.state.is_paused() and r.created and r.created >= started
                ]
                if paused:
                    run_id = str(paused[0].id)
                    break
                time.sleep(0.5)
        say("The promotion is waiting for a human decision.")
        print(f"    Prefect UI: {ui_url}/runs/flow-run/{run_id}  (press Resume)")
        print(
            f"    or, in a second terminal:\n      PREFECT_API_URL={api_url} "
            f".venv/bin/rsolv-staging approve {run_id} --approver {APPROVER} --reason 'looks good'"
        )
        if auto:
            api = PrefectAPI(api_url)
            answer = api.resume(
                run_id,
                {"decision": "approve", "approver": APPROVER, "reason": "sandbox --auto-approve"},
            )
            api.close()
            print(f"    --auto-approve: {answer.get('status')}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class Timer:
    """How long each phase took, for the closing line and the report artifact."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(now - self.last, 1)
        self.last = now


@dataclass(frozen=True)
class Services:
    """What the sandbox started, all on 127.0.0.1."""

    api_url: str
    ui_url: str
    production_pg: PostgresServer
    staging_pg: PostgresServer
    kube: KubeEmulator
    kubeconfig: Path
    prod_app: AppServer
    staging_app: AppServer


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    state = Path(args.state_dir)
    shutil.rmtree(state, ignore_errors=True)  # every run starts clean
    (state / "prefect").mkdir(parents=True)
    timer = Timer()

    with ExitStack() as stack:
        services = start_services(stack, state, args.port)
        timer.lap("services")
        model, topology = configure_environment(state, services)
        seed_production_data(state, model, args.scale)
        timer.lap("synthetic production data")
        provision()
        timer.lap("provision")
        use_separate_identities(services.kube, state, topology)
        deploy_to_staging(state, services, topology)
        timer.lap("deploy to staging + smoke")
        if not promote(state, services, args.auto_approve):
            return 3
        timer.lap("promotion (incl. waiting for approval)")
        show_production(services.kube)
        sync(args.skip_sync)
        timer.lap("data sync")
        scan_security(state, services)
        timer.lap("security scan")
        measure_delivery(state)
        timer.lap("delivery metrics")
        rotate_one_secret(state)
        timer.lap("secret rotation")
        report(services.ui_url, timer, keep_ui=args.keep_ui)
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.split("\n")[0])
    parser.add_argument("--auto-approve", action="store_true", help="approve without a human")
    parser.add_argument("--port", type=int, default=4200, help="Prefect server/UI port")
    parser.add_argument("--state-dir", default=str(ROOT / ".sandbox"))
    parser.add_argument("--scale", type=float, default=0.02, help="synthetic data scale")
    parser.add_argument("--keep-ui", action="store_true", help="keep the UI up until Ctrl-C")
    parser.add_argument("--skip-sync", action="store_true", help="leave out the data sync")
    return parser.parse_args(argv)


def start_services(stack: ExitStack, state: Path, port: int) -> Services:
    """Prefect server + UI, two PostgreSQL servers, the Kubernetes API emulator, two apps."""
    say("Starting Prefect server + UI, 2 PostgreSQL servers, the Kubernetes API EMULATOR")
    api_url = stack.enter_context(prefect_server(state / "prefect", port))
    ui_url = api_url.removesuffix("/api")
    # Unwound before the server stops: send Prefect's buffered logs and events while
    # it still listens, or the process would wait on retries to a closed port.
    stack.callback(_drain_prefect)
    os.environ["PREFECT_API_URL"] = api_url
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

    from kube_emulator import KubeEmulator
    from sandbox.postgres import PostgresFactory

    # Its own temporary directory: under root the servers run as `nobody`, who may not
    # traverse the state directory's parents (e.g. a checkout in a private home).
    factory = stack.enter_context(PostgresFactory())
    production_pg = factory.start("production")
    staging_pg = factory.start("staging", STAGING_POSTGRES_SETTINGS)
    for server in (production_pg, staging_pg):
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE rsolv")
    kube = stack.enter_context(KubeEmulator())
    kubeconfig = kube.write_kubeconfig(state / "kubeconfig")
    prod_app = stack.enter_context(app_server("production", production_pg.dsn_for("rsolv")))
    staging_app = stack.enter_context(app_server("staging", staging_pg.dsn_for("rsolv")))
    print(f"    Prefect UI:        {ui_url}")
    print(f"    Kubernetes API:    {kube.url} (EMULATOR, not a cluster)")
    ports = f"production 127.0.0.1:{production_pg.port}, staging 127.0.0.1:{staging_pg.port}"
    print(f"    PostgreSQL:        {ports}")
    print(f"    apps (stand-ins):  production {prod_app.url}, staging {staging_app.url}")
    return Services(
        api_url=api_url,
        ui_url=ui_url,
        production_pg=production_pg,
        staging_pg=staging_pg,
        kube=kube,
        kubeconfig=kubeconfig,
        prod_app=prod_app,
        staging_app=staging_app,
    )


def configure_environment(state: Path, services: Services) -> tuple[dict[str, Any], Topology]:
    """Point the environment model and the flows' settings at the sandbox's services."""
    # The environment model, pointed at the sandbox's servers: the flows read it as is.
    production_pg, staging_pg = services.production_pg, services.staging_pg
    model = yaml.safe_load((ROOT / "data" / "environments.yaml").read_text())
    model["production"]["database"] = {
        "host": "127.0.0.1",
        "port": production_pg.port,
        "name": "rsolv",
        "service": "postgres",
        "storage": "20Gi",
        "resources": {"replicas": 1, "cpu": "1", "memory": "2Gi"},
    }
    model["staging"]["database"] = {
        "host": "127.0.0.1",
        "port": staging_pg.port,
        "name": "rsolv",
        "service": "staging-postgres",
    }
    (state / "environments.yaml").write_text(yaml.safe_dump(model))
    env = {
        "KUBECONFIG": str(services.kubeconfig),
        "RSOLV_ENVIRONMENTS_FILE": str(state / "environments.yaml"),
        "RSOLV_PROMOTION_APPROVERS": APPROVER,
        "RSOLV_APPROVAL_POLL_SECONDS": "1",
        "RSOLV_FREEZE_WINDOWS_FILE": str(_no_freeze(state)),
        "RSOLV_SECRET_STAGING_DATABASE_DSN": staging_pg.dsn_for("rsolv"),
        "RSOLV_SECRET_PRODUCTION_DATABASE_DSN": production_pg.dsn_for("rsolv"),
        # The sync swaps databases, so it connects to the maintenance database too.
        "RSOLV_SECRET_STAGING_DATABASE_ADMIN_DSN": staging_pg.dsn_for("postgres"),
    }
    os.environ.update(env)
    from rsolv_staging.settings import load_topology
    from tasks.secrets import secret_env_var, source_name

    topology = load_topology()
    for spec in topology.secrets:
        for key in spec.data_keys:
            name = source_name(topology.staging.secret_name(spec), key)
            os.environ.setdefault(secret_env_var(name), secrets.token_urlsafe(24))
    return model, topology


def seed_production_data(state: Path, model: dict[str, Any], scale: float) -> None:
    """Step 1: synthetic data into production's database."""
    from flows.synthetic_data import generate_synthetic_data

    say("1/6 Synthetic data into production's database (the sandbox plays production's app)")
    # The generator refuses to write to the model's production database, rightly; so
    # for this one bootstrap step it runs with a model that places production elsewhere.
    seed_model = dict(
        model,
        production=dict(
            model["production"],
            database=dict(model["production"]["database"], host="production.invalid"),
        ),
    )
    (state / "seed-environments.yaml").write_text(yaml.safe_dump(seed_model))
    os.environ["RSOLV_ENVIRONMENTS_FILE"] = str(state / "seed-environments.yaml")
    try:
        generate_synthetic_data(
            seed=2025,
            scale=scale,
            as_of=datetime.now(UTC).date(),
            target_dsn_secret="production-database-dsn",
        )
    finally:
        os.environ["RSOLV_ENVIRONMENTS_FILE"] = str(state / "environments.yaml")


def provision() -> None:
    """Step 2: provision-staging."""
    from flows.provision import provision_staging

    say("2/6 Provision staging")
    report = provision_staging()
    print(f"    {report.created} created, {report.changed} changed, {report.unchanged} unchanged")


def deploy_to_staging(state: Path, services: Services, topology: Topology) -> None:
    """Step 3: production as it runs today, then the release deployed to staging."""
    from flows.deploy import deploy
    from rsolv_staging.images import parse_image
    from rsolv_staging.settings import Settings
    from tasks.kube import apply_objects
    from tasks.manifests import render_overlay

    say(f"3/6 Deploy release {NEW[:19]}... to staging (watched rollout + smoke tests)")
    # Production as it runs today, before this release (the sandbox plays its past, as
    # the bootstrap identity; sandbox/identities.py made its namespace).
    current = render_overlay.fn(
        "production", images={a: parse_image(r) for a, r in images(OLD).items()}
    )
    apply_objects.fn(current, cluster=topology.production.cluster, settings=Settings())
    deploy(
        images=images(NEW),
        trigger="sandbox",
        smoke_checks_file=_checks(
            state / "smoke-staging.yaml", "staging", services.staging_app.url
        ),
    )


def promote(state: Path, services: Services, auto_approve: bool) -> bool:
    """Steps 4 and 5: request the promotion and wait for (or give) the approval.

    Returns:
        Whether production was deployed (False: the promotion ended otherwise).
    """
    from flows.promote import PromotionReport, promote_to_production

    say("4/6 Request promotion to production (pauses for approval)")
    helper = _approval_helper(
        services.api_url, services.ui_url, auto_approve, datetime.now(UTC) - timedelta(seconds=2)
    )
    promotion = promote_to_production(
        requester=REQUESTER,
        change_ref="sandbox-release",
        approval_timeout_seconds=3600,
        smoke_checks_file=_checks(
            state / "smoke-production.yaml", "production", services.prod_app.url
        ),
    )
    helper.join(timeout=5)
    if not isinstance(promotion, PromotionReport):
        say(f"The promotion ended {promotion.name} ({promotion.message}); production untouched")
        return False
    record = promotion.record
    print(f"    {record.decision} by {record.approver}: {record.outcome}")
    return True


def show_production(kube: KubeEmulator) -> None:
    """Step 5: what production runs now."""
    say(
        "5/6 Production now runs: "
        + ", ".join(
            f"{d['metadata']['name']}={d['spec']['template']['spec']['containers'][0]['image'].split('@')[1][:19]}"
            for d in kube.list("Deployment", "production")
        )
    )


def sync(skip: bool) -> None:
    """Step 6: the monthly production -> staging data sync, once."""
    say("6/6 Monthly production -> staging data sync")
    sync_flow = None if skip else _sync_flow()
    if sync_flow is None:
        print("    (the sync flow is not part of this checkout yet: skipped)")
    else:
        sync_flow()


def report(ui_url: str, timer: Timer, *, keep_ui: bool) -> None:
    """Step 7: the report artifact linking every artifact; keep the UI up if asked."""
    _publish_report(ui_url, timer.timings)
    total = round(time.monotonic() - timer.started, 1)
    say(f"Done in {total} s: " + ", ".join(f"{k} {v} s" for k, v in timer.timings.items()))
    print(f"    Every artifact: {ui_url}/artifacts  (report: key sandbox-report)")
    if keep_ui:
        say("The UI stays up until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def _drain_prefect() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=10)


def _no_freeze(state: Path) -> Path:
    path = state / "freeze-windows.yaml"
    path.write_text("windows: []\n")
    return path


def _sync_flow() -> Any:
    try:
        from flows import sync_staging_data
    except ImportError:
        return None
    return getattr(sync_staging_data, "sync_staging_data", None)


def _publish_report(ui_url: str, timings: dict[str, float]) -> None:
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        keys = sorted({a.key for a in client.read_artifacts() if a.key})

    @flow(name="sandbox-report")
    def report() -> None:
        lines = ["# RFC 002 sandbox run", "", "| step | seconds |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in timings.items()]
        lines += ["", "## Artifacts", ""]
        lines += [f"- [{k}]({ui_url}/artifacts/key/{k})" for k in keys]
        create_markdown_artifact(key="sandbox-report", markdown="\n".join(lines))

    report()


def _stop_on_sigterm() -> None:
    """SIGTERM (systemd, CI, `timeout`) unwinds like Ctrl-C, so every service is stopped."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    _stop_on_sigterm()
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every sandbox service was stopped", file=sys.stderr)
        sys.exit(130)
