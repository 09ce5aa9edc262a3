"""Tasks that talk HTTP: the smoke checks, sent with ``httpx.AsyncClient``.

What counts as passing is decided in :mod:`rsolv_staging.smoke` (pure); this module
only measures: status, body, latency of each request, and the peer certificate of the
real TLS connection the requests went over.

Concurrency. All checks of a run go in ONE task, :func:`run_checks`, which runs them
with ``asyncio.gather`` over shared clients, so a run takes about as long as its slowest
check. A Prefect task run per check (:func:`run_check`, 20 of them gathered) overlaps
the checks too, but every task run adds its own state round-trips to the API. Measured
with ``benchmarks/smoke_concurrency.py --with-prefect`` on the project's 2-core machine,
20 checks of 100-480 ms inside one flow run: one task 0.56-0.58 s, 20 task runs
1.0-1.4 s, one after another 5.9 s. Checks are short, I/O-bound and never retried as a
whole, so per-check task runs buy nothing the table artifact does not already show.

Warm-up. A service that has just rolled out answers connection refused, 502, 503 or 504
for a while. Each check retries those (and only those, plus a name that does not
resolve yet) with exponential backoff and jitter until its warm-up budget is spent; the
retry lives inside the check rather than in Prefect's task retries, because a task retry
would re-run every check, not just the one that is still starting. A 500, a 4xx, a read
timeout, a TLS error or a wrong body fails at once: waiting will not fix them.

TLS. Verification is on unless a check says ``verify: false``, which the checks-file
loader refuses for production, and every result of such a check carries a note saying
so: it is never off silently. Private CAs (the test CA, a staging issuer) are trusted by
adding a CA bundle per check or per run, on top of the system store.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.runtime import task_run

from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.security_scan import HeaderProbe
from rsolv_staging.smoke import (
    WARMUP_STATUSES,
    Check,
    CheckResult,
    Sample,
    WarmupPolicy,
    judge,
)

# Connection-level failures a starting service produces (refused, reset, closed before
# answering, a connect that times out while the pod is scheduled). A read timeout is
# not here: a service that accepts and then hangs is slow, not starting.
_TRANSIENT_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)

_TLSKey = tuple[bool, Path | None]


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        # Called through .fn() or from the benchmark: no run to attach logs to.
        return logging.getLogger(__name__)


# ----------------------------------------------------------------------------- TLS


def ssl_context(*, verify: bool, ca_bundles: Sequence[Path] = ()) -> ssl.SSLContext:
    """The TLS context of a client: the system trust store plus ``ca_bundles``.

    Raises:
        ConfigurationError: a CA bundle cannot be read or holds no certificate.
    """
    if not verify:
        # The caller records a note on every result of such a check (never silent).
        return httpx.create_ssl_context(verify=False)
    # Same base as httpx's default (SSL_CERT_FILE / SSL_CERT_DIR, else certifi), so a
    # check behaves like any other client on the machine, plus the extra CAs.
    context = httpx.create_ssl_context(verify=True, trust_env=True)
    for bundle in ca_bundles:
        try:
            context.load_verify_locations(cafile=str(bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load CA bundle {bundle}: {exc}") from exc
    return context


def _tls_key(check: Check) -> _TLSKey:
    # The run's CA bundle is the same for every client, so only the check's own
    # settings tell clients apart.
    return (check.verify, check.ca_bundle if check.verify else None)


def _peer_certificate(response: httpx.Response) -> bytes | None:
    """DER of the certificate the server presented on this response's connection."""
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return bytes(der) if der else None


def _not_after(der: bytes | None) -> dt.datetime | None:
    return x509.load_der_x509_certificate(der).not_valid_after_utc if der else None


