"""The monitoring stack (RFC 002 section 6) checked against the environment model.

Pure functions over rendered manifests: no I/O. The stack itself is a kustomize tree,
``deployments/monitoring`` (one base, one shared set of dashboards, an overlay per
environment). The values the environment model decides (namespace, retention, log level,
SLO thresholds, Grafana's host and admin secret, the namespace Prometheus scrapes, whether
alerts page) are written in the overlays, and this module says whether a rendering agrees
with the model.

Why written in the overlays and checked, rather than generated from the model at render
time: the overlay in git is then exactly what gets applied, reviewable in a pull request
and renderable by anyone with ``kubectl kustomize`` (the production stack is applied that
way, not by this project's flows); the SLO rules and the alerting configuration are files
an on-call engineer reads, not templates; and the apps' tree already works this way. Drift
cannot slip through: ``tests/test_monitoring.py`` compares both overlays with the model,
and the provision flow calls :func:`ensure_matches_model` with the model it actually
loaded (``environments_file`` may differ from the defaults), before its first write.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import yaml

from rsolv_staging.environments import Environment, Topology
from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.provisioning import (
    ENV_LABEL,
    GRAFANA_POD_LABELS,
    PROMETHEUS_POD_LABELS,
    Manifest,
    prometheus_service_account,
)

# Alertmanager integrations that wake a person up. Staging may have none of them.
PAGING_INTEGRATIONS = (
    "pagerduty_configs",
    "opsgenie_configs",
    "victorops_configs",
    "pushover_configs",
)
# A generic webhook pointed at a paging service pages just the same.
PAGING_HOSTS = ("pagerduty.com", "opsgenie.com", "victorops.com", "pushover.net")
SLO_GROUP = "rsolv-slo"
SLO_OBJECTIVE_RECORD = "rsolv:slo_objective:ratio"
# Where Grafana's admin password lives: the model's "monitoring" secret, this key.
GRAFANA_ADMIN_SECRET, GRAFANA_ADMIN_KEY = "monitoring", "grafana-admin-password"

# Service discovery mechanisms other than Kubernetes' can name any host: none allowed.
_SD_SUFFIX = "_sd_configs"
_DECIMAL = re.compile(r"(?<![\d.])0\.\d+")


def objective_ratio(env: Environment) -> str:
    """The SLO as the ratio alert thresholds use: 99.0 -> ``0.99``, 99.9 -> ``0.999``.

    Decimal, not float, so 99.9 / 100 is exactly ``0.999`` and never ``0.9990000000000001``.
    """
    return format((Decimal(str(env.monitoring.slo_percent)) / 100).normalize(), "f")


def tool_log_level(env: Environment) -> str:
    """The model's log level as Prometheus, Alertmanager and Grafana spell it."""
    level = env.monitoring.log_level
    return "warn" if level == "warning" else level


def _find(objects: Sequence[Manifest], kind: str, name: str) -> Manifest | None:
    return next((o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name), None)


def _container(workload: Manifest) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return containers[0]


def mounted_config_map(
    objects: Sequence[Manifest], workload: Manifest, volume: str
) -> Manifest | None:
    """The ConfigMap that ``workload`` mounts as ``volume`` (generated names carry a hash)."""
    for vol in workload["spec"]["template"]["spec"].get("volumes", []):
        if vol["name"] == volume and "configMap" in vol:
            return _find(objects, "ConfigMap", vol["configMap"]["name"])
    return None


def _flag(args: Sequence[str], flag: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(f"{flag}=")]


