"""The traffic and feedback schedule: which text each tenant sends on which day, and which label comes back when.

The whole plan is fixed by the seed before any arm runs, so every arm replays exactly the same days.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flywheel.core.config import Settings
from flywheel.domain.holdout import holdout_bucket, is_holdout
from sim.scenario import SimConfig

CARELESS_SOURCE = "careless-clicker"


@dataclass(frozen=True)
class Item:
    id: str
    tenant: str
    day: int
    text: str
    label: str  # the truth
    shifted: bool


@dataclass(frozen=True)
class FeedbackPlan:
    item: str
    tenant: str
    day: int  # the day it arrives
    noisy_label: str
    true_label: str
    source_id: str


@dataclass(frozen=True)
class Plan:
    labels: list[str]
    items: list[Item]
    feedback: list[FeedbackPlan]
    test_texts: list[str]
    test_labels: list[str]

    @property
    def wrong_ids(self) -> set[str]:
        return {f.item for f in self.feedback if f.noisy_label != f.true_label}

    @property
    def tenants(self) -> list[str]:
        return sorted({i.tenant for i in self.items})

    def items_on(self, day: int, tenant: str) -> list[Item]:
        return [i for i in self.items if i.day == day and i.tenant == tenant]

    def feedback_on(self, day: int, tenant: str) -> list[FeedbackPlan]:
        """The feedback that arrives on ``day`` for ``tenant``'s items."""
        return [f for f in self.feedback if f.day == day and f.tenant == tenant]


def read_csv(path: Path) -> list[tuple[str, str]]:
    """``text,label`` rows (other columns ignored)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path} must have 'text' and 'label' columns")
        return [(row["text"], row["label"]) for row in reader if row["text"].strip()]


def make_plan(cfg: SimConfig) -> Plan:
    """The whole traffic and feedback schedule, fixed by the seed, shared by every arm."""
    rng = np.random.default_rng(cfg.seed)
    train = read_csv(cfg.train)
    test = read_csv(cfg.test)
    labels = sorted({label for _, label in train})
    items = _plan_traffic(cfg, rng, train, read_csv(cfg.shift) if cfg.shift else [])
    feedback = _plan_feedback(cfg, rng, items, labels)
    test_rows = test[: cfg.test_limit] if cfg.test_limit else test
    return Plan(labels, items, feedback, [t for t, _ in test_rows], [y for _, y in test_rows])


def _plan_traffic(
    cfg: SimConfig, rng: np.random.Generator, train: list[tuple[str, str]], shift: list[tuple[str, str]]
) -> list[Item]:
    """``cfg.daily`` items a day, the tenants in turn; from the shift day on, part of the first tenant's traffic
    comes from the shifted set (while it lasts)."""
    order = rng.permutation(len(train))
    shift_order = rng.permutation(len(shift)) if shift else np.array([], dtype=int)
    tenants = [f"tenant-{k + 1}" for k in range(cfg.tenants)]
    items: list[Item] = []
    n_plain = n_shift = 0
    for day in range(cfg.days):
        for i in range(cfg.daily):
            tenant = tenants[i % len(tenants)]
            use_shift = (
                bool(shift)
                and tenant == tenants[0]
                and day >= cfg.shift_day
                and rng.random() < cfg.shift_share
                and n_shift < len(shift)
            )
            if use_shift:
                text, label = shift[shift_order[n_shift]]
                n_shift += 1
            else:
                text, label = train[order[n_plain % len(order)]]
                n_plain += 1
            items.append(Item(f"d{day}-{i}", tenant, day, text, label, use_shift))
    return items


def noise_rates(noise: float, careless_share: float) -> tuple[float, float]:
    """``(careless_rate, honest_wrong)``: the share of all feedback from the careless source (always wrong), and the
    share of the rest that is wrong, so that ``noise`` of all feedback is wrong."""
    careless_rate = noise * careless_share
    return careless_rate, (noise - careless_rate) / max(1e-9, 1 - careless_rate)


def in_holdout(item_id: str, holdout_percent: int) -> bool:
    """Whether the platform puts the prediction with this client id in the evaluation holdout (its own rule)."""
    return is_holdout(holdout_bucket(item_id), holdout_percent)


def _plan_feedback(
    cfg: SimConfig, rng: np.random.Generator, items: list[Item], labels: list[str]
) -> list[FeedbackPlan]:
    """Feedback on ``cfg.feedback_rate`` of the items with a known label, 0 to ``max_feedback_delay`` days late
    (none after the last day); ``cfg.noise`` of it wrong (``cfg.holdout_noise`` on the platform's holdout items),
    ``careless_share`` of the wrong labels from one source. With ``holdout_noise`` equal to ``noise`` (the default)
    the plan is the one the seed always gave."""
    rates = noise_rates(cfg.noise, cfg.careless_share)
    holdout_noise = cfg.noise if cfg.holdout_noise is None else cfg.holdout_noise
    held_rates = noise_rates(holdout_noise, cfg.careless_share)
    holdout_percent = int(cfg.settings.get("holdout_percent", Settings.holdout_percent))
    feedback: list[FeedbackPlan] = []
    for item in items:
        if item.label not in labels or rng.random() >= cfg.feedback_rate:
            continue
        day = item.day + int(rng.integers(0, cfg.max_feedback_delay + 1))
        if day >= cfg.days:
            continue
        careless_rate, honest_wrong = held_rates if in_holdout(item.id, holdout_percent) else rates
        careless = rng.random() < careless_rate
        wrong = careless or rng.random() < honest_wrong
        noisy = item.label
        if wrong:
            others = [x for x in labels if x != item.label]
            noisy = others[int(rng.integers(0, len(others)))]
        source_id = CARELESS_SOURCE if careless else f"user-{int(rng.integers(0, 200))}"
        feedback.append(FeedbackPlan(item.id, item.tenant, day, noisy, item.label, source_id))
    return feedback
