"""The environment model: staging derived from production, invalid values refused by field."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsolv_staging.environments import default_topology, topology_from_mapping
from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.quantities import format_cpu, format_memory, parse_cpu, parse_memory
from rsolv_staging.settings import load_topology


def test_staging_is_half_of_production_as_the_rfc_says() -> None:
    """RFC 002's table: 2->1 replicas, 1Gi->512Mi, 500m->250m, derived, not typed twice."""
    topology = load_topology()
    prod, stag = topology.production.app_resources, topology.staging.app_resources
    assert (prod.replicas, prod.memory, prod.cpu) == (2, "1Gi", "500m")
    assert (stag.replicas, stag.memory, stag.cpu) == (1, "512Mi", "250m")


def test_changing_production_changes_staging() -> None:
    """Staging follows production: doubling production doubles staging's derived size."""
    topology = topology_from_mapping(
        {"production": {"app_resources": {"replicas": 4, "cpu": "1", "memory": "2Gi"}}}
    )
    assert topology.staging.app_resources.model_dump() == {
        "replicas": 2,
        "cpu": "500m",
        "memory": "1Gi",
    }
    assert topology.staging.quota.pods == topology.production.quota.pods // 2


def test_rfc_environment_facts() -> None:
    """Domains, namespaces, retention, SLO and paging are the RFC's for each environment."""
    topology = default_topology()
    prod, stag = topology.production, topology.staging
    assert stag.hosts == ("rsolv-staging.com", "api.rsolv-staging.com", "grafana.rsolv-staging.com")
    assert prod.hosts == ("rsolv.dev", "api.rsolv.dev", "grafana.rsolv.dev")
    assert stag.namespaces == ("staging", "staging-monitoring")
    assert (prod.monitoring.retention, stag.monitoring.retention) == ("7d", "3d")
    assert (prod.monitoring.slo_percent, stag.monitoring.slo_percent) == (99.9, 99.0)
    assert (prod.monitoring.paging, stag.monitoring.paging) == (True, False)
    assert stag.database.host != prod.database.host


def test_staging_can_move_to_its_own_cluster_by_configuration() -> None:
    """The RFC's migration path: a kube context in the model, nothing else changes."""
    topology = topology_from_mapping({"staging": {"cluster": {"kube_context": "rsolv-staging"}}})
    assert topology.staging.cluster.kube_context == "rsolv-staging"
    assert topology.production.cluster.kube_context is None
    assert topology.staging.app_resources == default_topology().staging.app_resources


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"production": {"app_resources": {"cpu": "5OOm"}}}, "production.app_resources.cpu"),
        ({"production": {"app_resources": {"memory": "1 GB"}}}, "production.app_resources.memory"),
        ({"staging": {"namespace": "Staging_Env"}}, "staging.namespace"),
        ({"staging": {"namespace": "x" * 64}}, "staging.namespace"),
        ({"staging": {"monitoring": {"namespace": "-mon"}}}, "staging.monitoring.namespace"),
        (
            {"staging": {"app_resources": {"replicas": 2, "cpu": "500m", "memory": "1Gi"}}},
            "staging.app_resources.cpu",
        ),
        (
            {"staging": {"app_resources": {"replicas": 1, "cpu": "250m", "memory": "2Gi"}}},
            "staging.app_resources.memory",
        ),
        ({"staging": {"domain": "rsolv.dev"}}, "staging.domain"),
        ({"staging": {"namespace": "production"}}, "staging.namespace"),
        ({"staging": {"monitoring": {"paging": True}}}, "staging.monitoring.paging"),
        ({"staging": {"monitoring": {"retention": "3 days"}}}, "staging.monitoring.retention"),
        ({"production": {"app_resources": {"replicas": 0}}}, "production.app_resources.replicas"),
        # The hardening's fields (issue 19): pinned images, real networks, labels and ports.
        ({"production": {"database": {"image": "postgres:15"}}}, "production.database.image"),
        ({"staging": {"database": {"image": "postgres:15"}}}, "staging.database.image"),
        ({"production": {"database": {"run_as_user": 0}}}, "production.database.run_as_user"),
        (
            {"production": {"cluster": {"api_server_cidrs": ["192.168.1.300/32"]}}},
            "production.cluster.api_server_cidrs",
        ),
        (
            {"production": {"cluster": {"private_cidrs": ["not-a-network"]}}},
            "production.cluster.private_cidrs",
        ),
        ({"production": {"cluster": {"dns_pod_labels": {}}}}, "production.cluster.dns_pod_labels"),
        (
            {"production": {"cluster": {"ingress_pod_labels": {"app": "bad value!"}}}},
            "production.cluster.ingress_pod_labels",
        ),
        (
            {"production": {"cluster": {"pod_security_version": "1.33"}}},
            "production.cluster.pod_security_version",
        ),
        ({"staging": {"internet_egress_ports": []}}, "staging.internet_egress_ports"),
        ({"staging": {"internet_egress_ports": [70000]}}, "staging.internet_egress_ports"),
        ({"staging": {"pod_security": "privileged"}}, "staging.pod_security"),
        ({"staging": {"app_port": 0}}, "staging.app_port"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(
    override: dict[str, object], field: str
) -> None:
    """A malformed quantity, a bad namespace or staging >= production names its field."""
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        topology_from_mapping(override)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "millicores"), [("250m", 250), ("0.5", 500), ("2", 2000), ("1.5", 1500)]
)
def test_cpu_quantities(text: str, millicores: int) -> None:
    """CPU quantities parse to exact millicores."""
    assert parse_cpu(text) == millicores


@pytest.mark.parametrize(
    ("text", "size"),
    [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("1G", 10**9), ("128974848", 128974848)],
)
def test_memory_quantities(text: str, size: int) -> None:
    """Memory quantities parse to exact bytes, binary and decimal suffixes alike."""
    assert parse_memory(text) == size


def test_formatting_round_trips_halving() -> None:
    """Halving 1Gi and 500m formats as 512Mi and 250m, as a person would write them."""
    assert format_memory(parse_memory("1Gi") // 2) == "512Mi"
    assert format_cpu(parse_cpu("500m") // 2) == "250m"
    assert format_cpu(parse_cpu("4") // 2) == "2"


def test_environments_file_errors_name_the_file(tmp_path: Path) -> None:
    """A missing or non-YAML model file is a configuration error naming the file."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigurationError, match=r"nope\.yaml"):
        load_topology(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("production: [unclosed")
    with pytest.raises(ConfigurationError, match=r"broken\.yaml"):
        load_topology(broken)
