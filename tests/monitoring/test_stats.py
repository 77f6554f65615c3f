"""SLA statistics: intervals, metrics against scikit-learn, the status rule at its edges, ECE and CBPE."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from flywheel.monitoring import stats


def test_wilson_interval_matches_known_values() -> None:
    # 90 of 100: the Wilson 95% interval is (0.8256, 0.9448) (Newcombe 1998 / statsmodels proportion_confint).
    low, high = stats.wilson_interval(90, 100)
    assert low == pytest.approx(0.82564, abs=1e-4)
    assert high == pytest.approx(0.94477, abs=1e-4)
    # Never outside [0, 1], and an empty sample says nothing.
    assert stats.wilson_interval(0, 10)[0] == 0.0
    assert stats.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_metrics_use_sklearn_and_accept_aggregated_cells() -> None:
    rng = np.random.default_rng(1)
    labels = ["a", "b", "c"]
    y_true = list(rng.choice(labels, 500))
    y_pred = [t if rng.random() < 0.8 else str(rng.choice(labels)) for t in y_true]
    # Aggregate to (pred, true) -> count cells, as the SQL evaluation does.
    cells: dict[tuple[str, str], int] = {}
    for t, p in zip(y_true, y_pred, strict=True):
        cells[(p, t)] = cells.get((p, t), 0) + 1
    agg_pred = [k[0] for k in cells]
    agg_true = [k[1] for k in cells]
    weights = list(cells.values())

    acc = stats.compute_metric("accuracy", agg_true, agg_pred, sample_weight=weights)
    assert acc.value == pytest.approx(np.mean(np.array(y_true) == np.array(y_pred)))
    assert acc.n == 500
    macro = stats.compute_metric("macro_f1", agg_true, agg_pred, sample_weight=weights, n_boot=500)
    assert macro.value == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert macro.ci_low is not None and macro.ci_high is not None
    assert macro.ci_low < macro.value < macro.ci_high
    rec = stats.compute_metric("recall:b", agg_true, agg_pred, sample_weight=weights)
    assert rec.value == pytest.approx(recall_score(y_true, y_pred, labels=["b"], average="macro"))
    assert rec.n == y_true.count("b")
    prec = stats.compute_metric("precision:c", agg_true, agg_pred, sample_weight=weights)
    assert prec.value == pytest.approx(precision_score(y_true, y_pred, labels=["c"], average="macro"))
    assert prec.n == y_pred.count("c")
    # A label nobody predicted: precision has no denominator, so no value (not a fake 0).
    missing = stats.compute_metric("precision:zzz", agg_true, agg_pred, sample_weight=weights)
    assert missing.value is None and missing.n == 0


def test_bootstrap_macro_f1_is_seeded_and_covers_the_truth() -> None:
    rng = np.random.default_rng(7)
    y_true = list(rng.choice(["x", "y", "z", "w"], 400))
    y_pred = [t if rng.random() < 0.7 else "x" for t in y_true]
    a = stats.bootstrap_macro_f1(y_true, y_pred, n_boot=400, seed=3)
    b = stats.bootstrap_macro_f1(y_true, y_pred, n_boot=400, seed=3)
    assert a == b
    assert a[0] < f1_score(y_true, y_pred, average="macro") < a[1]
    # More data, narrower interval.
    wide = stats.bootstrap_macro_f1(y_true[:100], y_pred[:100], n_boot=400, seed=3)
    assert (wide[1] - wide[0]) > (a[1] - a[0])


def test_validate_metric() -> None:
    assert stats.validate_metric("recall:a", ["a", "b"]) == "recall:a"
    with pytest.raises(ValueError, match="not a label"):
        stats.validate_metric("recall:q", ["a", "b"])
    with pytest.raises(ValueError, match="unknown metric"):
        stats.validate_metric("auc")


def _status(value: float | None, low: float, high: float, n: int = 500, **kw: float) -> str:
    terms = {"threshold": 0.9, "warning_margin": 0.02, "min_labeled": 200, **kw}
    return stats.sla_status(
        value=value,
        ci_low=low,
        ci_high=high,
        n_labeled=n,
        threshold=terms["threshold"],
        warning_margin=terms["warning_margin"],
        min_labeled=int(terms["min_labeled"]),
    )


def test_status_rule_edges() -> None:
    # Below min_labeled: no verdict, whatever the numbers say.
    assert _status(0.99, 0.98, 1.0, n=199) == "insufficient_data"
    assert _status(0.10, 0.05, 0.15, n=199) == "insufficient_data"
    assert _status(None, 0.0, 1.0) == "insufficient_data"
    # Exactly min_labeled counts.
    assert _status(0.99, 0.95, 1.0, n=200) == "met"
    # The whole interval below the threshold: breached.
    assert _status(0.85, 0.82, 0.88) == "breached"
    # Upper bound exactly at the threshold is not "below": the interval touches it, so at risk.
    assert _status(0.87, 0.84, 0.90) == "at_risk"
    # Value exactly at the threshold (interval straddles): at risk.
    assert _status(0.90, 0.88, 0.92) == "at_risk"
    # Straddling interval even when the value clears threshold + margin.
    assert _status(0.93, 0.89, 0.97) == "at_risk"
    # Interval above the threshold but the value inside the warning margin: at risk.
    assert _status(0.915, 0.905, 0.925) == "at_risk"
    # Value exactly at threshold + margin, interval above the threshold: met.
    assert _status(0.92, 0.90, 0.94) == "met"
    assert _status(0.95, 0.93, 0.97) == "met"
    # Exact arithmetic at the edge: 180/200 with a zero margin sits exactly on 0.9 and straddles.
    low, high = stats.wilson_interval(180, 200)
    assert _status(180 / 200, low, high, warning_margin=0.0) == "at_risk"


def test_status_on_constructed_windows_via_wilson() -> None:
    def window(correct: int, n: int) -> str:
        low, high = stats.wilson_interval(correct, n)
        return _status(correct / n, low, high, n=n)

    assert window(990, 1000) == "met"  # 0.99, interval (0.982, 0.995)
    assert window(920, 1000) == "met"  # exactly threshold + margin with a tight interval (lo 0.902)
    assert window(905, 1000) == "at_risk"  # inside the margin
    assert window(870, 1000) == "breached"  # upper bound 0.889 < 0.9
    assert window(880, 1000) == "breached"  # interval (0.858, 0.899): just below
    assert window(890, 1000) == "at_risk"  # interval (0.869, 0.908) straddles 0.9


def test_expected_calibration_error() -> None:
    # Perfectly calibrated bins: ECE 0. Overconfident: ECE = the gap.
    conf = np.array([0.95] * 100 + [0.55] * 100)
    correct = np.array([1] * 95 + [0] * 5 + [1] * 55 + [0] * 45)
    assert stats.expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-9)
    over = np.array([1] * 75 + [0] * 25 + [1] * 55 + [0] * 45)
    assert stats.expected_calibration_error(conf, over) == pytest.approx(0.5 * 0.20, abs=1e-9)
    # The aggregated form gives the same number.
    agg = stats.expected_calibration_error([0.95, 0.95, 0.55, 0.55], [1, 0, 1, 0], sample_weight=[75, 25, 55, 45])
    assert agg == pytest.approx(0.10, abs=1e-9)


def test_cbpe_recovers_accuracy_of_a_calibrated_synthetic_model() -> None:
    rng = np.random.default_rng(0)
    # Logged confidences that overstate the truth: true P(correct) = conf ** 2.
    conf = rng.uniform(0.4, 1.0, 6000)
    correct = (rng.random(6000) < conf**2).astype(float)
    labeled, unlabeled = slice(0, 2000), slice(2000, None)
    # Shift the unlabeled population to higher confidences: the raw mean confidence would be far off.
    shifted = rng.uniform(0.7, 1.0, 4000)
    shifted_correct = (rng.random(4000) < shifted**2).astype(float)
    estimate = stats.cbpe_accuracy(conf[labeled], correct[labeled], shifted)
    assert estimate is not None
    assert abs(estimate - shifted_correct.mean()) < 0.02
    assert abs(shifted.mean() - shifted_correct.mean()) > 0.05  # the uncalibrated guess is wrong
    assert stats.cbpe_accuracy(conf[:10], correct[:10], conf[unlabeled]) is None  # too few labels
