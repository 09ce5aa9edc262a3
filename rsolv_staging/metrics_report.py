"""How the delivery metrics are shown: a markdown report with a chart, table rows, JSON.

Pure. The chart is an SVG drawn here (no plotting library: three small bar panels), put
into the markdown artifact as a ``data:image/svg+xml`` image, which the Prefect UI's
markdown renderer displays (it allows ``data:image/`` sources on images), and written to
a file for the README.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

from rsolv_staging.metrics import STAGES, DeliveryMetrics, Durations, LeadTimes, Target, Week

NO_DATA = "no data"
WIDTH = 900
PANEL_HEIGHT = 150
LEFT, RIGHT = 70, 20
STAGE_COLOURS = (
    "#9e9e9e",  # commit to staging deploy
    "#42a5f5",  # staging deploy
    "#26a69a",  # smoke tests
    "#ffca28",  # waiting to be promoted
    "#8d6e63",  # waiting for a freeze to end
    "#ab47bc",  # waiting for approval
    "#ef5350",  # production rollout
)
OK, BAD, STAGING, GRID = "#2e7d32", "#c62828", "#90caf9", "#e0e0e0"


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return NO_DATA
    text = f"{value:.1f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"
    return f"{text}{unit}"


def _minutes(value: Durations | None, field: str = "median") -> str:
    if value is None:
        return NO_DATA
    minutes = float(getattr(value, field))
    return _duration(minutes)


def _duration(minutes: float | None) -> str:
    if minutes is None:
        return NO_DATA
    if minutes >= 120:
        return f"{minutes / 60:.1f} h"
    if minutes >= 1:
        return f"{minutes:.1f} min"
    return f"{minutes * 60:.0f} s"


def table_rows(metrics: DeliveryMetrics) -> list[dict[str, str]]:
    """One row per week and environment (one row saying "no data" for an empty week)."""
    rows: list[dict[str, str]] = []
    for week in metrics.weeks:
        label = week.week + (" (partial)" if week.partial else "")
        if not week.has_data:
            rows.append({"week": label, "environment": "-", "deploys": NO_DATA})
            continue
        for env, f in week.environments.items():
            lead = f.lead_time
            row = {
                "week": label,
                "environment": env,
                "deploys": str(f.deploys),
                "succeeded (frequency)": str(f.deployment_frequency),
                "rolled back": str(f.rolled_back),
                "failed": str(f.failed),
                "failed changes": str(f.failed_changes),
                "change failure rate": (
                    f"{f.change_failure_rate:.0%}" if f.change_failure_rate is not None else NO_DATA
                ),
                "time to restore (median)": _minutes(f.time_to_restore),
                "lead time (median)": _minutes(lead.total if lead else None),
                "lead time from commit": f"{lead.from_commit}/{lead.changes}" if lead else NO_DATA,
                "time to validate (median)": _minutes(f.time_to_validate),
                "validated < 30 min": (
                    f"{f.validated_within_target}/{f.time_to_validate.count}"
                    if f.time_to_validate and f.validated_within_target is not None
                    else NO_DATA
                ),
            }
            if f.approvals is not None:
                a = f.approvals
                row["promotions"] = str(a.requested)
                row["approved / rejected / timed out"] = (
                    f"{a.approved} / {a.rejected} / {a.timed_out}"
                )
                row["refused"] = f"{a.refused_before_gate} before, {a.refused_after_decision} after"
                row["freeze overrides"] = str(a.freeze_overrides)
                row["time to decision (median)"] = _minutes(a.time_to_decision)
            rows.append(row)
    return rows


def markdown(metrics: DeliveryMetrics, svg: str) -> str:
    """The report: targets first, the chart, the lead-time stages, then the notes."""
    window = f"{metrics.window_start:%Y-%m-%d %H:%M} to {metrics.window_end:%Y-%m-%d %H:%M}"
    lines = [f"# Delivery metrics, {window} ({metrics.timezone})", ""]
    if not metrics.has_data:
        lines += [f"**{metrics.notes[0]}**", "", "Nothing is measured: no figure is shown as 0."]
        return "\n".join(lines) + "\n"
    lines += ["## RFC 002 targets", "", *_targets_table(metrics.targets), ""]
    data = base64.b64encode(svg.encode()).decode()
    lines += [f"![Delivery metrics per week](data:image/svg+xml;base64,{data})", ""]
    lines += ["## Lead time to production by stage (means over the week's changes)", ""]
    lines += _stages_table(metrics.weeks)
    lines += ["", "## Approvals", "", *_approvals_table(metrics.weeks)]
    lines += [
        "",
        f"A production change counts as failed when it was rolled back, or when another "
        f"production deploy succeeded within {metrics.failure_window_hours:g} h after it "
        "(a revert or a fix-forward). The table artifact `delivery-metrics-table` has every "
        "figure per week and environment; `delivery-metrics-json` the same as JSON.",
    ]
    if metrics.notes:
        lines += ["", "### Notes", "", *[f"- {n}" for n in metrics.notes]]
    return "\n".join(lines) + "\n"


def _targets_table(targets: Sequence[Target]) -> list[str]:
    """The targets, then what each one counts and any note (kept out of the narrow table)."""
    lines = [
        "| metric | target | baseline | measured | status |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in targets:
        base = f"{_fmt(t.baseline)} ({t.baseline_source})" if t.baseline is not None else "-"
        measured = _duration(t.measured) if t.unit.startswith("minutes") else _fmt(t.measured)
        lines.append(f"| {t.name} | {t.target} | {base} | {measured} | {t.status} |")
    lines.append("")
    lines += [f"- {t.name}: {t.unit}." + (f" {t.note}" if t.note else "") for t in targets]
    return lines


def _stages_table(weeks: Sequence[Week]) -> list[str]:
    lines = ["| week | changes | from commit | " + " | ".join(STAGES) + " | median total |"]
    lines.append("| --- " * (len(STAGES) + 4) + "|")
    for w in weeks:
        lead = w.environments["production"].lead_time if w.has_data else None
        if lead is None:
            lines.append(f"| {w.week} | {NO_DATA} |" + " |" * (len(STAGES) + 2))
            continue
        cells = [_duration(lead.stages[s]) for s in STAGES]
        lines.append(
            f"| {w.week} | {lead.changes} | {lead.from_commit} | "
            + " | ".join(cells)
            + f" | {_duration(lead.total.median)} |"
        )
    return lines


def _approvals_table(weeks: Sequence[Week]) -> list[str]:
    head = "| week | requested | approved | rejected | timed out | refused before the gate"
    lines = [
        head + " | refused after the decision | freeze overrides | time to decision (median) |",
        "| --- " * 9 + "|",
    ]
    for w in weeks:
        a = w.environments["production"].approvals if w.has_data else None
        if a is None:
            lines.append(f"| {w.week} | {NO_DATA} |" + " |" * 7)
            continue
        lines.append(
            f"| {w.week} | {a.requested} | {a.approved} | {a.rejected} | {a.timed_out} | "
            f"{a.refused_before_gate} | {a.refused_after_decision} | {a.freeze_overrides} | "
            f"{_minutes(a.time_to_decision)} |"
        )
    return lines


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= value))


class _Panel:
    """One bar panel: y axis with grid, a bar slot per week."""

    def __init__(
        self, top: float, title: str, weeks: Sequence[Week], ymax: float, unit: str
    ) -> None:
        self.top, self.weeks, self.ymax = top, weeks, _nice_max(ymax)
        self.slot = (WIDTH - LEFT - RIGHT) / max(len(weeks), 1)
        self.parts = [_text(LEFT, top - 8, title, size=13, weight="bold")]
        for i in range(5):
            value = self.ymax * i / 4
            y = self.y(value)
            self.parts.append(
                f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
                f'stroke="{GRID}"/>'
            )
            self.parts.append(_text(LEFT - 6, y + 4, f"{value:g}{unit}", anchor="end"))
        for i, week in enumerate(weeks):
            x = LEFT + self.slot * (i + 0.5)
            self.parts.append(_text(x, top + PANEL_HEIGHT + 14, week.week, anchor="middle"))
            if not week.has_data:
                self.parts.append(
                    _text(x, top + PANEL_HEIGHT / 2, NO_DATA, anchor="middle", fill="#757575")
                )

    def y(self, value: float) -> float:
        return self.top + PANEL_HEIGHT - PANEL_HEIGHT * min(value, self.ymax) / self.ymax

    @property
    def width(self) -> float:
        """A bar's width: a share of the week's slot, never a wall for a lone week."""
        return min(self.slot * 0.3, 48.0)

    def bar(
        self, week: int, offset: float, width: float, low: float, high: float, colour: str, tip: str
    ) -> None:
        """A bar from ``low`` to ``high``; ``offset`` in bar widths from the slot's centre."""
        x = LEFT + self.slot * (week + 0.5) + offset * width
        y1, y0 = self.y(high), self.y(low)
        self.parts.append(
            f'<rect x="{x:.1f}" y="{y1:.1f}" width="{width:.1f}" height="{max(y0 - y1, 0):.1f}" '
            f'fill="{colour}"><title>{escape(tip)}</title></rect>'
        )

    def hline(self, value: float, colour: str, label: str) -> None:
        y = self.y(value)
        self.parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="{colour}" '
            'stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        self.parts.append(_text(WIDTH - RIGHT - 4, y - 4, label, anchor="end", fill=colour))


