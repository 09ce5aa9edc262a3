"""The monitoring stack (RFC 002 section 6): rendered manifests, NetworkPolicies, provisioning.

Most tests read what ``deployments/monitoring/overlays/<env>`` renders with the project's
kubectl (validated against the Kubernetes schema) and compare it with the environment
model; the last ones run the provision flow against the Kubernetes API emulator.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.provision import provision_staging
from kube_emulator import KubeEmulator
from rsolv_staging.environments import Environment, default_topology, topology_from_mapping
from rsolv_staging.exceptions import ConfigurationError, GuardError
from rsolv_staging.guards import ensure_confined
from rsolv_staging.monitoring import (
    PAGING_INTEGRATIONS,
    model_drift,
    objective_ratio,
    scrape_escapes,
    tool_log_level,
)
from rsolv_staging.provisioning import (
    network_policies,
    object_key,
    secrets,
    service_accounts,
)
from tasks.manifests import DEPLOYMENTS, render

TOPOLOGY = default_topology()
STAGING, PRODUCTION = TOPOLOGY.staging, TOPOLOGY.production
MONITORING = DEPLOYMENTS / "monitoring"
ENVS = pytest.mark.parametrize("env", [STAGING, PRODUCTION], ids=lambda e: e.name)
Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    """Each environment's monitoring overlay, rendered once for the module."""
    return {env.name: render(MONITORING / "overlays" / env.name) for env in (STAGING, PRODUCTION)}


