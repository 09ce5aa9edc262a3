"""The security scan: its rules on their own, its probes against real TLS/HTTP servers on
127.0.0.1, and the whole flow against the Kubernetes API emulator and a real Prefect API.

The TLS servers are Python's own (the machine's OpenSSL 3.0): one accepts TLS 1.0 and
1.1 (allowed at OpenSSL security level 0) with a certificate that expires in 2 days and
sends no security header; the other speaks TLS 1.2+ only, with a 90-day certificate and
every header the scan asks for. Both certificates come from the suite's test CA.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import ssl
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.variables import Variable

from flows.provision import provision_staging
from flows.security_scan import ARTIFACT_KEY, scan_staging_security
from kube_emulator import KubeEmulator
from rsolv_staging.environments import default_topology
from rsolv_staging.exceptions import ConfigurationError, SecurityScanFailed
from rsolv_staging.images import parse_image
from rsolv_staging.provisioning import database, network_policies
from rsolv_staging.security_scan import (
    RULES,
    Baseline,
    BaselineEntry,
    HeaderProbe,
    TlsProbe,
    announced_id,
    classify,
    finding,
    header_findings,
    network_policy_findings,
    parse_baseline,
    scan_targets,
    tls_findings,
    workload_findings,
)
from rsolv_staging.settings import Settings
from tasks.http import read_security_headers
from tasks.kube import apply_objects
from tasks.manifests import render_overlay
from tasks.prefect_api import SECURITY_ANNOUNCED_VARIABLE
from tasks.tls import scan_tls
from tests.plugins.http import PKI, closed_port
from tests.plugins.releases import images, newest_artifact

TOPOLOGY = default_topology()
REGISTRIES = TOPOLOGY.staging.image_registries
DIGEST = "sha256:" + "5" * 64
NOW = dt.datetime.now(dt.UTC)
HARDENED = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
}


def rules(findings: list[Any]) -> set[str]:
    return {f.rule for f in findings}


# ------------------------------------------------------------------------ pure rules


def test_every_pod_problem_is_its_own_finding_on_the_workload() -> None:
    """A pod spec with each problem gives each rule once, named after the Deployment that
    owns the pod (through its ReplicaSet), not after the pod's generated name."""
    spec = {
        "hostNetwork": True,
        "hostPID": True,
        "volumes": [
            {"name": "node", "hostPath": {"path": "/"}},
            {"name": "creds", "secret": {"secretName": "staging-oauth"}},
        ],
        "containers": [
            {
                "name": "bad",
                "image": "evil.example/miner:1.0",
                "securityContext": {
                    "privileged": True,
                    "runAsUser": 0,
                    "capabilities": {"add": ["SYS_ADMIN", "NET_BIND_SERVICE"]},
                },
            },
            {"name": "bare", "image": "ghcr.io/rsolv-dev/rsolv-api"},
        ],
    }
    deployment = {"kind": "Deployment", "metadata": {"name": "web", "namespace": "staging"}}
    replica_set = {
        "kind": "ReplicaSet",
        "metadata": {
            "name": "web-1a2b",
            "namespace": "staging",
            "ownerReferences": [{"kind": "Deployment", "name": "web", "controller": True}],
        },
    }
    pod = {
        "kind": "Pod",
        "metadata": {
            "name": "web-1a2b-xyz",
            "namespace": "staging",
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1a2b", "controller": True}],
        },
        "spec": spec,
    }
    found = workload_findings([deployment, replica_set, pod], registries=REGISTRIES)
    by_object = {(f.rule, f.object) for f in found}
    bad = "Deployment/staging/web container bad"
    bare = "Deployment/staging/web container bare"
    assert {
        ("pod.host-namespace", "Deployment/staging/web"),
        ("pod.host-path", "Deployment/staging/web"),
        ("secret.volume-unmounted", "Deployment/staging/web volume creds"),
        ("pod.privileged", bad),
        ("pod.runs-as-root", bad),
        ("pod.capabilities-added", bad),
        ("image.not-pinned", bad),
        ("image.registry-not-allowed", bad),
        ("pod.security-context-missing", bare),
        ("image.not-pinned", bare),
    } <= by_object
    assert ("image.registry-not-allowed", bare) not in by_object  # ghcr.io/rsolv-dev is listed
    added = next(f for f in found if f.rule == "pod.capabilities-added")
    assert added.detail == "adds SYS_ADMIN"  # NET_BIND_SERVICE is what restricted allows
    assert [f.severity for f in found if f.rule == "pod.privileged"] == ["critical"]
    # hostNetwork and hostPID on one pod: one finding per (rule, object).
    assert len([f for f in found if f.rule == "pod.host-namespace"]) == 1


