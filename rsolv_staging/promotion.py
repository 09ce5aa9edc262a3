"""The promotion gate's rules: freeze windows, who may approve, what the approver sees.

Pure code. The promote-to-production flow asks these questions before it pauses, and
builds its approval form and audit record from them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from rsolv_staging.exceptions import ConfigurationError, GuardError

Decision = Literal["approve", "reject"]


class FreezeWindow(BaseModel):
    """A period in which nothing is promoted to production (e.g. the year-end freeze)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    start: datetime = Field(description="Local start time in `timezone` (no offset)")
    end: datetime = Field(description="Local end time in `timezone` (no offset)")
    timezone: str = Field(description="IANA zone, e.g. Europe/Amsterdam")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone") from exc
        return value

    def bounds(self) -> tuple[datetime, datetime]:
        zone = ZoneInfo(self.timezone)
        return self.start.replace(tzinfo=zone), self.end.replace(tzinfo=zone)

    def contains(self, moment: datetime) -> bool:
        start, end = self.bounds()
        return start <= moment < end

    def describe(self) -> str:
        start, end = self.bounds()
        return f"freeze window {self.name!r} ({start.isoformat()} to {end.isoformat()})"


class FreezeCalendar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    windows: list[FreezeWindow] = Field(default_factory=list)