def _env_vars(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        for value in node.values():
            yield from _walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_strings(item)
    elif isinstance(node, str):
        yield node


def _bare_host(target: str) -> bool:
    """A target in Prometheus' own namespace: ``localhost`` or a Service name without dots."""
    host = target.rsplit(":", 1)[0]
    return host == "localhost" or (bool(host) and "." not in host and "/" not in host)


def _static_target_problems(where: str, sd_holder: Mapping[str, Any]) -> list[str]:
    problems = []
    for key in sd_holder:
        if key.endswith(_SD_SUFFIX) and key != "kubernetes_sd_configs":
            problems.append(f"{where}: {key} can name any host; only Kubernetes SD is allowed")
    for static in sd_holder.get("static_configs", []):
        for target in static.get("targets", []):
            if not _bare_host(str(target)):
                problems.append(
                    f"{where}: static target {target!r} is not in Prometheus' own namespace"
                )
    if "proxy_url" in sd_holder:
        problems.append(f"{where}: proxy_url sends scrapes elsewhere")
    return problems


def scrape_escapes(config: Mapping[str, Any], namespace: str) -> list[str]:
    """Ways a ``prometheus.yml`` could select or send data outside ``namespace``.

    Empty when every Kubernetes SD config is confined to ``names: [namespace]`` of the
    cluster Prometheus runs in, every static target is Prometheus' own namespace, no
    relabelling rewrites a target's address, and no data goes to another Prometheus.
    """
    problems = []
    for key in ("remote_write", "remote_read", "scrape_config_files"):
        if config.get(key):
            problems.append(f"{key} is set: no data may mix with another Prometheus")
    for i, manager in enumerate((config.get("alerting") or {}).get("alertmanagers", [])):
        where = f"alerting.alertmanagers[{i}]"
        problems += _static_target_problems(where, manager)
        if manager.get("kubernetes_sd_configs"):
            problems.append(f"{where}: Alertmanagers are named statically, not discovered")
    for job in config.get("scrape_configs", []):
        where = f"scrape job {job.get('job_name', '?')!r}"
        problems += _static_target_problems(where, job)
        for sd in job.get("kubernetes_sd_configs", []):
            for remote in ("api_server", "kubeconfig_file"):
                if remote in sd:
                    problems.append(f"{where}: {remote} points discovery at another cluster")
            if sd.get("namespaces") != {"names": [namespace]}:
                problems.append(
                    f"{where}: discovery namespaces are {sd.get('namespaces')!r}, "
                    f"not exactly {{'names': [{namespace!r}]}}"
                )
        for relabel in job.get("relabel_configs", []):
            if relabel.get("target_label") == "__address__":
                problems.append(f"{where}: a relabel rule rewrites __address__")
        if str(job.get("metrics_path", "")).startswith("/federate"):
            problems.append(f"{where}: federates another Prometheus")
    return problems


def paging_receivers(config: Mapping[str, Any]) -> list[str]:
    """Alertmanager receivers that page a person, each with why."""
    found = []
    for receiver in config.get("receivers", []):
        name = receiver.get("name", "?")
        found += [f"{name} ({key})" for key in PAGING_INTEGRATIONS if receiver.get(key)]
        found += [
            f"{name} (sends to {host})"
            for value in _walk_strings(receiver)
            for host in PAGING_HOSTS
            if host in value
        ]
    return found


def routed_receivers(route: Mapping[str, Any]) -> set[str]:
    """Every receiver the routing tree can send to."""
    names = {route["receiver"]} if "receiver" in route else set()
    for child in route.get("routes", []):
        names |= routed_receivers(child)
    return names


def slo_rules(rule_files: Mapping[str, str]) -> list[dict[str, Any]]:
    """The rules of the ``rsolv-slo`` group, from a rules ConfigMap's files."""
    rules: list[dict[str, Any]] = []
    for text in rule_files.values():
        for group in (yaml.safe_load(text) or {}).get("groups", []):
            if group.get("name") == SLO_GROUP:
                rules += group.get("rules", [])
    return rules


def _slo_problems(rules: Sequence[Mapping[str, Any]], env: Environment) -> list[str]:
    ratio = objective_ratio(env)
    want = f"model slo_percent {env.monitoring.slo_percent} (ratio {ratio})"
    alerts = [r for r in rules if "alert" in r]
    objective = [r for r in rules if r.get("record") == SLO_OBJECTIVE_RECORD]
    problems = []
    if not alerts:
        problems.append(f"no alert rules in group {SLO_GROUP!r}")
    if [r["expr"] for r in objective] != [f"vector({ratio})"]:
        got = [r["expr"] for r in objective]
        problems.append(f"{SLO_OBJECTIVE_RECORD} is {got}, {want}")
    for rule in alerts:
        literals = set(_DECIMAL.findall(str(rule["expr"])))
        if literals != {ratio}:
            problems.append(f"alert {rule['alert']} thresholds use {sorted(literals)}, {want}")
    return problems


def model_drift(objects: Sequence[Manifest], topology: Topology, env: Environment) -> list[str]:
    """Where a rendered monitoring overlay disagrees with ``env`` in the model; empty if never."""
    level = tool_log_level(env)
    return [
        *_placement_problems(objects, env),
        *_prometheus_problems(objects, env, level),
        *_alertmanager_problems(objects, env, level),
        *_grafana_problems(objects, topology, env, level),
        *_grafana_ingress_problems(objects, env),
    ]


def _placement_problems(objects: Sequence[Manifest], env: Environment) -> list[str]:
    problems: list[str] = []
    mon = env.monitoring
    for obj in objects:
        meta = obj["metadata"]
        if meta.get("namespace") != mon.namespace:
            problems.append(f"{obj['kind']}/{meta['name']} is not in {mon.namespace}")
        if meta.get("labels", {}).get(ENV_LABEL) != env.name:
            problems.append(f"{obj['kind']}/{meta['name']} lacks label {ENV_LABEL}={env.name}")
    return problems


def _prometheus_problems(objects: Sequence[Manifest], env: Environment, level: str) -> list[str]:
    mon = env.monitoring
    prometheus = _find(objects, "StatefulSet", "prometheus")
    if prometheus is None:
        return ["no StatefulSet/prometheus"]
    problems: list[str] = []
    args = _container(prometheus).get("args", [])
    retention = _flag(args, "--storage.tsdb.retention.time")
    if retention != [mon.retention]:
        problems.append(f"Prometheus retention is {retention}, the model says {mon.retention}")
    if _flag(args, "--log.level") != [level]:
        problems.append(f"Prometheus log level is {_flag(args, '--log.level')}, not {level}")
    pod = prometheus["spec"]["template"]
    account = pod["spec"].get("serviceAccountName")
    if account != prometheus_service_account(env):
        problems.append(
            f"Prometheus runs as {account!r}, not {prometheus_service_account(env)!r} "
            "(the scrape-only identity provisioning creates)"
        )
    if not PROMETHEUS_POD_LABELS.items() <= pod["metadata"].get("labels", {}).items():
        problems.append(f"Prometheus pods lack {PROMETHEUS_POD_LABELS} (NetworkPolicies)")
    config_map = mounted_config_map(objects, prometheus, "config")
    if config_map is None:
        problems.append("Prometheus mounts no config ConfigMap")
    else:
        config = yaml.safe_load(config_map["data"]["prometheus.yml"])
        external = (config.get("global") or {}).get("external_labels", {})
        if external.get("environment") != env.name:
            problems.append(f"prometheus.yml external label environment is not {env.name}")
        problems += scrape_escapes(config, env.namespace)
    rules = mounted_config_map(objects, prometheus, "rules")
    if rules is None:
        problems.append("Prometheus mounts no rules ConfigMap")
    else:
        problems += _slo_problems(slo_rules(rules["data"]), env)
    return problems


def _alertmanager_problems(objects: Sequence[Manifest], env: Environment, level: str) -> list[str]:
    mon = env.monitoring
    alertmanager = _find(objects, "Deployment", "alertmanager")
    if alertmanager is None:
        return ["no Deployment/alertmanager"]
    problems: list[str] = []
    got = _flag(_container(alertmanager).get("args", []), "--log.level")
    if got != [level]:
        problems.append(f"Alertmanager log level is {got}, not {level}")
    config_map = mounted_config_map(objects, alertmanager, "config")
    if config_map is None:
        problems.append("Alertmanager mounts no config ConfigMap")
        return problems
    config = yaml.safe_load(config_map["data"]["alertmanager.yml"])
    paging = paging_receivers(config)
    if not mon.paging and paging:
        problems.append(f"{env.name} never pages, but receivers page: {paging}")
    if mon.paging and not paging:
        problems.append(f"{env.name} pages, but no receiver does")
    missing = routed_receivers(config.get("route", {})) - {
        r.get("name") for r in config.get("receivers", [])
    }
    if missing:
        problems.append(f"routes name undefined receivers {sorted(missing)}")
    return problems


def _grafana_problems(
    objects: Sequence[Manifest], topology: Topology, env: Environment, level: str
) -> list[str]:
    grafana = _find(objects, "Deployment", "grafana")
    spec = next(s for s in topology.secrets if s.name == GRAFANA_ADMIN_SECRET)
    admin = {"secretKeyRef": {"name": env.secret_name(spec), "key": GRAFANA_ADMIN_KEY}}
    if grafana is None:
        return ["no Deployment/grafana"]
    problems: list[str] = []
    pod = grafana["spec"]["template"]
    if not GRAFANA_POD_LABELS.items() <= pod["metadata"].get("labels", {}).items():
        problems.append(f"Grafana pods lack {GRAFANA_POD_LABELS} (NetworkPolicies)")
    variables = _env_vars(_container(grafana))
    for name, want in (
        ("GF_SERVER_DOMAIN", env.grafana_domain),
        ("GF_SERVER_ROOT_URL", f"https://{env.grafana_domain}/"),
        ("GF_LOG_LEVEL", level),
        ("GF_SECURITY_ADMIN_PASSWORD", admin),
    ):
        if variables.get(name) != want:
            problems.append(f"Grafana {name} is {variables.get(name)!r}, not {want!r}")
    return problems


def _grafana_ingress_problems(objects: Sequence[Manifest], env: Environment) -> list[str]:
    ingress = _find(objects, "Ingress", "grafana")
    if ingress is None:
        return ["no Ingress/grafana"]
    problems: list[str] = []
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
    tls = ingress["spec"].get("tls", [])
    if hosts != [env.grafana_domain] or [t["hosts"] for t in tls] != [[env.grafana_domain]]:
        problems.append(f"Grafana's Ingress routes {hosts} (TLS {tls}), not {env.grafana_domain}")
    if not all(t.get("secretName", "").startswith(env.secret_prefix) for t in tls):
        problems.append(f"Grafana's TLS secret does not start with {env.secret_prefix!r}")
    issuer = ingress["metadata"].get("annotations", {}).get("cert-manager.io/cluster-issuer")
    if issuer != env.cluster.cluster_issuer:
        problems.append(f"Grafana's certificate issuer is {issuer!r}")
    if ingress["spec"].get("ingressClassName") != env.cluster.ingress_class:
        problems.append(f"Grafana's IngressClass is not {env.cluster.ingress_class}")
    return problems


def ensure_matches_model(
    objects: Sequence[Manifest], topology: Topology, env: Environment, *, source: str
) -> None:
    """Refuse a monitoring rendering that disagrees with the model.

    Raises:
        ConfigurationError: naming ``source`` (the overlay) and every disagreement.
    """
    problems = model_drift(objects, topology, env)
    if problems:
        raise ConfigurationError(
            f"{source} disagrees with the environment model for {env.name}; make them agree "
            "(edit the overlay or the model) before provisioning: " + "; ".join(problems)
        )


__all__ = [
    "PAGING_HOSTS",
    "PAGING_INTEGRATIONS",
    "ensure_matches_model",
    "model_drift",
    "mounted_config_map",
    "objective_ratio",
    "paging_receivers",
    "routed_receivers",
    "scrape_escapes",
    "slo_rules",
    "tool_log_level",
]