def _one(objects: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _container(workload: Manifest) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return containers[0]


def _mounted(objects: list[Manifest], workload: Manifest, volume: str) -> Manifest:
    """The ConfigMap a workload really mounts as ``volume`` (names carry kustomize's hash)."""
    (name,) = [
        v["configMap"]["name"]
        for v in workload["spec"]["template"]["spec"]["volumes"]
        if v["name"] == volume
    ]
    return _one(objects, "ConfigMap", name)


def _prometheus_config(objects: list[Manifest]) -> dict[str, Any]:
    prometheus = _one(objects, "StatefulSet", "prometheus")
    config: dict[str, Any] = yaml.safe_load(
        _mounted(objects, prometheus, "config")["data"]["prometheus.yml"]
    )
    return config


def _alertmanager_config(objects: list[Manifest]) -> dict[str, Any]:
    alertmanager = _one(objects, "Deployment", "alertmanager")
    config: dict[str, Any] = yaml.safe_load(
        _mounted(objects, alertmanager, "config")["data"]["alertmanager.yml"]
    )
    return config


def _rule_groups(objects: list[Manifest]) -> dict[str, list[dict[str, Any]]]:
    rules = _mounted(objects, _one(objects, "StatefulSet", "prometheus"), "rules")
    return {
        group["name"]: group["rules"]
        for text in rules["data"].values()
        for group in yaml.safe_load(text)["groups"]
    }


def _with_file(objects: list[Manifest], workload: Manifest, key: str, text: str) -> list[Manifest]:
    """A copy of ``objects`` whose ConfigMap file ``key`` (mounted by ``workload``) is ``text``."""
    out = copy.deepcopy(objects)
    target = _mounted(out, _one(out, workload["kind"], workload["metadata"]["name"]), "config")
    target["data"][key] = text
    return out


# --- model values in the rendered overlays -------------------------------------------------


@ENVS
def test_retention_flag_is_the_models(
    env: Environment, rendered: dict[str, list[Manifest]]
) -> None:
    """Prometheus keeps what the model says: 3 days in staging, 7 in production."""
    args = _container(_one(rendered[env.name], "StatefulSet", "prometheus"))["args"]
    retention = [a for a in args if a.startswith("--storage.tsdb.retention.time=")]
    assert retention == [f"--storage.tsdb.retention.time={env.monitoring.retention}"]
    assert env.monitoring.retention == {"staging": "3d", "production": "7d"}[env.name]


@ENVS
def test_log_level_is_the_models(env: Environment, rendered: dict[str, list[Manifest]]) -> None:
    """Prometheus, Alertmanager and Grafana log at the model's level; staging's is debug."""
    objects = rendered[env.name]
    level = tool_log_level(env)
    for kind, name in (("StatefulSet", "prometheus"), ("Deployment", "alertmanager")):
        args = _container(_one(objects, kind, name))["args"]
        assert [a for a in args if a.startswith("--log.level=")] == [f"--log.level={level}"]
    grafana_env = {
        e["name"]: e.get("value") for e in _container(_one(objects, "Deployment", "grafana"))["env"]
    }
    assert grafana_env["GF_LOG_LEVEL"] == level
    assert env.monitoring.log_level == {"staging": "debug", "production": "info"}[env.name]


@ENVS
def test_slo_thresholds_derive_from_the_model(
    env: Environment, rendered: dict[str, list[Manifest]]
) -> None:
    """Every SLO alert compares with the model's objective: 0.99 in staging, 0.999 in production."""
    ratio = objective_ratio(env)
    assert ratio == {"staging": "0.99", "production": "0.999"}[env.name]
    rules = {
        r.get("alert", r.get("record")): r for r in _rule_groups(rendered[env.name])["rsolv-slo"]
    }
    assert rules["rsolv:slo_objective:ratio"]["expr"] == f"vector({ratio})"
    assert rules["RsolvAvailabilityBelowObjective"]["expr"].endswith(f" < {ratio}")
    for burn in ("RsolvErrorBudgetFastBurn", "RsolvErrorBudgetSlowBurn"):
        assert rules[burn]["expr"].count(f"(1 - {ratio})") == 2
    numbers = {n for r in rules.values() for n in re.findall(r"(?<![\d.])0\.\d+", r["expr"])}
    assert numbers == {ratio}


def test_staging_slo_is_relaxed_and_the_rules_differ_only_in_it(
    rendered: dict[str, list[Manifest]],
) -> None:
    """Staging's SLO rules are production's with 0.99 for 0.999, and every shared rule is equal."""
    assert float(objective_ratio(STAGING)) < float(objective_ratio(PRODUCTION))
    groups = {
        env.name: json.dumps(_rule_groups(rendered[env.name])).replace(
            objective_ratio(env), "<objective>"
        )
        for env in (STAGING, PRODUCTION)
    }
    assert "<objective>" in groups["staging"]
    assert groups["staging"] == groups["production"]


@ENVS
def test_grafana_host_tls_and_admin_secret_are_the_environments(
    env: Environment, rendered: dict[str, list[Manifest]]
) -> None:
    """Grafana is on grafana.<domain> with cert-manager TLS; its password: <prefix>monitoring."""
    objects = rendered[env.name]
    ingress = _one(objects, "Ingress", "grafana")
    assert [r["host"] for r in ingress["spec"]["rules"]] == [env.grafana_domain]
    assert ingress["spec"]["tls"] == [
        {"hosts": [env.grafana_domain], "secretName": f"{env.secret_prefix}grafana-tls"}
    ]
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == (
        env.cluster.cluster_issuer
    )
    assert ingress["spec"]["ingressClassName"] == env.cluster.ingress_class
    container = _container(_one(objects, "Deployment", "grafana"))
    variables = {e["name"]: e for e in container["env"]}
    assert variables["GF_SECURITY_ADMIN_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": f"{env.secret_prefix}monitoring", "key": "grafana-admin-password"}
    }
    assert variables["GF_SERVER_ROOT_URL"]["value"] == f"https://{env.grafana_domain}/"
    assert (
        env.grafana_domain
        == {"staging": "grafana.rsolv-staging.com", "production": "grafana.rsolv.dev"}[env.name]
    )


def test_grafana_reads_the_secret_provisioning_creates() -> None:
    """Grafana's password comes from the Secret provisioning puts in staging-monitoring."""
    values = {STAGING.secret_name(s): {k: "x" for k in s.data_keys} for s in TOPOLOGY.secrets}
    (secret,) = [
        s for s in secrets(TOPOLOGY, values) if s["metadata"]["name"] == "staging-monitoring"
    ]
    assert secret["metadata"]["namespace"] == STAGING.monitoring.namespace
    assert "grafana-admin-password" in secret["data"]


@ENVS
def test_every_object_is_the_environments_and_labelled(
    env: Environment, rendered: dict[str, list[Manifest]]
) -> None:
    """Every object is in the monitoring namespace, with the project's labels, not the apps'."""
    for obj in rendered[env.name]:
        assert obj["metadata"]["namespace"] == env.monitoring.namespace, object_key(obj)
        labels = obj["metadata"]["labels"]
        assert labels["rsolv.dev/environment"] == env.name
        assert labels["app.kubernetes.io/managed-by"] == "rsolv-staging"
        assert (
            labels["app.kubernetes.io/part-of"] == "rsolv-monitoring"
        )  # not "rsolv": never pruned


