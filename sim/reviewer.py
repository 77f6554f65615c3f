"""The simulated reviewer: a person with a daily budget of review decisions, talking HTTP like the product's UI."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.models.records import Prediction
from sim.harness import ApiClient
from sim.scenario import TASK, SimConfig
from sim.traffic import Plan

REVIEWER = "sim-reviewer"


class Reviewer:
    """Decides ``budget`` labels a simulated day, with a reviewer key per tenant.

    Every decision carries the true label: ``keep`` where the label shown is already right, ``relabel`` otherwise.
    A *hit* is a reviewed item whose label (the effective label when the reviewer saw it) was wrong. In the
    ``cleaned`` arm the reviewer works the review queue as ``GET /v1/review`` shows it (the tenants' queues in
    turn); the ``uncleaned`` arm has no queue, so the reviewer spot-checks labeled items at random.
    """

    def __init__(self, api: ApiClient, tenants: list[str], plan: Plan, arm: str, cfg: SimConfig) -> None:
        self.api = api
        self.tenants = tenants
        self.arm = arm
        self.budget = cfg.review_budget
        self.truth = {i.id: i.label for i in plan.items}
        self.tenant_of = {i.id: i.tenant for i in plan.items}
        self.arrivals = sorted((f.day, f.item) for f in plan.feedback)
        self.rng = np.random.default_rng([cfg.seed, 1])
        self.keys = {t: self._reviewer_key(t) for t in tenants}
        self.reviewed: dict[str, bool] = {}  # client id -> its label was wrong
        self.reviews_by_day: Counter[int] = Counter()
        self.hits_by_day: Counter[int] = Counter()

    def _reviewer_key(self, tenant: str) -> str:
        body = {"tenant": tenant, "scopes": ["read", "ingest"], "name": "reviewer"}
        key: str = self.api.call("POST", "/v1/keys", self.api.admin, body)["key"]
        return key

    def review_day(self, day: int) -> None:
        picks = self._from_queue() if self.arm == "cleaned" else self._spot_check(day)
        for item_id, shown in picks:
            self.decide(day, item_id, shown)

    def _from_queue(self) -> list[tuple[str, str | None]]:
        """The first ``budget`` items of the review queue as the product shows them, the tenants' queues in turn."""
        queues = [
            self.api.call("GET", f"/v1/review?task={TASK}&kind=label_issue&limit={self.budget}", self.keys[t])["items"]
            for t in self.tenants
        ]
        picks: list[tuple[str, str | None]] = []
        for rank in range(self.budget):
            for queue in queues:
                if rank < len(queue) and len(picks) < self.budget:
                    picks.append((queue[rank]["prediction_id"], queue[rank]["effective_label"]))
        return picks

    def _spot_check(self, day: int) -> list[tuple[str, str | None]]:
        """``budget`` items with feedback (arrived by today) not reviewed yet, at random; their label as shown."""
        pool = sorted({item for d, item in self.arrivals if d <= day} - set(self.reviewed))
        size = min(self.budget, len(pool))
        chosen: list[int] = sorted(int(x) for x in self.rng.choice(len(pool), size=size, replace=False)) if pool else []
        picks: list[tuple[str, str | None]] = []
        for k in chosen:
            item_id = pool[k]
            shown = self.api.call("GET", f"/v1/predictions/{item_id}", self.keys[self.tenant_of[item_id]])
            picks.append((item_id, shown["effective_label"]))
        return picks

    def decide(self, day: int, item_id: str, shown: str | None) -> None:
        truth = self.truth[item_id]
        body: dict[str, Any] = {"decision": "keep", "reviewer": REVIEWER}
        if shown != truth:
            body = {"decision": "relabel", "label": truth, "reviewer": REVIEWER}
        out = self.api.call("POST", f"/v1/review/{item_id}", self.keys[self.tenant_of[item_id]], body)
        if out["effective_label"] != truth:
            raise RuntimeError(f"review of {item_id}: effective label {out['effective_label']!r}, not {truth!r}")
        self.reviewed[item_id] = shown != truth
        self.reviews_by_day[day] += 1
        self.hits_by_day[day] += shown != truth

    def still_true(self, session: Session, task_id: int) -> int:
        """After the night: how many reviewed items' effective labels (in the database) still equal the truth."""
        if not self.reviewed:
            return 0
        rows = session.execute(
            select(Prediction.client_id, Prediction.effective_label).where(
                Prediction.task_id == task_id, Prediction.client_id.in_(list(self.reviewed))
            )
        )
        return sum(label == self.truth[cid] for cid, label in rows)
