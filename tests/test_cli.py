"""The rsolv-staging client as CI runs it: separate processes against a real Prefect server.

A Prefect runner (``serve``) in one process executes the deployments; the console
script in another triggers and follows them over the REST API.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prefect.settings import PREFECT_API_URL

from rsolv_staging.cli import CliError, PrefectAPI, parse_parameters
from tests.plugins.http import Server

CLI = str(Path(sys.executable).parent / "rsolv-staging")


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


@pytest.fixture
def served(prefect_api: None, app_server: Server, tmp_path: Path) -> Iterator[None]:
    """Two smoke-test deployments served by a runner process: one passes, one fails."""
    for name, path in (("ok", "/api/health"), ("fail", "/500")):
        (tmp_path / f"{name}.yaml").write_text(
            yaml.safe_dump(
                {
                    "environment": "staging",
                    "checks": [{"name": "api", "url": f"{app_server.url}{path}", "status": 200}],
                }
            )
        )
    ok, fail = str(tmp_path / "ok.yaml"), str(tmp_path / "fail.yaml")
    script = textwrap.dedent(
        f"""
        from prefect import serve
        from flows.smoke_test import smoke_test
        serve(
            smoke_test.to_deployment(name="cli-ok", parameters={{"checks_file": {ok!r}}}),
            smoke_test.to_deployment(name="cli-fail", parameters={{"checks_file": {fail!r}}}),
        )
        """
    )
    runner = subprocess.Popen(
        [sys.executable, "-c", script],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        api = PrefectAPI(str(PREFECT_API_URL.value()))
        deadline = time.monotonic() + 60
        while True:  # until the runner has registered both deployments
            try:
                api.deployment_id("smoke-test/cli-ok")
                api.deployment_id("smoke-test/cli-fail")
                break
            except CliError:
                if time.monotonic() > deadline or runner.poll() is not None:
                    raise
                time.sleep(0.5)
        api.close()
        yield
    finally:
        runner.terminate()
        runner.wait(timeout=30)


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The console script, as its own process."""
    return subprocess.run(
        [CLI, *args], env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _run_id(output: str) -> str:
    match = re.search(r"flow run \S+ ([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


def test_trigger_follow_and_exit_codes(served: None) -> None:
    """A passing run exits 0, a failing one non-zero; one idempotency key gives one run."""
    ok = cli(
        "run", "smoke-test/cli-ok", "--idempotency-key", "ci-sha-1", "--follow", "--timeout", "120"
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Completed" in ok.stdout

    again = cli("run", "smoke-test/cli-ok", "--idempotency-key", "ci-sha-1")
    assert _run_id(again.stdout) == _run_id(ok.stdout)

    bad = cli(
        "run",
        "smoke-test/cli-fail",
        "--idempotency-key",
        "ci-sha-2",
        "--follow",
        "--timeout",
        "120",
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Failed" in bad.stdout


def test_unknown_deployment_and_bad_parameters_are_usage_errors(prefect_api: None) -> None:
    """A missing deployment or a malformed -p exits 2 with a message, creating nothing."""
    missing = cli("run", "smoke-test/nope")
    assert missing.returncode == 2
    assert "not found" in missing.stderr
    malformed = cli("run", "smoke-test/cli-ok", "-p", "no-equals-sign")
    assert malformed.returncode == 2
    assert "key=value" in malformed.stderr


def test_parameters_parse_as_json_or_text() -> None:
    """-p values are JSON when they parse, plain strings otherwise."""
    assert parse_parameters(
        ['images={"rsolv-api": "x@sha256:1"}', "trigger=ci:push:abc", "n=3"]
    ) == {
        "images": {"rsolv-api": "x@sha256:1"},
        "trigger": "ci:push:abc",
        "n": 3,
    }