def test_both_environments_run_the_same_pinned_images(rendered: dict[str, list[Manifest]]) -> None:
    """Prometheus, Alertmanager and Grafana images are identical in both, pinned by digest."""

    def images(objects: list[Manifest]) -> dict[str, str]:
        return {
            o["metadata"]["name"]: _container(o)["image"]
            for o in objects
            if o["kind"] in ("Deployment", "StatefulSet")
        }

    staging = images(rendered["staging"])
    assert staging == images(rendered["production"])
    assert set(staging) == {"prometheus", "alertmanager", "grafana"}
    for image in staging.values():
        assert re.fullmatch(r"[a-z/]+:v?\d+\.\d+\.\d+@sha256:[0-9a-f]{64}", image), image


def test_both_overlays_agree_with_the_model_and_not_with_each_other(
    rendered: dict[str, list[Manifest]],
) -> None:
    """The provision flow's drift check passes each overlay, and flags the other environment's."""
    assert model_drift(rendered["staging"], TOPOLOGY, STAGING) == []
    assert model_drift(rendered["production"], TOPOLOGY, PRODUCTION) == []
    swapped = " ".join(model_drift(rendered["production"], TOPOLOGY, STAGING))
    for fragment in ("retention", "log level", "thresholds", "never pages", "GF_SERVER_DOMAIN"):
        assert fragment in swapped


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"retention": "2d"}, "retention is ['3d'], the model says 2d"),
        ({"slo_percent": 99.5}, "ratio 0.995"),
        ({"log_level": "info"}, "log level is ['debug'], not info"),
    ],
    ids=["retention", "slo", "log-level"],
)
def test_model_change_alone_is_reported_as_drift(
    override: dict[str, Any], fragment: str, rendered: dict[str, list[Manifest]]
) -> None:
    """Changing a monitoring value in the model without the overlay is caught, naming the value."""
    changed = topology_from_mapping({"staging": {"monitoring": override}})
    problems = model_drift(rendered["staging"], changed, changed.staging)
    assert any(fragment in p for p in problems), problems


# --- alerting: staging never pages ----------------------------------------------------------


def test_staging_alerting_has_no_paging_receiver(rendered: dict[str, list[Manifest]]) -> None:
    """No PagerDuty/Opsgenie/VictorOps/Pushover integration, nor a webhook to one, in staging."""
    config = _alertmanager_config(rendered["staging"])
    integrations = {key for r in config["receivers"] for key in r if key.endswith("_configs")}
    assert integrations.isdisjoint(PAGING_INTEGRATIONS)
    assert integrations.isdisjoint({"pagerduty_configs", "opsgenie_configs"})
    text = json.dumps(config).lower()
    for service in ("pagerduty", "opsgenie", "victorops", "pushover"):
        assert service not in text
    defined = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in defined
    assert all(route["receiver"] in defined for route in config["route"].get("routes", []))
    assert STAGING.monitoring.paging is False


def test_production_keeps_its_pagerduty_receiver(rendered: dict[str, list[Manifest]]) -> None:
    """Critical production alerts still reach PagerDuty, with the key read from prod-alerting."""
    objects = rendered["production"]
    config = _alertmanager_config(objects)
    receivers = {r["name"]: r for r in config["receivers"]}
    (pagerduty,) = receivers["production-pagerduty"]["pagerduty_configs"]
    critical = [
        r for r in config["route"]["routes"] if r.get("matchers") == ['severity="critical"']
    ]
    assert [r["receiver"] for r in critical] == ["production-pagerduty"]
    container = _container(_one(objects, "Deployment", "alertmanager"))
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "receivers"]
    assert pagerduty["routing_key_file"].startswith(mount["mountPath"] + "/")
    volumes = _one(objects, "Deployment", "alertmanager")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "receivers", "secret": {"secretName": "prod-alerting"}} in volumes
    assert PRODUCTION.monitoring.paging is True


@pytest.mark.parametrize(
    "receiver",
    [
        {"name": "oops", "pagerduty_configs": [{"routing_key": "k"}]},
        {"name": "oops", "opsgenie_configs": [{"api_key": "k"}]},
        {"name": "oops", "webhook_configs": [{"url": "https://events.pagerduty.com/v2/enqueue"}]},
    ],
    ids=["pagerduty", "opsgenie", "webhook-to-pagerduty"],
)
def test_a_paging_receiver_in_staging_is_refused(
    receiver: dict[str, Any], rendered: dict[str, list[Manifest]]
) -> None:
    """Adding any paging receiver to staging's alerting config fails the drift check."""
    objects = rendered["staging"]
    config = _alertmanager_config(objects)
    config["receivers"].append(receiver)
    mutated = _with_file(
        objects,
        _one(objects, "Deployment", "alertmanager"),
        "alertmanager.yml",
        yaml.safe_dump(config),
    )
    assert any("never pages" in p for p in model_drift(mutated, TOPOLOGY, STAGING))


