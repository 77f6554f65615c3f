"""Labeling rules: the endpoints (validation, scopes, tenant isolation), votes at ingest and by the nightly
back-fill, their rank in the effective label, the coverage/accuracy/conflicts figures, and a rule wrong on purpose
excluded by the label-quality pass like a careless person."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.domain.holdout import holdout_bucket
from flywheel.domain.ingest import ingest_feedback, ingest_predictions
from flywheel.domain.labeling_rules import compile_rule
from flywheel.domain.schemas import FeedbackIn, PredictionIn
from flywheel.domain.training_labels import excluded_prediction_ids
from flywheel.feedback.jobs import rules_backfill, run_label_quality
from flywheel.feedback.results import source_reliability
from flywheel.models.records import Feedback, Prediction, Task, Tenant

from support import LABELS, World
from support.encoders import FakeEncoder

RULES: dict[str, list[dict[str, Any]]] = {
    "rules": [
        {"name": "arrival-words", "label": "card_arrival", "kind": "keywords", "keywords": ["still waiting", "arrive"]},
        {"name": "rate-regex", "label": "exchange_rate", "kind": "regex", "pattern": r"\brate\b"},
    ]
}


def post(client: FlaskClient, key: str, items: list[tuple[str, str]]) -> None:
    body = {
        "predictions": [
            {"id": cid, "task": "intent", "text": text, "label": "card_linking", "confidence": 0.5}
            for cid, text in items
        ]
    }
    r = client.post("/v1/predictions", json=body, headers=World.auth(key))
    assert r.status_code in (200, 201), r.get_json()


def votes(db: Database, cid: str) -> list[tuple[str, str | None, str | None]]:
    with db.session() as session:
        return [
            (f.source, f.source_id, f.label)
            for f in session.scalars(
                select(Feedback).join(Prediction).where(Prediction.client_id == cid).order_by(Feedback.id)
            )
        ]


def effective(db: Database, cid: str) -> str | None:
    with db.session() as session:
        return session.scalar(select(Prediction.effective_label).where(Prediction.client_id == cid))


def test_keywords_match_case_insensitively_on_word_boundaries_and_regexes_as_written() -> None:
    words = compile_rule("keywords", ["refund", "money back"], None)
    assert words.search("I want a REFUND now") and words.search("my money   back please")
    assert not words.search("refunded already") and not words.search("prefund")
    regex = compile_rule("regex", None, r"\bRate\b")
    assert regex.search("the Rate today") and not regex.search("the rate today")
    assert compile_rule("regex", None, r"(?i)\brate\b").search("the RATE today")
    assert not compile_rule("keywords", [" ", "\t"], None).search("anything at all")  # blank keywords never vote


def test_put_validates_every_rule_and_names_the_bad_one(client: FlaskClient, world: World) -> None:
    admin = World.auth(world.admin)
    bad = {
        "rules": [
            {"name": "ok", "label": "card_arrival", "kind": "keywords", "keywords": ["arrive"]},
            {"name": "broken", "label": "exchange_rate", "kind": "regex", "pattern": "(unclosed"},
            {"name": "nolabel", "label": "pizza", "kind": "keywords", "keywords": ["x"]},
            {"name": "ok", "label": "card_arrival", "kind": "keywords", "keywords": ["y"]},
        ]
    }
    r = client.put("/v1/tasks/intent/rules", json=bad, headers=admin)
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    errors = {tuple(e["loc"]): e["msg"] for e in r.get_json()["errors"]}
    assert "rule 'broken': bad pattern" in errors[("rules", 1, "pattern")]
    assert "'pizza' is not a label" in errors[("rules", 2, "label")] and ("rules", 3, "name") in errors
    assert client.get("/v1/tasks/intent/rules", headers=admin).get_json()["rules"] == []  # nothing stored
    no_words = {"rules": [{"name": "x", "label": "card_arrival", "kind": "keywords", "keywords": []}]}
    assert client.put("/v1/tasks/intent/rules", json=no_words, headers=admin).status_code == 422
    assert client.put("/v1/tasks/nope/rules", json=RULES, headers=admin).status_code == 404
    assert client.put("/v1/tasks/intent/rules", json=RULES, headers=World.auth(world.acme_read)).status_code == 403
    r = client.put("/v1/tasks/intent/rules", json=RULES, headers=admin)
    assert r.status_code == 200 and [x["name"] for x in r.get_json()["rules"]] == ["arrival-words", "rate-regex"]


def test_votes_at_ingest_rank_below_people_and_tenant_rules_stay_with_their_tenant(
    client: FlaskClient, world: World
) -> None:
    assert client.put("/v1/tasks/intent/rules", json=RULES, headers=World.auth(world.admin)).status_code == 200
    own = {"rules": [{"name": "lost-words", "label": "lost_or_stolen_card", "kind": "keywords", "keywords": ["lost"]}]}
    r = client.put("/v1/tasks/intent/rules", json=own, headers=World.auth(world.acme_ingest))
    assert r.status_code == 200
    assert [(x["name"], x["tenant"]) for x in r.get_json()["rules"]] == [
        ("arrival-words", None),
        ("rate-regex", None),
        ("lost-words", "acme"),
    ]
    # A tenant may not reuse a shared rule's name, nor write another tenant's rules.
    clash = {"rules": [{**RULES["rules"][0]}]}
    assert client.put("/v1/tasks/intent/rules", json=clash, headers=World.auth(world.acme_ingest)).status_code == 422
    other = client.put("/v1/tasks/intent/rules?tenant=globex", json=own, headers=World.auth(world.acme_ingest))
    assert other.status_code == 404

    post(client, world.acme_rw, [("a1", "Still  waiting for it to ARRIVE"), ("a2", "I lost it, what rate?")])
    post(client, world.globex_rw, [("g1", "I lost my card"), ("g2", "nothing matches here")])
    assert votes(world.db, "a1") == [("rule", "arrival-words", "card_arrival")]
    assert sorted(votes(world.db, "a2")) == [
        ("rule", "lost-words", "lost_or_stolen_card"),
        ("rule", "rate-regex", "exchange_rate"),
    ]
    assert votes(world.db, "g1") == [] and votes(world.db, "g2") == []  # acme's rule is acme's alone
    assert effective(world.db, "a1") == "card_arrival"  # a rule's vote labels what nobody labeled ...
    fb = {"feedback": [{"id": "f1", "prediction_id": "a1", "label": "card_linking", "source": "system"}]}
    assert client.post("/v1/feedback", json=fb, headers=World.auth(world.acme_rw)).status_code == 201
    assert effective(world.db, "a1") == "card_linking"  # ... and any other source beats it
    got = client.get("/v1/predictions/a1", headers=World.auth(world.acme_rw)).get_json()
    assert [(f["source"], f["source_id"]) for f in got["feedback"]] == [("rule", "arrival-words"), ("system", None)]
    # Tenant isolation: globex sees the shared rules, never acme's, with figures over its own predictions.
    seen = client.get("/v1/tasks/intent/rules", headers=World.auth(world.globex_rw)).get_json()
    assert [x["name"] for x in seen["rules"]] == ["arrival-words", "rate-regex"]
    assert all(x["votes"] == 0 and x["coverage"] == 0.0 for x in seen["rules"])
    assert client.get("/v1/tasks/intent/rules?tenant=acme", headers=World.auth(world.globex_rw)).status_code == 404


def test_the_nightly_backfill_votes_on_old_predictions_and_drops_stale_votes(client: FlaskClient, world: World) -> None:
    post(client, world.acme_rw, [("old1", "when will it arrive"), ("old2", "the rate is bad"), ("old3", "hello")])
    assert votes(world.db, "old1") == []
    assert client.put("/v1/tasks/intent/rules", json=RULES, headers=World.auth(world.admin)).status_code == 200
    assert votes(world.db, "old1") == []  # PUT stores; the back-fill applies
    assert rules_backfill(world.db) == 2
    assert votes(world.db, "old1") == [("rule", "arrival-words", "card_arrival")]
    assert votes(world.db, "old2") == [("rule", "rate-regex", "exchange_rate")] and votes(world.db, "old3") == []
    assert effective(world.db, "old2") == "exchange_rate"
    assert rules_backfill(world.db) == 0  # idempotent
    # The regex rule changes its label, the keyword rule goes: their old votes go with them.
    changed = {"rules": [{**RULES["rules"][1], "label": "card_linking"}]}
    assert client.put("/v1/tasks/intent/rules", json=changed, headers=World.auth(world.admin)).status_code == 200
    assert rules_backfill(world.db) == 1
    assert votes(world.db, "old1") == [] and effective(world.db, "old1") is None
    assert votes(world.db, "old2") == [("rule", "rate-regex", "card_linking")]
    assert effective(world.db, "old2") == "card_linking"


def test_coverage_accuracy_and_conflicts(client: FlaskClient, world: World) -> None:
    assert client.put("/v1/tasks/intent/rules", json=RULES, headers=World.auth(world.admin)).status_code == 200
    post(
        client,
        world.acme_rw,
        [
            ("c1", "still waiting"),  # arrival: a person says card_arrival (right)
            ("c2", "did it arrive"),  # arrival: a person says lost_or_stolen_card (wrong)
            ("c3", "will it arrive at this rate"),  # both rules: a conflict each
            ("c4", "what rate"),  # rate only, no person
            ("c5", "nothing"),
            ("c6", "nothing at all"),
            ("c7", "still nothing"),
            ("c8", "no match"),
        ],
    )
    fb = {
        "feedback": [
            {"id": "h1", "prediction_id": "c1", "label": "card_arrival", "source": "agent", "source_id": "ana"},
            {"id": "h2", "prediction_id": "c2", "label": "lost_or_stolen_card", "source": "agent", "source_id": "ana"},
        ]
    }
    assert client.post("/v1/feedback", json=fb, headers=World.auth(world.acme_rw)).status_code == 201
    rules = {
        x["name"]: x
        for x in client.get("/v1/tasks/intent/rules", headers=World.auth(world.acme_read)).get_json()["rules"]
    }
    arrival, rate = rules["arrival-words"], rules["rate-regex"]
    assert (arrival["votes"], arrival["coverage"], arrival["accuracy"], arrival["conflicts"]) == (3, 3 / 8, 0.5, 1)
    assert (rate["votes"], rate["coverage"], rate["accuracy"], rate["conflicts"]) == (2, 2 / 8, None, 1)
    # The admin's view of the shared rules covers every tenant's predictions.
    post(client, world.globex_rw, [("g1", "arrive"), ("g2", "x")])
    everyone = client.get("/v1/tasks/intent/rules", headers=World.auth(world.admin)).get_json()["rules"]
    assert everyone[0]["votes"] == 4 and everyone[0]["coverage"] == 4 / 10


def test_a_rule_wrong_on_purpose_is_excluded_like_a_careless_person(world: World, settings: Settings) -> None:
    """160 predictions: 100 labeled by people (correct), 40 that only a bad rule labels (always wrong: it votes
    exchange_rate on a marker word put into texts of the other labels), 20 unlabeled."""
    truth = {f"p{i}": LABELS[i % 3] for i in range(160)}  # never exchange_rate
    text = {cid: f"acme text {cid}" + (" zzz" if 100 <= int(cid[1:]) < 140 else "") for cid in truth}
    encoder = FakeEncoder({text[cid]: LABELS.index(lab) for cid, lab in truth.items()})
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    from flywheel.domain.labeling_rules import replace_rules
    from flywheel.domain.schemas import RegexRuleIn

    with world.db.session() as session:
        acme = session.scalar(select(Tenant).where(Tenant.slug == "acme"))
        task = session.scalar(select(Task).where(Task.name == "intent"))
        assert acme is not None and task is not None
        rule = RegexRuleIn(name="bogus", label="exchange_rate", kind="regex", pattern=r"\bzzz\b")
        replace_rules(session, task, None, [rule])
        ingest_predictions(
            session,
            acme.id,
            [
                PredictionIn(id=cid, task="intent", text=text[cid], label=truth[cid], confidence=0.6, created_at=t0)
                for cid in truth
            ],
        )
        people = [
            FeedbackIn(
                id=f"f-{cid}",
                prediction_id=cid,
                label=truth[cid],
                source="end_user",
                source_id=f"u{n % 5}",
                created_at=t0 + timedelta(minutes=n),
            )
            for n, cid in enumerate(truth)
            if int(cid[1:]) < 100
        ]
        ingest_feedback(session, acme.id, people)
    s = settings.with_(holdout_percent=15, crowdlab_min_overlap=10, source_min_labels=10, label_quality_min_labeled=10)
    result = run_label_quality(world.db, s, tenant="acme", task="intent", encoder=encoder)
    assert result.status == "succeeded"
    with world.db.session() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))
        task_id = session.scalar(select(Task.id).where(Task.name == "intent"))
        assert tenant_id is not None and task_id is not None
        sources = {(x["source"], x["source_id"]): x for x in source_reliability(session, tenant_id, task_id)}
        assert sources[("rule", "bogus")]["excluded"] and sources[("rule", "bogus")]["issue_rate"] > 0.8
        assert not any(x["excluded"] for key, x in sources.items() if key[0] != "rule")
        excluded = excluded_prediction_ids(session, tenant_id, task_id)
        bogus_train = {
            p.id
            for p in session.scalars(select(Prediction).where(Prediction.client_id.in_(list(truth))))
            if " zzz" in p.text and holdout_bucket(p.client_id) >= 15
        }
        assert bogus_train and bogus_train <= excluded


def test_the_openapi_document_describes_the_rules_endpoints(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").get_json()
    ops = doc["paths"]["/v1/tasks/{name}/rules"]
    assert {"get", "put"} <= set(ops)
    assert "coverage" in str(doc["components"]) and "conflicts" in str(doc["components"])


def test_labels_only_rules_gave_never_count_in_sla_figures(client: FlaskClient, world: World) -> None:
    """SLAs measure against people's labels: a prediction only rules voted on counts as unlabeled."""
    from flywheel.monitoring.sla import measure_window

    assert client.put("/v1/tasks/intent/rules", json=RULES, headers=World.auth(world.admin)).status_code == 200
    post(client, world.acme_rw, [("s1", "still waiting"), ("s2", "what rate"), ("s3", "when will it arrive")])
    fb = {"feedback": [{"id": "h1", "prediction_id": "s3", "label": "card_linking", "source": "agent"}]}
    assert client.post("/v1/feedback", json=fb, headers=World.auth(world.acme_rw)).status_code == 201
    with world.db.session() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))
        task_id = session.scalar(select(Task.id).where(Task.name == "intent"))
        assert tenant_id is not None and task_id is not None
        assert session.scalar(select(func.count()).where(Prediction.effective_label.is_not(None))) == 3
        now = datetime.now(UTC)
        stats = measure_window(
            session,
            tenant_id=tenant_id,
            task_id=task_id,
            metric="accuracy",
            start=now - timedelta(days=1),
            end=now + timedelta(minutes=1),
        )
    assert (stats.n_predictions, stats.n_labeled, stats.value) == (3, 1, 1.0)  # s3: predicted card_linking, right
