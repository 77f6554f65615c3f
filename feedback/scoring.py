"""How the label-quality pass scores a labeled set: out-of-sample probabilities (with the pool), cleanlab's verdict
on the consensus labels, and ActiveLab scores for the unlabeled predictions.

No database here: each stage takes the arrays and items the previous ones produced and returns a typed result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from flywheel.feedback import cleanlab_adapter
from flywheel.feedback.annotators import annotator_matrix
from flywheel.feedback.checks import exclusion_mask, label_weights, trusted_share
from flywheel.feedback.labeled_set import LabeledItem, LabeledSet, Pool, UnlabeledItem, probability_matrix
from flywheel.feedback.oos import OOSConfig, Segments, SourceWeight, out_of_sample_probabilities

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutOfSampleScores:
    """``probs`` ``(N, K)`` and ``sources`` ``(N,)`` for the set's own items; ``pooled_probs`` ``(N + M, K)`` for
    them followed by the pool's ``M`` rows, whose labels are ``pool_label_ids`` ``(M,)``; ``logged``: the weight of
    each logging model whose probabilities were mixed in; ``segments``: the segment source's, where texts split."""

    probs: np.ndarray
    sources: np.ndarray
    pooled_probs: np.ndarray
    pool_label_ids: np.ndarray
    logged: dict[str, SourceWeight] = field(default_factory=dict)
    segments: SourceWeight | None = None


@dataclass(frozen=True)
class LabelVerdict:
    """cleanlab's verdict on ``N`` consensus labels, scored together with the pool's.

    ``issues``: the raw verdict on the ``N`` rows; ``is_issue`` ``(N,)``: flagged, less the reviewed labels (a
    reviewer's decision is final); ``exclude`` ``(N,)``: the flagged labels training leaves out; ``weights`` ``(N,)``:
    the training weight of each label (1 where reviewed); ``pooled_labels`` ``(N + M,)``: the labels scored;
    ``trusted_share``: the share of the flagged labels the evidence supports leaving out.
    """

    labels: np.ndarray
    issues: cleanlab_adapter.LabelIssues
    is_issue: np.ndarray
    exclude: np.ndarray
    weights: np.ndarray
    pooled_labels: np.ndarray
    trusted_share: float

    def trusted_labels(self, names: Sequence[str]) -> list[str]:
        """The label the pass trusts for each item: the suggested one where the given one is an issue."""
        trusted = np.where(self.is_issue, self.issues.suggested, self.labels)
        return [names[int(t)] for t in trusted]


@dataclass(frozen=True)
class ActiveScores:
    """ActiveLab scores, lower = more worth labeling (next): ``labeled`` ``(N,)``, ``unlabeled`` ``(U,)``."""

    labeled: np.ndarray
    unlabeled: np.ndarray


def out_of_sample_scores(
    labeled: LabeledSet, embeddings: np.ndarray, pool: Pool, *, folds: int, segments: Segments | None = None
) -> OutOfSampleScores:
    """K-fold cross-validated probabilities on ``embeddings`` ``(N, D)`` (and on ``segments``, the long texts'),
    mixed with the logged probabilities of every model (ours or the customer's) where those are out-of-sample, each
    source at its fitted weight.

    The pool joins the cross-validation as extra training rows: the shared model learns from all of them anyway,
    and one tenant's few labels per class make a weak out-of-sample model that flags far too many good labels
    (measured in the simulation: half of a tenant's ~5 labels per class flagged, at 19% true noise). Only the
    set's own rows are scored.
    """
    n, k, m = len(labeled.items), len(labeled.labels), len(pool)
    x, y = embeddings, labeled.label_ids()
    prod, usable = labeled.production_probs(), labeled.production_usable()
    models, reference = labeled.logging_models(), labeled.reviewed_label_ids()
    if m:
        x, y = np.concatenate([x, pool.embeddings]), np.concatenate([y, pool.label_ids])
        prod = np.concatenate([prod, np.zeros((m, k))])
        usable = np.concatenate([usable, np.zeros(m, dtype=bool)])
        models = np.concatenate([models, np.full(m, "", dtype=object)])
        reference = np.concatenate([reference, np.full(m, -1, dtype=np.int64)])
    oos = out_of_sample_probabilities(
        x,
        y,
        k,
        segments=_joined_segments(embeddings, segments, pool),
        production_probs=prod,
        production_usable=usable,
        production_models=models,
        reference=reference,
        config=OOSConfig(folds=folds),
    )
    return OutOfSampleScores(oos.probs[:n], oos.sources[:n], oos.probs, pool.label_ids, oos.logged, oos.segments)


