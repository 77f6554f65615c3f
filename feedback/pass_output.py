"""What one label-quality pass writes: a result row per scored prediction and the run's summary.

A labeled prediction's row carries cleanlab's verdict, its consensus and its training weight; an unlabeled one's
its ActiveLab score; a holdout label's (``holdout``) its verdict and the weight it counts at in the gate and SLAs.
``ResultRow``'s fields are ``LabelQualityResult``'s columns, less the run and scope ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel.feedback.annotators import LabelConsensus, SourceStat, consensus_excluding, labeled_only_by
from flywheel.feedback.labeled_set import LabeledItem, LabeledSet, UnlabeledItem
from flywheel.feedback.scoring import ActiveScores, LabelVerdict, OutOfSampleScores

#: ``exclude_reason`` values: flagged strongly enough to leave out of training, or labeled only by unreliable sources.
EXCLUDED_ISSUE = "label_issue"
EXCLUDED_SOURCE = "excluded_source"


@dataclass(frozen=True)
class ResultRow:
    prediction_id: int
    kind: str  # "labeled" | "unlabeled"
    given_label: str | None
    quality: float | None
    is_issue: bool
    suggested_label: str | None
    oos_source: str | None
    consensus_label: str | None
    consensus_quality: float | None
    consensus_method: str | None
    consensus_votes: int
    active_score: float | None
    exclude_reason: str | None
    train_weight: float | None
    holdout: bool = False  # a holdout label (the pass's holdout stage, ``flywheel.feedback.holdout``)


def labeled_rows(
    labeled: LabeledSet,
    scores: OutOfSampleScores,
    consensus: LabelConsensus,
    verdict: LabelVerdict,
    sources: Mapping[str, SourceStat],
    active: ActiveScores | None,
) -> list[ResultRow]:
    """One row per labeled item. The consensus stored drops the votes of excluded sources (``consensus_excluding``);
    a reviewed item stores none, as a reviewer's decision is final."""
    excluded = {a for a, s in sources.items() if s.excluded}
    names = labeled.labels
    rows = []
    for i, item in enumerate(labeled.items):
        consensus_label, method = consensus_excluding(item, consensus.rows[i], excluded)
        rows.append(
            ResultRow(
                prediction_id=item.prediction_id,
                kind="labeled",
                given_label=names[int(verdict.labels[i])],
                quality=float(verdict.issues.quality[i]),
                is_issue=bool(verdict.is_issue[i]),
                suggested_label=names[int(verdict.issues.suggested[i])],
                oos_source=str(scores.sources[i]),
                consensus_label=consensus_label if not item.reviewed else None,
                consensus_quality=consensus.rows[i].quality,
                consensus_method=method,
                consensus_votes=len(item.votes),
                active_score=None if active is None else float(active.labeled[i]),
                exclude_reason=_exclude_reason(item, bool(verdict.exclude[i]), excluded),
                train_weight=round(float(verdict.weights[i]), 6),
            )
        )
    return rows


def _exclude_reason(item: LabeledItem, excluded_as_issue: bool, excluded_sources: set[str]) -> str | None:
    if excluded_as_issue:
        return EXCLUDED_ISSUE
    if not item.reviewed and labeled_only_by(item, excluded_sources):
        return EXCLUDED_SOURCE
    return None


def unlabeled_rows(unlabeled: Sequence[UnlabeledItem], active: ActiveScores | None) -> list[ResultRow]:
    """One row per unlabeled prediction with its ActiveLab score; none without scores."""
    if active is None:
        return []
    return [
        ResultRow(
            prediction_id=item.prediction_id,
            kind="unlabeled",
            given_label=None,
            quality=None,
            is_issue=False,
            suggested_label=None,
            oos_source=None,
            consensus_label=None,
            consensus_quality=None,
            consensus_method=None,
            consensus_votes=0,
            active_score=float(score),
            exclude_reason=None,
            train_weight=None,
        )
        for item, score in zip(unlabeled, active.unlabeled, strict=True)
    ]


def pass_summary(
    labeled: LabeledSet,
    scores: OutOfSampleScores,
    consensus: LabelConsensus,
    verdict: LabelVerdict,
    sources: Mapping[str, SourceStat],
    rows: Sequence[ResultRow],
    *,
    cv_folds: int,
    embedding_dim: int,
    encoder_id: str | None,
    text_windows: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's ``summary`` (stored as JSON, shown by the API and ``flywheel labels check``)."""
    is_issue, exclude, pooled = verdict.is_issue, verdict.exclude, verdict.pooled_labels
    return {
        "n_labeled": len(labeled.items),
        "n_issues": int(is_issue.sum()),
        "issue_rate": float(is_issue.mean()),
        "n_excluded_issues": int(exclude.sum()),
        "mean_train_weight": round(float(verdict.weights[~exclude].mean()), 4) if (~exclude).any() else None,
        "labels_per_class": round(len(pooled) / len(np.unique(pooled)), 2),
        "excluded_share_of_issues": round(verdict.trusted_share, 4),
        "n_scored_with_pool": len(pooled),
        "n_classes_seen": len(np.unique(labeled.label_ids())),
        "n_unlabeled_scored": len(labeled.unlabeled),
        "cleanlab_method": verdict.issues.method,
        "oos_sources": dict(Counter(str(s) for s in scores.sources)),
        "logged_models": {model: w.as_dict() for model, w in scores.logged.items()},
        # The long texts' segment source (None: no text split) and its weight against the whole texts'.
        "segments": scores.segments.as_dict() if scores.segments else None,
        "cv_folds": cv_folds,
        "consensus": consensus.summary(),
        "excluded_sources": sorted(a for a, s in sources.items() if s.excluded),
        "n_excluded_by_source": sum(1 for r in rows if r.exclude_reason == EXCLUDED_SOURCE),
        "embedding_dim": embedding_dim,
        "encoder": encoder_id,
        # The embedding window in tokens (None: an encoder that is not windowed) and what it was chosen from.
        "embedding_window": text_windows.get("embedding") if text_windows else None,
        "text_windows": dict(text_windows) if text_windows else None,
    }
