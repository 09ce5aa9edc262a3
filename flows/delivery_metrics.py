"""Delivery metrics: RFC 002's success metrics, measured from the pipeline's own history.

RFC 002 ends with success metrics (deployment frequency 2x, production incidents from
deployments -50%, time to validate changes < 30 minutes, test coverage in staging
> 80%). This flow measures them, per ISO week and per environment, from the Prefect API:

1. read the runs of ``deploy``, ``smoke-test`` and ``promote-to-production`` (states,
   timestamps, which ran inside which), with the ``deployments-<environment>`` records
   and the ``promotion-audit`` records, from ``lookback_days`` before the window (a
   production change's staging deploy may be older) to ``failure_window_hours`` after it
   (what followed a change decides whether it failed);
2. read the freeze calendar (the promotion's: ``data/freeze-windows.yaml`` or
   ``RSOLV_FREEZE_WINDOWS_FILE``), to tell waiting for a freeze from waiting;
3. compute the figures (``rsolv_staging/metrics.py``: its docstring defines each one);
4. publish them: markdown artifact ``delivery-metrics`` (targets, a chart, lead time by
   stage, approvals), table artifact ``delivery-metrics-table`` (one row per week and
   environment) and markdown artifact ``delivery-metrics-json`` (the same numbers as
   JSON, which ``rsolv-staging metrics --json`` prints); with ``json_path`` and
   ``chart_path``, the JSON and the SVG chart as files too.

Parameters: ``start``/``end`` (a window), or ``weeks`` (default 4: the current ISO week
and the 3 before it; ``complete_weeks_only`` leaves out the current one), ``timezone``
of the weeks, ``failure_window_hours`` (default 8), ``baseline`` (what the relative
targets compare to; default: the window's first week with data), ``lookback_days``.

A window with no run says "no data" and shows no figure; nothing is ever a zero for
want of data. Blocks and variables: none; it only reads the Prefect API.

Run it: ``python -m flows.delivery_metrics --weeks 4``, or the ``delivery-metrics``
deployment (weekly, Monday 07:00 Europe/Amsterdam).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect import flow, get_run_logger
from pydantic import Field

from flows.promote import DEFAULT_FREEZE_WINDOWS
from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.metrics import Baseline, DeliveryMetrics, compute_metrics, delivery_window
from rsolv_staging.metrics_report import chart_svg, markdown, table_rows
from rsolv_staging.promotion import load_freeze_windows
from rsolv_staging.settings import load_settings
from tasks.reports import publish_markdown, publish_table, write_report_file
from tasks.run_history import read_delivery_history

REPORT_KEY, TABLE_KEY, JSON_KEY = (
    "delivery-metrics",
    "delivery-metrics-table",
    "delivery-metrics-json",
)


@flow(name="delivery-metrics", log_prints=True)
def delivery_metrics(
    start: datetime | None = None,
    end: datetime | None = None,
    weeks: Annotated[int, Field(ge=1, le=104)] = 4,
    complete_weeks_only: bool = False,
    timezone: str = "UTC",
    failure_window_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 8.0,
    baseline: Baseline | None = None,
    lookback_days: Annotated[float, Field(ge=0, le=365)] = 30.0,
    json_path: str | None = None,
    chart_path: str | None = None,
) -> DeliveryMetrics:
    """Measure RFC 002's delivery metrics per ISO week and environment; publish them.

    Args:
        start: Start of the window (naive: in `timezone`); default from `weeks`.
        end: End of the window, exclusive; default now.
        weeks: Without `start`: how many ISO weeks, counted back from `end`'s week.
        complete_weeks_only: Without `end`: stop at the start of the current week.
        timezone: IANA zone the weeks are cut in (Monday 00:00 local).
        failure_window_hours: A production deploy followed this soon by another that
            succeeded (a revert or a fix-forward) counts as a failed change.
        baseline: Production deploys and incidents per week to compare the RFC's relative
            targets to; default: the window's first week with data.
        lookback_days: How far before the window to look for the staging deploys of the
            window's production changes.
        json_path: Also write the figures as JSON to this file (on the worker).
        chart_path: Also write the chart (SVG) to this file (on the worker).
    """
    zone = _zone(timezone)
    window = _window(start, end, weeks=weeks, complete_weeks_only=complete_weeks_only, zone=zone)
    failure_window = timedelta(hours=failure_window_hours)

    # 1. The run history, with margins on both sides for the links between runs.
    records, skipped = read_delivery_history(
        window[0] - timedelta(days=lookback_days), window[1] + failure_window
    )
    # 2. The freeze calendar (the operator's, as the promotion reads it).
    settings = load_settings()
    freezes = load_freeze_windows(settings.freeze_windows_file or DEFAULT_FREEZE_WINDOWS)
    # 3. The figures.
    metrics = compute_metrics(
        records,
        start=window[0],
        end=window[1],
        timezone=zone.key,
        freeze_windows=freezes,
        failure_window=failure_window,
        baseline=baseline,
    )
    metrics.notes.extend(skipped)
    # 4. Published: report with chart, table, JSON.
    publish(metrics, json_path=json_path, chart_path=chart_path)
    return metrics


def _window(
    start: datetime | None,
    end: datetime | None,
    *,
    weeks: int,
    complete_weeks_only: bool,
    zone: ZoneInfo,
) -> tuple[datetime, datetime]:
    try:
        return delivery_window(
            datetime.now(UTC),
            start=start,
            end=end,
            weeks=weeks,
            complete_weeks_only=complete_weeks_only,
            timezone=zone.key,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"timezone {name!r} is not an IANA time zone") from exc


def publish(metrics: DeliveryMetrics, *, json_path: str | None, chart_path: str | None) -> None:
    """The three artifacts, and the files asked for."""
    svg = chart_svg(metrics)
    document = metrics.model_dump_json(indent=2)
    summary = _summary(metrics)
    publish_markdown(REPORT_KEY, markdown(metrics, svg), description=summary)
    publish_table(TABLE_KEY, table_rows(metrics), description=summary)
    publish_markdown(JSON_KEY, f"```json\n{document}\n```\n", description=summary)
    if json_path:
        write_report_file(json_path, document + "\n")
    if chart_path:
        write_report_file(chart_path, svg)
    get_run_logger().info("delivery metrics: %s", summary)


def _summary(metrics: DeliveryMetrics) -> str:
    window = f"{metrics.window_start:%Y-%m-%d} to {metrics.window_end:%Y-%m-%d}"
    if not metrics.has_data:
        return f"{window}: no data"
    verdicts = ", ".join(f"{t.name}: {t.status}" for t in metrics.targets)
    return f"{window}: {verdicts}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure RFC 002's delivery metrics.")
    parser.add_argument("--weeks", type=int, default=4)
    parser.add_argument("--start", type=datetime.fromisoformat)
    parser.add_argument("--end", type=datetime.fromisoformat)
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--json-path")
    parser.add_argument("--chart-path")
    args = parser.parse_args(argv)
    metrics = delivery_metrics(
        start=args.start,
        end=args.end,
        weeks=args.weeks,
        timezone=args.timezone,
        json_path=args.json_path,
        chart_path=args.chart_path,
    )
    print(_summary(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