def test_provisionings_database_pod_breaks_no_rule() -> None:
    """Staging's PostgreSQL as provisioning builds it (restricted, pinned, its Secret
    volume mounted) gives no workload finding: the rules agree with the project's own."""
    objects = [o for o in database(TOPOLOGY) if o["kind"] == "StatefulSet"]
    assert workload_findings(objects, registries=REGISTRIES) == []


def test_network_policies_missing_weaker_stricter_and_unexpected() -> None:
    """Equal policies (list order and the default TCP protocol aside) give nothing; a rule
    added is weaker, a rule removed only drift, a lost one missing, an extra one allowing
    traffic unexpected (policies add up)."""
    expected = network_policies(TOPOLOGY)
    namespaces = TOPOLOGY.staging.namespaces
    live = copy.deepcopy(expected)
    for policy in live:  # as an API server may return them: no protocol, other order
        for rule in policy["spec"].get("ingress") or []:
            for port in rule.get("ports") or []:
                if port.get("protocol") == "TCP":
                    del port["protocol"]
        policy["spec"]["policyTypes"].reverse()
    assert network_policy_findings(expected, live, namespaces) == []

    by_name = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in live}
    by_name[("staging", "allow-apps")]["spec"]["ingress"].append({"from": [{"podSelector": {}}]})
    by_name[("staging", "allow-data-sync")]["spec"]["egress"] = []
    live.remove(by_name[("staging", "allow-database-clients")])
    extra = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-all", "namespace": "staging"},
        "spec": {"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]},
    }
    found = {
        f.object: f.rule for f in network_policy_findings(expected, [*live, extra], namespaces)
    }
    assert found == {
        "NetworkPolicy/staging/allow-apps": "network-policy.weaker",
        "NetworkPolicy/staging/allow-data-sync": "network-policy.drift",
        "NetworkPolicy/staging/allow-database-clients": "network-policy.missing",
        "NetworkPolicy/staging/allow-all": "network-policy.unexpected",
    }


def test_header_and_tls_readings_are_judged() -> None:
    """No headers on HTTPS: HSTS, nosniff, framing, CSP; hardened headers: nothing; plain
    HTTP is its own finding; TLS 1.0, an expiring or expired certificate, an untrusted chain."""
    bare = HeaderProbe(endpoint="https://rsolv-staging.com/", status=200)
    assert rules(header_findings(bare)) == {
        "http.hsts-missing",
        "http.nosniff-missing",
        "http.framing-unprotected",
        "http.csp-missing",
    }
    good = HeaderProbe(endpoint="https://rsolv-staging.com/", status=200, headers=HARDENED)
    assert header_findings(good) == []
    short = {**HARDENED, "Strict-Transport-Security": "max-age=300"}
    assert rules(header_findings(good.model_copy(update={"headers": short}))) == {"http.hsts-weak"}
    plain = HeaderProbe(endpoint="http://rsolv-staging.com/", status=200, headers=HARDENED)
    assert rules(header_findings(plain)) == {"endpoint.not-https"}

    def judged(**fields: Any) -> set[str]:
        probe = TlsProbe(endpoint="https://x/", accepted=["TLS 1.2", "TLS 1.3"], **fields)
        return rules(tls_findings(probe, now=NOW, expiring_days=7, renewal_days=21))

    assert judged(not_after=NOW + dt.timedelta(days=60), trusted=True) == set()
    assert judged(not_after=NOW + dt.timedelta(days=3), trusted=True) == {
        "tls.certificate-expiring"
    }
    assert judged(not_after=NOW + dt.timedelta(days=14), trusted=True) == {
        "tls.certificate-renewal-late"
    }
    assert judged(not_after=NOW - dt.timedelta(days=1), trusted=False) == {
        "tls.certificate-expired"
    }
    assert judged(not_after=NOW + dt.timedelta(days=60), trusted=False) == {"tls.chain-untrusted"}


