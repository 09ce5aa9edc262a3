"""Smoke checks against real HTTP(S) servers on 127.0.0.1, and the smoke-test flow.

The servers (tests/plugins/http.py) are real: ThreadingHTTPServer, a test CA and TLS
certificates made with ``cryptography``. Task bodies run through ``.fn``; two whole-flow
runs use the session's Prefect API.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.smoke_test import artifact_key, smoke_test
from rsolv_staging.environments import EnvironmentName, default_topology, topology_from_mapping
from rsolv_staging.exceptions import ConfigurationError, SmokeTestFailed
from rsolv_staging.smoke import (
    MISSING,
    Check,
    CheckResult,
    CheckSuite,
    SmokeReport,
    WarmupPolicy,
    checks_for,
    default_checks_file,
    json_equal,
    json_path_get,
    load_checks,
    parse_json_path,
    percentile,
    render_checks,
    suite_from_mapping,
)
from tasks.http import run_check, run_checks
from tests.plugins.http import PKI, Server, closed_port
from tests.plugins.releases import newest_artifact

# Fast warm-up for tests: real backoff, smaller numbers.
FAST = WarmupPolicy(budget_seconds=5, initial_delay_seconds=0.05, max_delay_seconds=0.2)


def run(checks: list[Check], **options: Any) -> list[CheckResult]:
    """The run-checks task body, as the flow calls it (outside a flow run)."""
    options.setdefault("warmup", FAST)
    return asyncio.run(run_checks.fn(checks, **options))


def one(check: Check, **options: Any) -> CheckResult:
    (result,) = run([check], **options)
    return result


# ------------------------------------------------------------------ checks as data


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$.status", "ok"),
        ("$.checks[0].name", "postgres"),
        ("$.checks[-1].name", "postgres"),
        ('$["odd key"].x', 1),
        ("$.checks[1].name", MISSING),
        ("$.status.deeper", MISSING),
        ("$", {"status": "ok", "checks": [{"name": "postgres"}], "odd key": {"x": 1}}),
    ],
)
def test_json_path_subset_finds_values_and_reports_missing(path: str, expected: Any) -> None:
    """$.a.b[0].c, negative indexes and quoted keys resolve; absent paths are MISSING."""
    document = {"status": "ok", "checks": [{"name": "postgres"}], "odd key": {"x": 1}}
    assert json_path_get(document, path) == expected


@pytest.mark.parametrize("path", ["status", "$..status", "$.checks[*]", "$.a[", "$.a b"])
def test_json_path_outside_the_subset_is_refused(path: str) -> None:
    """Wildcards, recursive descent and malformed paths are errors, not silent misses."""
    with pytest.raises(ValueError, match=r"JSON path|must start"):
        parse_json_path(path)


def test_json_equality_does_not_confuse_booleans_and_numbers() -> None:
    """An expectation of true is not met by 1 (Python's True == 1), but 1 meets 1.0."""
    assert not json_equal(1, True)
    assert not json_equal([True], [1])
    assert json_equal(1, 1.0)
    assert json_equal({"a": [1, "x"]}, {"a": [1.0, "x"]})


def test_p95_is_nearest_rank() -> None:
    """p95 of 1..20 is 19; of five samples it is the worst one (strict on small N)."""
    assert percentile([float(x) for x in range(20, 0, -1)], 95) == 19
    assert percentile([5.0, 1.0, 9.0, 2.0, 3.0], 95) == 9
    assert percentile([7.0], 95) == 7


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    """Delays double from the initial one up to the cap, each within +/- jitter."""
    policy = WarmupPolicy(initial_delay_seconds=1, max_delay_seconds=8, jitter=0.5)
    rng = random.Random(7)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (9, 8)]:
        delays = {policy.delay(attempt, rng) for _ in range(50)}
        assert all(0.5 * base <= d <= 1.5 * base for d in delays)
        assert len(delays) > 1  # jittered, not lockstep


