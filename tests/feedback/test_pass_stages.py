"""The stages of the label-quality pass on hand-made items, without a database: the consensus and source rules
(``annotators``), what makes logged probabilities out-of-sample (``labeled_set``), and the verdict and ActiveLab
inputs (``scoring``). The whole pass on a real database is tested in test_review.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from flywheel.core.config import Settings
from flywheel.domain.effective import Vote
from flywheel.feedback.annotators import (
    METHOD_RULE,
    METHOD_RULE_EXCLUDING,
    ConsensusRow,
    build_consensus,
    consensus_excluding,
    labeled_only_by,
    rate_sources,
)
from flywheel.feedback.labeled_set import LabeledItem, LabeledSet, UnlabeledItem
from flywheel.feedback.scoring import OutOfSampleScores, label_verdict, unlabeled_probs

LABELS = ["a", "b", "c"]
T0 = datetime(2026, 11, 20, tzinfo=UTC)


def _item(pid: int, label: str, *votes: tuple[str | None, str, str | None], **extra) -> LabeledItem:
    """An item with votes ``(label, source, source_id)`` in time order."""
    return LabeledItem(
        prediction_id=pid,
        text=f"text {pid}",
        label=label,
        votes=[Vote(lab, src, sid, None, n) for n, (lab, src, sid) in enumerate(votes)],
        probabilities=extra.get("probabilities"),
        model_version=extra.get("model_version"),
        created_at=extra.get("created_at", T0),
        in_sample=extra.get("in_sample", False),
        first_label_at=extra.get("first_label_at"),
    )


def test_annotator_votes_keep_each_annotators_latest_label_and_leave_reviewers_out() -> None:
    it = _item(1, "b", ("a", "end_user", "u1"), ("b", "end_user", "u1"), ("c", "agent", None), ("b", "reviewer", "r"))
    votes = it.annotator_votes()
    assert {a: v.label for a, v in votes.items()} == {"end_user:u1": "b", "agent:-": "c"}
    assert it.reviewed and not _item(2, "a", ("a", "agent", "x")).reviewed


def test_rule_consensus_below_the_crowdlab_overlap_scores_agreement() -> None:
    items = [
        _item(1, "a", ("a", "agent", "x"), ("b", "agent", "y"), ("a", "agent", "z")),
        _item(2, "b", ("b", "end_user", "u")),
        _item(3, "c", ("c", "reviewer", "r")),
    ]
    probs = np.full((3, 3), 1 / 3)
    consensus = build_consensus(items, probs, {n: i for i, n in enumerate(LABELS)}, Settings(crowdlab_min_overlap=2))
    assert consensus.method == METHOD_RULE and consensus.overlap == 1 and consensus.annotators == 4
    assert [(r.label, r.quality) for r in consensus.rows] == [("a", pytest.approx(2 / 3)), ("b", 1.0), ("c", None)]
    assert consensus.summary() == {"method": "rule", "overlap": 1, "min_overlap": 2, "annotators": 4}
    assert consensus.label_ids({"a": 0, "b": 1}, np.array([7, 8, 9])).tolist() == [0, 1, 9]


def test_sources_are_rated_against_the_trusted_label_and_reviewers_never_excluded() -> None:
    settings = Settings(source_min_labels=3, source_exclude_issue_rate=0.5)
    items = [_item(i, "a", ("b", "end_user", "troll"), ("a", "annotator", "ok")) for i in range(3)]
    items.append(_item(3, "a", ("b", "end_user", "few")))
    stats = rate_sources(items, ["a", "a", "a", "a"], {"annotator:ok": 0.9}, settings)
    troll, ok, few = stats["end_user:troll"], stats["annotator:ok"], stats["end_user:few"]
    assert (troll.n_labels, troll.n_issues, troll.issue_rate, troll.excluded) == (3, 3, 1.0, True)
    assert (ok.issue_rate, ok.annotator_quality, ok.excluded) == (0.0, 0.9, False)
    assert few.issue_rate == 1.0 and not few.excluded  # too few labels to judge
    assert troll.annotator_quality is None and troll.source_id == "troll"
    # a label the pass trusts differently flips who is wrong
    flipped = rate_sources(items, ["b", "b", "b", "a"], {}, settings)
    assert flipped["end_user:troll"].n_issues == 0 and flipped["annotator:ok"].excluded


def test_excluded_sources_drop_out_of_the_rule_only_where_others_labeled_too() -> None:
    excluded = {"end_user:troll"}
    # the troll and two honest users: without the troll's vote the honest majority decides
    both = _item(1, "b", ("a", "end_user", "u1"), ("b", "end_user", "troll"), ("a", "end_user", "u2"))
    rule = ConsensusRow("b", 0.3, METHOD_RULE)
    assert consensus_excluding(both, rule, excluded) == ("a", METHOD_RULE_EXCLUDING)
    assert consensus_excluding(both, ConsensusRow("b", 0.3, "crowdlab"), excluded) == ("b", "crowdlab")
    assert consensus_excluding(both, rule, set()) == ("b", METHOD_RULE)
    alone = _item(2, "b", ("b", "end_user", "troll"))
    assert consensus_excluding(alone, rule, excluded) == ("b", METHOD_RULE)
    assert labeled_only_by(alone, excluded) and not labeled_only_by(both, excluded)
    assert not labeled_only_by(_item(3, "a", ("a", "reviewer", "r")), excluded)  # no annotator at all


def test_our_production_models_logged_probabilities_count_unless_their_lineage_holds_the_item() -> None:
    logged = {"a": 0.7, "b": 0.3, "gone": 0.5}
    later = T0 + timedelta(days=1)  # both models were created after every prediction (the simulation's clocks)
    items = [
        _item(1, "a", probabilities=logged, model_version="v1"),  # v1 never trained on it
        _item(2, "a", probabilities=logged, model_version="v1"),  # v1 trained on it
        _item(3, "a", probabilities=logged, model_version="zero-shot-1"),  # not a production rung
        _item(4, "a"),
        _item(5, "a", probabilities=logged, model_version="v1", in_sample=True),
        _item(6, "a", probabilities=logged, model_version="v2"),  # untraced: created after the prediction
        _item(7, "a", probabilities=logged, model_version="v2", created_at=later),  # untraced, created before
        _item(8, "a", probabilities=logged, model_version="v2", created_at=later),  # ... but its lineage holds it
    ]
    labeled = LabeledSet(
        1,
        1,
        LABELS,
        items,
        [],
        {"v1": later, "v2": later},
        frozenset({"v1", "v2", "zero-shot-1"}),
        trained=frozenset({("v1", 2), ("v2", 8), ("v2", 1)}),  # v2's row of item 1 says nothing of v1's
        untraced=frozenset({"v2"}),
    )
    assert labeled.production_usable().tolist() == [True, False, False, False, False, False, True, False]
    np.testing.assert_allclose(labeled.production_probs()[0], [0.7, 0.3, 0.0])
    np.testing.assert_allclose(labeled.production_probs()[3], [0.0, 0.0, 0.0])


def test_a_customer_models_probabilities_count_for_labels_given_after_them_unless_marked_in_sample() -> None:
    logged = {"a": 0.7, "b": 0.3}
    later = T0 + timedelta(hours=1)
    items = [
        _item(1, "a", probabilities=logged, model_version="theirs-7", first_label_at=later),  # logged, then labeled
        _item(2, "a", probabilities=logged, model_version="theirs-7", first_label_at=later, in_sample=True),
        _item(3, "a", probabilities=logged, model_version="theirs-7", first_label_at=T0 - timedelta(hours=1)),
        _item(4, "a", probabilities=logged, first_label_at=later),  # no version named: still the customer's model
        _item(5, "a", probabilities=logged, model_version="v1", first_label_at=T0 - timedelta(hours=1)),  # ours
    ]
    labeled = LabeledSet(1, 1, LABELS, items, [], {"v1": T0 + timedelta(days=1)}, frozenset({"v1"}))
    # our own model is judged by its lineage, not by when the label came (it holds no row of item 5)
    assert labeled.production_usable().tolist() == [True, False, False, True, True]
    assert labeled.logging_models().tolist() == ["theirs-7", "theirs-7", "theirs-7", "unversioned", "v1"]


def test_reviewed_label_ids_hold_the_latest_reviewer_decision() -> None:
    items = [
        _item(1, "a", ("a", "end_user", "u"), ("b", "reviewer", "r"), ("c", "reviewer", "r")),
        _item(2, "a", ("a", "end_user", "u")),
    ]
    assert LabeledSet(1, 1, LABELS, items, [], {}).reviewed_label_ids().tolist() == [2, -1]


def test_unlabeled_probabilities_fall_back_to_the_logged_label_softened_by_its_confidence() -> None:
    rows = unlabeled_probs(
        [
            UnlabeledItem(1, {"a": 2.0, "b": 2.0}, "a", 0.9),  # logged: normalized
            UnlabeledItem(2, None, "c", 0.8),  # none logged: 0.8 on "c", the rest shared
            UnlabeledItem(3, {"other": 1.0}, "nope", 0.6),  # nothing usable, unknown label: the first class
        ],
        LABELS,
    )
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    assert rows[0] == pytest.approx([0.5, 0.5, 0.0], abs=1e-5) and rows[0].min() > 0
    assert rows[1] == pytest.approx([0.1, 0.1, 0.8], abs=1e-5)
    assert rows[2] == pytest.approx([0.6, 0.2, 0.2], abs=1e-5)
    assert unlabeled_probs([], LABELS).shape == (0, 3)


def test_a_reviewed_label_is_never_an_issue_and_trains_at_full_weight() -> None:
    rng = np.random.default_rng(0)
    n, k = 60, 3
    truth = np.arange(n) % k
    probs = np.full((n, k), 0.05)
    probs[np.arange(n), truth] = 0.9
    given = truth.copy()
    given[:6] = (truth[:6] + 1) % k  # six wrong labels, the first of them reviewed (kept as it is)
    votes = [("x", "reviewer", "r")] + [(LABELS[g], "agent", "a") for g in given[1:]]
    items = [_item(i, LABELS[g], vote) for i, (g, vote) in enumerate(zip(given, votes, strict=True))]
    pool_labels = rng.integers(0, k, size=30)
    pool_probs = np.eye(k)[pool_labels] * 0.9 + 0.1 / k
    scores = OutOfSampleScores(probs, np.full(n, "cv"), np.concatenate([probs, pool_probs]), pool_labels)
    verdict = label_verdict(items, given, scores)
    assert verdict.is_issue.shape == verdict.exclude.shape == verdict.weights.shape == (n,)
    assert len(verdict.pooled_labels) == n + 30
    assert verdict.issues.is_issue[0] and not verdict.is_issue[0] and not verdict.exclude[0]
    assert verdict.weights[0] == 1.0
    assert verdict.is_issue[1:6].all() and not verdict.is_issue[6:].any()
    assert not (verdict.exclude & ~verdict.is_issue).any()
    assert verdict.weights[1:6].max() < verdict.weights[6:].min()
    # the label the pass trusts: the suggestion where the given label is an issue (not where a reviewer decided)
    trusted = verdict.trusted_labels(LABELS)
    assert trusted[0] == LABELS[given[0]] and trusted[1:6] == [LABELS[t] for t in truth[1:6]]
