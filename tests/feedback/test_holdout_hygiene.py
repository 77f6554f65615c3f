"""Holdout hygiene on a real database: the pass's holdout stage scores the holdout's labels with models that never
trained on them, flagged holdout labels lead the review queue (its cursor reaching every flag once), and the gate's
holdout carries their weights (and the run's lineage records them).

A deterministic fake encoder (well-separated clusters per text group) keeps these tests fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.domain.holdout import holdout_bucket
from flywheel.domain.ingest import ingest_feedback, ingest_predictions
from flywheel.domain.schemas import FeedbackIn, PredictionIn
from flywheel.domain.training_labels import holdout_weights, training_weights
from flywheel.feedback.jobs import run_label_quality
from flywheel.feedback.review import record_decision
from flywheel.models.label_quality import LabelQualityResult, LabelQualityRun
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.training import ModelTrainingRow, ModelVersion
from flywheel.retrain.dataset import build_training_data

from support import LABELS, World, register_served_model
from support.encoders import FakeEncoder

T0 = datetime(2026, 11, 20, tzinfo=UTC)
HOLDOUT = 50  # half of every tenant's predictions: holdouts large enough to cross-validate on their own


@dataclass
class Population:
    truth: dict[str, str]  # acme client id -> the label of its text's cluster
    holdout: set[str]  # acme's holdout client ids
    wrong: set[str]  # acme client ids labeled wrong
    encoder: FakeEncoder


def _settings(settings: Settings) -> Settings:
    return settings.with_(holdout_percent=HOLDOUT, label_quality_min_labeled=10, source_min_labels=10**6)


def _shift(label: str, k: int = 1) -> str:
    return LABELS[(LABELS.index(label) + k) % len(LABELS)]


def _populate(
    db: Database,
    *,
    n: int,
    outside_shift: int,
    wrong_every: int = 0,
    logged_confidence: float = 0.7,
    with_pool: bool = False,
) -> Population:
    """``n`` acme predictions whose texts fall in four clusters (cluster ``i % 4`` is ``LABELS[i % 4]``), labeled
    by end users: holdout items with their cluster's label, items outside the holdout with the label ``outside_shift``
    classes further on (0: the same), every ``wrong_every``-th item (of each split) with a wrong label instead.
    Each holdout text is also an outside-holdout text (a duplicate with that other label). The serving model logged
    ``logged_confidence`` on the cluster's label (as version ``client-v1``). ``with_pool``: globex logs the same
    texts outside its holdout, labeled like acme's outside items (the task's pool)."""
    ids = [f"p{i}" for i in range(n)]
    holdout_ids = [c for c in ids if holdout_bucket(c) < HOLDOUT]
    outside_ids = [c for c in ids if holdout_bucket(c) >= HOLDOUT]
    texts = [f"acme text {k}" for k in range(max(len(holdout_ids), len(outside_ids)))]
    encoder = FakeEncoder({t: k % 4 for k, t in enumerate(texts)})
    text_of = {c: texts[k] for k, c in enumerate(holdout_ids)} | {c: texts[k] for k, c in enumerate(outside_ids)}
    truth = {c: LABELS[texts.index(text_of[c]) % 4] for c in ids}
    given: dict[str, str] = {}
    wrong: set[str] = set()
    for split, shift in ((holdout_ids, 0), (outside_ids, outside_shift)):
        for k, cid in enumerate(split):
            given[cid] = _shift(truth[cid], shift)
            if wrong_every and k % wrong_every == wrong_every - 1:
                given[cid] = _shift(truth[cid], shift + 2)
                wrong.add(cid)
    _ingest(db, "acme", {c: text_of[c] for c in ids}, truth, given, logged_confidence)
    if with_pool:
        pool_ids = [f"g{i}" for i in range(4 * n) if holdout_bucket(f"g{i}") >= HOLDOUT][: len(texts)]
        pool_text = {g: texts[k] for k, g in enumerate(pool_ids)}
        pool_truth = {g: LABELS[k % 4] for k, g in enumerate(pool_ids)}
        pool_given = {g: _shift(lab, outside_shift) for g, lab in pool_truth.items()}
        _ingest(db, "globex", pool_text, pool_truth, pool_given, logged_confidence)
    return Population(truth, set(holdout_ids), wrong, encoder)


def _ingest(
    db: Database, slug: str, text: dict[str, str], truth: dict[str, str], given: dict[str, str], confidence: float
) -> None:
    rest = (1 - confidence) / 3
    with db.session() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
        assert tenant is not None
        items = [
            PredictionIn(
                id=cid,
                task="intent",
                text=text[cid],
                label=truth[cid],
                confidence=confidence,
                probabilities={x: (confidence if x == truth[cid] else rest) for x in LABELS},
                model_version="client-v1",
                created_at=T0,
            )
            for cid in text
        ]
        ingest_predictions(session, tenant.id, items)
        feedback = [
            FeedbackIn(
                id=f"f-{cid}",
                prediction_id=cid,
                label=given[cid],
                source="end_user",
                source_id=f"u{n % 7}",
                created_at=T0 + timedelta(minutes=n),
            )
            for n, cid in enumerate(text)
        ]
        ingest_feedback(session, tenant.id, feedback)


def _served_by_our_model(db: Database) -> None:
    """``client-v1`` becomes one of our own few-shot models that trained on none of the predictions (its lineage
    holds none of them): its logged probabilities are out-of-sample for every one of them."""
    register_served_model(db, "intent", "client-v1", created_at=T0 - timedelta(days=1))


def _results(db: Database, slug: str = "acme") -> dict[str, LabelQualityResult]:
    with db.session() as session:
        rows = session.execute(
            select(Prediction.client_id, LabelQualityResult)
            .join(LabelQualityResult, LabelQualityResult.prediction_id == Prediction.id)
            .join(Tenant, Tenant.id == Prediction.tenant_id)
            .where(Tenant.slug == slug, LabelQualityResult.kind == "labeled")
        ).all()
        for _, r in rows:
            session.expunge(r)
        return {cid: r for cid, r in rows}


def test_holdout_scoring_never_uses_a_model_that_trained_on_the_item(
    world: World, settings: Settings, db: Database
) -> None:
    """Every holdout text is also an outside-holdout text (acme's, and globex's in the pool) with a different
    label: outside the holdout cluster c is labeled c + 1, consistently. Any of those rows in the holdout's
    cross-validation folds would make the holdout's own, consistent labels look wrong; any holdout row in the main
    pass's folds would make the outside labels look wrong. Kept apart, neither split has a label issue."""
    pop = _populate(db, n=320, outside_shift=1, with_pool=True)
    s = _settings(settings)
    result = run_label_quality(db, s, tenant="acme", task="intent", encoder=pop.encoder)
    rows = _results(db)
    held = {cid: r for cid, r in rows.items() if r.holdout}
    outside = {cid: r for cid, r in rows.items() if not r.holdout}
    assert set(held) == pop.holdout and len(outside) == 320 - len(pop.holdout)
    # the holdout's verdicts come from the holdout alone: its labels agree with every other holdout label
    assert [cid for cid, r in held.items() if r.suggested_label != r.given_label] == []
    assert not any(r.is_issue for r in held.values()) and min(r.train_weight or 0 for r in held.values()) > 0.9
    # ... and the main pass never saw a holdout row: its own (shifted) labels are consistent too
    assert sum(r.is_issue for r in outside.values()) <= 2
    assert result.summary["n_labeled"] == len(outside)
    n_pool = result.summary["n_scored_with_pool"] - len(outside)
    assert n_pool > 0  # globex's rows joined the main pass's folds, as extra training rows ...
    assert result.summary["holdout"] == {
        "n_labeled": len(held),
        "n_issues": 0,
        "issue_rate": 0.0,
        "mean_weight_of_issues": None,
        "oos_sources": {"cv+logged:client-v1": len(held)},  # the customer's model logged before every label
        "skipped": None,
    }  # ... but never the holdout's, which only its own labels scored
    with db.session() as session:
        acme = select(Tenant.id).where(Tenant.slug == "acme")
        effective = dict(
            session.execute(
                select(Prediction.client_id, Prediction.effective_label).where(Prediction.tenant_id.in_(acme))
            )
            .tuples()
            .all()
        )
    assert all(effective[cid] == pop.truth[cid] for cid in pop.holdout)  # never relabeled