@pytest.mark.parametrize(
    ("environment", "host"), [("staging", "rsolv-staging.com"), ("production", "rsolv.dev")]
)
def test_shipped_checks_files_are_valid_and_follow_the_environment(
    environment: EnvironmentName, host: str
) -> None:
    """data/smoke/*.yaml load, fill their URLs from the environment model and cover the
    landing page, the API and its database (critical) and Grafana (warning)."""
    topology = default_topology()
    suite = load_checks(default_checks_file(environment))
    checks = {c.name: c for c in render_checks(suite, topology.environment(environment))}
    assert checks["landing"].url == f"https://{host}/"
    assert checks["api-health"].url == f"https://api.{host}/api/health"
    assert checks["api-database"].json_equals == {"$.database": "ok"}
    assert checks["grafana"].url.startswith(f"https://grafana.{host}/")
    assert checks["grafana"].severity == "warning"
    assert {c.severity for n, c in checks.items() if n.startswith(("landing", "api"))} == {
        "critical",
        "warning",
    }
    assert all(c.verify for c in checks.values())


def test_staging_budgets_are_looser_than_production() -> None:
    """Each latency budget in the staging file is at least production's."""
    staging = {c.name: c for c in load_checks(default_checks_file("staging")).checks}
    production = {c.name: c for c in load_checks(default_checks_file("production")).checks}
    budgets = [
        (staging[n].p95_ms, production[n].p95_ms) for n in production if production[n].p95_ms
    ]
    assert budgets
    assert all(s is not None and p is not None and s >= p for s, p in budgets)


def test_checks_for_another_environment_are_refused() -> None:
    """Running production's checks with staging's domains would prove nothing."""
    suite = load_checks(default_checks_file("production"))
    with pytest.raises(ConfigurationError, match="checks are for 'production', not 'staging'"):
        render_checks(suite, default_topology().staging)


def test_a_check_aimed_at_the_other_environment_is_refused(tmp_path: Path) -> None:
    """A staging file with production's URL written out would pass staging's smoke test
    on production's health, and the promotion would trust that pass."""
    topology = default_topology()
    file = tmp_path / "staging.yaml"
    for url, refused in (
        (f"https://api.{topology.production.domain}/api/health", True),
        (f"https://{topology.production.domain.upper()}./", True),
        (f"https://{topology.staging.api_domain}/api/health", False),
        ("http://127.0.0.1:8080/", False),
    ):
        file.write_text(
            yaml.safe_dump({"environment": "staging", "checks": [{"name": "api", "url": url}]})
        )
        if refused:
            with pytest.raises(ConfigurationError, match="under production's domain"):
                checks_for(topology, "staging", file)
        else:
            assert [c.url for c in checks_for(topology, "staging", file)] == [url]


@pytest.mark.parametrize(
    ("staging_domain", "production_domain"),
    [("staging.rsolv.dev", "rsolv.dev"), ("rsolv-staging.com", "prod.rsolv-staging.com")],
)
def test_nested_domains_belong_to_the_more_specific_one(
    staging_domain: str, production_domain: str
) -> None:
    """When one environment's domain hangs off the other's, each host belongs to the
    more specific domain: neither environment's checks may aim at the other's hosts."""
    topology = topology_from_mapping(
        {"staging": {"domain": staging_domain}, "production": {"domain": production_domain}}
    )
    for env, other in (
        (topology.staging, topology.production),
        (topology.production, topology.staging),
    ):
        mine = CheckSuite.model_validate(
            {"environment": env.name, "checks": [{"name": "own", "url": "https://{api_domain}/"}]}
        )
        assert [c.url for c in render_checks(mine, env, other=other)] == [
            f"https://api.{env.domain}/"
        ]
        theirs = CheckSuite.model_validate(
            {
                "environment": env.name,
                "checks": [{"name": "x", "url": f"https://api.{other.domain}/"}],
            }
        )
        with pytest.raises(ConfigurationError, match=f"under {other.name}'s domain"):
            render_checks(theirs, env, other=other)


GOOD = {"name": "api-health", "url": "https://{api_domain}/api/health"}


