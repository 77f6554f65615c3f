"""Holdout evaluations with per-item answers, built to a chosen accuracy, for the gate's paired rules."""

from __future__ import annotations

from flywheel.retrain.gate import Evaluation, evaluate_predictions

LABELS = ["a", "b", "c"]


def ev(accuracy: float = 0.0, n: int = 200, **tenants: tuple[float, int]) -> Evaluation:
    """One model on a holdout of ``tenants`` blocks ``slug=(accuracy, n)`` (default: one block ``solo``).

    Within a block, item ``i`` is answered correctly when ``i < round(accuracy * n)``; every model built here sees
    the same true labels, so two of them are paired, and the better one's correct items include the other's.
    """
    blocks = dict(tenants) or {"solo": (accuracy, n)}
    y_true: list[str] = []
    y_pred: list[str] = []
    groups: list[str] = []
    for slug, (acc, size) in blocks.items():
        right = round(acc * size)
        for i in range(size):
            truth = LABELS[i % len(LABELS)]
            y_true.append(truth)
            y_pred.append(truth if i < right else LABELS[(i + 1) % len(LABELS)])
            groups.append(slug)
    return evaluate_predictions(y_true, y_pred, groups, LABELS)