def test_baseline_marks_known_findings_but_criticals_stay_critical() -> None:
    """Classification: in the baseline -> baseline, announced before -> seen, else new;
    an expired entry no longer applies, an entry matching nothing is listed as resolved;
    the critical finding stays in ``critical`` whatever its status."""
    critical = finding("secret.equals-production", "Secret/staging/staging-payment", "x")
    high = finding("image.not-pinned", "Deployment/staging/web container web", "tag")
    low = finding("http.csp-missing", "https://rsolv-staging.com/", "no CSP")
    today = dt.date(2026, 12, 1)
    baseline = Baseline(
        findings=(
            BaselineEntry(rule=critical.rule, object=critical.object, reason="accepted?"),
            BaselineEntry(
                rule=high.rule, object=high.object, reason="old", expires=dt.date(2026, 11, 1)
            ),
            BaselineEntry(rule="pod.privileged", object="Pod/staging/gone", reason="fixed"),
        )
    )
    report = classify(
        [low, high, critical], baseline, announced=[announced_id(low.key)], today=today
    )
    status = {f.rule: f.status for f in report.findings}
    assert status == {
        "secret.equals-production": "baseline",
        "image.not-pinned": "new",
        "http.csp-missing": "seen",
    }
    assert [f.rule for f in report.critical] == ["secret.equals-production"]
    assert [f.rule for f in report.new] == ["image.not-pinned"]
    assert report.resolved_baseline == ["pod.privileged Pod/staging/gone"]
    assert report.expired_baseline == [high.key]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("findings: [{rule: pod.nope, object: x, reason: why}]", "unknown rule 'pod.nope'"),
        ("findings: [{rule: pod.privileged, object: x}]", "reason"),
        ("findings: [{rule: pod.privileged, object: x, reason: why, severity: low}]", "severity"),
        ("findings: [", "not valid YAML"),
    ],
    ids=["unknown-rule", "no-reason", "severity-field", "not-yaml"],
)
def test_a_bad_baseline_is_refused_with_the_problem_named(text: str, problem: str) -> None:
    """A baseline cannot name a rule that does not exist, leave out why, or set a severity."""
    with pytest.raises(ConfigurationError, match=problem):
        parse_baseline(text, source="baseline.yaml")


def test_the_repositorys_baseline_is_valid() -> None:
    """data/security-baseline.yaml parses, and every entry names a known rule."""
    text = (Path(__file__).parent.parent / "data" / "security-baseline.yaml").read_text()
    baseline = parse_baseline(text, source="data/security-baseline.yaml")
    assert all(e.rule in RULES for e in baseline.findings)


def test_endpoints_default_to_stagings_hosts_and_refuse_production() -> None:
    """No endpoints: staging's three hosts over https; production's domain is refused."""
    assert scan_targets(TOPOLOGY, None) == [
        "https://rsolv-staging.com/",
        "https://api.rsolv-staging.com/",
        "https://grafana.rsolv-staging.com/",
    ]
    with pytest.raises(ConfigurationError, match="production's"):
        scan_targets(TOPOLOGY, ["https://api.rsolv.dev/"])
    with pytest.raises(ConfigurationError, match="not an http"):
        scan_targets(TOPOLOGY, ["ftp://rsolv-staging.com/"])


