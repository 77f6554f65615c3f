"""What the label-quality pass reads: one (tenant, task)'s labeled predictions outside the evaluation holdout, with
their feedback, the newest unlabeled predictions, the task's other tenants' labels (the pool), and embeddings.

The holdout (``bucket < holdout_percent``) is read only on request (``load_labeled_set(..., holdout=True)``), as a
set of its own: the pass's holdout stage scores it apart from every other label and never filters or relabels it.
Each loader opens its own short session: progress updates never wait on a long transaction (SQLite).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.domain.effective import Vote
from flywheel.domain.embeddings import get_embeddings
from flywheel.domain.holdout import in_holdout, outside_holdout
from flywheel.domain.partitions import feedback_of, predictions_in
from flywheel.domain.segments import segment_texts
from flywheel.feedback.oos import Segments
from flywheel.models.records import Feedback, Prediction, Task

#: Rungs of our own models whose logged probabilities may serve as an out-of-sample source (zero-shot ones are
#: too weak).
PRODUCTION_RUNGS = ("few_shot", "fine_tuned")
#: The name of a logging model the caller gave no ``model_version`` for.
UNVERSIONED = "unversioned"
#: Texts embedded per session (and per progress step).
EMBED_STEP = 1024
#: Prediction ids per ``IN (...)`` query.
ID_CHUNK = 500


def annotator_key(vote: Vote) -> str:
    """``source:source_id`` (``-`` for none): one annotator."""
    return f"{vote.source}:{vote.source_id or '-'}"


@dataclass
class LabeledItem:
    """One labeled prediction: its effective label, its feedback votes in time order, what the model logged.

    ``in_sample``: the caller said the logging model trained on this item; ``first_label_at``: when its earliest
    vote was given (None before votes are attached).
    """

    prediction_id: int
    text: str
    label: str
    votes: list[Vote]
    probabilities: dict[str, float] | None
    model_version: str | None
    created_at: datetime
    in_sample: bool = False
    first_label_at: datetime | None = None

    @property
    def reviewed(self) -> bool:
        """A reviewer decided this label: that decision is final."""
        return any(v.source == "reviewer" for v in self.votes)

    def annotator_votes(self) -> dict[str, Vote]:
        """The latest label of each non-reviewer annotator (``annotator_key``), in time order of first vote."""
        out: dict[str, Vote] = {}
        for v in self.votes:  # in time order: the last one wins
            if v.source != "reviewer" and v.label is not None:
                out[annotator_key(v)] = v
        return out


@dataclass(frozen=True)
class UnlabeledItem:
    """A prediction nobody labeled yet: what the model logged, for ActiveLab."""

    prediction_id: int
    probabilities: dict[str, float] | None
    label: str
    confidence: float


@dataclass(frozen=True)
class LabeledSet:
    """Everything one pass scores for one (tenant, task).

    ``production_models``: version → creation time of our own served models (``PRODUCTION_RUNGS``) that logged
    probabilities for some of ``items``; ``own_models``: every version among them that our registry holds, of any
    rung (the others are the customer's own models). ``trained``: the lineage of those production models among the
    items, ``(version, prediction id)`` for each item a model trained on (``model_training_rows``); ``untraced``:
    the production models whose lineage may lack rows of items that still exist (a tainted model: a tenant that
    stopped sharing its labels had its rows dropped from the shared models), judged by creation time instead.
    ``holdout``: the items are the evaluation holdout's (and ``unlabeled`` is empty).
    """

    tenant_id: int
    task_id: int
    labels: list[str]
    items: list[LabeledItem]
    unlabeled: list[UnlabeledItem]
    production_models: dict[str, datetime]
    own_models: frozenset[str] = frozenset()
    trained: frozenset[tuple[str, int]] = frozenset()
    untraced: frozenset[str] = frozenset()
    holdout: bool = False

    @property
    def index(self) -> dict[str, int]:
        """Label name → class id ``0..K-1``."""
        return {name: i for i, name in enumerate(self.labels)}

    def label_ids(self) -> np.ndarray:
        """``(N,)`` int: the effective label of each item."""
        index = self.index
        return np.array([index[it.label] for it in self.items], dtype=np.int64)

    def production_probs(self) -> np.ndarray:
        """``(N, K)``: the probabilities the serving model logged (rows of zeros where none was logged)."""
        return probability_matrix([it.probabilities for it in self.items], self.labels)

    def production_usable(self) -> np.ndarray:
        """``(N,)`` bool: the logged probabilities are out-of-sample for the item's label.

        - Never where the caller marked the item ``in_sample`` (the logging model trained on it).
        - Our own models (in the registry): only production rungs, and only where the model's lineage
          (``trained``: every prediction that trained it) does not hold the item, whenever the model was created.
          A model whose lineage may be incomplete (``untraced``) counts only where, besides, it was created no
          later than the prediction: a model trains only on labels that existed before it.
        - Any other model (the customer's own): where the probabilities were logged no later than the item's first
          label, so no label of it existed to train on.
        """
        created = self.production_models
        out = np.zeros(len(self.items), dtype=bool)
        for i, it in enumerate(self.items):
            if it.probabilities is None or it.in_sample:
                continue
            version = it.model_version
            if version is not None and version in self.own_models:
                if version not in created or (version, it.prediction_id) in self.trained:
                    continue
                out[i] = version not in self.untraced or it.created_at >= created[version]
            else:
                out[i] = it.first_label_at is None or it.created_at <= it.first_label_at
        return out

    def logging_models(self) -> np.ndarray:
        """``(N,)`` str: the model that logged each item's probabilities (``UNVERSIONED`` where none was named)."""
        return np.array([it.model_version or UNVERSIONED for it in self.items], dtype=object)

    def reviewed_label_ids(self) -> np.ndarray:
        """``(N,)`` int: the class a reviewer decided for each item, -1 where none did (or discarded it)."""
        index = self.index
        out = np.full(len(self.items), -1, dtype=np.int64)
        for i, it in enumerate(self.items):
            decided = [v.label for v in it.votes if v.source == "reviewer" and v.label in index]
            if decided:
                out[i] = index[decided[-1]]
        return out


@dataclass(frozen=True)
class Pool:
    """The task's other tenants' labeled predictions outside their holdouts: extra cross-validation training rows,
    never scored. ``embeddings`` ``(M, D)``, ``label_ids`` ``(M,)``, ``segments`` their long texts' segments (None
    where no text splits)."""

    embeddings: np.ndarray
    label_ids: np.ndarray
    segments: Segments | None = None

    def __len__(self) -> int:
        return len(self.label_ids)


def probability_matrix(rows: Sequence[dict[str, float] | None], labels: list[str]) -> np.ndarray:
    """``(len(rows), K)``: logged probabilities by label name as a matrix; names outside ``labels`` are dropped."""
    index = {name: i for i, name in enumerate(labels)}
    out = np.zeros((len(rows), len(labels)))
    for r, probs in enumerate(rows):
        for name, p in (probs or {}).items():
            if name in index:
                out[r, index[name]] = float(p)
    return out


def load_labeled_set(
    db: Database, settings: Settings, tenant_id: int, task_id: int, *, holdout: bool = False
) -> LabeledSet:
    """The labeled predictions outside the holdout (effective label one of the task's), their feedback, the newest
    ``review_unlabeled_cap`` unlabeled predictions, and the production models that logged probabilities.

    ``holdout``: the holdout's labeled predictions instead, with no unlabeled ones (what the holdout stage scores)."""
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        items = _labeled_items(session, settings, tenant_id, task_id, set(task.labels), holdout=holdout)
        _attach_votes(session, items)
        registry = _registry_models(session, tenant_id, task_id, items)
        return LabeledSet(
            tenant_id=tenant_id,
            task_id=task_id,
            labels=list(task.labels),
            items=items,
            unlabeled=[] if holdout else _unlabeled_items(session, tenant_id, task_id, settings.review_unlabeled_cap),
            production_models=registry.production,
            own_models=registry.own,
            trained=_lineage(session, tenant_id, task_id, items, registry),
            untraced=registry.untraced,
            holdout=holdout,
        )


def _labeled_items(
    session: Session, settings: Settings, tenant_id: int, task_id: int, valid: set[str], *, holdout: bool = False
) -> list[LabeledItem]:
    split = in_holdout(settings.holdout_percent) if holdout else outside_holdout(settings.holdout_percent)
    rows = session.execute(
        select(
            Prediction.id,
            Prediction.text,
            Prediction.effective_label,
            Prediction.probabilities,
            Prediction.model_version,
            Prediction.created_at,
            Prediction.in_sample,
        )
        .where(
            Prediction.tenant_id == tenant_id,
            Prediction.task_id == task_id,
            Prediction.effective_label.is_not(None),
            Prediction.label_discarded.is_(False),
            split,
        )
        .order_by(Prediction.id)
    ).all()
    return [
        LabeledItem(pid, text, label, [], probs, version, created, in_sample)
        for pid, text, label, probs, version, created, in_sample in rows
        if label in valid
    ]


def _attach_votes(session: Session, items: list[LabeledItem]) -> None:
    """Fill each item's ``votes`` with its feedback, in time order (``Vote.order`` counts within one query chunk),
    and its ``first_label_at``."""
    by_id = {it.prediction_id: it for it in items}
    for start in range(0, len(items), ID_CHUNK):
        chunk = items[start : start + ID_CHUNK]
        feedback = session.execute(
            select(
                Feedback.prediction_id,
                Feedback.label,
                Feedback.source,
                Feedback.source_id,
                Feedback.decision,
                Feedback.created_at,
            )
            .where(feedback_of((it.prediction_id, it.created_at) for it in chunk))
            .order_by(Feedback.prediction_id, Feedback.created_at, Feedback.id)
        )
        for n, (pid, label, source, source_id, decision, at) in enumerate(feedback):
            item = by_id[pid]
            item.votes.append(Vote(label, source, source_id, decision, n))
            if item.first_label_at is None:
                item.first_label_at = at


def _unlabeled_items(session: Session, tenant_id: int, task_id: int, cap: int) -> list[UnlabeledItem]:
    rows = session.execute(
        select(Prediction.id, Prediction.probabilities, Prediction.label, Prediction.confidence)
        .where(
            Prediction.tenant_id == tenant_id,
            Prediction.task_id == task_id,
            Prediction.feedback_count == 0,
            Prediction.effective_label.is_(None),
            Prediction.label_discarded.is_(False),
        )
        .order_by(Prediction.created_at.desc(), Prediction.id.desc())
        .limit(cap)
    )
    return [UnlabeledItem(pid, probs, label, conf) for pid, probs, label, conf in rows]


@dataclass(frozen=True)
class _Registry:
    """Of the items' logging models, those our registry holds for the task and the tenant: ``production``:
    version → creation time of the production rungs; ``own``: all of them, whatever the rung; ``ids``: production
    version → model id; ``untraced``: the production versions whose lineage may lack rows (tainted)."""

    production: dict[str, datetime]
    own: frozenset[str]
    ids: dict[str, int]
    untraced: frozenset[str]


def _registry_models(session: Session, tenant_id: int, task_id: int, items: list[LabeledItem]) -> _Registry:
    """The registry's view of ``items``' logged versions: the task's shared models and the tenant's own variants
    (another tenant's variant never served this tenant, so a version name of one is the customer's)."""
    from flywheel.models.training import ModelVersion

    versions = {it.model_version for it in items if it.model_version and it.probabilities}
    if not versions:
        return _Registry({}, frozenset(), {}, frozenset())
    rows = session.execute(
        select(
            ModelVersion.id, ModelVersion.version, ModelVersion.rung, ModelVersion.created_at, ModelVersion.tainted_at
        ).where(
            ModelVersion.task_id == task_id,
            or_(ModelVersion.tenant_id.is_(None), ModelVersion.tenant_id == tenant_id),
            ModelVersion.version.in_(sorted(versions)),
        )
    ).all()
    production = [row for row in rows if row.rung in PRODUCTION_RUNGS]
    return _Registry(
        production={row.version: row.created_at for row in production},
        own=frozenset(row.version for row in rows),
        ids={row.version: row.id for row in production},
        untraced=frozenset(row.version for row in production if row.tainted_at is not None),
    )


def _lineage(
    session: Session, tenant_id: int, task_id: int, items: list[LabeledItem], registry: _Registry
) -> frozenset[tuple[str, int]]:
    """``(version, prediction id)`` for each item that trained the production model that logged its probabilities
    (``model_training_rows``), ``ID_CHUNK`` items per query. Each query names the models and the predictions (the
    table's primary key), and joins the tenant's predictions of the task, read from their months' partitions only."""
    from flywheel.models.training import ModelTrainingRow, ModelVersion

    logged = [
        it for it in items if it.probabilities is not None and not it.in_sample and it.model_version in registry.ids
    ]
    if not logged:
        return frozenset()
    out: set[tuple[str, int]] = set()
    for start in range(0, len(logged), ID_CHUNK):
        chunk = logged[start : start + ID_CHUNK]
        model_ids = sorted({registry.ids[it.model_version] for it in chunk if it.model_version})
        rows = session.execute(
            select(ModelVersion.version, ModelTrainingRow.prediction_id)
            .join(ModelVersion, ModelVersion.id == ModelTrainingRow.model_id)
            .join(Prediction, Prediction.id == ModelTrainingRow.prediction_id)
            .where(
                ModelTrainingRow.model_id.in_(model_ids),
                ModelTrainingRow.prediction_id.in_(sorted(it.prediction_id for it in chunk)),
                ModelVersion.task_id == task_id,
                Prediction.tenant_id == tenant_id,
                Prediction.task_id == task_id,
                predictions_in((it.prediction_id, it.created_at) for it in chunk),
            )
        )
        out.update((version, pid) for version, pid in rows)
    return frozenset(out)


def load_pool(db: Database, settings: Settings, labeled: LabeledSet, encoder: Any) -> Pool:
    """The task's other tenants' labeled predictions (holdouts excluded: they never judge labels), embedded."""
    index = labeled.index
    with db.session() as session:
        rows = session.execute(
            select(Prediction.text, Prediction.effective_label).where(
                Prediction.task_id == labeled.task_id,
                Prediction.tenant_id != labeled.tenant_id,
                Prediction.effective_label.is_not(None),
                Prediction.label_discarded.is_(False),
                outside_holdout(settings.holdout_percent),
            )
        ).all()
    pool = [(text, label) for text, label in rows if label is not None and label in index]
    if not pool:
        return Pool(np.zeros((0, 0)), np.zeros(0, dtype=np.int64))
    texts = [t for t, _ in pool]
    return Pool(
        embed_texts(db, texts, encoder, lambda done: None),
        np.array([index[label] for _, label in pool], dtype=np.int64),
        embed_segments(db, texts, encoder, lambda done, total: None),
    )


def embed_texts(db: Database, texts: list[str], encoder: Any, on_step: Callable[[int], None]) -> np.ndarray:
    """``(N, D)`` embeddings through the cache, ``EMBED_STEP`` texts per session; ``on_step(done)`` after each."""
    chunks = []
    for start in range(0, len(texts), EMBED_STEP):
        with db.session() as session:
            chunks.append(get_embeddings(session, texts[start : start + EMBED_STEP], encoder=encoder))
        on_step(min(start + EMBED_STEP, len(texts)))
    return np.concatenate(chunks)


def embed_segments(
    db: Database, texts: list[str], encoder: Any, on_step: Callable[[int, int], None]
) -> Segments | None:
    """The segments of ``texts`` (``flywheel.domain.segments``) embedded through the cache, or None when no text
    splits; ``on_step(done, total)`` after each step."""
    split = segment_texts(texts)
    if split is None:
        return None
    segments, owner = split
    x = embed_texts(db, segments, encoder, lambda done: on_step(done, len(segments)))
    return Segments(x, np.asarray(owner, dtype=np.int64))
