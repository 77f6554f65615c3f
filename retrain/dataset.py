"""Training-set assembly: effective labels in, label issues and discarded items out, the holdout set aside.

The holdout of each (tenant, task) is the predictions with ``bucket < settings.holdout_percent`` (a stable hash of
the client id, computed at ingest). It never trains and is never filtered by label quality: it is where the gate
compares models, so the label-quality pass must not be able to make a model look better by removing its mistakes.
With holdout hygiene, a holdout label the pass flagged (scored only by models that never trained on it) and no
reviewer decided yet weighs the gate's figures at the probability that it is right; every other counts in full.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import literal, select
from sqlalchemy.orm import Session

from flywheel.domain.embeddings import get_embeddings
from flywheel.domain.encoder import load_encoder
from flywheel.domain.holdout import is_holdout
from flywheel.domain.training_labels import excluded_prediction_ids, holdout_weights, rule_only, training_weights
from flywheel.domain.windows import TextWindows, text_windows
from flywheel.models.label_quality import LabelingRule
from flywheel.models.records import Prediction, Task, Tenant

if TYPE_CHECKING:
    from flywheel.core.db import Database

log = logging.getLogger(__name__)

EMBED_CHUNK = 512  # texts embedded (and cached) per transaction


@dataclass
class LabeledSet:
    """Rows of one split, aligned: prediction ids, texts, labels, the tenant slug of each row, and each row's
    training weight (1.0 unless the label-quality pass doubts the label)."""

    ids: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    tenants: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, pid: int, text: str, label: str, tenant: str, content_hash: str, weight: float = 1.0) -> None:
        self.ids.append(pid)
        self.texts.append(text)
        self.labels.append(label)
        self.tenants.append(tenant)
        self.hashes.append(content_hash)
        self.weights.append(weight)

    @property
    def sample_weight(self) -> list[float] | None:
        """The weights for training, or None when every row has full weight."""
        return self.weights if any(w != 1.0 for w in self.weights) else None

    def fingerprint(self) -> str:
        """SHA-256 over (id, content hash, label[, weight]) of every row: what exactly this split contained."""
        digest = hashlib.sha256()
        for pid, h, label, w in zip(self.ids, self.hashes, self.labels, self.weights, strict=True):
            digest.update(f"{pid}:{h}:{label}{'' if w == 1.0 else f':{w:.6f}'}\n".encode())
        return digest.hexdigest()

    def label_counts(self) -> dict[str, int]:
        return dict(Counter(self.labels))


@dataclass
class TrainingData:
    task_id: int
    tenant_id: int | None
    labels: list[str]
    train: LabeledSet
    holdout: LabeledSet
    excluded: int  # training-pool rows removed by label quality (issues, discarded, excluded sources)

    def lineage(self) -> dict[str, Any]:
        """What trained (and evaluated) a model: counts per tenant and content hashes of both splits, and the holdout
        items the gate weighed below 1 (``holdout_weights``)."""
        return {
            "n_train": len(self.train),
            "n_holdout": len(self.holdout),
            "n_excluded": self.excluded,
            "n_weighted": sum(1 for w in self.train.weights if w != 1.0),
            "tenants": dict(sorted(Counter(self.train.tenants).items())),
            "holdout_tenants": dict(sorted(Counter(self.holdout.tenants).items())),
            "train_sha256": self.train.fingerprint(),
            "holdout_sha256": self.holdout.fingerprint(),
            "train_id_range": [min(self.train.ids), max(self.train.ids)] if self.train.ids else None,
            "holdout_weights": self.holdout_weights(),
        }

    def holdout_weights(self) -> dict[str, Any]:
        """The holdout items the gate weighs below 1, per tenant: ``{"n_weighted", "weight_sum", "tenants": {slug:
        {"n", "n_weighted", "weights": {prediction id: weight}}}}`` (every other holdout item counts 1)."""
        tenants: dict[str, dict[str, Any]] = {}
        for pid, slug, w in zip(self.holdout.ids, self.holdout.tenants, self.holdout.weights, strict=True):
            entry = tenants.setdefault(slug, {"n": 0, "n_weighted": 0, "weights": {}})
            entry["n"] += 1
            if w != 1.0:
                entry["n_weighted"] += 1
                entry["weights"][str(pid)] = round(w, 6)
        return {
            "n_weighted": sum(e["n_weighted"] for e in tenants.values()),
            "weight_sum": round(sum(self.holdout.weights), 4),
            "tenants": dict(sorted(tenants.items())),
        }


def label_verdicts(session: Session, tenant_id: int, task_id: int) -> tuple[set[int], dict[int, float]]:
    """What the label-quality pass says about training: the prediction ids it keeps out, and the weights below 1
    of the labels it keeps."""
    return set(excluded_prediction_ids(session, tenant_id, task_id)), training_weights(session, tenant_id, task_id)


def build_training_data(
    session: Session, task: Task, tenant: Tenant | None, *, holdout_percent: int, holdout_hygiene: bool = False
) -> TrainingData:
    """The training pool and the holdout of ``task``: one tenant's data for a variant; for the shared model, every
    tenant's that shares its labels (``share_labels``), so an opted-out tenant is in neither split nor the lineage.
    ``holdout_hygiene``: each holdout row carries its weight for the gate (``holdout_weights``), else 1.

    Which labels came from rules alone is asked only of a task with labeling rules: the correlated test costs a
    hashed subplan per partition on PostgreSQL, which tasks without rules need not pay."""
    has_rules = session.scalar(select(LabelingRule.id).where(LabelingRule.task_id == task.id).limit(1)) is not None
    rules_only = rule_only() if has_rules else literal(False)
    stmt = (
        select(
            Prediction.id,
            Prediction.text,
            Prediction.effective_label,
            Prediction.bucket,
            Prediction.content_hash,
            Prediction.tenant_id,
            Tenant.slug,
            rules_only,
        )
        .join(Tenant, Tenant.id == Prediction.tenant_id)
        .where(
            Prediction.task_id == task.id,
            Prediction.effective_label.is_not(None),
            Prediction.label_discarded.is_(False),
        )
        .order_by(Prediction.id)
    )
    if tenant is not None:
        stmt = stmt.where(Prediction.tenant_id == tenant.id)
    else:  # a shared model: only tenants that share their labels (and are not being deleted)
        stmt = stmt.where(Tenant.share_labels.is_(True), Tenant.status == "active")
    rows = session.execute(stmt).all()
    valid = set(task.labels)
    verdicts: dict[int, tuple[set[int], dict[int, float]]] = {}
    held: dict[int, dict[int, float]] = {}
    train, holdout = LabeledSet(), LabeledSet()
    excluded = 0
    for pid, text, label, bucket, chash, tid, slug, by_rules_alone in rows:
        if label not in valid:
            continue
        if is_holdout(bucket, holdout_percent):
            if not by_rules_alone:  # the holdout measures against people's labels; a rule-only one is left out
                if holdout_hygiene and tid not in held:
                    held[tid] = holdout_weights(session, tid, task.id)
                holdout.add(pid, text, label, slug, chash, held.get(tid, {}).get(pid, 1.0))
            continue
        if tid not in verdicts:
            verdicts[tid] = label_verdicts(session, tid, task.id)
        left_out, weights = verdicts[tid]
        if pid in left_out:
            excluded += 1
            continue
        train.add(pid, text, label, slug, chash, weights.get(pid, 1.0))
    return TrainingData(
        task_id=task.id,
        tenant_id=tenant.id if tenant else None,
        labels=list(task.labels),
        train=train,
        holdout=holdout,
        excluded=excluded,
    )


def embeddings_for(db: Database, texts: list[str], base_model: str | None, window: int | None = None) -> Any:
    """Frozen-encoder embeddings through the shared embedding cache (each text is embedded once per encoder and
    window). ``window``: the task's embedding window (longer texts chunked and pooled); None: the bare encoder.

    One short transaction per chunk: on SQLite a transaction holds the write lock, and ingestion must not wait
    for a whole training set to be embedded.
    """
    import numpy as np

    base = load_encoder(base_model or None)
    encoder: Any = base.windowed(window) if window else base
    parts = []
    for start in range(0, len(texts), EMBED_CHUNK):
        with db.session() as session:
            parts.append(np.asarray(get_embeddings(session, texts[start : start + EMBED_CHUNK], encoder=encoder)))
    return np.concatenate(parts) if parts else base.embed([])


def windows_for(texts: list[str], base_model: str | None) -> TextWindows:
    """The embedding and fine-tuning windows for these texts (a sample's token lengths, under the base's limit)."""
    encoder = load_encoder(base_model or None)
    return text_windows(texts, encoder.token_lengths, limit=encoder.limit)
