"""Sandbox step: the delivery-metrics flow over the sandbox's own run history, once."""

from __future__ import annotations

from pathlib import Path


def measure_delivery(state: Path) -> None:
    """Run delivery-metrics over this week; the chart and the JSON land in ``state``."""
    from flows.delivery_metrics import delivery_metrics

    print("\n==> Delivery metrics over this run (RFC 002's success metrics)", flush=True)
    metrics = delivery_metrics(
        weeks=1,
        chart_path=str(state / "delivery-metrics.svg"),
        json_path=str(state / "delivery-metrics.json"),
    )
    for target in metrics.targets:
        shown = "no data" if target.measured is None else f"{target.measured:g}"
        if target.status == "not measured":
            shown = "-"
        print(f"    {target.name}: {shown} (target {target.target}): {target.status}")
    print(f"    chart: {state / 'delivery-metrics.svg'}  (artifact: delivery-metrics)")