def test_a_holdout_too_small_is_skipped_with_its_reason(world: World, settings: Settings, db: Database) -> None:
    pop = _populate(db, n=100, outside_shift=0)  # 46 holdout labels, 54 outside it
    s = _settings(settings).with_(label_quality_min_labeled=50)
    result = run_label_quality(db, s, tenant="acme", task="intent", encoder=pop.encoder)
    assert result.summary["holdout"]["skipped"].endswith("too few to score the holdout")
    assert not any(r.holdout for r in _results(db).values())


@pytest.fixture
def noisy(world: World, db: Database) -> Population:
    """Every 6th label wrong, in the holdout and outside it; our own served model logged the probabilities."""
    pop = _populate(db, n=240, outside_shift=0, wrong_every=6, logged_confidence=0.9)
    _served_by_our_model(db)
    return pop


def test_flagged_holdout_labels_carry_the_probability_they_are_right(
    world: World, settings: Settings, db: Database, noisy: Population
) -> None:
    s = _settings(settings)
    run_label_quality(db, s, tenant="acme", task="intent", encoder=noisy.encoder)
    rows = _results(db)
    held = {cid: r for cid, r in rows.items() if r.holdout}
    flagged = {cid for cid, r in held.items() if r.is_issue}
    wrong_held = noisy.wrong & noisy.holdout
    assert len(flagged & wrong_held) >= 0.8 * len(wrong_held) and len(flagged - wrong_held) <= 2
    assert all(held[cid].oos_source == "cv+logged:client-v1" for cid in held)
    flagged_weights = [held[cid].train_weight or 1.0 for cid in flagged]
    assert max(flagged_weights) < min(r.train_weight or 1.0 for cid, r in held.items() if cid not in noisy.wrong)
    assert all(r.exclude_reason is None and r.consensus_label is None for r in held.values())
    with db.session() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))
        task = session.scalar(select(Task).where(Task.name == "intent"))
        assert tenant_id is not None and task is not None
        by_id = {
            p.client_id: p.id for p in session.scalars(select(Prediction).where(Prediction.tenant_id == tenant_id))
        }
        weights = holdout_weights(session, tenant_id, task.id)
        assert weights == {by_id[cid]: held[cid].train_weight for cid in flagged}
        assert not set(weights) & set(training_weights(session, tenant_id, task.id))  # never a training weight
        # the gate's holdout carries them (hygiene on), every other holdout item at 1; off, every item at 1
        data = build_training_data(session, task, None, holdout_percent=HOLDOUT, holdout_hygiene=True)
        assert data.holdout.weights == [weights.get(pid, 1.0) for pid in data.holdout.ids]
        assert not set(data.train.ids) & set(data.holdout.ids)
        plain = build_training_data(session, task, None, holdout_percent=HOLDOUT)
        assert plain.holdout.ids == data.holdout.ids and set(plain.holdout.weights) == {1.0}
        lineage = data.lineage()["holdout_weights"]
        assert lineage["n_weighted"] == len(flagged) and lineage["tenants"]["acme"]["n"] == len(data.holdout)
        assert lineage["tenants"]["acme"]["weights"] == {str(pid): round(w, 6) for pid, w in weights.items()}
        assert data.lineage()["holdout_sha256"] != plain.lineage()["holdout_sha256"]
        # a reviewer decides one: it counts in full at once, before the next pass
        decided = next(iter(weights))
        prediction = session.get(Prediction, decided)
        assert prediction is not None
        record_decision(session, prediction, decision="keep", label=None, note=None, reviewer="r")
        session.flush()
        assert decided not in holdout_weights(session, tenant_id, task.id)
        again = build_training_data(session, task, None, holdout_percent=HOLDOUT, holdout_hygiene=True)
        assert again.holdout.weights[again.holdout.ids.index(decided)] == 1.0


