"""The cleanlab adapter: the only module in Flywheel that imports cleanlab.

Every function takes integer class labels ``0..K-1`` and an ``(N, K)`` array of out-of-sample predicted
probabilities (rows summing to 1). cleanlab is imported inside the functions so that importing this module costs
nothing in a web worker; an upgrade of cleanlab touches this file only.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np

#: Above this many labeled examples, the low-memory batched variant is used (mini-batches, no (K, K) joint in
#: memory per class). Below it, the exact ``find_label_issues`` is used. Both give close results (cleanlab docs).
BATCHED_ABOVE = 200_000

#: ``filter_by`` choices. ``"ranked"`` (the default, chosen in bench/label_noise.py) flags the ``n`` lowest-quality
#: labels, with ``n`` the mean of cleanlab's two estimates of the number of issues (``num_label_issues`` with
#: ``off_diagonal``, which undercounts, and ``off_diagonal_calibrated``, which overcounts, on our benchmarks). The
#: others are passed to ``cleanlab.filter.find_label_issues`` unchanged.
FILTER_BY = ("ranked", "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")


@dataclass(frozen=True)
class LabelIssues:
    """The label-issue verdict of one pass over ``N`` labeled examples.

    ``is_issue``: ``(N,)`` bool; ``quality``: ``(N,)`` float in [0, 1] (lower = more likely mislabeled);
    ``suggested``: ``(N,)`` int, the class the probabilities favour; ``method``: which cleanlab call produced it.
    """

    is_issue: np.ndarray
    quality: np.ndarray
    suggested: np.ndarray
    method: str


@dataclass(frozen=True)
class Consensus:
    """CROWDLAB consensus over ``N`` examples labeled by ``M`` annotators.

    ``labels``: ``(N,)`` int consensus label; ``quality``: ``(N,)`` consensus quality in [0, 1];
    ``annotator_quality``: ``(M,)`` CROWDLAB annotator quality (higher = more trustworthy).
    """

    labels: np.ndarray
    quality: np.ndarray
    annotator_quality: np.ndarray


def _check(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    if pred_probs.ndim != 2:
        raise ValueError(f"pred_probs must be a 2-D (N, K) array, got shape {pred_probs.shape}")
    if labels.ndim != 1 or len(labels) != len(pred_probs):
        raise ValueError(f"labels must be a 1-D array of length N={len(pred_probs)}, got shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= pred_probs.shape[1]):
        raise ValueError(f"labels must be integers in 0..{pred_probs.shape[1] - 1}")
    return labels.astype(np.int64), pred_probs


def find_label_issues(
    *,
    labels: np.ndarray,
    pred_probs: np.ndarray,
    filter_by: str = "ranked",
    quality_method: str = "normalized_margin",
    batched_above: int = BATCHED_ABOVE,
    batch_size: int = 10_000,
) -> LabelIssues:
    """Flag likely label errors (``cleanlab.filter.find_label_issues``) and score every label
    (``cleanlab.rank.get_label_quality_scores``).

    ``labels``: ``(N,)`` int; ``pred_probs``: ``(N, K)`` out-of-sample probabilities. Above ``batched_above``
    examples the batched low-memory variant (``cleanlab.experimental.label_issues_batched``) is used instead, which
    approximates ``filter_by="low_self_confidence"``.
    """
    from cleanlab.rank import get_label_quality_scores

    labels, pred_probs = _check(labels, pred_probs)
    if filter_by not in FILTER_BY:
        raise ValueError(f"filter_by must be one of {FILTER_BY}, got {filter_by!r}")
    n = len(labels)
    if n == 0:
        return LabelIssues(np.zeros(0, bool), np.zeros(0), np.zeros(0, dtype=np.int64), "empty")
    suggested = pred_probs.argmax(axis=1)
    if len(np.unique(labels)) < 2:
        # cleanlab needs at least two classes among the given labels; with one, nothing can be contradicted.
        return LabelIssues(np.zeros(n, bool), pred_probs[np.arange(n), labels], suggested, "single_class")
    quality = np.asarray(get_label_quality_scores(labels, pred_probs, method=quality_method), dtype=np.float64)
    if n > batched_above:
        mask = _batched_mask(labels, pred_probs, quality_method, batch_size)
        method = "find_label_issues_batched"
    elif filter_by == "ranked":
        mask = _ranked_mask(labels, pred_probs, quality)
        method = f"ranked:{quality_method}"
    else:
        mask = _filtered_mask(labels, pred_probs, filter_by)
        method = f"find_label_issues:{filter_by}"
    return LabelIssues(np.asarray(mask, dtype=bool), quality, suggested, method)


def _batched_mask(labels: np.ndarray, pred_probs: np.ndarray, quality_method: str, batch_size: int) -> np.ndarray:
    """The low-memory mini-batch variant (no ``(K, K)`` joint in memory per class)."""
    from cleanlab.experimental.label_issues_batched import find_label_issues_batched

    return np.asarray(
        find_label_issues_batched(
            labels=labels,
            pred_probs=pred_probs,
            batch_size=batch_size,
            n_jobs=1,
            verbose=False,
            quality_score_kwargs={"method": quality_method},
            return_mask=True,
        )
    )


def _ranked_mask(labels: np.ndarray, pred_probs: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """The ``n`` lowest-quality labels, ``n`` the mean of cleanlab's two estimates of the number of issues."""
    from cleanlab.count import num_label_issues

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        low = num_label_issues(labels, pred_probs, estimation_method="off_diagonal")
        high = num_label_issues(labels, pred_probs, estimation_method="off_diagonal_calibrated")
    count = round((int(low) + int(high)) / 2)
    mask = np.zeros(len(labels), dtype=bool)
    mask[np.argsort(quality, kind="stable")[:count]] = True
    return mask


