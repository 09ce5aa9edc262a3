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
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import pause_flow_run
from prefect.settings import PREFECT_API_URL
from prefect.utilities.callables import parameter_schema

from flows.promote import promote_to_production
from rsolv_staging.cli import EXIT_OK, CliError, PrefectAPI, decide, parse_parameters
from rsolv_staging.promotion import approval_form
from tests.plugins.http import LosingProxy, Server

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
                api.deployment("smoke-test/cli-ok")
                api.deployment("smoke-test/cli-fail")
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


def test_string_parameters_stay_as_typed() -> None:
    """With the deployment's schema, a parameter typed ``str`` keeps its text: a change
    ref "1.10" or a ticket "1234" is not turned into a number Prefect would refuse;
    other parameters still parse as JSON."""
    schema = parameter_schema(promote_to_production).model_dump()
    assert parse_parameters(
        [
            "change_ref=1.10",
            "requester=1234",
            "approval_timeout_seconds=60",
            'images={"rsolv-api": "x@sha256:1"}',
        ],
        schema,
    ) == {
        "change_ref": "1.10",
        "requester": "1234",
        "approval_timeout_seconds": 60,
        "images": {"rsolv-api": "x@sha256:1"},
    }


def test_a_decision_whose_answer_was_lost_stands(prefect_api: None, capsys: Any) -> None:
    """The resume reaches Prefect but its answer is lost; the client's retry is told the
    run is no longer paused. The client finds its own decision recorded and says so
    (exit 0), rather than reporting a refusal for an approval that went through."""
    form = approval_form(["alice"], "a gate like the promotion's")

    @flow(name="cli-gate")
    def gate() -> str:
        decision = pause_flow_run(wait_for_input=form, timeout=60, poll_interval=1, key="approval")
        return decision.approver

    outcome: list[str] = []
    waiting = threading.Thread(target=lambda: outcome.append(gate()), daemon=True)
    waiting.start()
    direct = PrefectAPI(str(PREFECT_API_URL.value()))
    run_id = _paused_run("cli-gate")
    proxy = LosingProxy(str(PREFECT_API_URL.value()), marker=b"/resume")
    api = PrefectAPI(proxy.url)
    try:
        code = decide(api, run_id, "approve", "alice", "ship it")
    finally:
        api.close()
        proxy.close()
    assert proxy.lost == 1  # the first answer really was lost, and the client retried
    assert code == EXIT_OK, capsys.readouterr()
    assert "first answer was lost" in capsys.readouterr().out
    waiting.join(timeout=60)
    assert outcome == ["alice"]
    assert direct.responses(run_id) == [
        {"decision": "approve", "approver": "alice", "reason": "ship it"}
    ]
    direct.close()


def _paused_run(flow_name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                ),
            )
            if runs:
                return str(runs[0].id)
            time.sleep(0.3)
    raise AssertionError(f"no paused {flow_name} run")
