"""The evaluation gate's rules, as pure functions over paired holdout evaluations, and its bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.retrain.gate import (
    Evaluation,
    GatePolicy,
    compute_metrics,
    decide,
    evaluate_predictions,
    paired_difference,
)

from support.gate import LABELS, ev


def test_compute_metrics_accuracy_macro_f1_and_per_label() -> None:
    m = compute_metrics(["a", "a", "b", "c"], ["a", "b", "b", "b"], LABELS)
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["recall:a"] == pytest.approx(0.5)
    assert m["precision:b"] == pytest.approx(1 / 3)
    assert "precision:c" not in m  # never predicted: undefined, not zero
    # F1: a = 2*1/(2+1), b = 2*1/(1+3), c = 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    with pytest.raises(ValueError, match="y_true has 2 items but y_pred has 1"):
        compute_metrics(["a", "b"], ["a"], LABELS)


def test_evaluate_predictions_splits_by_tenant() -> None:
    e = evaluate_predictions(["a", "b", "a", "b"], ["a", "b", "b", "b"], ["x", "x", "y", "y"], LABELS)
    assert e.overall["accuracy"] == pytest.approx(0.75)
    assert e.tenants["x"]["accuracy"] == 1.0
    assert e.tenants["y"]["accuracy"] == 0.5


def test_the_paired_interval_is_deterministic_under_a_seed_and_matches_the_point_difference() -> None:
    rng = np.random.default_rng(3)
    truth = list(rng.choice(LABELS, size=300))
    a = [t if rng.random() < 0.8 else "a" for t in truth]
    b = [t if rng.random() < 0.7 else "b" for t in truth]
    for metric in ("accuracy", "macro_f1", "recall:a", "precision:b"):
        first = paired_difference(truth, a, b, LABELS, metric=metric, seed=7)
        assert first is not None and first == paired_difference(truth, a, b, LABELS, metric=metric, seed=7)
        point = compute_metrics(truth, a, LABELS)[metric] - compute_metrics(truth, b, LABELS)[metric]
        assert first.difference == pytest.approx(point) and first.n == 300
        assert first.ci_low < first.difference < first.ci_high
    # Identical models differ by exactly zero, with no uncertainty: the noise they share cancels.
    same = paired_difference(truth, a, a, LABELS)
    assert same is not None and (same.difference, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    assert paired_difference([], [], [], LABELS) is None


def test_the_paired_interval_covers_the_true_difference_in_at_least_90_of_100_draws() -> None:
    """Two correlated models with true accuracies 0.80 and 0.75 on 200 fresh holdout items per draw."""
    rng = np.random.default_rng(0)
    covered = 0
    for draw in range(100):
        truth = list(rng.choice(LABELS, size=200))
        shared = rng.random(200)  # the items both find hard: the pairing the bootstrap must keep
        own = rng.random(200)
        a_right = np.where(rng.random(200) < 0.5, shared, own) < 0.80
        b_right = np.where(rng.random(200) < 0.5, shared, rng.random(200)) < 0.75
        a = [t if ok else LABELS[(LABELS.index(t) + 1) % 3] for t, ok in zip(truth, a_right, strict=True)]
        b = [t if ok else LABELS[(LABELS.index(t) + 2) % 3] for t, ok in zip(truth, b_right, strict=True)]
        p = paired_difference(truth, a, b, LABELS, seed=draw, n_boot=1000)
        assert p is not None
        covered += p.ci_low <= 0.05 <= p.ci_high
    assert covered >= 90, covered


def test_better_candidate_is_promoted_and_worse_one_refused() -> None:
    promoted = decide(ev(0.90), ev(0.80))
    assert promoted.promote and promoted.paired is not None
    assert promoted.paired.overall.difference == pytest.approx(0.10) and promoted.paired.overall.ci_low > 0
    assert set(promoted.paired.to_dict()) == {"metric", "difference", "ci_low", "ci_high", "n", "tenants"}
    refused = decide(ev(0.70), ev(0.80))
    assert not refused.promote
    assert "worse than the champion" in refused.reasons[0] and "95% interval" in refused.reasons[0]


def test_the_lower_bound_must_clear_minus_the_tolerance() -> None:
    # One item worse in 200: the interval reaches about -0.015, inside a 0.02 tolerance, outside a 0.01 one.
    assert decide(ev(0.795), ev(0.80), policy=GatePolicy(tolerance=0.02)).promote
    assert not decide(ev(0.795), ev(0.80), policy=GatePolicy(tolerance=0.01)).promote
    # A 2-point point-estimate loss on 200 items is refused: the interval cannot rule out a real regression.
    assert not decide(ev(0.78), ev(0.80)).promote


def test_a_proven_tenant_regression_refuses_even_when_overall_improves() -> None:
    cand = ev(acme=(1.0, 300), globex=(0.60, 100))
    champ = ev(acme=(0.80, 300), globex=(0.85, 100))
    d = decide(cand, champ)
    assert not d.promote
    assert any(r.startswith("tenant globex:") and "regresses" in r for r in d.reasons)
    assert d.paired is not None and d.paired.tenants["globex"].ci_high < -0.02
    # A tenant too small to measure is not held against the candidate, nor a tenant the model does not serve ...
    assert decide(ev(acme=(1.0, 300), globex=(0.4, 5)), ev(acme=(0.8, 300), globex=(0.9, 5))).promote
    assert decide(cand, champ, ignore_tenants=["globex"]).promote
    # ... nor a dip its interval cannot tell from noise (2 items of 40: the interval reaches above -0.02).
    assert decide(ev(acme=(1.0, 300), globex=(0.85, 40)), ev(acme=(0.8, 300), globex=(0.90, 40))).promote


def test_an_sla_refuses_only_a_breach_the_interval_proves() -> None:
    sla = {"acme": [("accuracy", 0.90)]}
    # Proven below the SLA the champion meets: refused.
    d = decide(ev(acme=(0.70, 100), globex=(1.0, 300)), ev(acme=(0.92, 100), globex=(0.5, 300)), slas=sla)
    assert not d.promote and any("below its SLA threshold" in r for r in d.reasons)
    # Below the threshold on the point estimate, but the interval still reaches it: not a proven breach
    # (the intentional change from the point rule, which refused this).
    assert decide(ev(acme=(0.88, 100), globex=(1.0, 300)), ev(acme=(0.91, 100), globex=(0.5, 300)), slas=sla).promote
    # The champion already breaches: the tenant's regression rule judges, not the SLA.
    assert decide(ev(acme=(0.80, 100), globex=(1.0, 300)), ev(acme=(0.81, 100), globex=(0.5, 300)), slas=sla).promote


def test_unclean_runs_empty_holdouts_unpaired_evaluations_and_no_champion() -> None:
    assert not decide(ev(0.99), ev(0.5), clean=False).promote
    empty = decide(Evaluation(overall={"n": 0.0}, tenants={}), None)
    assert not empty.promote and "holdout has 0 labeled items" in empty.reasons[0]
    alone = decide(ev(0.4), None)
    assert alone.promote and alone.paired is None
    unpaired = decide(ev(0.9), Evaluation(overall={"n": 200.0, "accuracy": 0.5}))
    assert not unpaired.promote and "not scored on the same holdout items" in unpaired.reasons[0]


def test_tenant_variant_must_beat_the_shared_model_with_confidence() -> None:
    policy = GatePolicy(min_gain=0.01)
    assert not decide(ev(0.80), ev(0.80), policy=policy, require_gain=True).promote
    assert not decide(ev(0.805), ev(0.80), policy=policy, require_gain=True).promote
    refused = decide(ev(0.82), ev(0.80), policy=policy, require_gain=True)  # +2 points on 200: lower bound < 0.01
    assert not refused.promote and "does not beat the current model" in refused.reasons[0]
    assert decide(ev(0.90), ev(0.80), policy=policy, require_gain=True).promote


def test_other_metrics_can_gate() -> None:
    truth = ["a"] * 40 + ["b"] * 60
    cand = evaluate_predictions(truth, ["a"] * 40 + ["b"] * 50 + ["a"] * 10, ["x"] * 100, LABELS)  # 0.9; recall:b 5/6
    champ = evaluate_predictions(truth, ["b"] * 100, ["x"] * 100, LABELS)  # accuracy 0.6, recall:b 1
    assert decide(cand, champ).promote
    assert not decide(cand, champ, policy=GatePolicy(metric="recall:b")).promote


def _noisy_holdout() -> tuple[list[str], list[str], list[str], list[float]]:
    """200 items whose true labels both models see; 40 of them carry a wrong label (the label-quality pass flagged
    them, weight 0.05). The candidate is right on every true label; the champion is wrong on 20 of the clean items
    and agrees with the wrong label on the 40 noisy ones, so the noisy labels make it look the better model."""
    truth = [LABELS[i % 3] for i in range(200)]
    given = [LABELS[(LABELS.index(t) + 1) % 3] if i < 40 else t for i, t in enumerate(truth)]
    candidate = list(truth)
    champion = [
        g if i < 40 or i >= 60 else LABELS[(LABELS.index(t) + 2) % 3]
        for i, (t, g) in enumerate(zip(truth, given, strict=True))
    ]
    weights = [0.05 if i < 40 else 1.0 for i in range(200)]
    return given, candidate, champion, weights


def test_weights_of_one_leave_every_figure_exactly_as_unweighted() -> None:
    given, candidate, champion, _ = _noisy_holdout()
    tenants = ["x" if i % 2 else "y" for i in range(200)]
    ones = [1.0] * 200
    assert evaluate_predictions(given, candidate, tenants, LABELS, ones) == evaluate_predictions(
        given, candidate, tenants, LABELS
    )
    assert (
        evaluate_predictions(given, candidate, tenants, LABELS, ones).items
        == evaluate_predictions(given, candidate, tenants, LABELS).items
    )
    for metric in ("accuracy", "macro_f1", f"recall:{LABELS[0]}"):
        plain = paired_difference(given, candidate, champion, LABELS, metric=metric)
        assert paired_difference(given, candidate, champion, LABELS, metric=metric, weights=ones) == plain
    assert compute_metrics(given, candidate, LABELS, ones) == compute_metrics(given, candidate, LABELS)


def test_weighted_metrics_count_each_item_at_its_weight() -> None:
    m = compute_metrics(["a", "a", "b", "c"], ["a", "b", "b", "b"], LABELS, [1.0, 0.5, 1.0, 0.25])
    assert m["n"] == 4  # items, whatever their weights
    assert m["accuracy"] == pytest.approx(2.0 / 2.75)
    assert m["recall:a"] == pytest.approx(1.0 / 1.5)
    assert m["precision:b"] == pytest.approx(1.0 / 1.75)
    # F1 per label from weighted counts: a = 2*1/(1.5+1), b = 2*1/(1+1.75), c = 0
    assert m["macro_f1"] == pytest.approx((2 / 2.5 + 2 / 2.75 + 0.0) / 3)
    with pytest.raises(ValueError, match="weights has 1"):
        compute_metrics(["a", "b"], ["a", "b"], LABELS, [1.0])


def test_weighted_holdout_lets_the_gate_promote_the_model_the_noise_hid() -> None:
    """Judged on the labels as given, the better candidate looks worse (it contradicts 40 wrong labels the champion
    happens to agree with) and is refused; with the flagged labels at their weight the gate promotes it."""
    given, candidate, champion, weights = _noisy_holdout()
    tenants = ["x"] * 200
    policy = GatePolicy()
    plain = decide(
        evaluate_predictions(given, candidate, tenants, LABELS),
        evaluate_predictions(given, champion, tenants, LABELS),
        policy=policy,
    )
    assert not plain.promote and plain.paired is not None and plain.paired.overall.difference == pytest.approx(-0.1)
    weighted = decide(
        evaluate_predictions(given, candidate, tenants, LABELS, weights),
        evaluate_predictions(given, champion, tenants, LABELS, weights),
        policy=policy,
    )
    assert weighted.promote, weighted.reasons
    assert weighted.paired is not None
    # the candidate is right on the 160 clean items; the champion on 140 of them and (by the noise) on the 40 others
    expected = (160 - (140 + 40 * 0.05)) / (160 + 40 * 0.05)
    assert weighted.paired.overall.difference == pytest.approx(expected)
    assert weighted.paired.overall.ci_low > 0 and weighted.paired.tenants["x"].difference == pytest.approx(expected)
    # weighted and unweighted evaluations of the same items are not the same items to pair
    unpaired = decide(
        evaluate_predictions(given, candidate, tenants, LABELS, weights),
        evaluate_predictions(given, champion, tenants, LABELS),
        policy=policy,
    )
    assert not unpaired.promote and unpaired.paired is None
