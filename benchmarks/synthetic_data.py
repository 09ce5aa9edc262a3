"""Benchmark: naive per-row Faker + INSERT versus the project's generator, whole schema.

Starts its own PostgreSQL server (the test suite's helper, ``tests/plugins/postgres.py``),
creates the RSOLV schema in two fresh databases and fills them with the same tables and
columns (rows per table in the proportions of ``BASE_ROWS``):

* **naive**: what one writes first. One ``Faker()`` (default weighting) call per value,
  ``fake.unique`` for the unique columns (without it the load dies on duplicate
  emails), parents picked among the ids already inserted, child timestamps after the
  parent's, and one ``INSERT ... RETURNING id`` per row, committed per table.
* **project**: ``tasks.postgres.copy_rows`` in truncate mode: Faker value pools sampled
  with seeded streams, rendered as COPY blocks by a producer thread while the main
  thread streams them, foreign keys validated by the database at the end. The pools are
  built inside the timed section (cold cache), so nothing is left out.

Both timings cover generating and loading, commits included, and exclude creating the
schema. It then checks, on the server, that every foreign key of both databases is
validated and that the unique columns hold, and prints rows/s for each and the ratio.

    .venv/bin/python benchmarks/synthetic_data.py                 # about 1 minute
    .venv/bin/python benchmarks/synthetic_data.py --scale 2.5     # 1M rows for the project
    .venv/bin/python benchmarks/synthetic_data.py --naive-scale 1 # naive at 400k: ~3 min

The naive loader runs at ``--naive-scale`` (default 0.1, about 40k rows: it needs
about 15 s per 40k rows); the project's at ``--scale`` (default 1.0, about 400k rows) and
also at the naive's size, so both comparisons are printed. Each is run ``--repeat``
times (default 3) and the median kept: the machine is shared, timings move by 20-30%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from faker import Faker
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rsolv_staging.environments import default_topology
from rsolv_staging.schema import TABLE_NAMES
from rsolv_staging.synthetic import SyntheticPlan, build_pools, make_plan
from tasks.postgres import copy_rows, create_schema
from tests.plugins.postgres import PostgresFactory

SEVERITIES = ("critical", "high", "medium", "low", "info")


def naive_load(dsn: str, rows: dict[str, int], as_of: date, seed: int) -> float:
    """Per-row Faker for every column, one INSERT per row; returns the seconds taken."""
    started = time.perf_counter()
    fake = Faker()
    Faker.seed(seed)
    end = datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)
    # (id, latest timestamp) of every row inserted so far, per table: children pick a
    # parent here and start after it.
    ids: dict[str, list[tuple[int, datetime]]] = {t: [] for t in TABLE_NAMES}
    repo_of_scan: dict[int, int] = {}
    scan_of_finding: dict[int, int] = {}
    finding_of_fix: dict[int, int] = {}
    unused_fixes: list[tuple[int, datetime]] = []
    pr_numbers: dict[int, int] = {}

    def after(moment: datetime) -> datetime:
        # Faker can land a few microseconds before start_date; the CHECKs notice.
        return max(moment, fake.date_time_between(start_date=moment, end_date=end, tzinfo=UTC))

    def maybe_after(moment: datetime, chance: int) -> datetime | None:
        return after(moment) if fake.boolean(chance) else None

    def pick(table: str) -> tuple[int, datetime]:
        return fake.random_element(ids[table])

    def organization() -> tuple[str, tuple[Any, ...]]:
        created = fake.date_time_between(
            start_date=end - timedelta(days=4 * 365), end_date=end - timedelta(days=30), tzinfo=UTC
        )
        return "organizations (name, slug, billing_email, billing_address, country, created_at)", (
            fake.company(),
            fake.unique.slug(),
            fake.company_email(),
            fake.address(),
            fake.country_code(),
            created,
        )

    def user() -> tuple[str, tuple[Any, ...]]:
        org_id, org_created = pick("organizations")
        created = after(org_created)
        return "users (organization_id, email, full_name, role, created_at, last_login_at)", (
            org_id,
            fake.unique.email(),
            fake.name(),
            fake.random_element(("owner", "admin", "member")),
            created,
            maybe_after(created, 80),
        )

    def api_key() -> tuple[str, tuple[Any, ...]]:
        org_id, org_created = pick("organizations")
        created = after(org_created)
        return "api_keys (organization_id, name, prefix, key_hash, created_at, last_used_at)", (
            org_id,
            fake.catch_phrase()[:100],
            fake.pystr(8, 8),
            fake.unique.sha256(),
            created,
            maybe_after(created, 70),
        )

    def repository() -> tuple[str, tuple[Any, ...]]:
        org_id, org_created = pick("organizations")
        return (
            "repositories (organization_id, provider, full_name, default_branch, language,"
            " is_private, created_at)",
            (
                org_id,
                fake.random_element(("github", "gitlab", "bitbucket")),
                f"{fake.user_name()}/{fake.unique.slug()}",
                fake.random_element(("main", "master", "develop")),
                fake.random_element(("python", "javascript", "typescript", "go", "ruby")),
                fake.pybool(),
                after(org_created),
            ),
        )

    def scan() -> tuple[str, tuple[Any, ...]]:
        repo_id, repo_created = pick("repositories")
        started = after(repo_created)
        return "scans (repository_id, commit_sha, branch, status, started_at, finished_at)", (
            repo_id,
            fake.sha1(),
            fake.word(),
            fake.random_element(("completed", "failed", "running", "queued")),
            started,
            after(started),
        )

    def finding() -> tuple[str, tuple[Any, ...]]:
        scan_id, scan_done = pick("scans")
        details = {
            "cwe": f"CWE-{fake.random_int(20, 999)}",
            "owasp": fake.random_element(("A01:2021", "A03:2021", "A07:2021")),
            "confidence": fake.pyfloat(min_value=0.5, max_value=1, right_digits=2),
        }
        return (
            "findings (scan_id, rule_id, severity, title, file_path, line, status, details,"
            " created_at)",
            (
                scan_id,
                fake.slug(),
                fake.random_element(SEVERITIES),
                fake.sentence(),
                fake.file_path(depth=3),
                fake.random_int(1, 900),
                fake.random_element(("open", "fixed", "ignored", "false_positive")),
                json.dumps(details),
                after(scan_done),
            ),
        )

    def fix_attempt() -> tuple[str, tuple[Any, ...]]:
        finding_id, finding_created = pick("findings")
        started = after(finding_created)
        return "fix_attempts (finding_id, status, model, started_at, completed_at)", (
            finding_id,
            fake.random_element(("succeeded", "failed", "running", "pending")),
            fake.random_element(("claude-sonnet-4", "claude-opus-4")),
            started,
            after(started),
        )

    def pull_request() -> tuple[str, tuple[Any, ...]]:
        if not unused_fixes:  # one pull request per fix attempt
            unused_fixes.extend(ids["fix_attempts"])
            fake.random.shuffle(unused_fixes)
        fix_id, fix_done = unused_fixes.pop()
        repo_id = repo_of_scan[scan_of_finding[finding_of_fix[fix_id]]]
        pr_numbers[repo_id] = number = pr_numbers.get(repo_id, 0) + 1
        opened = after(fix_done)
        return (
            "pull_requests (repository_id, fix_attempt_id, number, title, url, state,"
            " opened_at, merged_at)",
            (
                repo_id,
                fix_id,
                number,
                fake.sentence(),
                fake.url(),
                fake.random_element(("open", "merged", "closed")),
                opened,
                after(opened),
            ),
        )

    def subscription() -> tuple[str, tuple[Any, ...]]:
        org_id, org_created = pick("organizations")
        started = after(org_created)
        return (
            "subscriptions (organization_id, plan, status, seats, price_cents, currency,"
            " provider_subscription_id, started_at, current_period_end)",
            (
                org_id,
                fake.random_element(("trial", "team", "business", "enterprise")),
                fake.random_element(("active", "past_due", "canceled")),
                fake.random_int(1, 50),
                fake.random_int(0, 99_900),
                fake.currency_code(),
                fake.unique.uuid4(),
                started,
                after(started),
            ),
        )

    def payment() -> tuple[str, tuple[Any, ...]]:
        sub_id, sub_started = pick("subscriptions")
        return (
            "payments (subscription_id, amount_cents, currency, status, provider_payment_id,"
            " paid_at)",
            (
                sub_id,
                fake.random_int(0, 99_900),
                fake.currency_code(),
                fake.random_element(("succeeded", "failed", "refunded")),
                fake.unique.uuid4(),
                after(sub_started),
            ),
        )

    def subscriber() -> tuple[str, tuple[Any, ...]]:
        subscribed = fake.date_time_between(start_date="-3y", end_date=end, tzinfo=UTC)
        return "email_subscribers (email, first_name, source, status, subscribed_at)", (
            fake.unique.email(),
            fake.first_name(),
            fake.random_element(("landing", "blog", "webinar", "referral")),
            fake.random_element(("confirmed", "pending", "unsubscribed")),
            subscribed,
        )

    make: dict[str, Callable[[], tuple[str, tuple[Any, ...]]]] = {
        "organizations": organization,
        "users": user,
        "api_keys": api_key,
        "repositories": repository,
        "scans": scan,
        "findings": finding,
        "fix_attempts": fix_attempt,
        "pull_requests": pull_request,
        "subscriptions": subscription,
        "payments": payment,
        "email_subscribers": subscriber,
    }
    parent_maps = {
        "scans": repo_of_scan,
        "findings": scan_of_finding,
        "fix_attempts": finding_of_fix,
    }
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for table in TABLE_NAMES:
            for _ in range(rows[table]):
                target, values = make[table]()
                placeholders = ", ".join(["%s"] * len(values))
                inserted = cur.execute(
                    f"INSERT INTO {target} VALUES ({placeholders}) RETURNING id",
                    values,
                ).fetchone()
                assert inserted is not None
                latest = max(v for v in values if isinstance(v, datetime))
                ids[table].append((inserted[0], latest))
                if table in parent_maps:
                    parent_maps[table][inserted[0]] = values[0]
            conn.commit()
    return time.perf_counter() - started


def check_integrity(dsn: str) -> str:
    """Ask the server: every FK validated, no duplicate among the unique columns."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            """
            SELECT (SELECT count(*) FROM pg_constraint WHERE contype = 'f'),
                   (SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated),
                   (SELECT count(*) - count(DISTINCT email) FROM users)
                 + (SELECT count(*) - count(DISTINCT key_hash) FROM api_keys)
                 + (SELECT count(*) - count(DISTINCT email) FROM email_subscribers)
            """
        ).fetchone()
    if row is None:
        raise RuntimeError("no answer from the server")
    fks, unvalidated, duplicates = row
    status = "ok" if unvalidated == 0 and duplicates == 0 else "FAIL"
    return f"{fks} foreign keys, {unvalidated} not validated, {duplicates} duplicates: {status}"


def project_load(dsn: str, plan: SyntheticPlan, batch_rows: int) -> float:
    """The project's loader, cold (value pools rebuilt); returns the seconds taken."""
    build_pools.cache_clear()
    started = time.perf_counter()
    copy_rows.fn(
        SecretStr(dsn),
        default_topology().production.database,
        plan,
        mode="truncate",
        batch_rows=batch_rows,
    )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=1.0, help="project's scale (1.0: ~400k)")
    parser.add_argument("--naive-scale", type=float, default=0.1, help="naive's scale")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians are kept")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-rows", type=int, default=20_000)
    args = parser.parse_args(argv)
    as_of = date(2025, 6, 3)
    production = default_topology().production.database
    naive_plan = make_plan(seed=args.seed, scale=args.naive_scale, as_of=as_of)
    plan = make_plan(seed=args.seed, scale=args.scale, as_of=as_of)

    def line(label: str, rows: int, runs: list[float]) -> float:
        seconds = statistics.median(runs)
        rate = rows / seconds
        spread = f"(runs: {', '.join(f'{r:.2f}' for r in runs)} s)" if len(runs) > 1 else ""
        print(f"{label:<44} {rows:>9,} rows in {seconds:6.2f} s = {rate:>9,.0f} rows/s {spread}")
        return rate

    with PostgresFactory() as factory:
        server = factory.start("benchmark")
        print(
            f"PostgreSQL {server.version} on 127.0.0.1:{server.port}, whole RSOLV schema, "
            f"median of {args.repeat}"
        )
        project_db = server.create_database("project")
        create_schema.fn(SecretStr(project_db.dsn), production)

        runs = []
        for _ in range(args.repeat):
            naive_db = server.create_database("naive")
            create_schema.fn(SecretStr(naive_db.dsn), production)
            runs.append(naive_load(naive_db.dsn, naive_plan.rows, as_of, args.seed))
        naive = line("naive: Faker per row + INSERT", naive_plan.total_rows, runs)
        print(f"  {check_integrity(naive_db.dsn)}")

        runs = [
            project_load(project_db.dsn, naive_plan, args.batch_rows) for _ in range(args.repeat)
        ]
        same_size = line("project: pools + threaded COPY, same rows", naive_plan.total_rows, runs)
        runs = [project_load(project_db.dsn, plan, args.batch_rows) for _ in range(args.repeat)]
        project = line(
            f"project: pools + threaded COPY, scale {args.scale:g}", plan.total_rows, runs
        )
        print(f"  {check_integrity(project_db.dsn)}")
        print(
            f"ratio: {project / naive:.1f}x at scale {args.scale:g} (target: at least 50x); "
            f"{same_size / naive:.1f}x at the naive run's size, where fixed costs "
            "(value pools, DDL, commit) weigh more"
        )


if __name__ == "__main__":
    main()
