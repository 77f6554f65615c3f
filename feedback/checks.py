"""The array-level label-quality pass: out-of-sample probabilities, then cleanlab's verdict on every label.

No database here: ``check_labels`` takes embeddings and integer labels, so the benchmark, the tests and the
database job (``flywheel.feedback.results``) all run exactly the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from flywheel.feedback.cleanlab_adapter import BATCHED_ABOVE, LabelIssues, find_label_issues
from flywheel.feedback.oos import OOSConfig, Segments, SourceWeight, out_of_sample_probabilities

#: Labels per class from which cleanlab's estimated number of issues is trusted in full for training. Below it, the
#: out-of-sample model is weak and that estimate runs high (banking77 at 20% noise, measured in
#: bench/cleaning_gain.py: 1.7x the true count at 15 labels per class, 2x at 8, 3x at 4, about 1x from 30 on), and
#: the correct labels it flags are the hard, informative ones: leaving them out costs more accuracy than the noise
#: it removes. So only the lowest-quality ``min(1, labels_per_class / FULL_TRUST_PER_CLASS)`` share of the flagged
#: labels is left out of training; the others stay flagged, for review, and keep training.
FULL_TRUST_PER_CLASS = 35
#: A flagged label of a class with fewer labels than this is never left out of training: the cross-validation models
#: saw at most a handful of that class, so its labels look wrong for want of examples (measured: keeping them adds
#: 0.5 points at 4 to 8 labels per class, in bench/cleaning_gain.py).
MIN_CLASS_LABELS = 5


def label_weights(
    probs: np.ndarray,
    labels: np.ndarray,
    noise_rate: float,
    *,
    trust: float = 1.0,
    min_class_labels: int = MIN_CLASS_LABELS,
) -> np.ndarray:
    """``(N,)`` training weights: the probability that each given label is right.

    Bayes' rule under uniform label noise at ``noise_rate`` (η), with ``p``, the out-of-sample probability of the
    given label, as the evidence that it is the true class::

        w = (1 − η)·p / ((1 − η)·p + η·(1 − p) / (K − 1))

    A label the models agree with keeps a weight near 1; a doubtful one that the pass did not leave out still
    trains, at the weight its evidence supports (banking77 at 20% noise, over training every kept label at full
    weight: +0.1 to +0.4 points at 300 to 3,600 labels in bench/cleaning_gain.py, ``weighted``; +0.3 on average
    over 5 seeds at 3,400 labels, every seed higher). ``trust`` (the ``trusted_share``) moves the weights toward 1
    when there are too few labels per class for the out-of-sample model to be believed, and a label of a class
    with fewer than ``min_class_labels`` labels keeps full weight (as ``exclusion_mask`` never drops one).
    cleanlab ranks labels (quality scores) and counts the wrong ones, but has no per-label probability of being
    right; this is that.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return np.ones(0)
    eta = float(np.clip(noise_rate, 0.0, 1.0))
    k = probs.shape[1]
    p = probs[np.arange(len(labels)), labels]
    right = (1 - eta) * p
    wrong = eta * (1 - p) / max(1, k - 1)
    weights = np.where(right + wrong > 0, right / np.maximum(right + wrong, 1e-12), 1.0)
    weights = 1.0 - float(np.clip(trust, 0.0, 1.0)) * (1.0 - weights)
    if min_class_labels > 1:
        weights[np.bincount(labels)[labels] < min_class_labels] = 1.0
    return weights


@dataclass(frozen=True)
class CheckConfig:
    """The whole pass. Defaults are the ones measured best in bench/label_noise.py (see docs/readme/feedback.md)."""

    oos: OOSConfig = field(default_factory=OOSConfig)
    filter_by: str = "ranked"
    quality_method: str = "normalized_margin"
    batched_above: int = BATCHED_ABOVE
    full_trust_per_class: float = FULL_TRUST_PER_CLASS
    min_class_labels: int = MIN_CLASS_LABELS


