"""Notifications through a Prefect notification block, when one is configured.

The block is looked up by name at run time (default ``rsolv-deployments``, any Prefect
notification block type: a SlackWebhook for RFC 002's "Notify Slack"). No block, no
message, no error: notifications are optional, a deploy is not.
"""

from __future__ import annotations

from typing import Any, cast

from prefect import get_run_logger, task
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE

DEFAULT_BLOCK = "rsolv-deployments"


def _load_block(name: str) -> NotificationBlock | None:
    for block_type in ("slack-webhook", "microsoft-teams-webhook", "custom-webhook"):
        try:
            block = cast(Any, Block).load(f"{block_type}/{name}")
        except ValueError:
            continue  # "Unable to find block document named ..."
        if isinstance(block, NotificationBlock):
            return block
    return None


@task(name="notify", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def notify(subject: str, body: str, *, block_name: str = DEFAULT_BLOCK) -> bool:
    """Send a message through notification block ``block_name`` if it exists.

    Returns:
        Whether a message was sent.
    """
    block = _load_block(block_name)
    if block is None:
        get_run_logger().debug("no notification block %r configured; not notifying", block_name)
        return False
    cast(Any, block).notify(body=body, subject=subject)  # sync call in a sync task
    return True
