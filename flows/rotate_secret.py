"""Rotate staging's secrets, one or all, without touching production (RFC 002 section 7).

Steps, per secret (every check first, for every secret, before the first write):

1. validate: the name is a staging Secret of the model (never ``prod-``), it exists, a
   new value is generated in the shape of the current one (or read from the Secret block
   the operator names) and equals no credential of production's (the provisioning check,
   by keyed fingerprint); the consumers are found from the live pod templates of the
   Deployments in the Secret's namespace (env ``secretKeyRef``, ``envFrom``, volumes);
2. keep the previous values in ``<secret>-previous`` (a Secret nothing mounts);
3. apply the new values to the ``staging-*`` Secret and to its secret sources (the
   Prefect Secret blocks ``<secret>-<key>`` provisioning reads);
4. roll the consumers (``kubectl rollout restart``'s annotation) and watch the rollouts;
5. run staging's smoke tests;
6. proven: drop the previous values (``-previous`` deleted).

Any failure from step 2 on puts everything back in reverse order (Secret, blocks, DSN
blocks, database login, a rollout of the consumers back to their template before) and
the run fails saying what it had done and what it undid.

Staging's database password (``staging-database``) alternates two login roles, blue and
green (``<database_role>_blue``/``_green``, members of ``<database_role>``), because a
PostgreSQL role has exactly one password. In order: set the new password on the login
the apps do not use (created if missing) and log in with it; keep the previous values;
apply the Secret with ``username`` = that login and the new password; rewrite the DSN
blocks the flows use (those logging in as the current login); roll the apps and wait;
smoke-test; only then retire the old login (``NOLOGIN PASSWORD NULL``). Until that last
step the old login works, so a pod that still holds it (or a rollback) keeps working.

Without production impact: production's Secrets are read (never written) before and
after; resourceVersion and fingerprints must be equal, and the report shows both.

Parameters:
    secrets: staging Secret names (``staging-database``); empty: every staging secret.
    new_value_block: a Prefect Secret block holding the new value (a string for a
        one-key secret, a JSON object ``{key: value}`` otherwise); only with one secret.
    database_role: the group role whose blue/green logins the apps use.
    admin_dsn_secret: staging's DSN allowed to ``ALTER ROLE`` (CREATEROLE or superuser).
    dsn_secrets: the DSN blocks the flows use; those logging in as the apps' login are
        rewritten with the new login and password.
    rollout_deadline_seconds, run_smoke_tests, smoke_checks_file, environments_file.

Blocks: ``<secret>-<key>`` Secret blocks (written), the DSN blocks above, the global
concurrency limit ``staging-deploy`` (no deploy rolls staging meanwhile). Artifact:
``rotate-staging-secret`` (markdown). Run it: ``python -m flows.rotate_secret
staging-payment`` or the ``rotate-staging-secret`` deployment (monthly, all secrets).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel, SecretStr

from flows.smoke_test import smoke_test
from rsolv_staging.environments import Environment, SecretSpec, Topology
from rsolv_staging.exceptions import ConfigurationError, SmokeTestFailed, StagingError
from rsolv_staging.guards import ensure_confined
from rsolv_staging.provisioning import Manifest, labels, secret_namespace
from rsolv_staging.rotation import (
    USERNAME_KEY,
    ProductionProof,
    RotationResult,
    Step,
    chosen_specs,
    consumers,
    generate_like,
    login_pair,
    next_login,
    previous_name,
    report_markdown,
)
from rsolv_staging.settings import Settings, load_settings, load_topology
from tasks.kube import (
    apply_objects,
    delete_objects,
    list_deployments,
    read_secret_states,
    read_secret_values,
    restart_deployments,
    retrying,
    wait_for_rollout,
)
from tasks.postgres.connections import refuse_production, resolve_dsn
from tasks.postgres.credentials import (
    check_login,
    dsn_user,
    read_logins,
    retire_login,
    set_login_password,
    with_login,
)
from tasks.prefect_api import exclusive
from tasks.reports import publish_markdown
from tasks.secrets import (
    ensure_not_production_values,
    load_values,
    read_block,
    resolve_secret,
    source_name,
    write_secret_block,
)

ARTIFACT_KEY = "rotate-staging-secret"
STAGING_LOCK = "staging-deploy"  # the deploy flow's: no deploy rolls staging meanwhile
DATABASE = "database"
Undo = Callable[[], object]


class RotationFailed(StagingError):
    """A rotation failed; ``results`` say what it did and what it put back."""

    def __init__(self, message: str, results: list[RotationResult]) -> None:
        super().__init__(message)
        self.results = results


class RotationReport(BaseModel):
    """What the run did, also returned to callers of the flow."""

    results: list[RotationResult]
    production_unchanged: bool


@dataclass
class DatabasePlan:
    """The login switch of a database password rotation."""

    admin: SecretStr
    current: str
    next: str
    role: str
    dsns: dict[str, tuple[SecretStr | None, SecretStr]]  # block -> (its value now, new DSN)
    probe: SecretStr  # a DSN logging in as the next login with the new password


@dataclass
class Plan:
    """Everything one rotation will write, decided before the first write."""

    name: str
    namespace: str
    current: dict[str, SecretStr]
    new: dict[str, SecretStr]
    blocks: dict[str, SecretStr | None]  # source block -> its value now (None: absent)
    result: RotationResult
    database: DatabasePlan | None = None
    undo: list[tuple[str, Undo]] = field(default_factory=list)


@flow(name="rotate-staging-secret", log_prints=True)
def rotate_staging_secret(
    secrets: list[str] | None = None,
    new_value_block: str | None = None,
    database_role: str = "rsolv",
    admin_dsn_secret: str = "staging-database-admin-dsn",
    dsn_secrets: list[str] | None = None,
    rollout_deadline_seconds: float = 300.0,
    run_smoke_tests: bool = True,
    smoke_checks_file: str | None = None,
    environments_file: str | None = None,
) -> RotationReport:
    """Rotate staging secrets; roll back on any failure; prove production untouched."""
    settings = load_settings()
    topology = load_topology(Path(environments_file) if environments_file else None)
    specs = chosen_specs(topology, secrets)
    if new_value_block and len(specs) != 1:
        raise ConfigurationError("new_value_block names one new value: give exactly one secret")
    before = read_production_states(topology, settings)
    plans = [
        plan_rotation(
            topology,
            spec,
            settings,
            production=before,
            new_value_block=new_value_block,
            database_role=database_role,
            admin_dsn_secret=admin_dsn_secret,
            dsn_secrets=dsn_secrets or ["staging-database-dsn", admin_dsn_secret],
        )
        for spec in specs
    ]
    results: list[RotationResult] = []
    with exclusive(
        STAGING_LOCK, wait_seconds=rollout_deadline_seconds * 4, holder="secret rotation"
    ):
        for plan in plans:
            results.append(plan.result)
            try:
                rotate(
                    plan,
                    topology,
                    settings,
                    deadline=rollout_deadline_seconds,
                    smoke=(run_smoke_tests, smoke_checks_file, environments_file),
                )
            except Exception as exc:  # whatever failed, put back what was written
                roll_back(plan, reason=str(exc))
                break
    results += [p.result for p in plans[len(results) :]]  # after a failure: not attempted
    proof = ProductionProof(before=before, after=read_production_states(topology, settings))
    return report(results, proof)


def read_production_states(topology: Topology, settings: Settings) -> dict[str, dict[str, str]]:
    """Production's Secrets where production keeps them: resourceVersion and fingerprints.

    Read-only GETs by name; no other request goes to production's namespaces.
    """
    production = topology.production
    where: dict[str, list[str]] = {}
    for spec in topology.secrets:
        where.setdefault(secret_namespace(production, spec), []).append(
            production.secret_name(spec)
        )
    states: dict[str, dict[str, str]] = {}
    for namespace, names in where.items():
        states |= retrying(read_secret_states, settings)(
            names, namespace=namespace, cluster=production.cluster, settings=settings
        )
    return states


def plan_rotation(
    topology: Topology,
    spec: SecretSpec,
    settings: Settings,
    *,
    production: Mapping[str, Mapping[str, str]],
    new_value_block: str | None,
    database_role: str,
    admin_dsn_secret: str,
    dsn_secrets: list[str],
) -> Plan:
    """Read and decide everything for one secret; refuse before any write."""
    staging = topology.staging
    name, namespace = staging.secret_name(spec), secret_namespace(staging, spec)
    current = retrying(read_secret_values, settings)(
        name, namespace=namespace, cluster=staging.cluster, settings=settings
    )
    if current is None:
        raise ConfigurationError(f"Secret {namespace}/{name} does not exist: provision staging")
    leftover = retrying(read_secret_values, settings)(
        previous_name(name), namespace=namespace, cluster=staging.cluster, settings=settings
    )
    if leftover is not None:
        raise ConfigurationError(
            f"Secret {namespace}/{previous_name(name)} exists: an earlier rotation of {name} "
            "did not finish. It holds the values before that rotation; check which values the "
            "apps work with, then delete it (nothing was changed)"
        )
    keys = spec.data_keys
    if new_value_block:
        new = load_values(new_value_block, keys)
    else:
        new = {k: SecretStr(generate_like(_plain(current.get(k)))) for k in keys}
    same = [k for k in keys if current.get(k) is not None and _plain(current[k]) == _plain(new[k])]
    if same:
        raise ConfigurationError(f"{name}: the new value of {same} equals the current one")
    fingerprints = {
        n: {k: v for k, v in s.items() if not k.startswith("@")} for n, s in production.items()
    }
    ensure_not_production_values(topology, {name: new}, fingerprints)
    live = retrying(list_deployments, settings)(
        namespace=namespace, cluster=staging.cluster, settings=settings
    )
    result = RotationResult(
        secret=name,
        data_keys=list(keys),
        source=new_value_block or "generated",
        consumers=consumers(live, name),
    )
    plan = Plan(
        name=name,
        namespace=namespace,
        current=current,
        new=new,
        blocks={source_name(name, k): read_block(source_name(name, k)) for k in keys},
        result=result,
    )
    if spec.name == DATABASE:
        plan.database = plan_database(
            topology, plan, database_role, resolve_dsn(admin_dsn_secret), dsn_secrets
        )
        result.login = plan.database.current
    return plan


def plan_database(
    topology: Topology, plan: Plan, role: str, admin: SecretStr, dsn_secrets: list[str]
) -> DatabasePlan:
    """Which login the apps use now and next, and the DSN blocks to rewrite (reads only)."""
    prod_db = topology.production.database
    sources = {n: v for n in dict.fromkeys(dsn_secrets) if (v := resolve_secret(n)) is not None}
    user = plan.current.get(USERNAME_KEY)
    current = _plain(user) if user else next((dsn_user(d) for d in sources.values()), "")
    following = next_login(current, role)
    logins = read_logins(admin, [role, *login_pair(role)], prod_db)
    if role not in logins:
        raise ConfigurationError(f"group role {role!r} does not exist on staging's server")
    if not logins.get(current):
        raise ConfigurationError(f"the apps' login {current!r} cannot log in on staging's server")
    password = plan.new["password"]
    for dsn in sources.values():
        refuse_production(dsn, prod_db)  # a DSN block aimed at production is not rewritten
    dsns = {
        n: (read_block(n), with_login(dsn, following, password))
        for n, dsn in sources.items()
        if dsn_user(dsn) == current
    }
    probe = next(iter(dsns.values()))[1] if dsns else with_login(admin, following, password)
    return DatabasePlan(
        admin=admin, current=current, next=following, role=role, dsns=dsns, probe=probe
    )


def rotate(
    plan: Plan,
    topology: Topology,
    settings: Settings,
    *,
    deadline: float,
    smoke: tuple[bool, str | None, str | None],
) -> None:
    """Write, roll, prove, then drop the previous values; each write registers its undo."""
    if plan.database is not None:
        prepare_login(plan, topology)
    write_values(plan, topology, settings, deadline=deadline)
    if plan.result.consumers:
        # Microseconds, not kubectl's seconds: in a run over every secret, rsolv-api is
        # rolled once per secret it reads, and an equal value would be no new template.
        stamp = datetime.now(UTC).isoformat(timespec="microseconds")
        step(
            plan,
            f"roll {_names(plan)} and wait for the rollouts",
            lambda: roll(
                plan,
                topology,
                settings,
                {c.name: stamp for c in plan.result.consumers},
                deadline,
            ),
        )
    run_smoke, checks_file, environments_file = smoke
    if run_smoke:
        step(plan, "smoke tests of staging", lambda: smoke_staging(checks_file, environments_file))
    drop_previous(plan, topology, settings)


def prepare_login(plan: Plan, topology: Topology) -> None:
    """Blue/green: the new password on the login nobody uses yet, and a login with it.

    The login the apps use keeps its password, so nothing that runs loses access.
    """
    db, prod_db = plan.database, topology.production.database
    assert db is not None
    step(
        plan,
        f"set the password of login {db.next} (unused until the apps move)",
        lambda: set_login_password(
            db.admin, login=db.next, role=db.role, password=plan.new["password"], production=prod_db
        ),
        undo=(
            f"retire login {db.next}",
            lambda: retire_login(db.admin, login=db.next, production=prod_db),
        ),
    )
    step(
        plan,
        f"log in as {db.next} with the new password",
        lambda: check_login(db.probe, login=db.next, production=prod_db),
    )


def write_values(plan: Plan, topology: Topology, settings: Settings, *, deadline: float) -> None:
    """Keep the previous values, apply the new ones to the Secret and its sources.

    Undo order matters (undos run newest first): the sources and the Secret are put back
    before the consumers roll back, so the pods that start then read the old values.
    """
    staging, cluster = topology.staging, topology.staging.cluster
    apply = retrying(apply_objects, settings.model_copy(update={"field_manager": ROTATION}))
    db = plan.database
    new_values = {**plan.new, **({USERNAME_KEY: SecretStr(db.next)} if db else {})}
    keep, target = previous_secret(plan, staging), secret_object(plan, new_values)
    old = secret_object(plan, plan.current)
    ensure_confined([keep, target, old], staging, topology.production)
    step(
        plan,
        f"keep the previous values in {keep['metadata']['name']}",
        lambda: apply([keep], cluster=cluster, settings=settings),
        undo=(
            f"delete {keep['metadata']['name']}",
            lambda: delete_objects([keep], cluster=cluster, settings=settings),
        ),
    )
    if plan.result.consumers:
        previous = {c.name: c.restarted_at for c in plan.result.consumers}
        plan.undo.append(
            (
                f"roll {_names(plan)} back to their previous template",
                lambda: roll(plan, topology, settings, previous, deadline),
            )
        )
    step(
        plan,
        f"apply Secret {plan.namespace}/{plan.name} (new values)",
        lambda: apply([target], cluster=cluster, settings=settings),
        undo=(
            f"apply Secret {plan.namespace}/{plan.name} (previous values)",
            lambda: apply([old], cluster=cluster, settings=settings),
        ),
    )
    blocks = {b: (was, plan.new[b.removeprefix(plan.name + "-")]) for b, was in plan.blocks.items()}
    blocks |= db.dsns if db else {}
    for block, (was, new) in blocks.items():
        step(
            plan,
            f"write Secret block {block}",
            partial(write_secret_block, block, new),
            undo=(
                f"{'restore' if was else 'delete'} Secret block {block}",
                partial(write_secret_block, block, was),
            ),
        )


def drop_previous(plan: Plan, topology: Topology, settings: Settings) -> None:
    """The new values are proven: retire the old login, delete ``-previous``. Forward only
    from here (the old login's password is gone; the apps no longer need it)."""
    db, prod_db, cluster = plan.database, topology.production.database, topology.staging.cluster
    if db is not None:
        step(
            plan,
            f"log in as {db.next} after the rollout",
            lambda: check_login(db.probe, login=db.next, production=prod_db),
        )
    plan.undo.clear()
    if db is not None:
        step(
            plan,
            f"retire the previous login {db.current} (NOLOGIN, no password)",
            lambda: retire_login(db.admin, login=db.current, production=prod_db),
        )
        plan.result.login = db.next
    keep = previous_secret(plan, topology.staging)
    step(
        plan,
        f"drop the previous values ({keep['metadata']['name']})",
        lambda: delete_objects([keep], cluster=cluster, settings=settings),
    )
    plan.result.outcome = "rotated"


ROTATION = "rsolv-staging-rotation"


def step(
    plan: Plan, action: str, do: Callable[[], object], *, undo: tuple[str, Undo] | None = None
) -> None:
    """Do one write, record it, and register its undo first: a write that fails halfway
    may still have happened, and every undo is idempotent."""
    if undo is not None:
        plan.undo.append(undo)
    try:
        do()
    except Exception as exc:
        plan.result.steps.append(Step(action=action, ok=False, detail=str(exc)))
        raise
    plan.result.steps.append(Step(action=action))
    get_run_logger().info("%s: %s", plan.name, action)


def roll(
    plan: Plan,
    topology: Topology,
    settings: Settings,
    values: Mapping[str, str | None],
    deadline: float,
) -> None:
    """Set the consumers' restart annotations to ``values`` and wait for every rollout.

    Raises:
        StagingError: a rollout did not finish, with the reason the cluster gives.
    """
    cluster = topology.staging.cluster
    restart_deployments(values, namespace=plan.namespace, cluster=cluster, settings=settings)
    results = [
        wait_for_rollout(
            name,
            namespace=plan.namespace,
            deadline_seconds=deadline,
            cluster=cluster,
            settings=settings,
        )
        for name in values
    ]
    failed = [r for r in results if not r.ready]
    if failed:
        raise StagingError("; ".join(f"rollout of {r.name} failed: {r.reason}" for r in failed))


def _names(plan: Plan) -> str:
    return ", ".join(c.name for c in plan.result.consumers)


def smoke_staging(checks_file: str | None, environments_file: str | None) -> None:
    """Staging's smoke tests as a subflow (an async flow, driven to completion here)."""
    try:
        run_coro_as_sync(
            smoke_test(
                environment="staging", checks_file=checks_file, environments_file=environments_file
            )
        )
    except SmokeTestFailed as exc:
        raise StagingError(f"smoke tests failed after the rollout: {exc}") from exc


def roll_back(plan: Plan, *, reason: str) -> None:
    """Undo every registered write, newest first; each undo is tried even if one fails."""
    result = plan.result
    result.reason = reason
    get_run_logger().error("%s: rotation failed (%s); rolling back", plan.name, reason)
    failed = False
    for action, undo in reversed(plan.undo):
        try:
            undo()
        except Exception as exc:  # report it and go on: the other undos still help
            failed = True
            result.undone.append(Step(action=action, ok=False, detail=str(exc)))
            get_run_logger().error("%s: rollback step failed: %s: %s", plan.name, action, exc)
        else:
            result.undone.append(Step(action=action))
    plan.undo.clear()
    result.outcome = "rollback incomplete" if failed else "rolled back"
    if plan.database is not None:
        result.login = plan.database.current


def secret_object(plan: Plan, values: Mapping[str, SecretStr]) -> Manifest:
    """The Secret with ``values`` as ``data`` (only those keys: applied by its own field
    manager, so keys it drops, e.g. a ``username`` the first rotation added, go away)."""
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": plan.name, "namespace": plan.namespace},
        "data": {k: base64.b64encode(_plain(v).encode()).decode() for k, v in values.items()},
    }


