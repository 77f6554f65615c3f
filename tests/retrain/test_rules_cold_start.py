"""A new task with labeling rules and no human labels: its first run trains a few-shot candidate on the rules'
votes, which is refused for want of a reviewed holdout (an admin may promote it), then gated against the
zero-shot model once people label holdout items."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.domain import champions
from flywheel.domain.holdout import is_holdout
from flywheel.domain.ingest import ingest_feedback, ingest_predictions
from flywheel.domain.labeling_rules import replace_rules
from flywheel.domain.schemas import FeedbackIn, KeywordsRuleIn, PredictionIn
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.training import ModelVersion, TrainingRun
from flywheel.retrain import jobs

from support.retrain import HOLDOUT, KEYWORDS, LABELS, TASK, make_task, synthetic


def run(db: Database, settings: Settings) -> TrainingRun:
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        assert task is not None
        run_id = jobs.queue_run(session, task, None, trigger="test").id
    jobs.run_training(db, settings, run_id)
    with db.session() as session:
        done = session.get(TrainingRun, run_id)
        assert done is not None
        session.expunge(done)
        return done


def test_rules_alone_train_a_candidate_then_a_reviewed_holdout_gates_it(
    db: Database, rs: Settings, tiny_base: Path
) -> None:
    make_task(db, tiny_base, tenants=("acme",))
    texts, truth = synthetic(400, seed=21)
    ids = [f"r-{i}" for i in range(len(texts))]
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        acme = session.scalar(select(Tenant).where(Tenant.slug == "acme"))
        assert task is not None and acme is not None
        # Two keywords per label, from the label's own words: each text carries two of five, so some go unvoted.
        rules = [
            KeywordsRuleIn(name=f"{label}-words", label=label, kind="keywords", keywords=words[:2])
            for label, words in KEYWORDS.items()
        ]
        replace_rules(session, task, None, rules)
        ingest_predictions(
            session,
            acme.id,
            [
                PredictionIn(id=cid, task=TASK, text=t, label=LABELS[0], confidence=0.5)
                for cid, t in zip(ids, texts, strict=True)
            ],
        )
        zero = champions.champion_for(session, task.id, None)
        assert zero is not None and zero.rung == "zero_shot"
        voted = session.scalars(select(Prediction).where(Prediction.effective_label.is_not(None))).all()
        assert 0.3 * len(ids) < len(voted) < len(ids)
        assert all(p.effective_label == truth[ids.index(p.client_id)] for p in voted)  # these rules are right

    first = run(db, rs)
    assert first.rung == "few_shot" and first.status == "rejected", first.reasons
    assert first.lineage["n_train"] > 50 and first.metrics["candidate"]["overall"]["n"] == 0
    assert any("holdout has 0 labeled items" in r for r in first.reasons)
    with db.session() as session:
        candidate = session.get(ModelVersion, first.model_id)
        assert candidate is not None and candidate.status == "candidate"  # an admin may promote it by hand
        assert champions.champion_for(session, candidate.task_id, None).id == zero.id  # type: ignore[union-attr]

    # People label the holdout items: the next run is gated, paired, against the zero-shot model.
    labeled = [
        FeedbackIn(id=f"fb-{cid}", prediction_id=cid, label=y, source="agent", source_id="agent-1")
        for cid, y in zip(ids, truth, strict=True)
        if is_holdout(_bucket(db, cid), HOLDOUT)
    ]
    with db.session() as session:
        ingest_feedback(session, acme.id, labeled)
    second = run(db, rs)
    paired = second.metrics["gate"]["paired"]
    assert paired["n"] == len(labeled) and second.metrics["champion_version"] == zero.version
    assert second.status == "succeeded" and paired["ci_low"] > -rs.gate_tolerance, second.reasons


def _bucket(db: Database, cid: str) -> int:
    with db.session() as session:
        bucket = session.scalar(select(Prediction.bucket).where(Prediction.client_id == cid))
        assert bucket is not None
        return int(bucket)