# --- dashboards: one set, the same bytes ----------------------------------------------------


def test_staging_and_production_load_byte_identical_dashboards(
    rendered: dict[str, list[Manifest]],
) -> None:
    """Both Grafanas mount the same dashboards ConfigMap content: the files, byte for byte."""
    files = {
        p.name: p.read_bytes().decode() for p in sorted((MONITORING / "dashboards").glob("*.json"))
    }
    assert files
    loaded = {}
    for env in (STAGING, PRODUCTION):
        objects = rendered[env.name]
        grafana = _one(objects, "Deployment", "grafana")
        loaded[env.name] = _mounted(objects, grafana, "dashboards")
        (mount,) = [m for m in _container(grafana)["volumeMounts"] if m["name"] == "dashboards"]
        provisioning = _mounted(objects, grafana, "provisioning")
        (provider,) = yaml.safe_load(provisioning["data"]["dashboards.yaml"])["providers"]
        assert provider["options"]["path"] == mount["mountPath"]
    assert loaded["staging"]["data"] == loaded["production"]["data"] == files
    assert loaded["staging"]["metadata"]["name"] == loaded["production"]["metadata"]["name"]
    uids = [json.loads(text)["uid"] for text in files.values()]
    assert len(set(uids)) == len(uids)


# --- scraping: staging only ------------------------------------------------------------------


def test_staging_scrape_config_cannot_select_production(
    rendered: dict[str, list[Manifest]],
) -> None:
    """Only Kubernetes SD confined to [staging], own-namespace targets, no address rewrite."""
    config = _prometheus_config(rendered["staging"])
    sd_configs = [
        sd for job in config["scrape_configs"] for sd in job.get("kubernetes_sd_configs", [])
    ]
    assert sd_configs
    for sd in sd_configs:
        assert sd["namespaces"] == {"names": [STAGING.namespace]}
        assert "api_server" not in sd
        assert "kubeconfig_file" not in sd
    for job in config["scrape_configs"]:
        assert {k for k in job if k.endswith("_sd_configs")} <= {"kubernetes_sd_configs"}
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                assert "." not in target.split(":")[0], target  # this namespace's own Services
        for relabel in job.get("relabel_configs", []):
            assert relabel.get("target_label") != "__address__"
            assert PRODUCTION.namespace not in json.dumps(relabel)
    assert not config.get("remote_write")
    assert not config.get("remote_read")
    assert scrape_escapes(config, STAGING.namespace) == []
    assert PRODUCTION.namespace not in json.dumps(config)


def test_staging_prometheus_may_only_discover_pods_in_staging(
    rendered: dict[str, list[Manifest]],
) -> None:
    """Its service account is bound to one Role, in staging, and to no ClusterRole."""
    prometheus = _one(rendered["staging"], "StatefulSet", "prometheus")
    account = prometheus["spec"]["template"]["spec"]["serviceAccountName"]
    assert account == "staging-prometheus"
    bindings = [
        o
        for o in service_accounts(STAGING)
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(s["name"] == account for s in o["subjects"])
    ]
    assert [(b["kind"], b["metadata"]["namespace"]) for b in bindings] == [
        ("RoleBinding", STAGING.namespace)
    ]


def _job(config: dict[str, Any], name: str) -> dict[str, Any]:
    jobs: list[dict[str, Any]] = [j for j in config["scrape_configs"] if j["job_name"] == name]
    (job,) = jobs
    return job


def _sd(config: dict[str, Any]) -> dict[str, Any]:
    sd: dict[str, Any] = _job(config, "rsolv")["kubernetes_sd_configs"][0]
    return sd


PRODUCTION_API = "rsolv-api.production.svc:80"
# Each way out of the staging namespace, and the words the check must report it with.
ESCAPES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "extra-namespace": (
        lambda c: _sd(c)["namespaces"]["names"].append("production"),
        "discovery namespaces",
    ),
    "own-namespace": (
        lambda c: _sd(c).update(namespaces={"own_namespace": True}),
        "discovery namespaces",
    ),
    "all-namespaces": (lambda c: _sd(c).pop("namespaces"), "discovery namespaces"),
    "api-server": (lambda c: _sd(c).update(api_server="https://prod:6443"), "api_server"),
    "static-target": (
        lambda c: _job(c, "prometheus")["static_configs"][0]["targets"].append(PRODUCTION_API),
        "static target",
    ),
    "relabel-address": (
        lambda c: _job(c, "rsolv")["relabel_configs"].append(
            {"target_label": "__address__", "replacement": PRODUCTION_API}
        ),
        "__address__",
    ),
    "dns-sd": (
        lambda c: c["scrape_configs"].append({"job_name": "x", "dns_sd_configs": [{}]}),
        "dns_sd_configs",
    ),
    "remote-write": (
        lambda c: c.update(
            remote_write=[{"url": "http://prometheus.monitoring:9090/api/v1/write"}]
        ),
        "remote_write",
    ),
}


