"""Who labeled what, and how far to trust them: the consensus label of each prediction and each source's reliability.

An annotator is one ``source:source_id`` (``labeled_set.annotator_key``); reviewers are not annotators here, their
decisions are final. The consensus is CROWDLAB (``cleanlab.multiannotator``) once ``crowdlab_min_overlap``
predictions carry labels from two or more annotators, and the precedence rule of ``flywheel.domain.effective``
before that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flywheel.core.config import Settings
from flywheel.domain.effective import SOURCE_PRIORITY, Vote, resolve
from flywheel.feedback import cleanlab_adapter
from flywheel.feedback.labeled_set import LabeledItem

METHOD_RULE = "rule"
METHOD_CROWDLAB = "crowdlab"
#: The rule, with the votes of sources excluded as unreliable dropped where others labeled the example too.
METHOD_RULE_EXCLUDING = "rule-excluding"


@dataclass(frozen=True)
class ConsensusRow:
    """One prediction's consensus: ``quality`` in [0, 1], None where no annotator labeled it."""

    label: str
    quality: float | None
    method: str


@dataclass(frozen=True)
class LabelConsensus:
    """The consensus over ``N`` labeled items: ``rows`` one per item; ``annotator_quality`` CROWDLAB's rating per
    annotator (empty under the rule); ``overlap`` items with two or more annotators, of ``annotators`` in all."""

    rows: list[ConsensusRow]
    annotator_quality: dict[str, float]
    method: str
    overlap: int
    min_overlap: int
    annotators: int
    crowdlab_error: str | None = None

    def label_ids(self, index: Mapping[str, int], fallback: np.ndarray) -> np.ndarray:
        """``(N,)`` int consensus labels (``fallback[i]`` where a label is not one of ``index``)."""
        return np.array([index[c.label] if c.label in index else fallback[i] for i, c in enumerate(self.rows)])

    def summary(self) -> dict[str, Any]:
        """The run summary's ``consensus`` entry."""
        out: dict[str, Any] = {
            "method": self.method,
            "overlap": self.overlap,
            "min_overlap": self.min_overlap,
            "annotators": self.annotators,
        }
        if self.crowdlab_error is not None:
            out["crowdlab_error"] = self.crowdlab_error
        return out


@dataclass(frozen=True)
class SourceStat:
    """One annotator's record in a pass: how often its label disagrees with the label the pass trusts, and whether
    the pass excludes it as unreliable. Field names are ``LabelSourceStat``'s columns."""

    source: str
    source_id: str
    n_labels: int
    n_issues: int
    issue_rate: float
    annotator_quality: float | None
    excluded: bool


def annotator_matrix(
    votes: Sequence[Mapping[str, Vote]], annotators: Sequence[str], index: Mapping[str, int]
) -> np.ndarray:
    """``(len(votes), len(annotators))`` float: the class id each annotator gave each item, NaN where none (or a
    label outside ``index``)."""
    col = {a: j for j, a in enumerate(annotators)}
    multi = np.full((len(votes), len(annotators)), np.nan)
    for r, by_annotator in enumerate(votes):
        for a, v in by_annotator.items():
            if v.label is not None and v.label in index:
                multi[r, col[a]] = index[v.label]
    return multi


def build_consensus(
    items: Sequence[LabeledItem], probs: np.ndarray, index: Mapping[str, int], settings: Settings
) -> LabelConsensus:
    """CROWDLAB over non-reviewer labels once ``crowdlab_min_overlap`` items have two or more annotators.

    ``probs``: ``(N, K)`` out-of-sample. Before that (and for items with a reviewer decision, or a single annotator),
    the precedence rule stands, with consensus quality = the share of annotators agreeing with it.
    """
    per_item = [it.annotator_votes() for it in items]
    annotators = sorted({a for v in per_item for a in v})
    overlap = sum(1 for v in per_item if len(v) >= 2)
    rule = LabelConsensus(
        rows=[_rule_row(it, votes) for it, votes in zip(items, per_item, strict=True)],
        annotator_quality={},
        method=METHOD_RULE,
        overlap=overlap,
        min_overlap=settings.crowdlab_min_overlap,
        annotators=len(annotators),
    )
    if overlap < settings.crowdlab_min_overlap or len(annotators) < 2:
        return rule
    return _crowdlab(items, per_item, annotators, probs, index, rule)