async def _unverified_expiry(url: str, timeout: float) -> dt.datetime | None:
    """notAfter of the certificate at ``url``, read without trusting it.

    Only used to explain a verification failure (an expired certificate then shows how
    many days ago it expired); the check has already failed.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    context = httpx.create_ssl_context(verify=False)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return _not_after(bytes(der) if der else None)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _verification_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _describe(exc: BaseException, check: Check) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException) and not isinstance(
        exc, httpx.ConnectTimeout
    ):
        return f"no complete response within {check.timeout_seconds:g} s"
    text = str(exc) or "no details"
    return f"{text} ({type(exc).__name__})"


# ------------------------------------------------------------------------ exchanges


@dataclass(frozen=True)
class _Answer:
    sample: Sample
    certificate: bytes | None
    retry_after: float | None


async def _exchange(client: httpx.AsyncClient, check: Check) -> _Answer:
    """One request, timed from sending to the last byte of the body."""
    started = time.perf_counter()
    # httpx's timeout applies per phase (connect, each read); asyncio's bounds the
    # whole exchange, so a server dripping bytes cannot hold a check past its timeout.
    async with (
        asyncio.timeout(check.timeout_seconds),
        client.stream(
            check.method,
            check.url,
            headers=check.headers,
            timeout=check.timeout_seconds,
            follow_redirects=check.follow_redirects,
        ) as response,
    ):
        body = await response.aread()
        certificate = _peer_certificate(response)
    elapsed_ms = (time.perf_counter() - started) * 1000
    header = response.headers.get("Retry-After", "")
    return _Answer(
        sample=Sample(status=response.status_code, elapsed_ms=elapsed_ms, body=body),
        certificate=certificate,
        retry_after=float(header) if header.isdigit() else None,
    )


async def check_endpoint(
    client: httpx.AsyncClient,
    check: Check,
    *,
    requests: int,
    warmup: WarmupPolicy,
    rng: random.Random,
) -> CheckResult:
    """Run one check on ``client``: warm up, measure ``requests`` requests, judge.

    Never raises for what the server does (that is a failed result); only for bugs.
    """
    started = time.perf_counter()
    notes: list[str] = []
    if not check.verify and check.url.startswith("https://"):
        notes.append("TLS certificate NOT verified (verify: false)")
    first = await _warm_up(client, check, warmup=warmup, rng=rng, started=started)
    samples, errors = list(first.samples), list(first.errors)
    # Measurement: the rest of the N requests, one after another on the same client,
    # so the latency is the service's and not contention this check causes itself.
    if samples and not errors:
        for number in range(2, requests + 1):
            try:
                samples.append((await _exchange(client, check)).sample)
            except (httpx.HTTPError, TimeoutError) as exc:
                errors.append(f"request {number} of {requests}: {_describe(exc, check)}")
                break

    return judge(
        check,
        samples,
        tls_expiry=first.expiry,
        now=dt.datetime.now(dt.UTC),
        attempts=first.attempts,
        errors=errors,
        notes=notes,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


@dataclass(frozen=True)
class _WarmUp:
    """How the warm-up ended: the first accepted answer (or the one it was stuck on)."""

    attempts: int
    samples: list[Sample]
    errors: list[str]
    expiry: dt.datetime | None


async def _warm_up(
    client: httpx.AsyncClient,
    check: Check,
    *,
    warmup: WarmupPolicy,
    rng: random.Random,
    started: float,
) -> _WarmUp:
    """Retry what a starting service answers, until it answers or time is up."""
    attempts = 0
    stuck: _Answer | None = None  # the last warm-up status answer, if any
    while True:
        attempts += 1
        retry_after: float | None = None
        try:
            answer = await _exchange(client, check)
        except (httpx.HTTPError, TimeoutError) as exc:
            verification = _verification_error(exc)
            if verification is not None:
                error = f"TLS certificate not trusted: {verification.verify_message}"
                expiry = await _unverified_expiry(check.url, check.timeout_seconds)
                return _WarmUp(attempts, [], [error], expiry)
            if not isinstance(exc, _TRANSIENT_ERRORS) or _tls_error(exc) is not None:
                return _WarmUp(attempts, [], [_describe(exc, check)], None)
            problem = _describe(exc, check)
            stuck = None
        else:
            status = answer.sample.status
            accepted = check.status is None or status in check.status
            if status not in WARMUP_STATUSES or accepted:
                return _WarmUp(attempts, [answer.sample], [], _not_after(answer.certificate))
            problem = f"status {status}"
            retry_after = answer.retry_after
            stuck = answer
        spent = time.perf_counter() - started
        delay = warmup.delay(attempts, rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        if spent + delay > warmup.budget_seconds:
            error = (
                f"not ready after {attempts} attempt{'s' if attempts > 1 else ''} in "
                f"{spent:.1f} s (warm-up budget {warmup.budget_seconds:g} s): {problem}"
            )
            if stuck is None:
                return _WarmUp(attempts, [], [error], None)
            # Keep the last answer so the report shows the status it was stuck on.
            return _WarmUp(attempts, [stuck.sample], [error], _not_after(stuck.certificate))
        await asyncio.sleep(delay)


async def execute_checks(
    checks: Sequence[Check],
    *,
    requests_per_check: int,
    warmup: WarmupPolicy,
    ca_bundle: Path | None = None,
    seed: int | None = None,
) -> list[CheckResult]:
    """Run ``checks`` concurrently; results in the order of ``checks``.

    Checks with the same TLS settings share one client (and its connection pool), so
    the trust store is loaded once per setting, not once per check.

    Raises:
        ConfigurationError: a CA bundle cannot be loaded (before any request is sent).
    """
    rng = random.Random(seed)
    contexts = _ssl_contexts(checks, ca_bundle)
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            key: await stack.enter_async_context(
                httpx.AsyncClient(
                    verify=context,
                    headers={"User-Agent": "rsolv-staging-smoke/1"},
                    # Enough connections for every check at once: the pool must not
                    # serialize what gather started concurrently.
                    limits=httpx.Limits(max_connections=max(100, 2 * len(checks))),
                )
            )
            for key, context in contexts.items()
        }
        outcomes = await asyncio.gather(
            *(
                check_endpoint(
                    clients[_tls_key(check)],
                    check,
                    requests=check.request_count(requests_per_check),
                    warmup=warmup,
                    rng=rng,
                )
                for check in checks
            ),
            return_exceptions=True,
        )
    return [_result_or_crash(c, o) for c, o in zip(checks, outcomes, strict=True)]


def _ssl_contexts(checks: Sequence[Check], ca_bundle: Path | None) -> dict[_TLSKey, ssl.SSLContext]:
    """One SSL context per distinct TLS setting among ``checks``."""
    contexts: dict[_TLSKey, ssl.SSLContext] = {}
    for check in checks:
        key = _tls_key(check)
        if key not in contexts:
            bundles = [b for b in (ca_bundle, check.ca_bundle) if b is not None]
            contexts[key] = ssl_context(verify=check.verify, ca_bundles=bundles)
    return contexts


def _result_or_crash(check: Check, outcome: CheckResult | BaseException) -> CheckResult:
    if not isinstance(outcome, BaseException):
        return outcome
    if not isinstance(outcome, Exception):
        raise outcome  # KeyboardInterrupt, CancelledError: not ours to swallow
    # A bug in one check must not hide the others' results; it fails that check.
    _logger().error("check %s crashed", check.name, exc_info=outcome)
    return CheckResult(
        name=check.name,
        severity=check.severity,
        url=check.url,
        passed=False,
        failures=[f"internal error: {outcome!r}"],
    )


# ---------------------------------------------------------------------------- tasks


def _run_checks_name() -> str:
    checks = task_run.parameters.get("checks") or ()
    return f"run-{len(checks)}-checks"


@task(name="run-checks", cache_policy=NO_CACHE, task_run_name=_run_checks_name)
async def run_checks(
    checks: Sequence[Check],
    *,
    requests_per_check: int = 5,
    warmup: WarmupPolicy | None = None,
    ca_bundle: str | None = None,
    seed: int | None = None,
) -> list[CheckResult]:
    """Run all smoke checks concurrently and return one result per check.

    Args:
        checks: the checks, URLs already filled (``rsolv_staging.smoke.render_checks``).
        requests_per_check: requests behind each p95 latency figure, for checks with a
            latency budget and no ``requests`` of their own (others send one).
        warmup: how long each check waits for a service that is still starting.
        ca_bundle: extra CA certificates (PEM file) trusted by every check, e.g. a
            private issuer; verification stays on.
        seed: seeds the backoff jitter (reproducible runs in tests).

    Returns:
        One :class:`CheckResult` per check, in the order given. Failed checks are
        results, not exceptions: deciding what fails the run is the flow's job.

    Raises:
        ConfigurationError: a CA bundle cannot be loaded.
    """
    results = await execute_checks(
        checks,
        requests_per_check=requests_per_check,
        warmup=warmup or WarmupPolicy(),
        ca_bundle=Path(ca_bundle) if ca_bundle else None,
        seed=seed,
    )
    logger = _logger()
    for result in results:
        log = logger.info if result.passed else logger.warning
        log(
            "%-4s %s [%s] status=%s p95=%s ms tls_days=%s %s",
            result.outcome,
            result.name,
            result.severity,
            result.status,
            f"{result.p95_ms:.0f}" if result.p95_ms is not None else "-",
            f"{result.tls_days_left:.1f}" if result.tls_days_left is not None else "-",
            result.detail,
        )
    return results


@task(name="run-check", cache_policy=NO_CACHE, task_run_name="check-{check.name}")
async def run_check(
    check: Check,
    *,
    requests_per_check: int = 5,
    warmup: WarmupPolicy | None = None,
    ca_bundle: str | None = None,
) -> CheckResult:
    """Run one smoke check on its own client (for a single check, or a task per check).

    Args:
        check: the check, URL already filled.
        requests_per_check: requests behind the p95 figure if the check has a budget.
        warmup: how long to wait for a service that is still starting.
        ca_bundle: extra CA certificates (PEM file) to trust.

    Returns:
        The check's result; a failed check is a result, not an exception.
    """
    results = await execute_checks(
        [check],
        requests_per_check=requests_per_check,
        warmup=warmup or WarmupPolicy(),
        ca_bundle=Path(ca_bundle) if ca_bundle else None,
    )
    return results[0]


# ------------------------------------------------------------------ security headers

SECURITY_HEADERS = (
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "content-security-policy",
)


@task(name="read-security-headers", cache_policy=NO_CACHE)
def read_security_headers(
    endpoints: Sequence[str], *, timeout_seconds: float = 10
) -> list[HeaderProbe]:
    """GET each endpoint once and keep the security headers of its (first) response.

    Redirects are not followed: the headers of the answer a browser gets first are what
    protect it (HSTS on a redirect counts). The certificate is not verified here: whether
    it is trusted is the TLS scan's finding, and nothing but an anonymous GET is sent.
    An endpoint that does not answer is a probe with ``error`` set, not an exception.
    """
    probes = []
    with httpx.Client(
        verify=ssl_context(verify=False),
        timeout=timeout_seconds,
        headers={"User-Agent": "rsolv-staging-security-scan/1"},
    ) as client:
        for endpoint in endpoints:
            try:
                response = client.get(endpoint, follow_redirects=False)
            except httpx.HTTPError as exc:
                probes.append(HeaderProbe(endpoint=endpoint, error=_describe_error(exc)))
                continue
            kept = {k: response.headers[k] for k in SECURITY_HEADERS if k in response.headers}
            probes.append(HeaderProbe(endpoint=endpoint, status=response.status_code, headers=kept))
    return probes


def _describe_error(exc: BaseException) -> str:
    return f"{str(exc) or 'no details'} ({type(exc).__name__})"


__all__ = [
    "check_endpoint",
    "execute_checks",
    "read_security_headers",
    "run_check",
    "run_checks",
    "ssl_context",
]
