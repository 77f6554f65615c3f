"""The evaluation gate's rules, as pure functions over metric dictionaries."""

from __future__ import annotations

import pytest

from flywheel.retrain.gate import Evaluation, GatePolicy, compute_metrics, decide, evaluate_predictions

LABELS = ["a", "b", "c"]


def ev(overall: float, n: int = 200, **tenants: tuple[float, int]) -> Evaluation:
    return Evaluation(
        overall={"n": float(n), "accuracy": overall, "macro_f1": overall},
        tenants={slug: {"n": float(tn), "accuracy": acc, "macro_f1": acc} for slug, (acc, tn) in tenants.items()},
    )


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


def test_better_candidate_is_promoted_and_worse_one_refused() -> None:
    assert decide(ev(0.90), ev(0.80)).promote
    refused = decide(ev(0.70), ev(0.80))
    assert not refused.promote
    assert "worse than the champion" in refused.reasons[0]


def test_tolerance_allows_noise_but_not_more() -> None:
    policy = GatePolicy(tolerance=0.01)
    assert decide(ev(0.795), ev(0.80), policy=policy).promote
    assert not decide(ev(0.785), ev(0.80), policy=policy).promote


def test_a_tenant_regression_refuses_even_when_overall_improves() -> None:
    cand = ev(0.90, acme=(0.95, 100), globex=(0.70, 100))
    champ = ev(0.85, acme=(0.85, 100), globex=(0.85, 100))
    d = decide(cand, champ)
    assert not d.promote
    assert any(r.startswith("tenant globex:") and "regresses" in r for r in d.reasons)
    # A tenant too small to measure is not held against the candidate, and tenants the model does not serve are ignored.
    assert decide(ev(0.90, globex=(0.5, 5)), ev(0.85, globex=(0.9, 5))).promote
    assert decide(cand, champ, ignore_tenants=["globex"]).promote


def test_falling_below_a_tenant_sla_refuses() -> None:
    cand = ev(0.90, acme=(0.89, 100))
    champ = ev(0.85, acme=(0.90, 100))
    d = decide(cand, champ, slas={"acme": [("accuracy", 0.895)]})
    assert not d.promote
    assert "below its SLA threshold" in d.reasons[0]
    # Below the SLA but better than the champion: promoting helps that tenant.
    assert decide(ev(0.90, acme=(0.88, 100)), ev(0.85, acme=(0.80, 100)), slas={"acme": [("accuracy", 0.9)]}).promote
    # The champion already breaches: a dip within the tenant tolerance is noise, not a new breach ...
    assert decide(ev(0.90, acme=(0.87, 100)), ev(0.85, acme=(0.88, 100)), slas={"acme": [("accuracy", 0.9)]}).promote
    # ... and a dip beyond it is refused as a regression.
    deeper = decide(ev(0.90, acme=(0.84, 100)), ev(0.85, acme=(0.88, 100)), slas={"acme": [("accuracy", 0.9)]})
    assert not deeper.promote and "regresses" in deeper.reasons[0]


def test_unclean_runs_empty_holdouts_and_no_champion() -> None:
    assert not decide(ev(0.99), ev(0.5), clean=False).promote
    empty = decide(Evaluation(overall={"n": 0.0}, tenants={}), None)
    assert not empty.promote and "holdout has 0 labeled items" in empty.reasons[0]
    assert decide(ev(0.4), None).promote


def test_tenant_variant_must_beat_the_shared_model() -> None:
    policy = GatePolicy(min_gain=0.01)
    assert not decide(ev(0.80), ev(0.80), policy=policy, require_gain=True).promote
    assert not decide(ev(0.805), ev(0.80), policy=policy, require_gain=True).promote
    assert decide(ev(0.82), ev(0.80), policy=policy, require_gain=True).promote


def test_other_metrics_can_gate() -> None:
    cand = Evaluation(overall={"n": 50.0, "accuracy": 0.9, "recall:b": 0.4}, tenants={})
    champ = Evaluation(overall={"n": 50.0, "accuracy": 0.8, "recall:b": 0.7}, tenants={})
    assert decide(cand, champ).promote
    assert not decide(cand, champ, policy=GatePolicy(metric="recall:b")).promote
