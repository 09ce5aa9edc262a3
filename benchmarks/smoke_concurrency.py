"""Smoke checks one after another vs all at once, against endpoints with known delays.

Starts the test suite's app server on 127.0.0.1 (``tests/plugins/http.py``), builds 20
checks of ``/slow?ms=D`` with D = 100, 120, ..., 480 ms (sum 5.8 s, slowest 0.48 s),
and runs them in the same process, same client code:

- sequentially: ``check_endpoint`` in a loop, one shared client (the naive baseline);
- concurrently: the body of the ``run-checks`` task, exactly as the smoke flow runs it.

It prints both wall times and their ratio; the concurrent time should be close to the
slowest check. ``--tls`` runs over HTTPS with a test CA (each check then pays a TLS
handshake). ``--with-prefect`` also starts a throwaway Prefect API (about 10 s) and
times, inside one flow run, the one-task design against a task run per check, which is
why ``tasks/http.py`` runs all checks in one task.

Run from the repository root:

    .venv/bin/python -m benchmarks.smoke_concurrency [--tls] [--with-prefect]

Measured on the project's 2-core machine (2026-11), 20 checks, 1 request each:
sequential 5.88-5.90 s, concurrent 0.53-0.57 s (10.4-11.2x; 1.09-1.19x the slowest
check); over TLS with 3 requests per check: 17.6 s vs 1.53 s (11.5x). Inside a flow
run: one run-checks task 0.56-0.58 s, 20 run-check task runs 1.0-1.4 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import httpx

from rsolv_staging.smoke import Check, CheckResult, WarmupPolicy
from tasks.http import check_endpoint, run_check, run_checks, ssl_context
from tests.plugins.http import make_pki, serve_app

WARMUP = WarmupPolicy(budget_seconds=10)


def delays_ms(count: int) -> list[int]:
    return [100 + 20 * i for i in range(count)]


def build_checks(base_url: str, count: int, requests: int) -> list[Check]:
    budget = {"p95_ms": 5000.0, "requests": requests} if requests > 1 else {}
    return [
        Check(name=f"slow-{ms}", url=f"{base_url}/slow?ms={ms}", **budget)
        for ms in delays_ms(count)
    ]


async def sequential(checks: Sequence[Check], ca_bundle: Path | None) -> list[CheckResult]:
    """The naive way: the same per-check code, awaited one check after another."""
    context = ssl_context(verify=True, ca_bundles=[ca_bundle] if ca_bundle else [])
    rng = random.Random(0)
    async with httpx.AsyncClient(verify=context) as client:
        return [
            await check_endpoint(
                client, check, requests=check.request_count(1), warmup=WARMUP, rng=rng
            )
            for check in checks
        ]


async def concurrent(checks: Sequence[Check], ca_bundle: Path | None) -> list[CheckResult]:
    """The project's way: the run-checks task body, as the smoke flow calls it."""
    return await run_checks.fn(
        checks, warmup=WARMUP, ca_bundle=str(ca_bundle) if ca_bundle else None
    )


def timed(label: str, results: list[CheckResult], seconds: float) -> float:
    failed = [r.name for r in results if not r.passed]
    status = "all passed" if not failed else f"FAILED: {failed}"
    print(f"{label:<40} {seconds:7.3f} s   ({len(results)} checks, {status})")
    return seconds


def prefect_comparison(checks: Sequence[Check], ca_bundle: Path | None) -> None:
    """One task for all checks vs a task run per check, timed inside one flow run."""
    # The harness's server otherwise logs a "database is locked" traceback from its
    # telemetry write on this machine; the measurement does not need telemetry.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    bundle = str(ca_bundle) if ca_bundle else None

    @flow(name="smoke-benchmark")
    async def compare() -> dict[str, float]:
        out: dict[str, float] = {}
        started = time.perf_counter()
        await run_checks(list(checks), warmup=WARMUP, ca_bundle=bundle)
        out["one run-checks task (the flow's way)"] = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(
            *(run_check(check, warmup=WARMUP, ca_bundle=bundle) for check in checks)
        )
        out[f"{len(checks)} run-check tasks, gathered"] = time.perf_counter() - started
        return out

    print("\nstarting a throwaway Prefect API ...")
    with prefect_test_harness(server_startup_timeout=60):
        asyncio.run(compare())  # warm-up run: imports, first API calls
        for label, seconds in asyncio.run(compare()).items():
            print(f"{label:<40} {seconds:7.3f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument(
        "--requests", type=int, default=1, help="requests per check (N behind each p95)"
    )
    parser.add_argument("--tls", action="store_true", help="HTTPS with a test CA")
    parser.add_argument("--with-prefect", action="store_true", help="also time task layouts")
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        ca_bundle: Path | None = None
        tls = None
        if args.tls:
            pki = make_pki(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            ca_bundle, tls = pki.ca_file, pki.server_context(pki.valid)
        server = stack.enter_context(serve_app(tls))
        checks = build_checks(server.url, args.checks, args.requests)
        delays = delays_ms(args.checks)
        print(
            f"{len(checks)} checks x {args.requests} request(s) against {server.url}/slow, "
            f"delays {delays[0]}..{delays[-1]} ms: sum {sum(delays) * args.requests / 1000:.2f}"
            f" s, slowest check {max(delays) * args.requests / 1000:.2f} s\n"
        )
        asyncio.run(concurrent(checks[:2], ca_bundle))  # warm imports and the trust store

        started = time.perf_counter()
        results = asyncio.run(sequential(checks, ca_bundle))
        seq = timed("sequential (naive baseline)", results, time.perf_counter() - started)
        started = time.perf_counter()
        results = asyncio.run(concurrent(checks, ca_bundle))
        con = timed("concurrent (run-checks task body)", results, time.perf_counter() - started)
        slowest = max(delays) * args.requests / 1000
        print(f"\nratio sequential / concurrent: {seq / con:.1f}x")
        print(f"concurrent / slowest check:    {con / slowest:.2f}")

        if args.with_prefect:
            prefect_comparison(checks, ca_bundle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
