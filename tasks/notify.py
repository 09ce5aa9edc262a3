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


@task(name="notify", cache_policy=NO_CACHE)
def notify(subject: str, body: str, *, block_name: str = DEFAULT_BLOCK) -> bool:
    """Send a message through notification block ``block_name`` if it exists.

    A failing notification (Slack down, a bad webhook) is logged as a warning and never
    fails the deploy or promotion it reports on.

    Returns:
        Whether a message was sent.
    """
    logger = get_run_logger()
    try:
        block = _load_block(block_name)
        if block is None:
            logger.debug("no notification block %r configured; not notifying", block_name)
            return False
        cast(Any, block).notify(body=body, subject=subject)  # sync call in a sync task
    except Exception as exc:
        logger.warning("notification through %r failed: %s", block_name, exc)
        return False
    return True