# ------------------------------------------------------------- real TLS/HTTP servers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        body = b"<html><title>RSOLV</title></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        for name, value in self.server.extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext, extra_headers: dict[str, str]) -> None:
        self.tls, self.extra_headers = tls, extra_headers
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        try:
            request = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a scanner's handshake with a protocol we refuse: expected
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def _serve(tls: ssl.SSLContext, headers: dict[str, str]) -> Iterator[str]:
    server = _Server(tls, headers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def weak_endpoint(test_pki: PKI) -> Iterator[str]:
    """TLS 1.0 and 1.1 accepted (security level 0), a 2-day certificate, no headers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, test_pki.expiring))
    context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1 is
        context.minimum_version = ssl.TLSVersion.TLSv1
    yield from _serve(context, {})


@pytest.fixture(scope="module")
def hardened_endpoint(test_pki: PKI) -> Iterator[str]:
    """TLS 1.2+ only, a 90-day certificate, every security header."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, test_pki.valid))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    yield from _serve(context, HARDENED)


def test_machines_openssl_serves_tls_1_0_for_the_weak_endpoint(weak_endpoint: str) -> None:
    """The premise of the weak server: a TLS 1.0-only client completes a handshake."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1
    port = int(weak_endpoint.rsplit(":", 1)[1].strip("/"))
    import socket

    with socket.create_connection(("127.0.0.1", port)) as raw, client.wrap_socket(raw) as tls:
        assert tls.version() == "TLSv1"


def test_tls_scan_finds_legacy_protocols_and_the_expiring_certificate(
    weak_endpoint: str, hardened_endpoint: str, test_pki: PKI
) -> None:
    """sslyze against both servers at once: the weak one accepts TLS 1.0 and 1.1 and its
    certificate has 2 days left; the hardened one only TLS 1.2/1.3, 90 days, trusted
    through the test CA; a closed port is unreachable, not an exception."""
    closed = f"https://127.0.0.1:{closed_port()}/"
    probes = scan_tls.fn(
        [weak_endpoint, hardened_endpoint, closed], ca_bundle=str(test_pki.ca_file)
    )
    weak, hardened, unreachable = probes
    assert {"TLS 1.0", "TLS 1.1"} <= set(weak.accepted)
    assert not {"SSL 2.0", "SSL 3.0", "TLS 1.0", "TLS 1.1"} & set(hardened.accepted)
    assert weak.not_after == test_pki.expiring_not_after
    assert hardened.trusted is True
    judged = [rules(tls_findings(p, now=NOW, expiring_days=7, renewal_days=21)) for p in probes]
    # (SECLEVEL=0 lets it accept weak TLS 1.2 suites too: tls.weak-cipher, also right)
    assert {"tls.legacy-protocol", "tls.certificate-expiring"} <= judged[0]
    assert judged[1] == set()
    assert judged[2] == {"endpoint.unreachable"}
    assert unreachable.error


def test_tls_scan_without_the_ca_finds_the_chain_untrusted(hardened_endpoint: str) -> None:
    """The test CA is in no public trust store: without the bundle the chain fails."""
    (probe,) = scan_tls.fn([hardened_endpoint])
    assert probe.trusted is False
    assert rules(tls_findings(probe, now=NOW, expiring_days=7, renewal_days=21)) == {
        "tls.chain-untrusted"
    }


def test_security_headers_are_read_from_the_live_servers(
    weak_endpoint: str, hardened_endpoint: str
) -> None:
    """The weak server's answer lacks every header, the hardened one's has them all."""
    weak, hardened = read_security_headers.fn([weak_endpoint, hardened_endpoint])
    assert weak.status == 200
    assert weak.headers == {}
    assert rules(header_findings(weak)) == {
        "http.hsts-missing",
        "http.nosniff-missing",
        "http.framing-unprotected",
        "http.csp-missing",
    }
    assert header_findings(hardened) == []


# ------------------------------------------------------------ the flow, on the emulator


@pytest.fixture
def clean_staging(
    kube: KubeEmulator,
    kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api: None,
    secret_values: dict[str, str],
) -> KubeEmulator:
    """Staging as provision-staging makes it, plus the apps deployed by digest."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("RSOLV_KUBE_RETRY_DELAY_SECONDS", "0.05")
    assert provision_staging().created > 0  # its secrets: the secret_values fixture's
    refs = {app: parse_image(ref) for app, ref in images(DIGEST).items()}
    apply_objects.fn(
        render_overlay.fn("staging", images=refs),
        cluster=TOPOLOGY.staging.cluster,
        settings=Settings(),
    )
    Variable.set(SECURITY_ANNOUNCED_VARIABLE, [], overwrite=True)
    return kube


def test_a_clean_staging_gives_no_findings(
    clean_staging: KubeEmulator, hardened_endpoint: str, test_pki: PKI
) -> None:
    """Provisioned and deployed as the project does it, served like the hardened server:
    not one finding, and the table artifact says so."""
    report = scan_staging_security(endpoints=[hardened_endpoint], ca_bundle=str(test_pki.ca_file))
    assert report.findings == []
    assert clean_staging.list("Pod", "staging")  # pods were there to be judged
    artifact = newest_artifact(ARTIFACT_KEY)
    assert artifact.description == "no findings; 0 new"


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def notifications() -> Iterator[list[dict[str, Any]]]:
    """The ``rsolv-deployments`` block, posting to a receiver on 127.0.0.1."""
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    CustomWebhookNotificationBlock(
        name="rsolv-deployments", url=url, json_data={"text": "{{subject}}: {{body}}"}
    ).save("rsolv-deployments", overwrite=True)
    yield _Hook.received
    CustomWebhookNotificationBlock.delete("rsolv-deployments")
    server.shutdown()
    server.server_close()


def _make_staging_dirty(kubeconfig: Path, secret_values: dict[str, str]) -> None:
    """Through the API, as a careless operator would: weaken Pod Security, run a
    privileged pod, deploy an image by tag, give production's payment key to staging."""
    api = k8s_config.new_client_from_config(str(kubeconfig))
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    psa = "pod-security.kubernetes.io/enforce"
    core.patch_namespace("staging", {"metadata": {"labels": {psa: "privileged"}}})
    debug = {"name": "debug", "image": f"ghcr.io/rsolv-dev/rsolv-api@{DIGEST}"}
    debug["securityContext"] = {"privileged": True}
    core.create_namespaced_pod(
        "staging", {"metadata": {"name": "debug"}, "spec": {"containers": [debug]}}
    )
    restricted = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    labels = {"app": "tagged"}
    apps.create_namespaced_deployment(
        "staging",
        {
            "metadata": {"name": "tagged"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": "ghcr.io/rsolv-dev/rsolv-landing:1.4.2",
                                "securityContext": restricted,
                            }
                        ]
                    },
                },
            },
        },
    )
    shared = secret_values["staging-payment-api-key"]
    core.create_namespace({"metadata": {"name": "production"}})
    core.create_namespaced_secret(
        "production", {"metadata": {"name": "prod-payment"}, "stringData": {"api-key": shared}}
    )