@pytest.mark.parametrize(
    ("environment", "check", "message"),
    [
        ("staging", {**GOOD, "p95_ms": -5}, r"check 'api-health' \(checks\[1\]\), field p95_ms"),
        ("staging", {**GOOD, "url": "https://{api_host}/"}, r"field url: .*\{api_host\}"),
        ("staging", {**GOOD, "expect": 200}, r"'api-health'.*field expect: Extra inputs"),
        ("staging", {**GOOD, "method": "POST"}, r"'api-health'.*field method"),
        ("staging", {**GOOD, "status": [200, 99]}, r"'api-health'.*99 is not an HTTP status"),
        ("staging", {**GOOD, "json_equals": {"$..x": 1}}, r"'api-health'.*JSON path"),
        ("staging", {**GOOD, "url": "http://x.io/", "tls_min_days": 7}, r"needs an https"),
        ("staging", {**GOOD, "name": "landing"}, r"'landing' is used twice"),
        ("production", {**GOOD, "verify": False}, r"verify: false is not allowed"),
    ],
)
def test_invalid_checks_file_names_file_check_and_field(
    tmp_path: Path, environment: str, check: dict[str, Any], message: str
) -> None:
    """A bad check is refused on load with the file, the check's name and the field."""
    path = tmp_path / "checks.yaml"
    landing = {"name": "landing", "url": "https://{domain}/"}
    path.write_text(yaml.safe_dump({"environment": environment, "checks": [landing, check]}))
    with pytest.raises(ConfigurationError, match=message) as caught:
        load_checks(path)
    assert str(path) in str(caught.value)


def test_defaults_are_merged_and_a_per_check_value_wins() -> None:
    """defaults apply to every check unless the check says otherwise; name cannot be one."""
    suite = suite_from_mapping(
        {
            "environment": "staging",
            "defaults": {"timeout_seconds": 3, "severity": "warning"},
            "checks": [
                {"name": "a", "url": "https://{domain}/"},
                {"name": "b", "url": "https://{domain}/", "severity": "critical"},
            ],
        }
    )
    assert [(c.timeout_seconds, c.severity) for c in suite.checks] == [
        (3, "warning"),
        (3, "critical"),
    ]
    with pytest.raises(ConfigurationError, match="defaults: name"):
        suite_from_mapping({"environment": "staging", "defaults": {"name": "x"}, "checks": []})


# ------------------------------------------------------------- against real servers


def test_healthy_endpoints_pass(app_server: Server) -> None:
    """Landing HTML with its title, API health JSON with status and database: all pass."""
    results = run(
        [
            Check(name="landing", url=f"{app_server.url}/", body_contains="<title>RSOLV"),
            Check(
                name="api",
                url=f"{app_server.url}/api/health",
                json_equals={"$.status": "ok", "$.database": "ok", "$.checks[0].name": "postgres"},
                p95_ms=2000,
            ),
        ],
        requests_per_check=3,
    )
    assert [(r.name, r.passed, r.status, r.detail) for r in results] == [
        ("landing", True, 200, ""),
        ("api", True, 200, ""),
    ]
    assert len(results[1].latencies_ms) == 3  # N requests behind the p95
    assert results[1].p95_ms == max(results[1].latencies_ms)


def test_500_fails_a_critical_check(app_server: Server) -> None:
    """A 500 is a failed check whose detail says which status came back."""
    result = one(Check(name="api", url=f"{app_server.url}/500"))
    assert (result.passed, result.status, result.outcome) == (False, 500, "fail")
    assert result.detail == "status 500, expected 200"
    assert result.attempts == 1  # a 500 is not a warm-up status: no retry


@pytest.mark.parametrize(("budget", "passed"), [(100, False), (2000, True)])
def test_latency_budget_is_judged_on_p95(app_server: Server, budget: float, passed: bool) -> None:
    """/slow takes 150 ms: a 100 ms p95 budget fails, a 2 s budget passes."""
    result = one(Check(name="slow", url=f"{app_server.url}/slow?ms=150", p95_ms=budget, requests=3))
    assert result.passed is passed
    assert result.p95_ms is not None
    assert result.p95_ms >= 150
    assert len(result.latencies_ms) == 3
    if not passed:
        assert f"over budget {budget:.0f} ms (3 requests)" in result.detail


def test_json_path_mismatch_fails_with_both_values(app_server: Server) -> None:
    """The app is up but its database is not: $.database names what came back."""
    result = one(
        Check(
            name="api-database",
            url=f"{app_server.url}/api/health?database=down",
            json_equals={"$.database": "ok", "$.status": "ok"},
        )
    )
    assert not result.passed
    assert result.failures == ['$.database is "down", expected "ok"']