def _walk(client, url: str, headers: dict[str, str]) -> list[dict]:
    items, cursor = [], None
    while True:
        r = client.get(url + (f"&cursor={cursor}" if cursor else ""), headers=headers)
        assert r.status_code == 200, r.json
        items += r.json["items"]
        cursor = r.json["next_cursor"]
        if cursor is None:
            return items


def test_flagged_holdout_labels_lead_the_queue_and_pages_reach_each_flag_once(
    world: World, settings: Settings, db: Database, noisy: Population, client
) -> None:
    run_label_quality(db, _settings(settings), tenant="acme", task="intent", encoder=noisy.encoder)
    rows = _results(db)
    held_flags = {cid for cid, r in rows.items() if r.holdout and r.is_issue}
    other_flags = {cid for cid, r in rows.items() if not r.holdout and r.is_issue}
    assert len(held_flags) >= 5 and len(other_flags) >= 5
    rw = world.auth(world.acme_rw)
    whole = client.get("/v1/review?task=intent&kind=label_issue&limit=500", headers=rw).json
    assert whole["next_cursor"] is None and len(whole["items"]) == len(rows)
    order = [i["prediction_id"] for i in whole["items"]]
    assert set(order[: len(held_flags)]) == held_flags  # the holdout's flags first ...
    assert set(order[len(held_flags) : len(held_flags) + len(other_flags)]) == other_flags  # ... then the others
    for item in whole["items"][: len(held_flags)]:
        assert "holdout" in item["reason"] and item["reason"].startswith("likely label error")
    assert not any("holdout" in i["reason"] for i in whole["items"] if i["prediction_id"] in other_flags)
    for limit in (1, 3, 7):
        walked = [
            i["prediction_id"] for i in _walk(client, f"/v1/review?task=intent&kind=label_issue&limit={limit}", rw)
        ]
        assert walked == order  # every item once, every flag once, in the queue's order
    with db.session() as session:  # ties across the groups: one quality for every flag still pages by group, id
        session.query(LabelQualityResult).filter(LabelQualityResult.is_issue.is_(True)).update({"quality": 0.25})
    order = [i["prediction_id"] for i in client.get("/v1/review?task=intent&limit=500", headers=rw).json["items"]]
    walked = [i["prediction_id"] for i in _walk(client, "/v1/review?task=intent&kind=label_issue&limit=2", rw)]
    assert walked == order and set(walked[: len(held_flags)]) == held_flags and len(set(walked)) == len(walked)
    # another tenant sees none of it
    globex = world.auth(world.globex_rw)
    assert client.get("/v1/review?task=intent&kind=label_issue", headers=globex).json["items"] == []
    assert client.get("/v1/review?task=intent&cursor=3_0000000000000000_1", headers=rw).status_code == 422