def previous_secret(plan: Plan, staging: Environment) -> Manifest:
    """``<secret>-previous``: the values before this run, until the new ones are proven.

    A Secret of its own, not a ``previous`` key in the live one: nothing mounts it (a key
    in the live Secret would reach every envFrom and volume consumer), and its presence
    after a crash says a rotation did not finish and what to put back.
    """
    obj = secret_object(plan, plan.current)
    obj["metadata"] = {
        "name": previous_name(plan.name),
        "namespace": plan.namespace,
        "labels": labels(staging, **{"rsolv.dev/previous-of": plan.name}),
    }
    obj["type"] = "Opaque"
    return obj


def report(results: list[RotationResult], proof: ProductionProof) -> RotationReport:
    """Publish the report artifact; fail the run if a rotation failed or production moved."""
    outcome = RotationReport(results=results, production_unchanged=proof.unchanged)
    tally = {
        o: sum(r.outcome == o for r in results) for o in dict.fromkeys(r.outcome for r in results)
    }
    summary = ", ".join(f"{n} {o}" for o, n in tally.items()) or "nothing to rotate"
    summary += f"; production {'unchanged' if proof.unchanged else 'CHANGED'}"
    publish_markdown(ARTIFACT_KEY, report_markdown(results, proof), description=summary)
    get_run_logger().info(summary)
    failed = [r for r in results if r.outcome in ("rolled back", "rollback incomplete")]
    if failed or not proof.unchanged:
        detail = "; ".join(
            f"{r.secret} {r.outcome} ({r.reason}); did: {', '.join(s.action for s in r.steps)}; "
            f"undid: {', '.join(s.action for s in r.undone) or 'nothing'}"
            for r in failed
        )
        raise RotationFailed(f"{summary}: {detail}", results)
    return outcome


def _plain(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rotate RSOLV staging secrets (RFC 002).")
    parser.add_argument("secrets", nargs="*", help="staging Secret names; none: all")
    parser.add_argument("--new-value-block", help="Secret block holding the new value")
    parser.add_argument("--smoke-checks-file", help="smoke checks file (YAML)")
    args = parser.parse_args(argv)
    result = rotate_staging_secret(
        secrets=args.secrets or None,
        new_value_block=args.new_value_block,
        smoke_checks_file=args.smoke_checks_file,
    )
    for r in result.results:
        print(f"{r.outcome:>9}  {r.secret}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
