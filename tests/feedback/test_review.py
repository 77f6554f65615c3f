"""The label-quality pass on a real database: results, consensus, source reliability, the holdout, the review
queue and reviewer decisions over HTTP (tenant-scoped), the CLI, and the embedding cache.

A deterministic fake encoder (well-separated clusters per true label) keeps these tests fast; the real-text
quality of the pipeline is tested in test_feedback_quality.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from flywheel.cli import Context
from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.domain.embeddings import get_embeddings
from flywheel.domain.holdout import holdout_bucket
from flywheel.domain.ingest import ingest_feedback, ingest_predictions
from flywheel.domain.schemas import FeedbackIn, PredictionIn
from flywheel.domain.training_labels import excluded_prediction_ids, training_weights
from flywheel.feedback.cli import labels as labels_cli
from flywheel.feedback.jobs import label_quality_pass, run_label_quality
from flywheel.feedback.labeled_set import load_labeled_set
from flywheel.feedback.results import flagged_client_ids, source_reliability
from flywheel.feedback.review import record_decision
from flywheel.models.label_quality import EmbeddingCache, LabelQualityResult, LabelQualityRun
from flywheel.models.records import Feedback, Prediction, Task, Tenant
from flywheel.models.training import ModelTrainingRow, ModelVersion
from flywheel.retrain.dataset import build_training_data

from support import LABELS, World, register_served_model
from support.encoders import FakeEncoder

N = 160
HOLDOUT = 15
T0 = datetime(2026, 11, 20, tzinfo=UTC)


@dataclass
class Plan:
    truth: dict[str, str]  # client id -> true label
    holdout: set[str]
    troll: set[str]  # client ids the hostile source labeled (always wrong)
    crowd: list[str]  # labeled by three agents and one annotator
    target: str  # the crowd item where the annotator dissents
    unlabeled: list[str]
    encoder: FakeEncoder


def _settings(settings: Settings) -> Settings:
    return settings.with_(
        holdout_percent=HOLDOUT, crowdlab_min_overlap=10, source_min_labels=10, label_quality_min_labeled=10
    )


def _populate(db: Database) -> Plan:
    truth = {f"p{i}": LABELS[i % 4] for i in range(N)}
    holdout = {cid for cid in truth if holdout_bucket(cid) < HOLDOUT}
    text = {cid: f"acme text {cid}" for cid in truth}
    encoder = FakeEncoder({text[cid]: LABELS.index(lab) for cid, lab in truth.items()})
    ids = list(truth)
    outside = [c for c in ids if c not in holdout]
    crowd = outside[:24]
    troll = set(outside[24:54]) | {next(c for c in ids if c in holdout)}
    unlabeled = outside[-20:]
    feedback: list[dict] = []
    for n, cid in enumerate(ids):
        lab = truth[cid]
        wrong = LABELS[(LABELS.index(lab) + 1) % 4]
        at = T0 + timedelta(minutes=n)
        if cid in crowd:
            for a in ("a1", "a2", "a3"):
                feedback.append(
                    dict(id=f"f-{cid}-{a}", prediction_id=cid, label=lab, source="agent", source_id=a, created_at=at)
                )
            x1 = wrong if cid == crowd[5] else lab
            feedback.append(
                dict(
                    id=f"f-{cid}-x1",
                    prediction_id=cid,
                    label=x1,
                    source="annotator",
                    source_id="x1",
                    created_at=at + timedelta(seconds=1),
                )
            )
        elif cid in troll:
            feedback.append(
                dict(
                    id=f"f-{cid}-t", prediction_id=cid, label=wrong, source="end_user", source_id="troll", created_at=at
                )
            )
        elif cid not in unlabeled:
            feedback.append(
                dict(
                    id=f"f-{cid}-u",
                    prediction_id=cid,
                    label=lab,
                    source="end_user",
                    source_id=f"u{n % 5}",
                    created_at=at,
                )
            )
    with db.session() as session:
        acme = session.scalar(select(Tenant).where(Tenant.slug == "acme"))
        items = []
        for n, cid in enumerate(ids):
            lab = truth[cid]
            conf = 0.4 + 0.5 * ((n * 37) % 100) / 100  # varied margins for the `uncertain` queue
            rest = (1 - conf) / 3
            probs = {x: (conf if x == lab else rest) for x in LABELS}
            items.append(
                PredictionIn(
                    id=cid,
                    task="intent",
                    text=text[cid],
                    label=lab,
                    confidence=conf,
                    probabilities=probs,
                    model_version="client-v1",
                    created_at=T0,
                )
            )
        ingest_predictions(session, acme.id, items)
        ingest_feedback(session, acme.id, [FeedbackIn(**f) for f in feedback])
    return Plan(truth, holdout, troll, crowd, crowd[5], unlabeled, encoder)


def _pid(db: Database, cid: str) -> Prediction:
    with db.session() as session:
        p = session.scalar(select(Prediction).where(Prediction.client_id == cid))
        assert p is not None
        session.expunge(p)
        return p


@pytest.fixture
def plan(world: World) -> Plan:
    return _populate(world.db)


def _scope(db: Database) -> tuple[int, int]:
    with db.session() as session:
        tenant = session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))
        task = session.scalar(select(Task.id).where(Task.name == "intent"))
        assert tenant is not None and task is not None
        return tenant, task


def test_pass_flags_the_hostile_source_excludes_it_and_spares_the_holdout(
    world: World, plan: Plan, settings: Settings
) -> None:
    db, s = world.db, _settings(settings)
    target_before = _pid(db, plan.target)
    assert target_before.effective_label != plan.truth[plan.target]  # the rule: an annotator beats agents
    seen: list[float] = []
    result = run_label_quality(
        db, s, tenant="acme", task="intent", encoder=plan.encoder, progress=lambda f, _m: seen.append(f)
    )
    assert result.status == "succeeded" and seen[-1] == 1.0 and seen == sorted(seen)
    tenant_id, task_id = _scope(db)
    with db.session() as session:
        run = session.get(LabelQualityRun, result.run_id)
        assert run is not None and run.status == "succeeded" and run.progress == 1.0
        assert run.summary["consensus"]["method"] == "crowdlab"
        labeled = session.execute(
            select(LabelQualityResult, Prediction).join(Prediction).where(LabelQualityResult.kind == "labeled")
        ).tuples()
        rows, held = {}, {}
        for r, p in labeled:
            (held if r.holdout else rows)[p.client_id] = r
        # the holdout is scored apart (its own rows), never with the rest, never excluded or given a consensus
        assert not set(rows) & plan.holdout and set(held) == plan.holdout - set(plan.unlabeled)
        assert all(r.exclude_reason is None and r.consensus_label is None for r in held.values())
        troll_outside = plan.troll - plan.holdout
        flagged = {cid for cid, r in rows.items() if r.is_issue}
        assert len(flagged & troll_outside) >= 0.9 * len(troll_outside)
        assert len(flagged - troll_outside) <= 3
        for cid in troll_outside & flagged:
            assert rows[cid].suggested_label == plan.truth[cid]
            assert rows[cid].oos_source == "cv+logged:client-v1"  # the customer's model logged before the labels
        # three agreeing sources beat one dissenter (CROWDLAB), though the rule ranks the dissenter higher
        assert rows[plan.target].consensus_method == "crowdlab"
        excluded = excluded_prediction_ids(session, tenant_id, task_id)
        holdout_troll = next(iter(plan.troll & plan.holdout))
        assert holdout_troll not in {
            p.client_id for p in session.scalars(select(Prediction).where(Prediction.id.in_(excluded)))
        }
        assert {
            p.client_id for p in session.scalars(select(Prediction).where(Prediction.id.in_(excluded)))
        } >= troll_outside
        sources = source_reliability(session, tenant_id, task_id)
        assert (sources[0]["source"], sources[0]["source_id"]) == ("end_user", "troll")
        assert sources[0]["excluded"] and sources[0]["issue_rate"] > 0.8
        assert all(not s["excluded"] for s in sources[1:])
        assert flagged_client_ids(session, "intent") == flagged | {cid for cid, r in held.items() if r.is_issue}
    assert _pid(db, plan.target).effective_label == plan.truth[plan.target]
    holdout_troll_row = _pid(db, holdout_troll)
    assert holdout_troll_row.effective_label != plan.truth[holdout_troll]  # untouched: still the rule's label


def test_kept_labels_train_at_the_probability_that_they_are_right(world: World, plan: Plan, settings: Settings) -> None:
    db, s = world.db, _settings(settings)
    run_label_quality(db, s, tenant="acme", task="intent", encoder=plan.encoder)
    tenant_id, task_id = _scope(db)
    with db.session() as session:
        results = {
            p.client_id: r for r, p in session.execute(select(LabelQualityResult, Prediction).join(Prediction)).tuples()
        }
        weights = {cid: r.train_weight for cid, r in results.items() if r.kind == "labeled"}
        assert all(r.train_weight is None for r in results.values() if r.kind == "unlabeled")
        assert all(w is not None and 0.0 < w <= 1.0 for w in weights.values())
        honest = [w for cid, w in weights.items() if cid not in plan.troll and cid not in plan.crowd]
        troll = [w for cid, w in weights.items() if cid in plan.troll]
        assert np.median(honest) > 0.95 and np.mean(troll) < np.median(honest) - 0.1 and max(troll) < 0.95
        by_id = training_weights(session, tenant_id, task_id)
        assert by_id and all(w < 1.0 for w in by_id.values())
        task = session.get(Task, task_id)
        assert task is not None
        data = build_training_data(session, task, None, holdout_percent=s.holdout_percent)
        excluded = excluded_prediction_ids(session, tenant_id, task_id)
        assert not excluded & set(data.train.ids)  # left out wins over a weight
        assert data.train.weights == [by_id.get(pid, 1.0) for pid in data.train.ids]
        assert data.train.sample_weight == data.train.weights and data.lineage()["n_weighted"] > 0
        # a reviewer's decision trains at full weight: a person decided
        doubted = next(pid for pid in data.train.ids if pid in by_id)
        prediction = session.get(Prediction, doubted)
        assert prediction is not None
        record_decision(session, prediction, decision="keep", label=None, note=None, reviewer="r")
        session.flush()
        assert doubted not in training_weights(session, tenant_id, task_id)
        again = build_training_data(session, task, None, holdout_percent=s.holdout_percent)
        assert again.train.weights[again.train.ids.index(doubted)] == 1.0


def test_pass_is_safe_to_run_twice(world: World, plan: Plan, settings: Settings) -> None:
    db, s = world.db, _settings(settings)
    first = run_label_quality(db, s, tenant="acme", task="intent", encoder=plan.encoder)
    calls = len(plan.encoder.calls)
    with db.session() as session:
        labels_before = dict(session.execute(select(Prediction.id, Prediction.effective_label)).tuples().all())
    with db.session() as session:
        before = sorted(
            session.execute(
                select(LabelQualityResult.prediction_id, LabelQualityResult.is_issue, LabelQualityResult.kind)
            ).all()
        )
    ids = label_quality_pass(db, s, encoder=plan.encoder)
    assert len(ids) == 1 and ids[0] != first.run_id
    assert len(plan.encoder.calls) == calls  # every embedding came from the cache
    with db.session() as session:
        after = sorted(
            session.execute(
                select(LabelQualityResult.prediction_id, LabelQualityResult.is_issue, LabelQualityResult.kind)
            ).all()
        )
        assert session.scalar(select(func.count(LabelQualityRun.id))) == 2
        assert set(session.scalars(select(LabelQualityResult.run_id))) == {ids[0]}
    # the same predictions, one row each; the verdicts agree up to borderline cases (the first pass applied
    # the CROWDLAB consensus, so the second one's folds and probabilities differ slightly)
    assert [(p, k) for p, _, k in after] == [(p, k) for p, _, k in before]
    flagged_before = {p for p, issue, _ in before if issue}
    flagged_after = {p for p, issue, _ in after if issue}
    assert len(flagged_before & flagged_after) >= 0.8 * max(len(flagged_before), len(flagged_after))
    with db.session() as session:
        labels_after = dict(session.execute(select(Prediction.id, Prediction.effective_label)).tuples().all())
    assert labels_after == labels_before  # the effective labels are a fixed point of the pass


def test_too_few_labels_is_a_finished_run_with_nothing_to_score(world: World, settings: Settings) -> None:
    result = run_label_quality(world.db, _settings(settings), tenant="acme", task="intent", encoder=FakeEncoder({}))
    assert result.status == "succeeded" and result.n_labeled == 0
    assert "too few" in result.summary["message"]


def test_review_queue_and_decisions_over_http(world: World, plan: Plan, settings: Settings, client) -> None:
    db = world.db
    run_label_quality(db, _settings(settings), tenant="acme", task="intent", encoder=plan.encoder)
    rw = world.auth(world.acme_rw)
    r = client.get("/v1/review?task=intent&kind=label_issue&limit=10", headers=rw)
    assert r.status_code == 200, r.json
    items = r.json["items"]
    assert len(items) == 10
    # the holdout's flagged label first (it judges every promotion), then the others by label quality
    held = [i for i in items if "holdout" in i["reason"]]
    assert [i["prediction_id"] for i in held] == [next(iter(plan.troll & plan.holdout))] and items[0] == held[0]
    assert [i["quality"] for i in items[1:]] == sorted(i["quality"] for i in items[1:])
    assert all(i["prediction_id"] in plan.troll for i in items)
    first = items[0]
    assert first["suggested_label"] == plan.truth[first["prediction_id"]]
    assert first["feedback"][0]["source_id"] == "troll"

    # relabel: stored as reviewer feedback (an audit trail), the effective label follows, the item leaves the queue
    cid = first["prediction_id"]
    r = client.post(
        f"/v1/review/{cid}",
        headers=rw,
        json={"decision": "relabel", "label": first["suggested_label"], "note": "troll"},
    )
    assert r.status_code == 201, r.json
    assert r.json["effective_label"] == plan.truth[cid]
    assert r.json["feedback"]["source"] == "reviewer" and r.json["feedback"]["decision"] == "relabel"
    shown = client.get(f"/v1/predictions/{cid}", headers=rw).json
    assert [f["source"] for f in shown["feedback"]] == ["end_user", "reviewer"]
    assert shown["feedback"][0]["label"] != plan.truth[cid]  # the original is kept, never edited
    assert shown["effective_label"] == plan.truth[cid]
    again = client.get("/v1/review?task=intent&kind=label_issue&limit=50", headers=rw).json["items"]
    assert cid not in {i["prediction_id"] for i in again}
    tenant_id, task_id = _scope(db)
    with db.session() as session:
        assert _pid(db, cid).id not in excluded_prediction_ids(session, tenant_id, task_id)

    # discard and keep
    second, third = items[1]["prediction_id"], items[2]["prediction_id"]
    r = client.post(f"/v1/review/{second}", headers=rw, json={"decision": "discard"})
    assert r.status_code == 201 and r.json["label_discarded"] is True and r.json["effective_label"] is None
    kept, discarded = _pid(db, third).id, _pid(db, second).id
    with db.session() as session:
        assert kept in excluded_prediction_ids(session, tenant_id, task_id)
    r = client.post(f"/v1/review/{third}", headers=rw, json={"decision": "keep"})
    assert r.status_code == 201 and r.json["effective_label"] == items[2]["effective_label"]
    with db.session() as session:  # a person kept it: it trains again at once, not after the next pass
        excluded = excluded_prediction_ids(session, tenant_id, task_id)
    assert kept not in excluded and discarded in excluded
    with db.session() as session:
        reviewer_rows = session.scalars(select(Feedback).where(Feedback.source == "reviewer")).all()
        assert sorted(f.decision for f in reviewer_rows) == ["discard", "keep", "relabel"]

    # validation
    assert client.post(f"/v1/review/{third}", headers=rw, json={"decision": "relabel"}).status_code == 422
    bad = client.post(f"/v1/review/{third}", headers=rw, json={"decision": "relabel", "label": "nope"})
    assert bad.status_code == 422 and bad.json["errors"][0]["loc"] == ["label"]
    assert (
        client.post(f"/v1/review/{third}", headers=rw, json={"decision": "keep", "label": LABELS[0]}).status_code == 422
    )
    assert client.post(f"/v1/review/{third}", headers=rw, json={"decision": "maybe"}).status_code == 422
    assert client.post("/v1/review/nope", headers=rw, json={"decision": "keep"}).status_code == 404
    assert (
        client.post(f"/v1/review/{third}", headers=world.auth(world.acme_read), json={"decision": "keep"}).status_code
        == 403
    )


def _walk(client, url: str, headers: dict[str, str]) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        r = client.get(url + (f"&cursor={cursor}" if cursor else ""), headers=headers)
        assert r.status_code == 200, r.json
        pages.append(r.json["items"])
        cursor = r.json["next_cursor"]
        if cursor is None:
            return pages


def test_the_queue_pages_reach_every_item_once_in_order(world: World, plan: Plan, settings: Settings, client) -> None:
    run_label_quality(world.db, _settings(settings), tenant="acme", task="intent", encoder=plan.encoder)
    rw = world.auth(world.acme_rw)
    for kind in ("label_issue", "uncertain"):
        whole = client.get(f"/v1/review?task=intent&kind={kind}&limit=500", headers=rw).json
        assert whole["next_cursor"] is None and len(whole["items"]) > 14
        pages = _walk(client, f"/v1/review?task=intent&kind={kind}&limit=7", rw)
        assert all(len(page) == 7 for page in pages[:-1]) and len(pages) > 2
        walked = [i["prediction_id"] for page in pages for i in page]
        assert walked == [i["prediction_id"] for i in whole["items"]]  # each once, in the queue's order
    with world.db.session() as session:  # ties: many flags with one quality still page by id, none skipped
        session.query(LabelQualityResult).filter(LabelQualityResult.is_issue.is_(True)).update({"quality": 0.25})
    whole = client.get("/v1/review?task=intent&kind=label_issue&limit=500", headers=rw).json["items"]
    flags = [i["prediction_id"] for i in whole if i["reason"].startswith("likely label error")]
    assert len(flags) > 3
    walked = [
        i["prediction_id"]
        for page in _walk(client, "/v1/review?task=intent&kind=label_issue&limit=2", rw)
        for i in page
    ]
    assert walked[: len(flags)] == flags and len(walked) == len(set(walked)) == len(whole)
    bad = client.get("/v1/review?task=intent&cursor=1_zz_3", headers=rw)
    assert bad.status_code == 422 and bad.content_type == "application/problem+json"


def test_review_and_label_quality_are_tenant_scoped(world: World, plan: Plan, settings: Settings, client) -> None:
    run_label_quality(world.db, _settings(settings), tenant="acme", task="intent", encoder=plan.encoder)
    globex = world.auth(world.globex_rw)
    assert client.get("/v1/review?task=intent", headers=globex).json["items"] == []
    assert client.get("/v1/review?task=intent&kind=uncertain", headers=globex).json["items"] == []
    some = next(iter(plan.troll - plan.holdout))
    r = client.post(f"/v1/review/{some}", headers=globex, json={"decision": "discard"})
    assert r.status_code == 404  # exactly as a prediction that does not exist
    assert _pid(world.db, some).label_discarded is False
    lq = client.get("/v1/label-quality?task=intent", headers=globex).json
    assert lq["tenant"] == "globex" and lq["sources"] == [] and lq["latest_run"] is None
    # another tenant named by a non-admin key: 404; an admin may name it
    assert client.get("/v1/review?task=intent&tenant=acme", headers=globex).status_code == 404
    admin = world.auth(world.admin)
    assert client.get("/v1/review?task=intent&tenant=acme", headers=admin).json["items"]
    assert client.get("/v1/review?task=intent", headers=admin).status_code == 422
    assert client.get("/v1/review?task=nope", headers=globex).status_code == 404
    assert client.get("/v1/review?task=intent&kind=bogus", headers=globex).status_code == 422
    assert client.get("/v1/review?task=intent").status_code == 401


def test_label_quality_endpoint(world: World, plan: Plan, settings: Settings, client) -> None:
    rw = world.auth(world.acme_read)
    empty = client.get("/v1/label-quality?task=intent", headers=rw).json
    assert empty["latest_run"] is None and empty["sources"] == []
    run_label_quality(world.db, _settings(settings), tenant="acme", task="intent", encoder=plan.encoder)
    body = client.get("/v1/label-quality?task=intent", headers=rw).json
    assert body["latest_run"]["status"] == "succeeded" and body["latest_run"]["n_issues"] >= 25
    summary = body["latest_run"]["summary"]
    assert summary["oos_sources"] == {"cv+logged:client-v1": body["latest_run"]["n_labeled"]}
    assert summary["logged_models"]["client-v1"]["n"] == body["latest_run"]["n_labeled"]
    worst = body["sources"][0]
    assert (worst["source"], worst["source_id"], worst["excluded"]) == ("end_user", "troll", True)
    rates = [s["issue_rate"] for s in body["sources"]]
    assert rates == sorted(rates, reverse=True)
    assert client.get("/openapi.json").json["paths"]["/v1/label-quality"]["get"]


def test_uncertain_queue_before_and_after_the_pass(world: World, plan: Plan, settings: Settings, client) -> None:
    rw = world.auth(world.acme_rw)
    before = client.get("/v1/review?task=intent&kind=uncertain&limit=5", headers=rw).json["items"]
    assert {i["prediction_id"] for i in before} <= set(plan.unlabeled)
    assert "margin" in before[0]["reason"]
    with world.db.session() as session:
        conf = dict(
            session.execute(
                select(Prediction.client_id, Prediction.confidence).where(Prediction.client_id.in_(plan.unlabeled))
            )
            .tuples()
            .all()
        )
    assert [conf[i["prediction_id"]] for i in before] == sorted(conf.values())[:5]
    run_label_quality(world.db, _settings(settings), tenant="acme", task="intent", encoder=plan.encoder)
    after = client.get("/v1/review?task=intent&kind=uncertain&limit=50", headers=rw).json["items"]
    assert {i["prediction_id"] for i in after} == set(plan.unlabeled)
    assert "ActiveLab" in after[0]["reason"]
    assert [conf[i["prediction_id"]] for i in after] == sorted(conf.values())


def test_cli_labels_check_prints_a_summary(world: World, plan: Plan, settings: Settings, monkeypatch) -> None:
    import flywheel.domain.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "load_encoder", lambda *a, **k: plan.encoder)
    ctx = Context(_settings(settings))
    result = CliRunner().invoke(
        labels_cli, ["check", "--tenant", "acme", "--task", "intent", "--no-progress"], obj=ctx, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "label issues:" in result.output and "end_user:troll" in result.output and "EXCLUDED" in result.output
    assert "logged by client-v1:" in result.output and "given labels)" in result.output
    bad = CliRunner().invoke(labels_cli, ["check", "--tenant", "nope", "--task", "intent"], obj=ctx)
    assert bad.exit_code != 0 and "does not exist" in bad.output


def test_get_embeddings_computes_only_missing_texts(world: World) -> None:
    enc = FakeEncoder({"a": 0, "b": 1, "c": 2})
    with world.db.session() as session:
        first = get_embeddings(session, ["a", "b", "a"], encoder=enc)
    assert enc.calls == [2] and first.shape == (3, 16) and first.dtype == np.float32
    np.testing.assert_array_equal(first[0], first[2])
    done: list[int] = []
    with world.db.session() as session:
        second = get_embeddings(session, ["b", "c", "a"], encoder=enc, progress=done.append)
        assert session.scalar(select(func.count(EmbeddingCache.id))) == 3
    assert enc.calls == [2, 1] and sum(done) == 3
    np.testing.assert_array_equal(second[0], first[1])
    np.testing.assert_array_equal(second[2], first[0])
    other = FakeEncoder({"a": 0}, id="another-encoder")
    with world.db.session() as session:
        get_embeddings(session, ["a"], encoder=other)
    assert other.calls == [1]  # the cache is keyed by encoder too
    with world.db.session() as session:
        assert get_embeddings(session, [], encoder=enc).shape == (0, 16)


def _outside_sources(db: Database) -> dict[str, str]:
    """Client id → ``oos_source`` of each labeled result outside the holdout."""
    with db.session() as session:
        rows = session.execute(
            select(Prediction.client_id, LabelQualityResult.oos_source)
            .join(Prediction, Prediction.id == LabelQualityResult.prediction_id)
            .where(LabelQualityResult.kind == "labeled", LabelQualityResult.holdout.is_(False))
        )
        return {cid: source for cid, source in rows}


def test_our_own_models_logged_probabilities_count_unless_its_lineage_holds_the_item(
    world: World, plan: Plan, settings: Settings
) -> None:
    db = world.db
    # created a day after every prediction: under the simulation's two clocks a served model looks this way
    model_id = register_served_model(db, "intent", "client-v1", created_at=T0 + timedelta(days=1))
    run_label_quality(db, _settings(settings), tenant="acme", task="intent", encoder=plan.encoder)
    assert set(_outside_sources(db).values()) == {"cv+logged:client-v1"}
    outside = sorted(cid for cid in plan.truth if cid not in plan.holdout and cid not in plan.unlabeled)
    trained_on = set(outside[60:70])
    with db.session() as session:
        pids = session.scalars(select(Prediction.id).where(Prediction.client_id.in_(trained_on)))
        session.add_all(ModelTrainingRow(model_id=model_id, prediction_id=pid) for pid in pids)
    result = run_label_quality(db, _settings(settings), tenant="acme", task="intent", encoder=plan.encoder)
    sources = _outside_sources(db)
    assert {sources[c] for c in trained_on} == {"cv"}
    assert {sources[c] for c in set(sources) - trained_on} == {"cv+logged:client-v1"}
    assert result.summary["logged_models"]["client-v1"]["n"] == len(sources) - len(trained_on)
    # a tainted model's lineage may lack rows (a tenant stopped sharing): creation time decides, as it came later
    with db.session() as session:
        session.execute(update(ModelVersion).values(tainted_at=T0 + timedelta(days=2), tainted_rows=3))
    run_label_quality(db, _settings(settings), tenant="acme", task="intent", encoder=plan.encoder)
    assert set(_outside_sources(db).values()) == {
        "cv"
    }  # (the holdout's labels it never trained on: test_holdout_hygiene.py)


def test_only_the_tenants_own_lineage_and_models_decide_its_logged_probabilities(
    world: World, plan: Plan, settings: Settings
) -> None:
    db, s = world.db, _settings(settings)
    shared = register_served_model(db, "intent", "client-v1", created_at=T0 + timedelta(days=1))
    # globex's variant, whose name acme's backend logs some predictions under: for acme, a customer model
    variant = register_served_model(db, "intent", "globex-v1", created_at=T0 + timedelta(days=1), tenant="globex")
    outside = sorted(cid for cid in plan.truth if cid not in plan.holdout and cid not in plan.unlabeled)
    theirs = set(outside[:20])
    with db.session() as session:
        globex = session.scalar(select(Tenant).where(Tenant.slug == "globex"))
        assert globex is not None
        logged = {x: 0.25 for x in LABELS}
        items = [
            PredictionIn(
                id=f"g{i}",
                task="intent",
                text=f"globex text {i}",
                label=LABELS[i % 4],
                confidence=0.25,
                probabilities=logged,
                model_version="client-v1",
                created_at=T0,
            )
            for i in range(40)
        ]
        ingest_predictions(session, globex.id, items)
        votes = [
            FeedbackIn(
                id=f"gf{i}",
                prediction_id=f"g{i}",
                label=LABELS[i % 4],
                source="end_user",
                created_at=T0 + timedelta(hours=1),
            )
            for i in range(40)
        ]
        ingest_feedback(session, globex.id, votes)
        session.execute(update(Prediction).where(Prediction.client_id.in_(theirs)).values(model_version="globex-v1"))
        acme_theirs = session.scalars(select(Prediction.id).where(Prediction.client_id.in_(theirs)))
        globex_ids = session.scalars(select(Prediction.id).where(Prediction.tenant_id == globex.id)).all()
        # rows no pass of acme's may read: the variant's over acme's items, the shared model's over globex's
        session.add_all(ModelTrainingRow(model_id=variant, prediction_id=pid) for pid in acme_theirs)
        session.add_all(ModelTrainingRow(model_id=shared, prediction_id=pid) for pid in globex_ids)
        acme_id, task_id, globex_id = (
            session.scalar(select(Tenant.id).where(Tenant.slug == "acme")),
            session.scalar(select(Task.id).where(Task.name == "intent")),
            globex.id,
        )
    acme = load_labeled_set(db, s, acme_id, task_id)
    assert acme.trained == frozenset() and acme.own_models == {"client-v1"}
    assert acme.production_usable().all()  # "globex-v1": logged before each label, as a customer model counts
    assert {it.model_version for it in acme.items} == {"client-v1", "globex-v1"}
    theirs_loaded = load_labeled_set(db, s, globex_id, task_id)
    assert theirs_loaded.trained == {("client-v1", it.prediction_id) for it in theirs_loaded.items}
    assert theirs_loaded.items and not theirs_loaded.production_usable().any()


def test_a_customer_model_scores_labels_given_after_it_logged_but_not_ones_it_trained_on(
    world: World, plan: Plan, settings: Settings
) -> None:
    db = world.db
    outside = sorted(cid for cid in plan.truth if cid not in plan.holdout and cid not in plan.unlabeled)
    trained_on, logged_late = set(outside[60:70]), set(outside[70:80])
    with db.session() as session:
        session.execute(update(Prediction).where(Prediction.client_id.in_(trained_on)).values(in_sample=True))
        # logged a day after its label was given: that model may have learned the label
        session.execute(
            update(Prediction).where(Prediction.client_id.in_(logged_late)).values(created_at=T0 + timedelta(days=1))
        )
    result = run_label_quality(db, _settings(settings), tenant="acme", task="intent", encoder=plan.encoder)
    with db.session() as session:
        rows = session.execute(
            select(Prediction.client_id, LabelQualityResult.oos_source)
            .join(Prediction, Prediction.id == LabelQualityResult.prediction_id)
            .where(LabelQualityResult.kind == "labeled", LabelQualityResult.holdout.is_(False))
        )
        sources = {cid: source for cid, source in rows}
    assert {sources[c] for c in trained_on | logged_late} == {"cv"}
    others = set(sources) - trained_on - logged_late
    assert {sources[c] for c in others} == {"cv+logged:client-v1"}
    weight = result.summary["logged_models"]["client-v1"]
    assert weight["n"] == len(others) and weight["reference"] == "given" and 0.0 <= weight["weight"] <= 1.0


def test_a_failing_pass_marks_its_run_failed(world: World, plan: Plan, settings: Settings) -> None:
    class Broken(FakeEncoder):
        def embed(self, texts, **_kwargs):
            raise RuntimeError("encoder exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        run_label_quality(world.db, _settings(settings), tenant="acme", task="intent", encoder=Broken({}))
    with world.db.session() as session:
        run = session.scalars(select(LabelQualityRun)).one()
        assert run.status == "failed" and "encoder exploded" in (run.error or "") and run.finished_at is not None
        assert session.scalar(select(func.count(LabelQualityResult.id))) == 0
    # the scheduled job logs the failure and carries on
    assert label_quality_pass(world.db, _settings(settings), encoder=Broken({})) == []
