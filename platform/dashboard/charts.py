"""Plotly figures built on the server; the page embeds their JSON and the served plotly.min.js draws them.

Figures travel as JSON (not as ``fig.to_html`` with inline scripts) so the dashboard's Content-Security-Policy can
forbid inline scripts. They are plotly figure specs written as plain dicts (the schema of plotly.js): the Python
graph objects would add ~100 ms of validation per chart and nothing plotly.js needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Colours shared with the stylesheet (static/dashboard/dashboard.css).
STATUS_COLOURS = {
    "breached": "#c62828",
    "at_risk": "#ef8f00",
    "insufficient_data": "#6d6d6d",
    "met": "#2e7d32",
    "no_sla": "#9e9e9e",
}
MEASURED = "#1f5fa8"
ESTIMATED = "#7b3fa0"
THRESHOLD = "#c62828"


@dataclass(frozen=True)
class MetricPoint:
    at: datetime
    value: float | None
    ci_low: float | None
    ci_high: float | None
    estimated_value: float | None
    coverage: float | None
    n_labeled: int | None
    calibration_error: float | None
    status: str
    threshold: float | None = None  # the threshold in force at that evaluation (SLAs change)


@dataclass(frozen=True)
class CalibrationBin:
    confidence: float  # mean confidence of the predictions in the bin
    accuracy: float  # share of them whose effective label equals the predicted label
    count: int


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "title": {"text": title, "x": 0, "font": {"size": 15}},
        "margin": {"l": 55, "r": 20, "t": 40, "b": 45},
        "height": 320,
        "legend": {"orientation": "h", "y": -0.2},
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "xaxis": {"gridcolor": "#eee"},
        "yaxis": {"gridcolor": "#eee"},
    }
    layout.update(extra)
    return layout


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _figure(data: list[dict[str, Any]], layout: dict[str, Any]) -> str:
    # A plotly figure spec as plain JSON: plotly's Python graph objects validate every property and cost ~100 ms
    # per chart with a month of hourly points, for a spec plotly.js reads just the same.
    return json.dumps({"data": data, "layout": layout}, default=_json, separators=(",", ":"))


def _scatter(x: list[Any], y: list[Any], **props: Any) -> dict[str, Any]:
    return {"type": "scatter", "x": x, "y": y, **props}


def metric_over_time(points: Sequence[MetricPoint], *, metric: str, threshold: float | None) -> str:
    """The measured metric with its 95% interval as a band, the label-free estimate and the threshold."""
    pts = sorted(points, key=lambda p: p.at)
    x = [p.at for p in pts]
    data: list[dict[str, Any]] = []
    band = [p for p in pts if p.ci_low is not None and p.ci_high is not None]
    if band:
        data.append(
            _scatter(
                [p.at for p in band] + [p.at for p in reversed(band)],
                [p.ci_high for p in band] + [p.ci_low for p in reversed(band)],
                fill="toself",
                fillcolor="rgba(31,95,168,0.15)",
                mode="lines",
                line={"width": 0},
                hoverinfo="skip",
                name="95% interval",
            )
        )
    data.append(
        _scatter(x, [p.value for p in pts], mode="lines+markers", name=f"{metric} (labeled)", line={"color": MEASURED})
    )
    if any(p.estimated_value is not None for p in pts):
        data.append(
            _scatter(
                x,
                [p.estimated_value for p in pts],
                mode="lines",
                name="label-free estimate",
                line={"color": ESTIMATED, "dash": "dot"},
            )
        )
    if any(p.threshold is not None for p in pts):  # the threshold each evaluation was held to, as a step
        data.append(
            _scatter(
                x,
                [p.threshold for p in pts],
                mode="lines",
                name="threshold" if threshold is None else f"threshold (now {threshold:g})",
                line={"color": THRESHOLD, "dash": "dash", "shape": "hv"},
            )
        )
    elif threshold is not None and x:
        data.append(
            _scatter(
                [x[0], x[-1]],
                [threshold, threshold],
                mode="lines",
                name=f"threshold {threshold:g}",
                line={"color": THRESHOLD, "dash": "dash"},
            )
        )
    return _figure(data, _layout(f"{metric} over time", yaxis={"gridcolor": "#eee", "tickformat": ".0%"}))


def coverage_over_time(points: Sequence[MetricPoint]) -> str:
    """Share of predictions in the window with a usable label, and how many that is."""
    pts = sorted(points, key=lambda p: p.at)
    x = [p.at for p in pts]
    data = [
        {
            "type": "bar",
            "x": x,
            "y": [p.n_labeled for p in pts],
            "name": "labeled predictions",
            "yaxis": "y2",
            "marker": {"color": "rgba(46,125,50,0.3)"},
        },
        _scatter(x, [p.coverage for p in pts], mode="lines+markers", name="coverage", line={"color": "#2e7d32"}),
    ]
    layout = _layout(
        "label coverage over time",
        yaxis={"gridcolor": "#eee", "tickformat": ".0%", "rangemode": "tozero"},
        yaxis2={"overlaying": "y", "side": "right", "showgrid": False, "rangemode": "tozero"},
        margin={"l": 55, "r": 45, "t": 40, "b": 45},
    )
    return _figure(data, layout)


def calibration(bins: Sequence[CalibrationBin], *, ece: float | None = None) -> str:
    """Reliability diagram: accuracy against confidence per bin (marker size = predictions); diagonal = perfect."""
    data = [_scatter([0, 1], [0, 1], mode="lines", name="perfectly calibrated", line={"color": "#999", "dash": "dash"})]
    if bins:
        biggest = max(b.count for b in bins) or 1
        data.append(
            _scatter(
                [b.confidence for b in bins],
                [b.accuracy for b in bins],
                mode="lines+markers",
                name="observed",
                marker={"size": [8 + 22 * (b.count / biggest) ** 0.5 for b in bins], "color": MEASURED},
                text=[f"{b.count} labeled" for b in bins],
                hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{text}<extra></extra>",
            )
        )
    title = "calibration (labeled predictions in the window)"
    if ece is not None:
        title += f" — ECE {ece:.3f}"
    layout = _layout(
        title,
        xaxis={"gridcolor": "#eee", "range": [0, 1], "title": {"text": "confidence"}},
        yaxis={"gridcolor": "#eee", "range": [0, 1], "title": {"text": "accuracy"}},
        legend={"orientation": "h", "y": -0.32},
    )
    return _figure(data, layout)


def expected_calibration_error(bins: Sequence[CalibrationBin]) -> float | None:
    total = sum(b.count for b in bins)
    if not total:
        return None
    return sum(b.count * abs(b.accuracy - b.confidence) for b in bins) / total