@dataclass(frozen=True)
class LabelCheck:
    """``probs`` ``(N, K)`` out-of-sample; ``sources`` ``(N,)`` which source scored each label; ``issues`` the
    cleanlab verdict; ``exclude`` ``(N,)`` the flagged labels training leaves out (``exclusion_mask``);
    ``weights`` ``(N,)`` the training weight of each label kept (``label_weights``); ``timings`` seconds per
    stage (``cross_validation``, ``cleanlab``); ``logged`` / ``segments``: the weights of the sources mixed in."""

    probs: np.ndarray
    sources: np.ndarray
    issues: LabelIssues
    exclude: np.ndarray
    weights: np.ndarray
    timings: dict[str, float]
    logged: dict[str, SourceWeight] = field(default_factory=dict)
    segments: SourceWeight | None = None


def trusted_share(labels: np.ndarray, full_trust_per_class: float = FULL_TRUST_PER_CLASS) -> float:
    """The share of the flagged labels to leave out of training: ``min(1, labels per class / full_trust_per_class)``,
    with labels per class counted over the classes present in ``labels``."""
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels) or full_trust_per_class <= 0:
        return 1.0
    per_class = len(labels) / len(np.unique(labels))
    return float(min(1.0, per_class / full_trust_per_class))


def exclusion_mask(
    issues: LabelIssues,
    labels: np.ndarray,
    *,
    full_trust_per_class: float = FULL_TRUST_PER_CLASS,
    min_class_labels: int = MIN_CLASS_LABELS,
) -> np.ndarray:
    """``(N,)`` bool: the flagged labels training should leave out: the lowest-quality ``trusted_share`` of them,
    less those whose class has fewer than ``min_class_labels`` labels in ``labels``.

    Every flagged label stays flagged (the review queue shows them all); this only decides which of them are
    strong enough evidence to drop from the training set before a person has looked.
    """
    labels = np.asarray(labels, dtype=np.int64)
    flagged = np.flatnonzero(issues.is_issue)
    take = round(len(flagged) * trusted_share(labels, full_trust_per_class))
    out = np.zeros(len(issues.is_issue), dtype=bool)
    if take:
        out[flagged[np.argsort(issues.quality[flagged], kind="stable")[:take]]] = True
    if min_class_labels > 1 and len(labels):
        out &= np.bincount(labels)[labels] >= min_class_labels
    return out


def check_labels(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    segments: Segments | None = None,
    production_probs: np.ndarray | None = None,
    production_usable: np.ndarray | None = None,
    config: CheckConfig | None = None,
) -> LabelCheck:
    """Score every label of ``N`` examples: ``embeddings`` ``(N, D)``, ``labels`` ``(N,)`` ints in ``0..K-1``;
    ``segments``: the long texts' segments (``out_of_sample_probabilities``)."""
    config = config or CheckConfig()
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be integers in 0..{n_classes - 1}")
    t0 = time.perf_counter()
    oos = out_of_sample_probabilities(
        embeddings,
        labels,
        n_classes,
        segments=segments,
        production_probs=production_probs,
        production_usable=production_usable,
        config=config.oos,
    )
    t1 = time.perf_counter()
    issues = find_label_issues(
        labels=labels,
        pred_probs=oos.probs,
        filter_by=config.filter_by,
        quality_method=config.quality_method,
        batched_above=config.batched_above,
    )
    exclude = exclusion_mask(
        issues, labels, full_trust_per_class=config.full_trust_per_class, min_class_labels=config.min_class_labels
    )
    weights = label_weights(
        oos.probs,
        labels,
        float(issues.is_issue.mean()),
        trust=trusted_share(labels, config.full_trust_per_class),
        min_class_labels=config.min_class_labels,
    )
    t2 = time.perf_counter()
    timings = {"cross_validation": t1 - t0, "cleanlab": t2 - t1, **{f"cv_{k}": v for k, v in oos.timings.items()}}
    return LabelCheck(
        probs=oos.probs,
        sources=oos.sources,
        issues=issues,
        exclude=exclude,
        weights=weights,
        timings=timings,
        logged=oos.logged,
        segments=oos.segments,
    )
