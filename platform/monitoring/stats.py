"""SLA statistics: metrics (scikit-learn), confidence intervals, the status rule, calibration and CBPE.

Every function here is pure (arrays in, numbers out) so that the status rule can be tested on constructed windows.
Inputs may be row-level (``sample_weight`` omitted) or aggregated (one row per distinct value, ``sample_weight`` the
count), which is how the SQL-aggregated evaluation feeds them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Floats = Sequence[float] | np.ndarray
Weights = Floats | None
STATUSES = ("met", "at_risk", "breached", "insufficient_data")
METRIC_NAMES = ("accuracy", "macro_f1")
METRIC_PREFIXES = ("recall:", "precision:")
# Values are rounded before comparing with the threshold, so 180/200 is "exactly" 0.90.
_ROUND = 12


@dataclass(frozen=True)
class MetricValue:
    """A measured metric: ``value`` with a 95% interval; ``n`` is the number of observations it rests on."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


def validate_metric(metric: str, labels: Sequence[str] | None = None) -> str:
    """Return ``metric`` if it is ``accuracy``, ``macro_f1``, ``recall:<label>`` or ``precision:<label>``."""
    if metric in METRIC_NAMES:
        return metric
    for prefix in METRIC_PREFIXES:
        if metric.startswith(prefix):
            label = metric[len(prefix) :]
            if not label:
                raise ValueError(f"metric {metric!r} names no label")
            if labels is not None and label not in labels:
                raise ValueError(f"{label!r} is not a label of the task")
            return metric
    raise ValueError(f"unknown metric {metric!r}: use accuracy, macro_f1, recall:<label> or precision:<label>")