@pytest.mark.parametrize(("mutate", "fragment"), ESCAPES.values(), ids=ESCAPES.keys())
def test_scrape_check_catches_every_way_out(
    mutate: Callable[[dict[str, Any]], object],
    fragment: str,
    rendered: dict[str, list[Manifest]],
) -> None:
    """Each way a scrape config could reach production, or mix data with it, is reported."""
    config = _prometheus_config(rendered["staging"])
    assert scrape_escapes(config, STAGING.namespace) == []
    mutate(config)
    problems = scrape_escapes(config, STAGING.namespace)
    assert any(fragment in p for p in problems), problems


# --- NetworkPolicies ------------------------------------------------------------------------


# The evaluator (both ends' policies, as Kubernetes decides) and its table of cases moved
# to tests/test_network_policies.py, over the production overlays' policies too.


def test_network_policies_never_name_a_production_namespace() -> None:
    """No peer of any staging policy selects production's or its monitoring's namespace."""
    names = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for policy in network_policies(TOPOLOGY)
        for way, key in (("ingress", "from"), ("egress", "to"))
        for rule in policy["spec"].get(way, [])
        for peer in rule.get(key, [])
        if "namespaceSelector" in peer
    }
    assert names == {STAGING.namespace, STAGING.monitoring.namespace, "kube-system"}


def test_guard_accepts_staging_stack_and_refuses_production_stack(
    rendered: dict[str, list[Manifest]],
) -> None:
    """The pre-write guard lets staging's stack through and stops production's, naming why."""
    ensure_confined(rendered["staging"], STAGING, PRODUCTION)
    with pytest.raises(GuardError) as err:
        ensure_confined(rendered["production"], STAGING, PRODUCTION)
    assert "references production secret 'prod-monitoring'" in str(err.value)
    assert "routes production domain 'grafana.rsolv.dev'" in str(err.value)


# --- the provision flow, against the emulator -----------------------------------------------


@pytest.fixture
def cluster(
    kube: KubeEmulator, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> KubeEmulator:
    """The emulator as the current kube context, with fast retries for the tests."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("RSOLV_KUBE_RETRY_DELAY_SECONDS", "0.05")
    return kube


def test_provision_applies_the_stack_and_a_second_run_changes_nothing(
    cluster: KubeEmulator, secret_values: dict[str, str], rendered: dict[str, list[Manifest]]
) -> None:
    """The flow creates and reports every monitoring object; run again, it changes none."""
    keys = {object_key(o) for o in rendered["staging"]}
    first = provision_staging()
    assert {c.key for c in first.changes if c.action == "create"} >= keys
    prometheus = cluster.get("apps/v1", "StatefulSet", "prometheus", "staging-monitoring")
    assert prometheus is not None
    assert "--storage.tsdb.retention.time=3d" in _container(prometheus)["args"]
    grafana = cluster.get("apps/v1", "Deployment", "grafana", "staging-monitoring")
    assert grafana is not None

    def versions() -> dict[str, str]:
        return {
            object_key(o): o["metadata"]["resourceVersion"]
            for kind in ("ConfigMap", "Service", "Deployment", "StatefulSet", "Ingress")
            for o in cluster.list(kind, "staging-monitoring")
        }

    before = versions()
    assert set(before) == keys
    second = provision_staging()
    assert (second.created, second.changed) == (0, 0)
    assert {c.key for c in second.changes if c.action == "unchanged"} >= keys
    assert versions() == before


def test_overlay_disagreeing_with_the_model_stops_provisioning_before_any_write(
    cluster: KubeEmulator, secret_values: dict[str, str], tmp_path: Path
) -> None:
    """A model whose staging retention differs from the overlay's fails, writing nothing."""
    model = tmp_path / "environments.yaml"
    model.write_text("staging:\n  monitoring: {retention: 2d}\n")
    with pytest.raises(ConfigurationError, match=r"overlays/staging disagrees.*says 2d"):
        provision_staging(environments_file=str(model))
    assert cluster.writes() == []
