"""The array-level label-quality pass: out-of-sample probabilities, then cleanlab's verdict on every label.

No database here: ``check_labels`` takes embeddings and integer labels, so the benchmark, the tests and the
database job (``flywheel.feedback.labels``) all run exactly the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from flywheel.feedback.cleanlab_adapter import BATCHED_ABOVE, LabelIssues, find_label_issues
from flywheel.feedback.oos import OOSConfig, out_of_sample_probabilities


@dataclass(frozen=True)
class CheckConfig:
    """The whole pass. Defaults are the ones measured best in bench/label_noise.py (see docs/readme/feedback.md)."""

    oos: OOSConfig = field(default_factory=OOSConfig)
    filter_by: str = "ranked"
    quality_method: str = "normalized_margin"
    batched_above: int = BATCHED_ABOVE


@dataclass(frozen=True)
class LabelCheck:
    """``probs`` ``(N, K)`` out-of-sample; ``sources`` ``(N,)`` which source scored each label; ``issues`` the
    cleanlab verdict; ``timings`` seconds per stage (``cross_validation``, ``cleanlab``)."""

    probs: np.ndarray
    sources: np.ndarray
    issues: LabelIssues
    timings: dict[str, float]


def check_labels(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    production_probs: np.ndarray | None = None,
    production_usable: np.ndarray | None = None,
    config: CheckConfig | None = None,
) -> LabelCheck:
    """Score every label of ``N`` examples: ``embeddings`` ``(N, D)``, ``labels`` ``(N,)`` ints in ``0..K-1``."""
    config = config or CheckConfig()
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be integers in 0..{n_classes - 1}")
    t0 = time.perf_counter()
    oos = out_of_sample_probabilities(
        embeddings,
        labels,
        n_classes,
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
    t2 = time.perf_counter()
    timings = {"cross_validation": t1 - t0, "cleanlab": t2 - t1, **{f"cv_{k}": v for k, v in oos.timings.items()}}
    return LabelCheck(probs=oos.probs, sources=oos.sources, issues=issues, timings=timings)
