"""``rsolv-staging``: drive the pipeline through the Prefect REST API (CI and people).

    rsolv-staging run deploy/deploy-staging -p images='{"rsolv-api": "...@sha256:..."}' \\
        --idempotency-key "$GITHUB_SHA" --follow
    rsolv-staging approve <flow-run-id> --approver alice --reason "smoke tests green"
    rsolv-staging reject  <flow-run-id> --approver alice --reason "wrong build"
    rsolv-staging status  <flow-run-id>
    rsolv-staging audit
    rsolv-staging metrics [--json]

It talks HTTP only (``PREFECT_API_URL``, and ``PREFECT_API_KEY`` for Prefect Cloud), so
it needs no project import and no Prefect profile. Exit codes: 0 success, 1 failed or
crashed, 2 usage or refused input, 3 rejected, 4 timed out, 5 cancelled.

Prefect answers a resume with a refused input with HTTP 200 and ``status: REJECT``;
this client reads ``status``, never only the HTTP code. A resume is retried when its
answer is lost; if the retry hears "not paused" and the run holds this very decision,
the first attempt went through and the client reports success.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED, EXIT_TIMEOUT, EXIT_CANCELLED = range(6)
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RETRIES = 4
BACKOFF_SECONDS = 0.5


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class PrefectAPI:
    """The few Prefect REST endpoints the pipeline needs."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_env(cls) -> PrefectAPI:
        url = os.environ.get("PREFECT_API_URL")
        if not url:
            raise CliError("PREFECT_API_URL is not set (e.g. http://127.0.0.1:4200/api)")
        return cls(url, api_key=os.environ.get("PREFECT_API_KEY"))

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; connection errors, 429 and 5xx are retried with backoff.

        A 5xx means the server did not apply the request (e.g. its database was busy), so
        repeating it, a resume included, is safe.
        """
        for attempt in range(RETRIES + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == RETRIES:
                    message = f"cannot reach the Prefect API at {self.base_url}: {exc}"
                    raise CliError(message, EXIT_FAILED) from exc
            else:
                if response.status_code != 429 and response.status_code < 500:
                    break
                if attempt == RETRIES:
                    break
            time.sleep(BACKOFF_SECONDS * 2**attempt)
        if response.status_code == 404:
            raise CliError(f"not found: {method} {path}")
        if response.status_code >= 400:
            detail = response.text[:500]
            message = f"Prefect API {method} {path} answered {response.status_code}: {detail}"
            raise CliError(message, EXIT_FAILED)
        return response.json() if response.content else None

    def deployment(self, name: str) -> dict[str, Any]:
        """``flow-name/deployment-name`` -> the deployment (its ``id``, its parameters'
        ``parameter_openapi_schema``)."""
        flow, sep, deployment = name.partition("/")
        if not sep or not flow or not deployment:
            raise CliError(f"deployment {name!r} must be 'flow-name/deployment-name'")
        found: dict[str, Any] = self._request("GET", f"/deployments/name/{flow}/{deployment}")
        return found

    def create_run(
        self, deployment_id: str, parameters: Mapping[str, Any], *, idempotency_key: str | None
    ) -> dict[str, Any]:
        """Create a flow run of a deployment; the same idempotency key gives the same run."""
        # Always a key: this POST is retried on transport errors and 5xx, and a retry of a
        # request that did reach the server must not start a second deploy.
        body: dict[str, Any] = {
            "parameters": dict(parameters),
            "idempotency_key": idempotency_key or f"rsolv-staging-cli-{uuid.uuid4()}",
        }
        run: dict[str, Any] = self._request(
            "POST", f"/deployments/{deployment_id}/create_flow_run", json=body
        )
        return run

    def read_run(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self._request("GET", f"/flow_runs/{run_id}")
        return run

    def resume(self, run_id: str, run_input: Mapping[str, Any]) -> dict[str, Any]:
        """Resume a paused run with input; returns Prefect's answer (read its ``status``)."""
        answer: dict[str, Any] = self._request(
            "POST", f"/flow_runs/{run_id}/resume", json={"run_input": dict(run_input)}
        )
        return answer

    def responses(self, run_id: str) -> list[Any]:
        """The inputs a paused run was resumed with (each pause's ``*-response``)."""
        found: list[dict[str, Any]] = self._request(
            "POST", f"/flow_runs/{run_id}/input/filter", json={"prefix": "", "limit": 100}
        )
        return [json.loads(i["value"]) for i in found if str(i["key"]).endswith("-response")]

    def artifacts(self, key: str, *, limit: int = 50) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._request(
            "POST",
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": limit},
        )
        return found


