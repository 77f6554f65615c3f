"""The pass's holdout stage: the evaluation holdout's labels scored by models that never trained on them.

The holdout decides every promotion and every SLA verdict, and its labels carry the same noise as the rest. They
are scored here apart from everything else, with two signals only:

- cross-validation within the holdout alone (``out_of_sample_probabilities`` on the holdout's own embeddings: its
  folds hold holdout items only; no label from outside the holdout, nor the pool, ever joins them, so no model that
  scores a holdout label was fit on anything but other holdout labels);
- the probabilities production models logged for them: the customer's own wherever ``production_usable`` accepts
  them (logged before the label, not marked ``in_sample``), and our served models' always (a served model never
  trains on a holdout item: training never reads the holdout).

The holdout's rows never join the main pass's cross-validation either (``load_labeled_set`` keeps the two sets
apart). A flagged, unreviewed holdout label then counts at its label weight (the probability that it is right) in the
gate's and the SLA's clean figures; it is never left out of anything, never relabeled, and never trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel.feedback import cleanlab_adapter
from flywheel.feedback.checks import label_weights, trusted_share
from flywheel.feedback.labeled_set import LabeledSet
from flywheel.feedback.oos import OOSConfig, Segments, out_of_sample_probabilities
from flywheel.feedback.pass_output import ResultRow


@dataclass(frozen=True)
class HoldoutVerdict:
    """cleanlab's verdict on the holdout's ``N`` labels: ``probs`` ``(N, K)`` out-of-sample, ``sources`` ``(N,)``,
    ``issues`` the raw verdict, ``is_issue`` ``(N,)`` less the reviewed labels, ``weights`` ``(N,)`` the probability
    each label is right (1 where reviewed)."""

    probs: np.ndarray
    sources: np.ndarray
    issues: cleanlab_adapter.LabelIssues
    is_issue: np.ndarray
    weights: np.ndarray


def too_few_holdout(holdout: LabeledSet, min_labeled: int) -> str | None:
    """Why the holdout is too small to score on its own (fewer than ``min_labeled`` labels, or one class), or None."""
    n, classes = len(holdout.items), len(np.unique(holdout.label_ids()))
    if n < min_labeled or classes < 2:
        return f"{n} labeled holdout predictions ({classes} classes): too few to score the holdout"
    return None


def score_holdout(
    holdout: LabeledSet,
    embeddings: np.ndarray,
    *,
    folds: int,
    noise_rate: float,
    trust: float,
    segments: Segments | None = None,
) -> HoldoutVerdict:
    """Out-of-sample probabilities of the holdout's labels (cross-validation within ``embeddings`` ``(N, D)``, the
    holdout's alone, and within its long texts' ``segments``, averaged with usable logged probabilities), then
    cleanlab's verdict and the label weights.

    A holdout holds few labels per class, so cross-validation within it is weak evidence: the logged probabilities
    (a served model that learned from every label outside the holdout) get the larger share of the average the fewer
    labels per class the holdout has (``production_weight`` from 0.5 at ``FULL_TRUST_PER_CLASS`` to 1). Weights are
    the main pass's rule (``label_weights``) with its ``noise_rate`` and ``trust`` (``trusted_share``) where logged
    probabilities scored the label, as they come from a model trained on those same labels; where cross-validation
    alone scored it, with the holdout's own trust, and full weight for a class with too few holdout labels. A label
    is flagged where cleanlab flags it and its weight is below 1: on a small holdout cleanlab's per-class thresholds
    flag many labels of classes the holdout holds too few of to judge, which no evidence doubts (their weight is 1).
    Below ``FULL_TRUST_PER_CLASS`` labels per class those thresholds are unstable altogether, and cleanlab's
    ``predicted_neq_given`` rule decides instead: the evidence's top class is not the label.
    """
    if not holdout.holdout:
        raise ValueError("score_holdout scores a holdout set (load_labeled_set(..., holdout=True))")
    labels = holdout.label_ids()
    share = trusted_share(labels)
    logged, usable = holdout.production_probs(), holdout.production_usable() | _ours(holdout)
    oos = out_of_sample_probabilities(
        embeddings,
        labels,
        len(holdout.labels),
        segments=segments,
        production_probs=logged,
        production_usable=usable,
        production_models=holdout.logging_models(),
        config=OOSConfig(folds=folds, production_weight=1.0 - 0.5 * share),
    )
    # cleanlab's per-class thresholds need labels per class a holdout rarely has; there, a label is in doubt where
    # the out-of-sample evidence prefers another class
    filter_by = "ranked" if share >= 1.0 else "predicted_neq_given"
    issues = cleanlab_adapter.find_label_issues(labels=labels, pred_probs=oos.probs, filter_by=filter_by)
    by_logged = usable & (logged.sum(axis=1) > 0)
    weights = np.where(
        by_logged,
        label_weights(oos.probs, labels, noise_rate, trust=trust, min_class_labels=0),
        label_weights(oos.probs, labels, noise_rate, trust=share),
    )
    reviewed = np.array([it.reviewed for it in holdout.items], dtype=bool)
    weights[reviewed] = 1.0
    is_issue = issues.is_issue & (weights < 1.0) & ~reviewed
    return HoldoutVerdict(oos.probs, oos.sources, issues, is_issue, weights)


def _ours(holdout: LabeledSet) -> np.ndarray:
    """``(N,)`` bool: logged by one of our own served models (``production_models``): no model of ours ever trains
    on a holdout item, so its lineage never holds one, and even a model whose lineage ``production_usable`` cannot
    trust (``untraced``, judged there by creation time) is out-of-sample here."""
    return np.array([it.model_version in holdout.production_models for it in holdout.items], dtype=bool)


def holdout_rows(holdout: LabeledSet, verdict: HoldoutVerdict) -> list[ResultRow]:
    """One ``holdout`` row per holdout label: the verdict and its weight; never an exclusion or a consensus."""
    names = holdout.labels
    labels = holdout.label_ids()
    return [
        ResultRow(
            prediction_id=item.prediction_id,
            kind="labeled",
            given_label=names[int(labels[i])],
            quality=float(verdict.issues.quality[i]),
            is_issue=bool(verdict.is_issue[i]),
            suggested_label=names[int(verdict.issues.suggested[i])],
            oos_source=str(verdict.sources[i]),
            consensus_label=None,
            consensus_quality=None,
            consensus_method=None,
            consensus_votes=len(item.votes),
            active_score=None,
            exclude_reason=None,
            train_weight=round(float(verdict.weights[i]), 6),
            holdout=True,
        )
        for i, item in enumerate(holdout.items)
    ]


def holdout_summary(holdout: LabeledSet, verdict: HoldoutVerdict | None, skipped: str | None) -> dict[str, Any]:
    """The holdout stage's part of the run's summary (``summary["holdout"]``)."""
    if verdict is None:
        return {"n_labeled": len(holdout.items), "skipped": skipped}
    flagged = verdict.is_issue
    return {
        "n_labeled": len(holdout.items),
        "n_issues": int(flagged.sum()),
        "issue_rate": round(float(flagged.mean()), 4),
        "mean_weight_of_issues": round(float(verdict.weights[flagged].mean()), 4) if flagged.any() else None,
        "oos_sources": {str(s): int(n) for s, n in zip(*np.unique(verdict.sources, return_counts=True), strict=True)},
        "skipped": None,
    }
