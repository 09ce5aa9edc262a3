"""The TLS scan of staging's HTTPS endpoints, with sslyze.

For each endpoint: which protocol versions the server accepts (SSL 2.0 and 3.0, TLS 1.0
to 1.3, each tried with every cipher suite of that version), which weak TLS 1.2 suites
it accepts, and its certificate: expiry, and whether the chain it sends validates for
the endpoint's host name against Mozilla's (and sslyze's other) trust stores, or a CA
bundle the caller gives (a private issuer, the tests' CA).

Why sslyze rather than Python's ``ssl`` module: sslyze brings its own OpenSSL builds
(nassl, a legacy one for SSL 2.0/3.0), so it can ask for protocols the machine's OpenSSL
refuses to speak by policy, and it enumerates cipher suites per version. It needs no
network beyond the endpoint: it works offline (measured on the project's machine: three
endpoints in about 1-2 s). What counts as a finding is decided in
``rsolv_staging.security_scan``; this module only measures.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.security_scan import TlsProbe

# sslyze's scan commands per protocol, as the model names the protocols.
_PROTOCOLS = {
    "SSL 2.0": "ssl_2_0_cipher_suites",
    "SSL 3.0": "ssl_3_0_cipher_suites",
    "TLS 1.0": "tls_1_0_cipher_suites",
    "TLS 1.1": "tls_1_1_cipher_suites",
    "TLS 1.2": "tls_1_2_cipher_suites",
    "TLS 1.3": "tls_1_3_cipher_suites",
}
# Broken or export-grade parts of a suite's IANA name.
_WEAK = ("_NULL_", "_anon_", "_EXPORT", "_RC4_", "_DES_", "3DES", "_MD5")


def _location(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigurationError(f"TLS scan: {endpoint!r} is not an https:// URL")
    return parts.hostname, parts.port or 443


def _requests(
    endpoints: Sequence[str], ca_bundle: Path | None, timeout: float
) -> tuple[list[Any], dict[str, str]]:
    """sslyze's scan requests, and the endpoints that cannot even be located (no DNS)."""
    from sslyze.errors import ServerHostnameCouldNotBeResolved
    from sslyze.plugins.certificate_info.implementation import CertificateInfoExtraArgument
    from sslyze.plugins.scan_commands import ScanCommand
    from sslyze.scanner.models import ScanCommandsExtraArguments, ServerScanRequest
    from sslyze.server_setting import ServerNetworkConfiguration, ServerNetworkLocation

    commands = {getattr(ScanCommand, name.upper()) for name in _PROTOCOLS.values()}
    commands.add(ScanCommand.CERTIFICATE_INFO)
    extra = (
        ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=ca_bundle)
        )
        if ca_bundle
        else ScanCommandsExtraArguments()
    )
    requests, errors = [], {}
    for endpoint in endpoints:
        host, port = _location(endpoint)
        try:
            location = ServerNetworkLocation(hostname=host, port=port)  # resolves the name
        except ServerHostnameCouldNotBeResolved as exc:
            errors[endpoint] = str(exc)
            continue
        requests.append(
            ServerScanRequest(
                server_location=location,
                network_configuration=ServerNetworkConfiguration(
                    tls_server_name_indication=host, network_timeout=int(max(1, timeout))
                ),
                scan_commands=commands,
                scan_commands_extra_arguments=extra,
            )
        )
    return requests, errors


def _probe(endpoint: str, result: Any) -> TlsProbe:
    """Read one sslyze server result into the model's terms."""
    from sslyze.scanner.models import ServerScanStatusEnum
    from sslyze.scanner.scan_command_attempt import ScanCommandAttemptStatusEnum

    if result.scan_status != ServerScanStatusEnum.COMPLETED:
        trace = result.connectivity_error_trace
        error = str(trace).strip() if trace is not None else str(result.connectivity_status)
        return TlsProbe(endpoint=endpoint, error=error or "no TLS connection")
    scan = result.scan_result
    probe = TlsProbe(endpoint=endpoint)
    failed = []
    for protocol, attribute in _PROTOCOLS.items():
        attempt = getattr(scan, attribute)
        if attempt.status != ScanCommandAttemptStatusEnum.COMPLETED or attempt.result is None:
            failed.append(protocol)
            continue
        accepted = attempt.result.accepted_cipher_suites
        if accepted:
            probe.accepted.append(protocol)
        if protocol == "TLS 1.2":
            probe.weak_ciphers += [
                a.cipher_suite.name
                for a in accepted
                if a.cipher_suite.key_size < 128 or any(w in a.cipher_suite.name for w in _WEAK)
            ]
    if failed:
        return TlsProbe(endpoint=endpoint, error=f"could not test {', '.join(failed)}")
    info = scan.certificate_info
    if info.status != ScanCommandAttemptStatusEnum.COMPLETED or info.result is None:
        return TlsProbe(endpoint=endpoint, error="could not read the certificate")
    deployment = info.result.certificate_deployments[0]
    probe.not_after = deployment.received_certificate_chain[0].not_valid_after_utc
    results = deployment.path_validation_results
    probe.trusted = any(r.was_validation_successful for r in results)
    if not probe.trusted:
        probe.trust_error = "; ".join(
            sorted({str(r.validation_error) for r in results if r.validation_error})
        )
    return probe


@task(name="scan-tls", cache_policy=NO_CACHE, task_run_name="scan-tls-{endpoints}")
def scan_tls(
    endpoints: Sequence[str], *, ca_bundle: str | None = None, timeout_seconds: float = 10
) -> list[TlsProbe]:
    """Scan the TLS of each ``https://`` endpoint (concurrently); one probe per endpoint.

    Read-only: TLS handshakes and nothing else (no HTTP request is sent). An endpoint that
    cannot be reached is a probe with ``error`` set, not an exception.

    Raises:
        ConfigurationError: an endpoint is not https, or the CA bundle cannot be read.
    """
    from sslyze.scanner.scanner import Scanner

    bundle = Path(ca_bundle) if ca_bundle else None
    if bundle is not None and not bundle.is_file():
        raise ConfigurationError(f"TLS scan: CA bundle {bundle} is not a file")
    if not endpoints:
        return []
    by_location = {_location(e): e for e in endpoints}
    requests, errors = _requests(list(by_location.values()), bundle, timeout_seconds)
    probes = {e: TlsProbe(endpoint=e, error=error) for e, error in errors.items()}
    if requests:
        with warnings.catch_warnings():
            # One of sslyze's bundled trust stores holds a root with a negative serial
            # number, which cryptography warns about on each load: noise, not a finding.
            warnings.filterwarnings("ignore", message="Parsed a serial number")
            scanner = Scanner()
            scanner.queue_scans(requests)
            for result in scanner.get_results():
                location = (result.server_location.hostname, result.server_location.port)
                endpoint = by_location[location]
                probes[endpoint] = _probe(endpoint, result)
    try:
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = get_run_logger()
    except MissingContextError:  # called through .fn(): no run to attach logs to
        logger = logging.getLogger(__name__)
    for probe in probes.values():
        logger.info(
            "%s: %s; certificate until %s, trusted %s",
            probe.endpoint,
            probe.error or ", ".join(probe.accepted),
            probe.not_after,
            probe.trusted,
        )
    return [probes[e] for e in by_location.values()]