def state_of(run: Mapping[str, Any]) -> tuple[str, str]:
    """(state type, state name) of a flow run document."""
    state = run.get("state") or {}
    return str(state.get("type", "PENDING")), str(state.get("name", "Pending"))


def exit_code(run: Mapping[str, Any]) -> int:
    kind, name = state_of(run)
    if kind == "COMPLETED":
        return EXIT_REJECTED if name == "Rejected" else EXIT_OK
    if kind == "CANCELLED":
        return EXIT_CANCELLED
    return EXIT_FAILED


def follow(api: PrefectAPI, run_id: str, *, timeout: float, interval: float = 2.0) -> int:
    """Print each state change until the run is final or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    seen: tuple[str, str] | None = None
    while True:
        run = api.read_run(run_id)
        current = state_of(run)
        if current != seen:
            message = (run.get("state") or {}).get("message") or ""
            print(f"{run['name']} ({run_id}): {current[1]}" + (f": {message}" if message else ""))
            if current[0] == "PAUSED":
                print(f"  waiting for a decision: rsolv-staging approve|reject {run_id} ...")
            seen = current
        if current[0] in FINAL:
            return exit_code(run)
        if time.monotonic() >= deadline:
            print(f"timed out after {timeout:g}s; the run goes on: rsolv-staging status {run_id}")
            return EXIT_TIMEOUT
        time.sleep(interval)


def parse_parameters(
    items: Sequence[str], schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse as JSON, else strings.

    A parameter whose type in ``schema`` (the deployment's ``parameter_openapi_schema``)
    takes a string keeps its value as typed: ``change_ref=1.10`` stays "1.10", and a
    ticket number "1234" is not turned into a number that Prefect would then refuse.
    """
    properties = (schema or {}).get("properties") or {}
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"parameter {item!r} must be key=value")
        if _takes_string(properties.get(key) or {}):
            params[key] = value
            continue
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _takes_string(prop: Mapping[str, Any]) -> bool:
    """Whether a JSON schema property accepts a string (``str``, ``str | None``, ...)."""
    if prop.get("type") == "string":
        return True
    return any(_takes_string(p) for p in prop.get("anyOf") or prop.get("oneOf") or [])