def _rule_row(item: LabeledItem, votes: Mapping[str, Vote]) -> ConsensusRow:
    agree = [v.label == item.label for v in votes.values()]
    return ConsensusRow(item.label, float(np.mean(agree)) if agree else None, METHOD_RULE)


def _crowdlab(
    items: Sequence[LabeledItem],
    per_item: list[dict[str, Vote]],
    annotators: list[str],
    probs: np.ndarray,
    index: Mapping[str, int],
    rule: LabelConsensus,
) -> LabelConsensus:
    """CROWDLAB's consensus where two or more annotators and no reviewer labeled an item; its quality everywhere
    an annotator labeled one. ``rule`` stands, with the error noted, where CROWDLAB cannot run."""
    members = [i for i, v in enumerate(per_item) if v]
    multi = annotator_matrix([per_item[i] for i in members], annotators, index)
    labeled_columns = ~np.isnan(multi).all(axis=0)
    kept_annotators = [a for a, keep in zip(annotators, labeled_columns, strict=True) if keep]
    try:
        out = cleanlab_adapter.multiannotator_consensus(
            labels_multiannotator=multi[:, labeled_columns], pred_probs=probs[members]
        )
    except ValueError as exc:  # e.g. no row with a label left: keep the rule
        return replace(rule, crowdlab_error=str(exc)[:300])
    names = {i: name for name, i in index.items()}
    rows = list(rule.rows)
    for r, i in enumerate(members):
        if len(per_item[i]) >= 2 and not items[i].reviewed:
            rows[i] = ConsensusRow(names[int(out.labels[r])], float(out.quality[r]), METHOD_CROWDLAB)
        else:
            rows[i] = ConsensusRow(rows[i].label, float(out.quality[r]), rows[i].method)
    quality = {a: float(q) for a, q in zip(kept_annotators, out.annotator_quality, strict=True)}
    return replace(rule, rows=rows, annotator_quality=quality, method=METHOD_CROWDLAB)


def rate_sources(
    items: Sequence[LabeledItem],
    trusted: Sequence[str],
    annotator_quality: Mapping[str, float],
    settings: Settings,
) -> dict[str, SourceStat]:
    """Per annotator: how often its latest label differs from ``trusted[i]``, the label the pass trusts for item
    ``i``. A source is excluded with at least ``source_min_labels`` labels, an issue rate above
    ``source_exclude_issue_rate`` and a priority below a reviewer's."""
    counts: dict[str, tuple[Vote, int, int]] = {}
    for it, label in zip(items, trusted, strict=True):
        for a, v in it.annotator_votes().items():
            first, n_labels, n_issues = counts.get(a, (v, 0, 0))
            counts[a] = (first, n_labels + 1, n_issues + int(v.label != label))
    stats = {}
    for a, (first, n_labels, n_issues) in counts.items():
        issue_rate = n_issues / n_labels
        stats[a] = SourceStat(
            source=first.source,
            source_id=first.source_id or "",
            n_labels=n_labels,
            n_issues=n_issues,
            issue_rate=issue_rate,
            annotator_quality=annotator_quality.get(a),
            excluded=bool(
                n_labels >= settings.source_min_labels
                and issue_rate > settings.source_exclude_issue_rate
                and SOURCE_PRIORITY.get(first.source, 0) < SOURCE_PRIORITY["reviewer"]
            ),
        )
    return stats


def consensus_excluding(item: LabeledItem, row: ConsensusRow, excluded: set[str]) -> tuple[str | None, str]:
    """The rule's consensus label and method for ``item`` once the votes of ``excluded`` sources are dropped, where
    other annotators labeled it too; ``row``'s label and method otherwise (CROWDLAB already weighs the sources)."""
    votes = item.annotator_votes()
    kept = [v for a, v in votes.items() if a not in excluded]
    if excluded and kept and len(kept) < len(votes) and row.method == METHOD_RULE:
        return resolve(kept).label, METHOD_RULE_EXCLUDING
    return row.label, row.method


def labeled_only_by(item: LabeledItem, excluded: set[str]) -> bool:
    """Every annotator of ``item`` (there is one at least) is an ``excluded`` source."""
    votes = item.annotator_votes()
    return bool(votes) and all(a in excluded for a in votes)