def load_freeze_windows(path: Path) -> list[FreezeWindow]:
    """Read and validate a freeze-window file.

    Raises:
        ConfigurationError: naming the file and the invalid entry.
    """
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        calendar = FreezeCalendar.model_validate(raw)
    except OSError as exc:
        raise ConfigurationError(f"cannot read freeze windows {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigurationError(f"invalid freeze windows in {path}: {exc}") from exc
    for window in calendar.windows:
        start, end = window.bounds()
        if end <= start:
            raise ConfigurationError(f"{path}: freeze window {window.name!r} ends before it starts")
    return calendar.windows


def check_freeze(
    windows: Sequence[FreezeWindow], now: datetime, *, override_reason: str | None
) -> FreezeWindow | None:
    """The window ``now`` falls in, if an override allows going ahead; None if none applies.

    Raises:
        GuardError: inside a window with no override reason: names the window and its end.
    """
    for window in windows:
        if window.contains(now):
            if override_reason and says_something(override_reason):
                return window
            _, end = window.bounds()
            raise GuardError(
                f"promotion refused: {window.describe()} is in force until {end.isoformat()}; "
                "pass freeze_override_reason to promote anyway (it is recorded)"
            )
    return None


# Who a person is, as one ASCII identifier (a login or an e-mail address). Names are
# compared after NFKC and case folding, and anything still outside ASCII is refused, not
# compared: Unicode has many look-alikes (U+2010 HYPHEN for "-", U+043E CYRILLIC SMALL
# LETTER O for "o") that would let a requester's name differ from an approver's by one
# code point nobody sees, and so pass the self-approval rule.
_IDENTITY = re.compile(r"[a-z0-9](?:[a-z0-9._@+-]{0,126}[a-z0-9])?")
# A reason needs three letters or digits (Unicode ones too): spaces, zero-width
# characters or punctuation alone say nothing. Written so that Python's re (the Prefect
# server validates run input with jsonschema) and pydantic's Rust regex read it alike.
REASON_PATTERN = r"\w[\s\S]*\w[\s\S]*\w"


def says_something(reason: str) -> bool:
    """Whether ``reason`` holds text (three letters or digits), not blanks or punctuation."""
    return re.search(REASON_PATTERN, reason) is not None


def identity(name: str, *, what: str = "name") -> str:
    """``name`` as the identity it stands for: NFKC, trimmed, case-folded, ASCII only.

    Raises:
        ConfigurationError: not an ASCII login or address after normalization (look-alike
            characters are refused rather than guessed at).
    """
    folded = unicodedata.normalize("NFKC", name).strip().casefold()
    if not _IDENTITY.fullmatch(folded):
        raise ConfigurationError(
            f"{what} {name!r} is not an ASCII login or e-mail address (letters, digits and "
            "._@+- only, after Unicode normalization): look-alike characters are refused"
        )
    return folded


def eligible_approvers(allowlist: Sequence[str], requester: str) -> list[str]:
    """Who may decide: the allowlist minus the requester (no approving your own promotion).

    Every name is an :func:`identity`, so a requester cannot slip past the rule with a
    name that only looks like an approver's.

    Raises:
        ConfigurationError: the requester or an allowlisted name is not an identity, or
            nobody is left to approve.
    """
    me = identity(requester, what="requester")
    allowed = {identity(a, what="allowlisted approver") for a in allowlist if a.strip()}
    names = sorted(allowed - {me})
    if not names:
        raise ConfigurationError(
            "no one may approve this promotion: the approver allowlist (Prefect Variable "
            "'promotion_approvers' or RSOLV_PROMOTION_APPROVERS) is empty or holds only the "
            f"requester {requester!r}"
        )
    return names


class ApprovalDecision(RunInput):
    """What the approver submits. ``decision`` has no default: an empty resume is refused."""

    decision: Decision = Field(description="approve or reject")
    approver: str = Field(description="Who decides (must be on the allowlist)")
    reason: str = Field(
        pattern=REASON_PATTERN, description="Why (at least three letters): recorded in the audit"
    )


def approval_form(approvers: Sequence[str], description: str) -> type[ApprovalDecision]:
    """The run-input form: ``approver`` restricted to ``approvers`` in its JSON schema.

    Prefect validates a resume against the saved schema and answers ``REJECT`` for a
    value outside the enum, so a non-allowlisted approver or the requester is refused
    at the API and the run keeps waiting.
    """
    approver_type: Any = Literal[tuple(approvers)]
    form = create_model(
        "ApprovalDecision",
        __base__=ApprovalDecision,
        approver=(approver_type, Field(description="Who decides (allowlisted, not the requester)")),
    )
    return form.with_initial_data(description=description)


class AuditRecord(BaseModel):
    """One promotion decision, as the UI and API clients list it."""

    flow_run: str
    requested_at: datetime
    requester: str
    change_ref: str
    images: dict[str, str]
    decision: Literal["approved", "rejected", "timed out", "refused"]
    approver: str | None = None
    reason: str = ""
    decided_at: datetime | None = None
    freeze_override: str | None = None
    parameters: dict[str, str] = Field(
        default_factory=dict, description="Run parameters that differ from the defaults"
    )
    outcome: str = ""
    diff: str = ""

    def row(self) -> dict[str, str]:
        data = self.model_dump(mode="json")
        data["images"] = ", ".join(f"{k}={v}" for k, v in self.images.items())
        data["parameters"] = ", ".join(f"{k}={v}" for k, v in self.parameters.items())
        return {k: "" if v is None else str(v) for k, v in data.items()}


def approval_description(
    *,
    requester: str,
    change_ref: str,
    images: Mapping[str, str],
    diff_markdown: str,
    smoke_summary: str,
    freeze: FreezeWindow | None,
    freeze_override: str | None,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """The markdown the approver reads in the Prefect UI before deciding."""
    lines = [
        "## Promote to production",
        "",
        f"Requested by **{requester}** for `{change_ref}`.",
        "",
        "| app | digest (identical to staging's) |",
        "| --- | --- |",
        *[f"| {app} | `{ref}` |" for app, ref in sorted(images.items())],
        "",
        f"**Staging smoke tests:** {smoke_summary}",
    ]
    if freeze is not None:
        lines += ["", f"**Freeze override:** {freeze.describe()}; reason: {freeze_override}"]
    if overrides:
        lines += [
            "",
            "**Non-default run parameters (check them):** "
            + ", ".join(f"`{k}={v}`" for k, v in overrides.items()),
        ]
    lines += ["", "### What changes in production", "", diff_markdown]
    return "\n".join(lines)