def test_body_substring_expectation(app_server: Server) -> None:
    """A page without the expected text fails; the check says what was missing."""
    good = Check(name="landing", url=f"{app_server.url}/", body_contains="Security fixes")
    bad = Check(name="landing-2", url=f"{app_server.url}/", body_contains="Pricing")
    results = run([good, bad])
    assert [r.passed for r in results] == [True, False]
    assert results[1].detail == "body does not contain 'Pricing'"


def test_tls_expiring_in_two_days_fails_critical_and_warns_under_warning(
    tls_expiring_server: Server, test_pki: PKI
) -> None:
    """A certificate with 2 days left fails a critical 7-day threshold; the same threshold
    in a warning check is reported but leaves the smoke run passing."""
    url = f"{tls_expiring_server.url}/"
    critical = Check(name="tls", url=url, tls_min_days=7, ca_bundle=test_pki.ca_file)
    warning = critical.model_copy(update={"name": "tls-renewal", "severity": "warning"})
    results = run([critical, warning])
    for result in results:
        assert not result.passed
        assert result.tls_days_left is not None
        assert 1.9 < result.tls_days_left <= 2.0
        assert "TLS certificate expires in 2.0 days (< 7" in result.detail
    assert [r.outcome for r in results] == ["fail", "warn"]
    only_warning = SmokeReport.from_results("staging", results[1:], duration=0)
    assert (only_warning.passed, only_warning.warnings) == (True, ["tls-renewal"])
    both = SmokeReport.from_results("staging", results, duration=0)
    assert (both.passed, both.critical_failures) == (False, ["tls"])


def test_tls_valid_certificate_passes_with_run_level_ca_bundle(
    tls_valid_server: Server, test_pki: PKI
) -> None:
    """A 90-day certificate from a CA trusted for the run passes a 21-day threshold."""
    check = Check(name="tls", url=f"{tls_valid_server.url}/api/health", tls_min_days=21)
    result = one(check, ca_bundle=str(test_pki.ca_file))
    assert result.passed, result.detail
    assert result.tls_days_left is not None
    assert 89.9 < result.tls_days_left <= 90


def test_untrusted_certificate_fails_and_still_reports_its_expiry(
    tls_expiring_server: Server,
) -> None:
    """Verification is on by default: without the test CA the check fails as untrusted,
    and the expiry of the certificate it refused is still shown."""
    result = one(Check(name="tls", url=f"{tls_expiring_server.url}/", tls_min_days=7))
    assert not result.passed
    assert result.failures[0].startswith("TLS certificate not trusted")
    assert result.tls_days_left is not None
    assert result.tls_days_left < 2.01


def test_verify_false_is_never_silent(tls_valid_server: Server) -> None:
    """A staging check with verify: false passes against an untrusted certificate, and
    its result says verification was off."""
    result = one(Check(name="tls", url=f"{tls_valid_server.url}/", verify=False))
    assert result.passed
    assert result.detail == "TLS certificate NOT verified (verify: false)"


def test_warmup_retries_turn_flaky_green(app_server: Server) -> None:
    """/flaky answers 503 three times, then 200: the check waits it out and passes."""
    result = one(Check(name="api", url=f"{app_server.url}/flaky/warm?fail=3"))
    assert (result.passed, result.status, result.attempts) == (True, 200, 4)
    assert result.detail == "answered after 4 warm-up attempts"


def test_warmup_gives_up_when_its_budget_is_spent(app_server: Server) -> None:
    """With no warm-up budget a 503 fails at once, showing the status it was stuck on."""
    result = one(
        Check(name="api", url=f"{app_server.url}/flaky/cold?fail=3"),
        warmup=WarmupPolicy(budget_seconds=0),
    )
    assert (result.passed, result.status, result.attempts) == (False, 503, 1)
    assert result.failures[0].startswith("not ready after 1 attempt in")
    assert "status 503, expected 200" in result.failures


def test_connection_refused_is_retried_until_the_budget_then_fails() -> None:
    """Nothing listening: the check retries with backoff for its budget, then fails."""
    budget = WarmupPolicy(budget_seconds=0.6, initial_delay_seconds=0.05, max_delay_seconds=0.2)
    started = time.perf_counter()
    result = one(Check(name="api", url=f"http://127.0.0.1:{closed_port()}/"), warmup=budget)
    elapsed = time.perf_counter() - started
    assert not result.passed
    assert result.status is None
    assert result.attempts > 2
    assert "not ready after" in result.detail
    assert "ConnectError" in result.detail
    assert elapsed < 0.6 + 0.5  # the budget bounds the wait


