"""Label-issue detection on real text (../shared/data) with labels flipped at a fixed seed, and the cleanlab adapter.

The margins are set so that a broken pipeline fails: random scores flag at the noise rate (precision ~0.2), and
in-sample probabilities (a model scoring labels it trained on) miss most flips; both are checked to fail here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flywheel.feedback import cleanlab_adapter
from flywheel.feedback.checks import (
    FULL_TRUST_PER_CLASS,
    check_labels,
    exclusion_mask,
    label_weights,
    trusted_share,
)
from flywheel.feedback.noise import confusable_partner, flip_labels, precision_recall_f1
from flywheel.feedback.oos import SOURCE_CV, SOURCE_CV_PRODUCTION, OOSConfig, out_of_sample_probabilities

from support import shared_data

pytestmark = pytest.mark.slow


def _slice(name: str, *, classes: int | None, per_class: int | None, rows: int | None, seed: int = 0):
    df = pd.read_csv(shared_data(name, "train.csv"))
    if classes is not None:
        keep = sorted(df["label"].unique())[:classes]
        df = df[df["label"].isin(keep)].groupby("label", group_keys=False).head(per_class)
    elif rows is not None:
        df = df.sample(n=rows, random_state=seed)
    names = sorted(df["label"].unique())
    y = df["label"].map({c: i for i, c in enumerate(names)}).to_numpy()
    return df["text"].tolist(), y, names


@pytest.fixture(scope="module")
def encoder():
    from flywheel.domain.encoder import load_encoder

    return load_encoder()


@pytest.fixture(scope="module")
def banking(encoder):
    texts, y, names = _slice("banking77", classes=12, per_class=40, rows=None)
    return encoder.embed(texts), y, names


@pytest.fixture(scope="module")
def sms(encoder):
    texts, y, names = _slice("sms_spam", classes=None, per_class=None, rows=400)
    return encoder.embed(texts, max_length=64), y, names


def _in_sample_probs(x: np.ndarray, y: np.ndarray, k: int, c: float = 10.0) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=300).fit(x, y)
    out = np.full((len(y), k), 1e-6)
    out[:, clf.classes_] = clf.predict_proba(x)
    return out / out.sum(axis=1, keepdims=True)


def test_banking77_flipped_labels_are_found(banking) -> None:
    x, y, names = banking
    k = len(names)
    noisy, flipped = flip_labels(y, k, rate=0.2, seed=0)
    check = check_labels(x, noisy, k)
    p, r, _ = precision_recall_f1(check.issues.is_issue, flipped)
    assert p >= 0.8 and r >= 0.8, (p, r)
    assert set(check.sources) == {SOURCE_CV}
    # the suggested label recovers the true one for most of the flips it found
    found = check.issues.is_issue & flipped
    assert (check.issues.suggested[found] == y[found]).mean() >= 0.85
    # quality ranks flips low: the flipped half of the ranking is far below the clean one
    assert np.median(check.issues.quality[flipped]) < np.median(check.issues.quality[~flipped]) / 4

    # controls: a broken pipeline fails the same bar
    rng = np.random.default_rng(0)
    random_flags = rng.random(len(y)) < flipped.mean()
    assert precision_recall_f1(random_flags, flipped)[0] < 0.4
    in_sample = cleanlab_adapter.find_label_issues(labels=noisy, pred_probs=_in_sample_probs(x, noisy, k))
    p_in, r_in, _ = precision_recall_f1(in_sample.is_issue, flipped)
    assert min(p_in, r_in) < 0.8, (p_in, r_in)


def test_few_labels_per_class_leave_out_only_the_strongest_flags(encoder) -> None:
    # 12 intents x 8 labels: a weak out-of-sample model whose flags include hard but correct labels. Everything
    # stays flagged (for review); training leaves out only the lowest-quality share, with fewer correct ones.
    texts, y, names = _slice("banking77", classes=12, per_class=8, rows=None)
    x, k = encoder.embed(texts), len(names)
    noisy, flipped = flip_labels(y, k, rate=0.2, seed=0)
    check = check_labels(x, noisy, k)
    flagged, excluded = check.issues.is_issue, check.exclude
    assert trusted_share(noisy) == pytest.approx(8 / FULL_TRUST_PER_CLASS)
    assert not (excluded & ~flagged).any()
    assert 0 < excluded.sum() <= round(flagged.sum() * 8 / FULL_TRUST_PER_CLASS)
    assert check.issues.quality[excluded].max() <= check.issues.quality[flagged & ~excluded].min()
    assert precision_recall_f1(excluded, flipped)[0] >= precision_recall_f1(flagged, flipped)[0]
    assert (excluded & ~flipped).sum() < (flagged & ~flipped).sum()


def test_enough_labels_per_class_leave_out_every_flag(banking) -> None:
    x, y, names = banking  # 40 labels per class: cleanlab's count is trusted in full
    noisy, _ = flip_labels(y, len(names), rate=0.2, seed=0)
    check = check_labels(x, noisy, len(names))
    assert trusted_share(noisy) == 1.0
    assert (check.exclude == check.issues.is_issue).all()
    lopsided = cleanlab_adapter.LabelIssues(
        np.array([True, True, False, True]), np.array([0.3, 0.1, 0.9, 0.2]), np.zeros(4, int), "test"
    )
    given = np.array([0, 1, 0, 1])
    # 2 labels per class, full trust at 6: a third of the 3 flags is left out, the lowest-quality one
    assert exclusion_mask(lopsided, given, full_trust_per_class=6, min_class_labels=1).tolist() == [
        False,
        True,
        False,
        False,
    ]
    # ... unless its class has fewer labels than min_class_labels
    assert not exclusion_mask(lopsided, given, full_trust_per_class=6, min_class_labels=3).any()


def test_label_weights_are_the_probability_that_a_label_is_right(banking) -> None:
    # Bayes' rule by hand: p = 0.5 for the given label, 20% uniform noise over K = 3 classes
    probs = np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    given = np.array([0, 0, 0])
    w = label_weights(probs, given, 0.2, min_class_labels=1)
    assert w[0] == pytest.approx(0.4 / (0.4 + 0.2 * 0.5 / 2))
    assert w[1] > w[0] > w[2] > 0.0
    assert label_weights(probs, given, 0.0, min_class_labels=1).tolist() == [1.0, 1.0, 1.0]  # no noise: all right
    assert label_weights(probs, given, 0.2, trust=0.0, min_class_labels=1).tolist() == [1.0, 1.0, 1.0]
    half = label_weights(probs, given, 0.2, trust=0.5, min_class_labels=1)
    assert half == pytest.approx(1 - 0.5 * (1 - w))
    # a class with fewer labels than the minimum keeps full weight, as it is never left out
    assert label_weights(probs, given, 0.2, min_class_labels=4).tolist() == [1.0, 1.0, 1.0]

    # on real text: the flipped labels the pass keeps weigh far less than the correct ones
    x, y, names = banking
    noisy, flipped = flip_labels(y, len(names), rate=0.2, seed=1)
    check = check_labels(x, noisy, len(names))
    kept = ~check.exclude
    assert check.weights.shape == (len(y),) and ((check.weights > 0) & (check.weights <= 1)).all()
    assert np.median(check.weights[kept & ~flipped]) > 0.95
    assert check.weights[kept & flipped].mean() < check.weights[kept & ~flipped].mean() - 0.3


def test_banking77_confusable_flips_are_found_well_above_chance(banking) -> None:
    x, y, names = banking
    k = len(names)
    noisy, flipped = flip_labels(y, k, rate=0.1, seed=1, partner=confusable_partner(x, y, k))
    check = check_labels(x, noisy, k)
    p, r, _ = precision_recall_f1(check.issues.is_issue, flipped)
    assert p >= 0.5 and r >= 0.5, (p, r)


def test_sms_spam_flipped_labels_are_found(sms) -> None:
    x, y, names = sms
    assert names == ["ham", "spam"]
    noisy, flipped = flip_labels(y, 2, rate=0.2, seed=0)
    check = check_labels(x, noisy, 2)
    p, r, _ = precision_recall_f1(check.issues.is_issue, flipped)
    assert p >= 0.75 and r >= 0.75, (p, r)
    in_sample = cleanlab_adapter.find_label_issues(labels=noisy, pred_probs=_in_sample_probs(x, noisy, 2))
    assert min(precision_recall_f1(in_sample.is_issue, flipped)[:2]) < 0.75


def test_production_probabilities_are_averaged_only_where_usable(banking) -> None:
    x, y, names = banking
    k = len(names)
    prod = np.eye(k)[y]  # a confident production model that agrees with the true labels
    usable = np.zeros(len(y), dtype=bool)
    usable[::2] = True
    cv_only = out_of_sample_probabilities(x, y, k, config=OOSConfig())
    both = out_of_sample_probabilities(x, y, k, production_probs=prod, production_usable=usable)
    assert list(both.sources[:4]) == [SOURCE_CV_PRODUCTION, SOURCE_CV, SOURCE_CV_PRODUCTION, SOURCE_CV]
    np.testing.assert_allclose(both.probs[~usable], cv_only.probs[~usable])
    rows = np.flatnonzero(usable)
    assert (both.probs[rows, y[rows]] > cv_only.probs[rows, y[rows]]).all()
    np.testing.assert_allclose(both.probs.sum(axis=1), 1.0, atol=1e-9)


def test_each_logging_model_weighs_as_much_as_it_explains_the_labels(banking) -> None:
    x, y, names = banking
    k, n = len(names), len(y)
    noisy, flipped = flip_labels(y, k, rate=0.2, seed=0)
    rng = np.random.default_rng(0)
    good = 0.1 / (k - 1) * np.ones((n, k))
    good[np.arange(n), y] = 0.9  # a customer model that is right on every item
    logged = np.where((np.arange(n) % 2 == 0)[:, None], good, rng.dirichlet(np.ones(k), size=n))
    models = np.where(np.arange(n) % 2 == 0, "strong", "random").astype(object)
    usable = np.ones(n, dtype=bool)
    mixed = out_of_sample_probabilities(
        x, noisy, k, production_probs=logged, production_usable=usable, production_models=models
    )
    strong, random = mixed.logged["strong"], mixed.logged["random"]
    assert strong.reference == random.reference == "given" and strong.n == random.n == n // 2
    assert strong.weight > 0.7 > 0.2 > random.weight, (strong, random)
    assert set(mixed.sources) == {"cv+logged:strong", "cv+logged:random"}
    # logged on every item, the strong model's say finds the flips the cross-validation alone misses
    cv_only = cleanlab_adapter.find_label_issues(
        labels=noisy, pred_probs=out_of_sample_probabilities(x, noisy, k).probs
    )
    everywhere = out_of_sample_probabilities(x, noisy, k, production_probs=good, production_usable=usable)
    with_logged = cleanlab_adapter.find_label_issues(labels=noisy, pred_probs=everywhere.probs)
    assert precision_recall_f1(with_logged.is_issue, flipped)[2] > precision_recall_f1(cv_only.is_issue, flipped)[2]
    # reviewed labels, where there are enough, are what the weight is fitted on
    reviewed = np.full(n, -1)
    reviewed[:80:2] = y[:80:2]
    refit = out_of_sample_probabilities(
        x, noisy, k, production_probs=logged, production_usable=usable, production_models=models, reference=reviewed
    )
    assert (refit.logged["strong"].reference, refit.logged["strong"].n_reference) == ("reviewed", 40)
    assert refit.logged["random"].reference == "given"
    assert refit.logged["strong"].accuracy == 1.0


def test_out_of_sample_probabilities_never_come_from_a_model_that_saw_the_example() -> None:
    # Random labels on random points: only a model that saw an example can "know" its label. Out of sample,
    # the given label's probability stays at chance; in sample, the same classifier memorizes it.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 128))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, 2, size=80)
    oos = out_of_sample_probabilities(x, y, 2).probs[np.arange(80), y]
    in_sample = _in_sample_probs(x, y, 2, c=1e4)[np.arange(80), y]
    assert oos.mean() < 0.6 < 0.8 < in_sample.mean()


def test_batched_variant_above_the_threshold_agrees_with_the_exact_call(banking) -> None:
    x, y, names = banking
    k = len(names)
    noisy, flipped = flip_labels(y, k, rate=0.2, seed=0)
    check = check_labels(x, noisy, k)
    batched = cleanlab_adapter.find_label_issues(
        labels=noisy, pred_probs=check.probs, batched_above=100, batch_size=128
    )
    assert batched.method == "find_label_issues_batched"
    assert check.issues.method.startswith("ranked")
    overlap = (batched.is_issue & check.issues.is_issue).sum() / max(check.issues.is_issue.sum(), 1)
    assert overlap >= 0.8
    assert precision_recall_f1(batched.is_issue, flipped)[1] >= 0.7


def test_crowdlab_three_agreeing_sources_beat_one_dissenter() -> None:
    rng = np.random.default_rng(0)
    n, k = 60, 3
    truth = rng.integers(0, k, size=n)
    probs = np.full((n, k), 0.2)
    probs[np.arange(n), truth] = 0.6
    multi = np.full((n, 5), np.nan)
    multi[:, 0] = multi[:, 1] = multi[:, 2] = truth  # three careful annotators
    multi[:, 3] = (truth + 1) % k  # one that always flips
    multi[::2, 4] = truth[::2]  # a fifth, partial
    out = cleanlab_adapter.multiannotator_consensus(labels_multiannotator=multi, pred_probs=probs)
    assert (out.labels == truth).all()
    assert out.annotator_quality.argmin() == 3
    assert out.quality.shape == (n,)


def test_active_learning_ranks_uncertain_unlabeled_first() -> None:
    labeled = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    multi = np.array([[0.0], [1.0], [0.0]])
    unlabeled = np.array([[0.99, 0.01], [0.5, 0.5], [0.8, 0.2]])
    _, scores = cleanlab_adapter.active_learning_scores(
        labels_multiannotator=multi, pred_probs=labeled, pred_probs_unlabeled=unlabeled
    )
    assert list(np.argsort(scores)) == [1, 2, 0]


def test_adapter_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        cleanlab_adapter.find_label_issues(labels=np.zeros(3, int), pred_probs=np.zeros(3))
    with pytest.raises(ValueError, match=r"0\.\.1"):
        cleanlab_adapter.find_label_issues(labels=np.array([0, 2]), pred_probs=np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="filter_by"):
        cleanlab_adapter.find_label_issues(labels=np.array([0, 1]), pred_probs=np.full((2, 2), 0.5), filter_by="nope")