def test_a_dirty_staging_is_found_announced_once_and_fails_while_critical(
    clean_staging: KubeEmulator,
    kubeconfig: Path,
    secret_values: dict[str, str],
    weak_endpoint: str,
    test_pki: PKI,
    notifications: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    """Each problem is found; the run fails on the critical ones; the new findings are
    announced once: the next run (announced before) and a run with all of them in the
    baseline announce nothing, and both still fail."""
    _make_staging_dirty(kubeconfig, secret_values)
    with pytest.raises(SecurityScanFailed) as failed:
        scan_staging_security(endpoints=[weak_endpoint], ca_bundle=str(test_pki.ca_file))
    report = failed.value.report
    found = {(f.rule, f.object) for f in report.findings}  # type: ignore[union-attr]
    assert {
        ("pod.privileged", "Pod/staging/debug container debug"),
        ("namespace.pod-security-weakened", "Namespace/staging"),
        ("image.not-pinned", "Deployment/staging/tagged container web"),
        ("secret.equals-production", "Secret/staging/staging-payment"),
        ("tls.legacy-protocol", weak_endpoint),
        ("tls.certificate-expiring", weak_endpoint),
        ("http.hsts-missing", weak_endpoint),
    } <= found
    assert "pod.privileged" in str(failed.value)
    assert "secret.equals-production" in str(failed.value)
    assert len(notifications) == 1
    assert "staging-payment" in notifications[0]["text"]
    assert secret_values["staging-payment-api-key"] not in notifications[0]["text"]

    with pytest.raises(SecurityScanFailed) as again:
        scan_staging_security(endpoints=[weak_endpoint], ca_bundle=str(test_pki.ca_file))
    assert {f.status for f in again.value.report.findings} == {"seen"}  # type: ignore[union-attr]
    assert len(notifications) == 1

    baseline = tmp_path / "baseline.yaml"
    entries = [{"rule": r, "object": o, "reason": "known, see the test"} for r, o in found]
    baseline.write_text(yaml.safe_dump({"findings": entries}))
    Variable.set(SECURITY_ANNOUNCED_VARIABLE, [], overwrite=True)  # forget: the baseline decides
    with pytest.raises(SecurityScanFailed) as known:
        scan_staging_security(
            endpoints=[weak_endpoint], ca_bundle=str(test_pki.ca_file), baseline_file=str(baseline)
        )
    statuses = {(f.rule, f.object): f.status for f in known.value.report.findings}  # type: ignore[union-attr]
    assert {statuses[key] for key in found} == {"baseline"}
    assert len(notifications) == 1
