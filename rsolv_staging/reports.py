"""Markdown for the Prefect UI: what a run did, readable at a glance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol


class Change(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def diff(self) -> str: ...


_VERB = {"create": "created", "change": "changed", "unchanged": "unchanged"}
_WOULD = {"create": "would create", "change": "would change", "unchanged": "unchanged"}


def counts(changes: Sequence[Change]) -> dict[str, int]:
    """``{"created": n, "changed": n, "unchanged": n}``."""
    tally = Counter(_VERB[c.action] for c in changes)
    return {verb: tally.get(verb, 0) for verb in _VERB.values()}


def change_report(
    title: str,
    changes: Sequence[Change],
    *,
    dry_run: bool,
    context: str,
    deleted: Sequence[str] | None = None,
) -> str:
    """A markdown report: a summary line, a table of objects and the diffs; with
    ``deleted``, the objects pruned once the rollout is healthy."""
    words = _WOULD if dry_run else _VERB
    tally = counts(changes)
    mode = "dry run, nothing was applied" if dry_run else "applied"
    lines = [
        f"# {title}",
        "",
        f"Cluster: `{context}` ({mode}).",
        "",
        f"**{tally['created']} created, {tally['changed']} changed, "
        f"{tally['unchanged']} unchanged.**"
        if not dry_run
        else f"**{tally['created']} to create, {tally['changed']} to change, "
        f"{tally['unchanged']} unchanged.**",
    ]
    if not any(c.action != "unchanged" for c in changes):
        lines += ["", "Nothing to do: the cluster already matches the environment model."]
    lines += ["", "| object | result |", "| --- | --- |"]
    lines += [f"| `{c.key}` | {words[c.action]} |" for c in changes]
    diffs = [c for c in changes if c.action == "change" and c.diff]
    for c in diffs:
        lines += ["", f"### `{c.key}`", "", "```diff", c.diff, "```"]
    if deleted is not None:
        lines += ["", "## Deleted once the rollout is healthy", ""]
        lines += [f"- `{key}`" for key in deleted] or ["Nothing."]
    return "\n".join(lines) + "\n"
