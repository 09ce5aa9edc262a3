"""Root pytest configuration: opt-in tiers and the shared fixtures' plugins.

The fixtures live in ``tests/plugins/`` (one module per real service the tests start:
the Kubernetes API emulator, PostgreSQL servers, the Prefect test harness) so that each
stays small and is owned by the code that needs it.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.plugins.http",
    "tests.plugins.kube",
    "tests.plugins.postgres",
    "tests.plugins.prefect",
    "tests.plugins.s3",
    "tests.plugins.staging",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--with-cluster",
        action="store_true",
        default=False,
        help="run the end-to-end tests against the real cluster named by KUBECONFIG",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--with-cluster"):
        return
    opt_in = pytest.mark.skip(reason="needs a real cluster: opt in with --with-cluster")
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(opt_in)
