"""The charts of a run: ``accuracy.png`` (every arm's champion by day) and ``sla_status.png`` (status by tenant and
day). matplotlib comes with the ``sim`` extra; it is imported here, at import, so a missing extra fails before a run
rather than after it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from sim.experiment import SimResults

STATUS_CODES = {"met": 0, "at_risk": 1, "breached": 2, "insufficient_data": 3}
STATUS_COLORS = ["#2e7d32", "#f9a825", "#c62828", "#9e9e9e"]  # in STATUS_CODES order
STATUS_NAMES = {0: "met", 1: "at risk", 2: "breached", 3: "n/a"}
ARM_LINES = (
    ("true_labels", "trained on true labels", "k--"),
    ("cleaned", "with cleaning", "tab:green"),
    ("uncleaned", "without cleaning", "tab:red"),
)


def draw_charts(results: SimResults, out: Path) -> None:
    draw_accuracy(results, out / "accuracy.png")
    draw_sla_status(results, out / "sla_status.png")


def draw_accuracy(results: SimResults, path: Path) -> None:
    """One line per arm that ran: its shared champion's accuracy on the test split, by day."""
    days = [d.day for d in results.days]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for arm, name, style in ARM_LINES:
        values = [d.accuracy.get(arm) for d in results.days]
        if any(v is not None for v in values):
            ax.plot(days, [np.nan if v is None else 100 * v for v in values], style, marker="o", label=name)
    ax.set_xlabel("simulated day")
    ax.set_ylabel("champion accuracy on the test split (%)")
    ax.set_title("The flywheel: accuracy by day")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def draw_sla_status(results: SimResults, path: Path) -> None:
    """A tenant-by-day grid of the cleaned arm's SLA status, each cell colored and named."""
    days = [d.day for d in results.days]
    statuses = [d.main_row.monitoring.sla_status for d in results.days]
    tenants = sorted({t for status in statuses for t in status})
    grid = np.full((len(tenants), len(days)), np.nan)
    for j, status in enumerate(statuses):
        for i, t in enumerate(tenants):
            if t in status:
                grid[i, j] = STATUS_CODES.get(status[t], 3)
    fig = Figure(figsize=(7, 0.6 * len(tenants) + 1.6))
    ax = fig.subplots()
    ax.imshow(grid, cmap=ListedColormap(STATUS_COLORS), vmin=0, vmax=3, aspect="auto")
    ax.set_xticks(range(len(days)), [str(d) for d in days])
    ax.set_yticks(range(len(tenants)), tenants)
    ax.set_xlabel("simulated day")
    ax.set_title("SLA status by tenant and day (cleaned arm)")
    for i in range(len(tenants)):
        for j in range(len(days)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, STATUS_NAMES[int(grid[i, j])], ha="center", va="center", fontsize=8, color="white")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