def _filtered_mask(labels: np.ndarray, pred_probs: np.ndarray, filter_by: str) -> np.ndarray:
    """``cleanlab.filter.find_label_issues`` with ``filter_by`` unchanged."""
    from cleanlab.filter import find_label_issues as _find

    with warnings.catch_warnings():
        # Rare classes make cleanlab warn per class; the verdict is still defined, so keep the logs clean.
        warnings.simplefilter("ignore")
        return np.asarray(_find(labels, pred_probs, filter_by=filter_by, n_jobs=1))


def bare_find_label_issues(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """cleanlab's default call, unchanged: the benchmark's speed and quality baseline."""
    from cleanlab.filter import find_label_issues as _find

    return np.asarray(_find(labels, pred_probs))


def multiannotator_consensus(*, labels_multiannotator: np.ndarray, pred_probs: np.ndarray) -> Consensus:
    """CROWDLAB (``cleanlab.multiannotator.get_label_quality_multiannotator``).

    ``labels_multiannotator``: ``(N, M)`` float, class index or NaN where annotator ``m`` gave no label; every row
    and every column must hold at least one label, and some rows must hold two or more. ``pred_probs``: ``(N, K)``.
    """
    from cleanlab.multiannotator import get_label_quality_multiannotator

    multi = np.asarray(labels_multiannotator, dtype=np.float64)
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    if multi.ndim != 2 or len(multi) != len(pred_probs):
        raise ValueError(f"labels_multiannotator must be (N, M) with N={len(pred_probs)}, got {multi.shape}")
    # cleanlab prints notes about annotators without overlap even with verbose=False: keep stdout clean.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        out = get_label_quality_multiannotator(
            multi, pred_probs, return_detailed_quality=False, return_annotator_stats=True, verbose=False
        )
    lq = out["label_quality"]
    stats = out["annotator_stats"].sort_index()
    return Consensus(
        labels=lq["consensus_label"].to_numpy().astype(np.int64),
        quality=lq["consensus_quality_score"].to_numpy().astype(np.float64),
        annotator_quality=stats["annotator_quality"].to_numpy().astype(np.float64),
    )


def active_learning_scores(
    *,
    labels_multiannotator: np.ndarray | None,
    pred_probs: np.ndarray | None,
    pred_probs_unlabeled: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """ActiveLab (``cleanlab.multiannotator.get_active_learning_scores``): lower = more worth labeling (next).

    Returns ``(scores_labeled (N,), scores_unlabeled (U,))``. Without labeled data (``pred_probs`` None) the
    unlabeled scores reduce to a max-probability rule.
    """
    from cleanlab.multiannotator import get_active_learning_scores

    unl = np.asarray(pred_probs_unlabeled, dtype=np.float64)
    if pred_probs is None or labels_multiannotator is None or not len(pred_probs):
        _, scores_u = get_active_learning_scores(pred_probs_unlabeled=unl)
        return np.zeros(0), np.asarray(scores_u, dtype=np.float64)
    multi = np.asarray(labels_multiannotator, dtype=np.float64)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        scores_l, scores_u = get_active_learning_scores(multi, np.asarray(pred_probs, np.float64), unl)
    return np.asarray(scores_l, dtype=np.float64), np.asarray(scores_u, dtype=np.float64)
