"""What a simulation replays: its configuration, the arms, the task, and the simulated clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ARMS = ("cleaned", "uncleaned", "true_labels")
TASK = "sim-intent"
T0 = datetime(2026, 1, 5, tzinfo=UTC)  # day 0 of every simulation

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SimConfig:
    train: Path
    test: Path
    out: Path
    days: int = 7
    daily: int = 500
    feedback_rate: float = 0.5
    noise: float = 0.2
    holdout_noise: float | None = None  # the share of wrong labels on holdout items; None: ``noise``
    careless_share: float = 0.25  # of the wrong labels, the share given by one careless source (always wrong)
    tenants: int = 3
    shift: Path | None = None
    shift_day: int = 4
    shift_share: float = 0.5  # of the shifted tenant's traffic from the shift day on
    max_feedback_delay: int = 2  # days
    database_url: str | None = None  # a PostgreSQL server to create the arms' databases on; SQLite files otherwise
    seed: int = 0
    test_limit: int | None = None
    sla_threshold: float = 0.75  # measured against user feedback, which carries the injected noise
    sla_window_days: int = 1  # each simulated day is judged (and checked for drift) on its own traffic
    sla_min_labeled: int = 30
    arms: tuple[str, ...] = ARMS
    review_budget: int = 0  # reviewer decisions per simulated day, per task, in the cleaned and uncleaned arms
    rules: Path | None = None  # a JSON file {"rules": [...]}: the task's labeling rules, put on day 0
    settings: dict[str, Any] = field(default_factory=dict)  # Settings overrides (ladder thresholds, base model…)


def sim_time(day: int, hour: int = 23) -> datetime:
    """The simulated clock: ``hour`` o'clock (UTC) on simulated ``day``."""
    return T0 + timedelta(days=day, hours=hour)