def test_checks_run_concurrently(app_server: Server) -> None:
    """8 checks of a 400 ms endpoint finish in well under the 3.2 s they take in a row."""
    checks = [Check(name=f"slow-{i}", url=f"{app_server.url}/slow?ms=400") for i in range(8)]
    started = time.perf_counter()
    results = run(checks)
    elapsed = time.perf_counter() - started
    assert all(r.passed for r in results)
    assert [r.name for r in results] == [c.name for c in checks]  # order kept
    assert elapsed < 0.5 * 8 * 0.4


def test_run_check_task_runs_a_single_check(app_server: Server) -> None:
    """The single-check task gives the same verdict as the batch for one check."""
    result = asyncio.run(run_check.fn(Check(name="api", url=f"{app_server.url}/500")))
    assert (result.name, result.passed, result.status) == ("api", False, 500)


# ------------------------------------------------------------------ the whole flow


def _checks_file(tmp_path: Path, checks: list[dict[str, Any]]) -> str:
    path = tmp_path / "checks.yaml"
    path.write_text(yaml.safe_dump({"environment": "staging", "checks": checks}))
    return str(path)


def _table(key: str) -> list[dict[str, Any]]:
    artifact = newest_artifact(key)
    assert artifact.type == "table"
    data = artifact.data
    rows = json.loads(data) if isinstance(data, str) else data
    assert isinstance(rows, list)
    return rows


def test_flow_fails_on_a_critical_failure_and_publishes_the_table(
    prefect_api: None, app_server: Server, tmp_path: Path
) -> None:
    """A failing critical check fails the run with SmokeTestFailed naming it; the table
    artifact has one row per check, failures included."""
    checks_file = _checks_file(
        tmp_path,
        [
            {"name": "flow1-landing", "url": f"{app_server.url}/", "body_contains": "RSOLV"},
            {"name": "flow1-api", "url": f"{app_server.url}/500"},
            {"name": "flow1-grafana", "url": f"{app_server.url}/500", "severity": "warning"},
        ],
    )
    with pytest.raises(SmokeTestFailed, match=r"critical check\(s\) flow1-api failed") as caught:
        asyncio.run(smoke_test(checks_file=checks_file, warmup_seconds=0))
    assert caught.value.failed_checks == ("flow1-api",)
    assert isinstance(caught.value.report, SmokeReport)
    assert caught.value.report.warnings == ["flow1-grafana"]
    rows = _table(artifact_key("staging"))
    assert [(r["check"], r["passed"], r["status"]) for r in rows] == [
        ("flow1-landing", True, 200),
        ("flow1-api", False, 500),
        ("flow1-grafana", False, 500),
    ]
    assert rows[1]["detail"] == "status 500, expected 200"


def test_flow_passes_with_warnings_only(
    prefect_api: None,
    app_server: Server,
    tls_expiring_server: Server,
    test_pki: PKI,
    tmp_path: Path,
) -> None:
    """Only warning checks failing: the run passes and its report lists the warnings;
    TLS days left and the latency budget reach the table."""
    checks_file = _checks_file(
        tmp_path,
        [
            {"name": "flow2-api", "url": f"{app_server.url}/api/health", "p95_ms": 5000},
            {
                "name": "flow2-tls-renewal",
                "url": f"{tls_expiring_server.url}/",
                "tls_min_days": 21,
                "severity": "warning",
            },
        ],
    )
    report = asyncio.run(
        smoke_test(checks_file=checks_file, ca_bundle=str(test_pki.ca_file), requests_per_check=2)
    )
    assert (report.passed, report.critical_failures, report.warnings) == (
        True,
        [],
        ["flow2-tls-renewal"],
    )
    rows = _table(artifact_key("staging"))
    assert [r["check"] for r in rows] == ["flow2-api", "flow2-tls-renewal"]
    assert rows[0]["budget ms"] == 5000
    assert isinstance(rows[0]["p95 ms"], float)
    assert 1.9 < rows[1]["TLS days left"] <= 2.0