def _text(
    x: float,
    y: float,
    text: str,
    *,
    size: int = 11,
    anchor: str = "start",
    weight: str = "normal",
    fill: str = "#212121",
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'font-weight="{weight}" fill="{fill}">{escape(text)}</text>'
    )


def chart_svg(metrics: DeliveryMetrics) -> str:
    """Three panels per ISO week: deploys (staging, production; failed changes in red) with
    the frequency target, lead time to production by stage, time to validate vs 30 min."""
    weeks = metrics.weeks
    parts = [
        _text(
            LEFT, 22, f"Delivery metrics per ISO week ({metrics.timezone})", size=15, weight="bold"
        )
    ]
    parts += _deploys_panel(metrics, 60).parts
    parts += _lead_panel(weeks, 60 + PANEL_HEIGHT + 70).parts
    parts += _validate_panel(weeks, 60 + 2 * (PANEL_HEIGHT + 70)).parts
    parts += _legend(60 + 2 * (PANEL_HEIGHT + 70) - 52)
    height = 60 + 3 * (PANEL_HEIGHT + 70) - 30
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif">'
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>' + "".join(parts) + "</svg>\n"
    )


def _deploys_panel(metrics: DeliveryMetrics, top: float) -> _Panel:
    weeks = metrics.weeks
    counts = [f.deploys for w in weeks for f in w.environments.values()]
    frequency = next(t for t in metrics.targets if t.name == "Deployment frequency")
    goal = 2 * frequency.baseline if frequency.baseline else None
    panel = _Panel(
        top,
        "Deploys per week: staging (light), production (dark); failed changes in red",
        weeks,
        max([*counts, goal or 0, 1]),
        "",
    )
    for i, w in enumerate(weeks):
        for offset, env, colour in ((-1.05, "staging", STAGING), (0.05, "production", OK)):
            f = w.environments.get(env)
            if f is None:
                continue
            held = f.deploys - f.failed_changes
            panel.bar(i, offset, panel.width, 0, held, colour, f"{w.week} {env}: {held} held")
            panel.bar(
                i,
                offset,
                panel.width,
                held,
                f.deploys,
                BAD,
                f"{w.week} {env}: {f.failed_changes} failed changes",
            )
    if goal:
        panel.hline(goal, OK, f"target: 2x baseline = {goal:g} production deploys/week")
    return panel