def decide(api: PrefectAPI, run_id: str, decision: str, approver: str, reason: str) -> int:
    run = api.read_run(run_id)
    kind, name = state_of(run)
    if kind != "PAUSED":
        raise CliError(f"run {run_id} is {name}, not waiting for a decision")
    ours = {"decision": decision, "approver": approver, "reason": reason}
    answer = api.resume(run_id, ours)
    status = str(answer.get("status", "")).upper()
    details = (answer.get("details") or {}).get("reason") or ""
    # "Not paused" after a retried resume: the first attempt may have been applied and
    # only its answer lost. The run then holds our input, and the decision stands.
    if status == "ABORT" and ours in api.responses(run_id):
        print(f"{decision} recorded for {run_id} by {approver} (the first answer was lost)")
        return EXIT_OK
    if status != "ACCEPT":
        print(f"refused ({status}): {details}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE
    print(f"{decision} recorded for {run_id} by {approver}")
    return EXIT_OK


METRICS_KEY = "delivery-metrics-json"  # written by flows/delivery_metrics.py


def print_metrics(api: PrefectAPI, *, as_json: bool) -> int:
    """Print the newest delivery metrics: the JSON document, or the RFC's targets."""
    found = api.artifacts(METRICS_KEY, limit=1)
    if not found:
        raise CliError(
            f"no {METRICS_KEY} artifact yet: run the delivery-metrics flow first "
            "(rsolv-staging run delivery-metrics/delivery-metrics --follow)",
            EXIT_FAILED,
        )
    text = str(found[0].get("data") or "").strip()
    try:  # a markdown artifact holding one fenced JSON block
        document = json.loads(text.removeprefix("```json").removesuffix("```"))
    except json.JSONDecodeError as exc:
        raise CliError(
            f"the newest {METRICS_KEY} artifact is not JSON: {exc}", EXIT_FAILED
        ) from exc
    if as_json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print(f"{document.get('window_start')} to {document.get('window_end')}")
    for target in document.get("targets") or []:
        measured = target.get("measured")
        shown = "no data" if measured is None else measured
        name, goal, status = target.get("name"), target.get("target"), target.get("status")
        print(f"  {name}: {shown} (target {goal}): {status}")
    return EXIT_OK


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsolv-staging", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="trigger a deployment (and follow it)")
    run.add_argument("deployment", help="flow-name/deployment-name, e.g. deploy/deploy-staging")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--idempotency-key", help="the same key twice gives one run (e.g. a commit)")
    run.add_argument("--follow", action="store_true", help="wait for a final state")
    run.add_argument("--timeout", type=float, default=3600, help="seconds to follow")
    for verb in ("approve", "reject"):
        p = sub.add_parser(verb, help=f"{verb} a paused promotion")
        p.add_argument("run_id")
        p.add_argument("--approver", required=True)
        p.add_argument("--reason", required=True)
    status = sub.add_parser("status", help="print a run's state (exit code as for run)")
    status.add_argument("run_id")
    status.add_argument("--follow", action="store_true")
    status.add_argument("--timeout", type=float, default=3600)
    sub.add_parser("audit", help="list promotion decisions (the promotion-audit artifact)")
    metrics = sub.add_parser("metrics", help="the newest delivery metrics (delivery-metrics flow)")
    metrics.add_argument("--json", action="store_true", help="print every figure as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        api = PrefectAPI.from_env()
        try:
            return _dispatch(api, args)
        finally:
            api.close()
    except CliError as exc:
        print(f"rsolv-staging: {exc}", file=sys.stderr)
        return exc.code


def _dispatch(api: PrefectAPI, args: argparse.Namespace) -> int:
    if args.command == "run":
        parse_parameters(args.param)  # a malformed -p is a usage error before any API call
        deployment = api.deployment(args.deployment)
        params = parse_parameters(args.param, deployment.get("parameter_openapi_schema"))
        run = api.create_run(deployment["id"], params, idempotency_key=args.idempotency_key)
        print(f"flow run {run['name']} {run['id']} ({state_of(run)[1]})")
        return follow(api, run["id"], timeout=args.timeout) if args.follow else EXIT_OK
    if args.command in ("approve", "reject"):
        return decide(api, args.run_id, args.command, args.approver, args.reason)
    if args.command == "status":
        if args.follow:
            return follow(api, args.run_id, timeout=args.timeout)
        run = api.read_run(args.run_id)
        print(f"{run['name']} ({args.run_id}): {state_of(run)[1]}")
        return exit_code(run) if state_of(run)[0] in FINAL else EXIT_OK
    if args.command == "metrics":
        return print_metrics(api, as_json=args.json)
    for artifact in api.artifacts("promotion-audit"):
        rows = artifact.get("data") or []
        if isinstance(rows, str):  # table artifacts come back as a JSON string
            rows = json.loads(rows)
        for row in rows:
            print(json.dumps({k: v for k, v in row.items() if k != "diff"}))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
