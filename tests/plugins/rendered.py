"""Everything the project ships, as ``scripts/render_all.py`` renders it for checkov.

Loaded from the script itself (``scripts/`` is not a package), so the tests check
exactly what ``scripts/lint`` hands to checkov.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from rsolv_staging.settings import REPO_ROOT

Manifest = dict[str, Any]


def render_all() -> dict[str, list[Manifest]]:
    """The four overlays and provisioning's objects, by source name."""
    spec = importlib.util.spec_from_file_location(
        "render_all", REPO_ROOT / "scripts" / "render_all.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered: dict[str, list[Manifest]] = module.rendered()
    return rendered