def test_the_pass_run_records_its_holdout_stage(world: World, settings: Settings, db: Database) -> None:
    pop = _populate(db, n=200, outside_shift=0, wrong_every=5, logged_confidence=0.9)
    _served_by_our_model(db)
    result = run_label_quality(db, _settings(settings), tenant="acme", task="intent", encoder=pop.encoder)
    rows = _results(db)
    with db.session() as session:
        run = session.get(LabelQualityRun, result.run_id)
        assert run is not None
        held = run.summary["holdout"]
        assert held["n_labeled"] == len(pop.holdout) and held["n_issues"] == sum(
            r.is_issue for r in rows.values() if r.holdout
        )
        # the run's counts are the main pass's; the holdout's are in its summary
        assert run.n_labeled == sum(1 for r in rows.values() if not r.holdout)
        assert run.n_issues == sum(r.is_issue for r in rows.values() if not r.holdout)
    assert np.isclose(held["issue_rate"], held["n_issues"] / held["n_labeled"], atol=1e-4)


def test_a_tenant_sees_only_its_own_holdout_weights_in_a_runs_lineage(world: World, db: Database, client) -> None:
    from flywheel.models.training import TrainingRun
    from flywheel.retrain.dataset import LabeledSet, TrainingData

    holdout = LabeledSet()
    holdout.add(11, "a", LABELS[0], "acme", "h11", 0.2)
    holdout.add(12, "b", LABELS[1], "acme", "h12")
    holdout.add(21, "c", LABELS[0], "globex", "h21", 0.4)
    data = TrainingData(task_id=1, tenant_id=None, labels=LABELS, train=LabeledSet(), holdout=holdout, excluded=0)
    lineage = data.lineage()
    assert lineage["holdout_weights"] == {
        "n_weighted": 2,
        "weight_sum": 1.6,
        "tenants": {
            "acme": {"n": 2, "n_weighted": 1, "weights": {"11": 0.2}},
            "globex": {"n": 1, "n_weighted": 1, "weights": {"21": 0.4}},
        },
    }
    with db.session() as session:
        task_id = session.scalar(select(Task.id).where(Task.name == "intent"))
        run = TrainingRun(task_id=task_id, status="rejected", trigger="nightly", lineage=lineage, reasons=[])
        session.add(run)
        session.flush()
        run_id = run.id
    admin = client.get(f"/v1/training-runs/{run_id}", headers=world.auth(world.admin)).get_json()
    assert set(admin["lineage"]["holdout_weights"]["tenants"]) == {"acme", "globex"}
    acme = client.get(f"/v1/training-runs/{run_id}", headers=world.auth(world.acme_read)).get_json()
    assert acme["lineage"]["holdout_weights"]["tenants"] == {"acme": {"n": 2, "n_weighted": 1, "weights": {"11": 0.2}}}


def test_our_models_logged_probabilities_score_the_holdout_even_where_it_trained_on_every_other_label(
    world: World, settings: Settings, db: Database, noisy: Population
) -> None:
    """A model whose lineage holds every label outside the holdout (created after the predictions, as under the
    simulation's clocks): its logged probabilities score the holdout's labels only."""
    with db.session() as session:
        session.execute(ModelVersion.__table__.update().values(created_at=T0 + timedelta(days=1)))  # type: ignore[attr-defined]
        model_id = session.scalar(select(ModelVersion.id).where(ModelVersion.version == "client-v1"))
        acme = select(Tenant.id).where(Tenant.slug == "acme").scalar_subquery()
        outside = session.scalars(
            select(Prediction.id).where(Prediction.tenant_id == acme, Prediction.client_id.not_in(noisy.holdout))
        )
        session.add_all(ModelTrainingRow(model_id=model_id, prediction_id=pid) for pid in outside)
    run_label_quality(db, _settings(settings), tenant="acme", task="intent", encoder=noisy.encoder)
    rows = _results(db)
    assert {r.oos_source for r in rows.values() if r.holdout} == {"cv+logged:client-v1"}
    assert {r.oos_source for r in rows.values() if not r.holdout} == {"cv"}