def _lead_panel(weeks: Sequence[Week], top: float) -> _Panel:
    totals = [sum(v or 0 for v in lead.stages.values()) for w in weeks if (lead := _lead(w))]
    hours = max(totals, default=0) >= 180
    scale, unit = (60.0, " h") if hours else (1.0, " min")
    panel = _Panel(
        top, "Lead time to production, mean by stage", weeks, max(totals, default=1) / scale, unit
    )
    for i, w in enumerate(weeks):
        lead = _lead(w)
        if lead is None:
            if w.has_data:
                panel.parts.append(
                    _text(
                        LEFT + panel.slot * (i + 0.5),
                        top + PANEL_HEIGHT / 2,
                        "no production change",
                        anchor="middle",
                        fill="#757575",
                    )
                )
            continue
        low = 0.0
        x = LEFT + panel.slot * (i + 0.5)
        top_value = sum(v or 0 for v in lead.stages.values()) / scale
        label = f"{_duration(lead.total.mean)} mean over {lead.changes}"
        panel.parts.append(_text(x, panel.y(top_value) - 4, label, anchor="middle"))
        for stage, colour in zip(STAGES, STAGE_COLOURS, strict=True):
            value = (lead.stages[stage] or 0) / scale
            panel.bar(
                i,
                -0.5,
                panel.width,
                low,
                low + value,
                colour,
                f"{w.week} {stage}: {_duration(lead.stages[stage])}",
            )
            low += value
    return panel


def _validate_panel(weeks: Sequence[Week], top: float) -> _Panel:
    medians = [v.median for w in weeks if (v := _validation(w))]
    panel = _Panel(
        top,
        "Time to validate (staging deploy start to smoke tests passed), median",
        weeks,
        max([*medians, 35.0]),
        " min",
    )
    for i, w in enumerate(weeks):
        v = _validation(w)
        if v is None:
            if w.has_data:
                panel.parts.append(
                    _text(
                        LEFT + panel.slot * (i + 0.5),
                        top + PANEL_HEIGHT / 2,
                        "no validated deploy",
                        anchor="middle",
                        fill="#757575",
                    )
                )
            continue
        colour = OK if v.median < 30 else BAD
        x = LEFT + panel.slot * (i + 0.5)
        panel.parts.append(_text(x, panel.y(v.median) - 4, _duration(v.median), anchor="middle"))
        panel.bar(
            i,
            -0.5,
            panel.width,
            0,
            v.median,
            colour,
            f"{w.week}: median {_duration(v.median)} over {v.count}",
        )
    panel.hline(30, BAD, "RFC 002 target: < 30 min")
    return panel


def _lead(week: Week) -> LeadTimes | None:
    return week.environments["production"].lead_time if week.has_data else None


def _validation(week: Week) -> Durations | None:
    return week.environments["staging"].time_to_validate if week.has_data else None


def _legend(top: float) -> list[str]:
    parts, x = [], float(LEFT)
    for stage, colour in zip(STAGES, STAGE_COLOURS, strict=True):
        width = 14 + 6 * len(stage) + 12
        if x + width > WIDTH - RIGHT:  # wrap onto a second row
            x, top = float(LEFT), top + 14
        parts.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="10" height="10" fill="{colour}"/>')
        parts.append(_text(x + 14, top + 9, stage, size=10))
        x += width
    return parts
