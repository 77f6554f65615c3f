"""Synthetic label noise with a known ground truth, for the label-quality tests and benchmark.

Flip a fraction of labels at a fixed seed and keep the flipped indices: that is what cleaning is scored against.
"""

from __future__ import annotations

import numpy as np


def confusable_partner(embeddings: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K,)``: for each class, the other class with the closest embedding centroid (its likeliest confusion)."""
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    centroids = np.zeros((n_classes, x.shape[1]))
    np.add.at(centroids, y, x)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True).clip(min=1e-12)
    sims = centroids @ centroids.T
    np.fill_diagonal(sims, -np.inf)
    return np.asarray(sims.argmax(axis=1), dtype=np.int64)


def flip_labels(
    labels: np.ndarray,
    n_classes: int,
    *,
    rate: float,
    seed: int,
    partner: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(rate * N)`` labels chosen uniformly at random; return ``(noisy_labels, flipped_mask)``.

    Without ``partner`` a flipped label moves to a uniformly chosen *other* class; with ``partner`` ``(K,)`` it moves
    to ``partner[label]`` (class-conditional noise between confusable classes).
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if n_classes < 2:
        raise ValueError("flipping labels needs at least two classes")
    y = np.asarray(labels, dtype=np.int64).copy()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), size=round(rate * len(y)), replace=False)
    if partner is not None:
        y[idx] = np.asarray(partner, dtype=np.int64)[y[idx]]
    else:
        shift = rng.integers(1, n_classes, size=len(idx))
        y[idx] = (y[idx] + shift) % n_classes
    flipped = np.zeros(len(y), dtype=bool)
    flipped[idx] = True
    return y, flipped


def precision_recall_f1(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F1 of a flagged mask against the true flipped mask."""
    flagged = np.asarray(flagged, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    tp = int((flagged & truth).sum())
    p = tp / max(int(flagged.sum()), 1)
    r = tp / max(int(truth.sum()), 1)
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f1
