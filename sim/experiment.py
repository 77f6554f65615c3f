"""The whole experiment: every arm on the same plan, the days side by side, and the results folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sim.figures import draw_charts
from sim.measures import TestSplitScorer
from sim.replay import DayRow, run_arm
from sim.report import results_table
from sim.scenario import Progress, SimConfig
from sim.traffic import CARELESS_SOURCE, Plan, make_plan

REVIEWED_ARMS = ("cleaned", "uncleaned")  # the arms a reviewer works in (the true-label arm needs none)


@dataclass(frozen=True)
class ArmReviews:
    """One noisy arm's reviewer on one day: decisions, the wrong labels among them, and the hit rates."""

    reviews: int
    review_hits: int
    review_hit_rate: float | None  # today's
    review_hit_rate_total: float | None  # since day 0

    @classmethod
    def of(cls, row: DayRow) -> ArmReviews:
        r = row.stored.review
        return cls(
            reviews=r.reviews,
            review_hits=r.review_hits,
            review_hit_rate=r.review_hits / r.reviews if r.reviews else None,
            review_hit_rate_total=r.review_hits_total / r.reviews_total if r.reviews_total else None,
        )


@dataclass(frozen=True)
class DayResult:
    """One simulated day across the arms. The label-quality, drift, SLA and traffic figures are the cleaned arm's
    (the first arm's when the cleaned arm did not run)."""

    day: int
    accuracy: dict[str, float]  # each arm's shared champion on the test split
    main_row: DayRow  # the cleaned arm's row (the first arm's without it)
    rows: dict[str, DayRow]  # every arm's row
    reviews: dict[str, ArmReviews]  # by reviewed arm; empty without a review budget

    def as_json(self) -> dict[str, Any]:
        """The day as ``results.json`` keeps it (``days``)."""
        issues, monitoring = self.main_row.stored.issues, self.main_row.monitoring
        row: dict[str, Any] = {
            "day": self.day,
            "accuracy_cleaned": self.accuracy.get("cleaned"),
            "accuracy_uncleaned": self.accuracy.get("uncleaned"),
            "accuracy_true_labels": self.accuracy.get("true_labels"),
            **asdict(issues),
            "drift_flagged": monitoring.drift_flagged,
            "sla_status": monitoring.sla_status,
            "sla_value": monitoring.sla_value,
            "promotions": {arm: r.promoted for arm, r in self.rows.items()},
            "trained_accuracy": {arm: r.stored.trained_accuracy for arm, r in self.rows.items()},
            "champion": {arm: r.stored.champion for arm, r in self.rows.items()},
            "rung": {arm: r.stored.rung for arm, r in self.rows.items()},
            "alerts": [asdict(a) for a in monitoring.alerts],
            "served": self.main_row.served,
            "logged": self.main_row.stored.logged,
        }
        for arm, r in self.reviews.items():
            row[f"reviews_{arm}"] = r.reviews
            row[f"review_hits_{arm}"] = r.review_hits
            row[f"review_hit_rate_{arm}"] = r.review_hit_rate
            row[f"review_hit_rate_{arm}_total"] = r.review_hit_rate_total
        return row


@dataclass(frozen=True)
class SimResults:
    config: SimConfig
    plan: Plan
    days: list[DayResult]
    arms: dict[str, list[DayRow]]

    def as_json(self) -> dict[str, Any]:
        """``results.json``: the configuration, what the plan injected, the days side by side, every arm's rows."""
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()}
        return {
            "config": config,
            "injected_wrong_labels": len(self.plan.wrong_ids),
            "feedback_items": len(self.plan.feedback),
            "careless_items": sum(f.source_id == CARELESS_SOURCE for f in self.plan.feedback),
            "shift_items": sum(i.shifted for i in self.plan.items),
            "days": [d.as_json() for d in self.days],
            "arms": {arm: [r.as_json() for r in rows] for arm, rows in self.arms.items()},
        }


def simulate(cfg: SimConfig, progress: Progress | None = None) -> SimResults:
    """Run every arm, then write ``results.json``, ``results.md`` and the charts into ``cfg.out``."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    plan = make_plan(cfg)
    scorer = TestSplitScorer(plan)
    per_arm = {arm: run_arm(cfg, plan, arm, scorer, progress) for arm in cfg.arms}
    results = SimResults(cfg, plan, [combine_day(cfg, per_arm, d) for d in range(cfg.days)], per_arm)
    write_results(results, cfg.out)
    return results


def combine_day(cfg: SimConfig, per_arm: dict[str, list[DayRow]], day: int) -> DayResult:
    rows = {arm: arm_rows[day] for arm, arm_rows in per_arm.items()}
    reviews = {}
    if cfg.review_budget > 0:
        reviews = {arm: ArmReviews.of(rows[arm]) for arm in REVIEWED_ARMS if arm in rows}
    return DayResult(
        day=day,
        accuracy={arm: r.stored.accuracy for arm, r in rows.items()},
        main_row=rows.get("cleaned", rows[cfg.arms[0]]),
        rows=rows,
        reviews=reviews,
    )


def write_results(results: SimResults, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results.as_json(), indent=2, default=str))
    (out / "results.md").write_text(results_table(results))
    draw_charts(results, out)
