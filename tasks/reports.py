"""Tasks that publish what a run did to the Prefect UI (artifacts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE


@task(name="publish-markdown", cache_policy=NO_CACHE, task_run_name="publish-{key}")
def publish_markdown(key: str, markdown: str, *, description: str) -> UUID:
    """Create a markdown artifact; the stable ``key`` makes the UI keep its history."""
    return cast(UUID, create_markdown_artifact(key=key, markdown=markdown, description=description))


@task(name="publish-table", cache_policy=NO_CACHE, task_run_name="publish-{key}")
def publish_table(key: str, rows: list[dict[str, Any]], *, description: str) -> UUID:
    """Create a table artifact; one version per run under the stable ``key``."""
    return cast(UUID, create_table_artifact(key=key, table=rows, description=description))


@task(name="write-report-file", cache_policy=NO_CACHE, task_run_name="write-{path}")
def write_report_file(path: str, text: str) -> str:
    """Write a report (JSON for CI, an SVG chart) to ``path``, creating its folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return str(target.resolve())