def wilson_interval(successes: float, n: float, *, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``successes / n`` (95% by default); ``(0, 1)`` when ``n == 0``."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _encode(y_true: Sequence[str], y_pred: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    labels = sorted(set(y_true) | set(y_pred))
    index = {label: i for i, label in enumerate(labels)}
    return (
        np.fromiter((index[v] for v in y_true), dtype=np.int64, count=len(y_true)),
        np.fromiter((index[v] for v in y_pred), dtype=np.int64, count=len(y_pred)),
        labels,
    )


def bootstrap_macro_f1(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    *,
    sample_weight: Weights = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of macro-F1, vectorized over replicates.

    Rows (or aggregated (true, pred) cells with counts) are resampled with a multinomial draw of the same total,
    so ``B`` replicates cost one ``(B, K, K)`` array instead of ``B`` scikit-learn calls. Each replicate averages F1
    over the labels present in it (scikit-learn's default label set), exactly as ``f1_score(average="macro")``.
    """
    t, p, labels = _encode(y_true, y_pred)
    k = len(labels)
    weights = np.ones(len(t)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    cells = np.bincount(t * k + p, weights=weights, minlength=k * k)
    n = round(float(cells.sum()))
    if n == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, cells / cells.sum(), size=n_boot).reshape(n_boot, k, k).astype(np.float64)
    tp = np.einsum("bii->bi", draws)
    support = draws.sum(axis=2)
    predicted = draws.sum(axis=1)
    denom = support + predicted
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
    macro = f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    low, high = np.quantile(macro, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def compute_metric(
    metric: str,
    y_true: Sequence[str],
    y_pred: Sequence[str],
    *,
    sample_weight: Weights = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> MetricValue:
    """The metric with scikit-learn, and its 95% interval (Wilson for proportions, bootstrap for macro-F1).

    ``y_true`` are the effective labels, ``y_pred`` the predicted ones. For ``recall:<label>`` the proportion is over
    the rows whose true label is ``<label>``; for ``precision:<label>`` over the rows predicted as ``<label>``.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    validate_metric(metric)
    w = np.ones(len(y_true)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    n_total = round(float(w.sum()))
    if n_total == 0:
        return MetricValue(None, None, None, 0)
    yt = np.asarray(y_true, dtype=object)
    yp = np.asarray(y_pred, dtype=object)
    if metric == "accuracy":
        value = float(accuracy_score(yt, yp, sample_weight=w))
        low, high = wilson_interval(value * n_total, n_total)
        return MetricValue(value, low, high, n_total)
    if metric == "macro_f1":
        value = float(f1_score(yt, yp, average="macro", sample_weight=w, zero_division=0))
        low, high = bootstrap_macro_f1(y_true, y_pred, sample_weight=w, n_boot=n_boot, seed=seed)
        return MetricValue(value, low, high, n_total)
    kind, label = metric.split(":", 1)
    mask = (yt == label) if kind == "recall" else (yp == label)
    n = round(float(w[mask].sum()))
    if n == 0:
        return MetricValue(None, None, None, 0)
    scorer = recall_score if kind == "recall" else precision_score
    value = float(scorer(yt, yp, labels=[label], average="macro", sample_weight=w, zero_division=0))
    low, high = wilson_interval(value * n, n)
    return MetricValue(value, low, high, n)


def sla_status(
    *,
    value: float | None,
    ci_low: float | None,
    ci_high: float | None,
    n_labeled: int,
    threshold: float,
    warning_margin: float,
    min_labeled: int,
) -> str:
    """The SLA status (issue 4):

    - ``insufficient_data`` when fewer than ``min_labeled`` labeled predictions (or no value);
    - ``breached`` when the interval's upper bound is below the threshold;
    - ``at_risk`` when the value is below threshold + warning margin, or the interval straddles the threshold
      (its lower bound below the threshold, its upper bound at or above it);
    - ``met`` otherwise.
    """
    if n_labeled < min_labeled or value is None or ci_low is None or ci_high is None:
        return "insufficient_data"
    v, lo, hi = (round(x, _ROUND) for x in (value, ci_low, ci_high))
    t = round(threshold, _ROUND)
    if hi < t:
        return "breached"
    if v < round(threshold + warning_margin, _ROUND) or lo < t <= hi:
        return "at_risk"
    return "met"


def expected_calibration_error(
    confidences: Floats,
    correct: Floats,
    *,
    sample_weight: Weights = None,
    n_bins: int = 10,
) -> float | None:
    """ECE: the weighted mean gap between mean confidence and accuracy over ``n_bins`` equal-width bins."""
    conf = np.asarray(confidences, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    w = np.ones(len(conf)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    total = float(w.sum())
    if total <= 0:
        return None
    bins = np.clip((conf * n_bins).astype(np.int64), 0, n_bins - 1)
    weight = np.bincount(bins, weights=w, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=w * conf, minlength=n_bins)
    corr_sum = np.bincount(bins, weights=w * corr, minlength=n_bins)
    filled = weight > 0
    gap = np.abs(conf_sum[filled] - corr_sum[filled]) / weight[filled]
    return float((weight[filled] / total * gap).sum())


def fit_calibrator(confidences: Floats, correct: Floats, *, sample_weight: Weights = None) -> Any:
    """Isotonic regression from a logged confidence to the probability the prediction is right."""
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    model.fit(
        np.asarray(confidences, dtype=np.float64),
        np.asarray(correct, dtype=np.float64),
        sample_weight=None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64),
    )
    return model


def estimate_accuracy(calibrator: Any, confidences: Floats, *, sample_weight: Weights = None) -> float | None:
    """CBPE (NannyML's confidence-based performance estimation): the expected accuracy of unlabeled predictions
    is the mean of their calibrated confidences."""
    conf = np.asarray(confidences, dtype=np.float64)
    if not len(conf):
        return None
    w = np.ones(len(conf)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w.sum() <= 0:
        return None
    return float(np.average(calibrator.predict(conf), weights=w))


def cbpe_accuracy(
    labeled_confidences: Floats,
    labeled_correct: Floats,
    unlabeled_confidences: Floats,
    *,
    labeled_weight: Weights = None,
    unlabeled_weight: Weights = None,
    min_labeled: int = 50,
) -> float | None:
    """Calibrate on labeled predictions, then estimate the accuracy of the unlabeled ones (None when too few labels)."""
    n = len(labeled_confidences) if labeled_weight is None else float(np.sum(labeled_weight))
    if n < min_labeled:
        return None
    calibrator = fit_calibrator(labeled_confidences, labeled_correct, sample_weight=labeled_weight)
    return estimate_accuracy(calibrator, unlabeled_confidences, sample_weight=unlabeled_weight)
