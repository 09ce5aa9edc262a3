"""Render everything this project ships into one directory, one YAML file per source.

What a new user would apply: the four kustomize overlays (the apps' with placeholder image
digests, as a deploy pins them) and the objects provisioning builds (with placeholder
secret values). scripts/lint runs checkov over the result.

Usage: ``.venv/bin/python scripts/render_all.py <output directory>``
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from rsolv_staging.environments import default_topology
from rsolv_staging.images import ImageRef
from rsolv_staging.provisioning import Manifest, staging_objects
from tasks.manifests import BASE_IMAGES, DEPLOYMENTS, render

# A digest of the right shape: the apps' real digests come from CI at deploy time.
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64


def rendered() -> dict[str, list[Manifest]]:
    """File name -> the objects it holds."""
    topology = default_topology()
    images = {app: ImageRef(name, PLACEHOLDER_DIGEST) for app, name in BASE_IMAGES.items()}
    out = {
        f"apps-{env}": render(DEPLOYMENTS / "overlays" / env, images=images)
        for env in ("staging", "production")
    }
    out |= {
        f"monitoring-{env}": render(DEPLOYMENTS / "monitoring" / "overlays" / env)
        for env in ("staging", "production")
    }
    placeholders = {
        topology.staging.secret_name(spec): {key: "placeholder" for key in spec.data_keys}
        for spec in topology.secrets
    }
    out["provisioning-staging"] = staging_objects(topology, placeholders)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[0])
    target.mkdir(parents=True, exist_ok=True)
    for name, objects in rendered().items():
        (target / f"{name}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