def _joined_segments(embeddings: np.ndarray, segments: Segments | None, pool: Pool) -> Segments | None:
    """The set's segments followed by the pool's (a text that does not split is its own one segment), or None
    where neither splits."""
    if segments is None and pool.segments is None:
        return None
    own = segments or Segments(embeddings, np.arange(len(embeddings)))
    if not len(pool):
        return own
    theirs = pool.segments or Segments(pool.embeddings, np.arange(len(pool)))
    return Segments(
        np.concatenate([own.embeddings, theirs.embeddings]),
        np.concatenate([own.owner, theirs.owner + len(embeddings)]),
    )


def label_verdict(items: Sequence[LabeledItem], labels: np.ndarray, scores: OutOfSampleScores) -> LabelVerdict:
    """cleanlab's label issues on ``labels`` ``(N,)`` (the consensus), the pool's labels scored alongside.

    Every flagged label goes to review; training leaves out only the share the evidence supports (few labels per
    class: a weak out-of-sample model, whose flags include many hard but correct labels; see ``exclusion_mask``),
    and the labels kept train at the probability that they are right (the noise rate: cleanlab's count of issues).
    """
    n = len(labels)
    pooled_labels = np.concatenate([labels, scores.pool_label_ids]) if len(scores.pool_label_ids) else labels
    pooled = cleanlab_adapter.find_label_issues(labels=pooled_labels, pred_probs=scores.pooled_probs)
    issues = cleanlab_adapter.LabelIssues(pooled.is_issue[:n], pooled.quality[:n], pooled.suggested[:n], pooled.method)
    share = trusted_share(pooled_labels)
    exclude = exclusion_mask(pooled, pooled_labels)[:n]
    weights = label_weights(scores.pooled_probs, pooled_labels, float(pooled.is_issue.mean()), trust=share)[:n]
    reviewed = np.array([it.reviewed for it in items], dtype=bool)
    is_issue = issues.is_issue & ~reviewed
    weights[reviewed] = 1.0
    return LabelVerdict(
        labels=labels,
        issues=issues,
        is_issue=is_issue,
        exclude=exclude & is_issue,
        weights=weights,
        pooled_labels=pooled_labels,
        trusted_share=share,
    )


def active_learning_scores(labeled: LabeledSet, probs: np.ndarray) -> ActiveScores | None:
    """ActiveLab scores for the labeled items (from ``probs`` ``(N, K)``, out-of-sample) and the unlabeled ones
    (from what the serving model logged); None, with a warning, where ActiveLab cannot run (the uncertain queue
    then falls back to margins)."""
    multi = _labels_by_annotator(labeled.items, labeled.index)
    unlabeled = unlabeled_probs(labeled.unlabeled, labeled.labels)
    try:
        scores = cleanlab_adapter.active_learning_scores(
            labels_multiannotator=multi, pred_probs=probs, pred_probs_unlabeled=unlabeled
        )
    except ValueError as exc:
        log.warning("ActiveLab failed (%s); the uncertain queue falls back to margins", exc)
        return None
    return ActiveScores(labeled=scores[0], unlabeled=scores[1])


def _labels_by_annotator(items: Sequence[LabeledItem], index: Mapping[str, int]) -> np.ndarray:
    """``(N, M)``: each annotator's label per item; an item no annotator labeled (a reviewer's decision, say) keeps
    its effective label in the first column. Columns without a label are dropped."""
    per_item = [it.annotator_votes() for it in items]
    annotators = sorted({a for v in per_item for a in v}) or ["given"]
    multi = annotator_matrix(per_item, annotators, index)
    for r, it in enumerate(items):
        if np.isnan(multi[r]).all():
            multi[r, 0] = index[it.label]
    return multi[:, ~np.isnan(multi).all(axis=0)]


def unlabeled_probs(unlabeled: Sequence[UnlabeledItem], labels: list[str]) -> np.ndarray:
    """``(U, K)``, rows summing to 1: the logged probabilities of each unlabeled prediction or, where none was
    logged, the one-hot of its logged label softened by its confidence; clipped at 1e-6."""
    k = len(labels)
    index = {name: i for i, name in enumerate(labels)}
    out = np.zeros((len(unlabeled), k))
    for r, item in enumerate(unlabeled):
        row = probability_matrix([item.probabilities], labels)[0]
        if row.sum() <= 0:
            row[:] = (1 - item.confidence) / max(k - 1, 1)
            row[index.get(item.label, 0)] = item.confidence
        out[r] = row / row.sum()
    out = np.clip(out, 1e-6, None)
    return out / out.sum(axis=1, keepdims=True)
