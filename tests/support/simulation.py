"""The short simulation the tests in tests/sim/ read: 6 intents, 3 days, 2 tenants, a reviewer (conftest.py runs it
once per session). Everything it writes (the arms' SQLite databases, the model artifacts, the results folder) goes
under the folder it is given."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from flywheel.core.db import Database
from sim.experiment import SimResults, simulate
from sim.harness import arm_sqlite_path
from sim.scenario import SimConfig
from sim.traffic import Plan, make_plan

from support import shared_data

REVIEW_BUDGET = 8
LABELS = ["card_arrival", "card_linking", "exchange_rate", "lost_or_stolen_card", "pin_blocked", "top_up_failed"]


@dataclass(frozen=True)
class Simulation:
    cfg: SimConfig
    plan: Plan  # the same plan the run replayed (make_plan is fixed by the seed)
    results: SimResults
    databases: dict[str, Database]  # each arm's database, as the run left it

    def dispose(self) -> None:
        for db in self.databases.values():
            db.dispose()


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def _rows(path: Path, column: str, values: list[str]) -> list[tuple[str, str]]:
    with path.open(newline="") as fh:
        return [(r["text"], r["label"]) for r in csv.DictReader(fh) if r[column] in values]


def run_short_simulation(tmp: Path) -> Simulation:
    """banking77's six intents as the traffic, clinc150's travel domain reaching tenant-1 from day 1, 20% noise."""
    train = _rows(shared_data("banking77", "train.csv"), "label", LABELS)
    test = _rows(shared_data("banking77", "test.csv"), "label", LABELS)
    shift = _rows(shared_data("clinc150", "train.csv"), "domain", ["travel"])[:150]
    cfg = SimConfig(
        train=_write(tmp / "train.csv", train),
        test=_write(tmp / "test.csv", test[:120]),
        shift=_write(tmp / "shift.csv", shift),
        out=tmp / "out",
        days=3,
        daily=80,
        tenants=2,
        shift_day=1,
        shift_share=0.8,
        feedback_rate=0.7,
        noise=0.2,
        arms=("cleaned", "uncleaned"),
        review_budget=REVIEW_BUDGET,
        settings={"fine_tune_min_labels": 10**9, "few_shot_min_per_class": 2},
    )
    results = simulate(cfg)
    databases = {arm: Database(f"sqlite:///{arm_sqlite_path(cfg.out, arm)}") for arm in cfg.arms}
    return Simulation(cfg, make_plan(cfg), results, databases)
