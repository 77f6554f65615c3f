"""Drift inputs from SQL: the current window and its reference, sampled to a cap, as Evidently frames.

The reference is the champion model's training data for this tenant when the registry knows it (the artifact's
``lineage.json`` lists the training prediction ids), else the window just before the current one. Only ids, labels,
confidences and text lengths are read for the whole window; texts are read (and embedded, through the embedding
cache when the feedback area provides one) only for the sampled rows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from flywheel.config import Settings
from flywheel.models.core import Prediction
from flywheel.models.monitoring import Sla

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
_CHUNK = 900  # ids per IN (...) query, below SQLite's variable limit


@dataclass
class Rows:
    ids: np.ndarray
    labels: list[str]
    confidences: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> Rows:
        return Rows(self.ids[index], [self.labels[i] for i in index], self.confidences[index], self.lengths[index])


def _rows(session: Session, where: Any) -> Rows:
    result = session.execute(
        select(Prediction.id, Prediction.label, Prediction.confidence, func.length(Prediction.text))
        .where(where)
        .order_by(Prediction.id)
    ).all()
    if not result:
        return _concat([])
    ids, labels, confidences, lengths = zip(*result, strict=True)
    return Rows(
        np.asarray(ids, dtype=np.int64),
        list(labels),
        np.asarray(confidences, dtype=np.float64),
        np.asarray(lengths, dtype=np.int64),
    )


def _concat(parts: list[Rows]) -> Rows:
    if not parts:
        return Rows(np.zeros(0, dtype=np.int64), [], np.zeros(0), np.zeros(0, dtype=np.int64))
    return Rows(
        np.concatenate([p.ids for p in parts]),
        [label for p in parts for label in p.labels],
        np.concatenate([p.confidences for p in parts]),
        np.concatenate([p.lengths for p in parts]),
    )


def sample(rows: Rows, cap: int, seed: int) -> Rows:
    """At most ``cap`` rows, drawn without replacement with a fixed seed (same input, same sample)."""
    if len(rows) <= cap:
        return rows
    index = np.sort(np.random.default_rng(seed).choice(len(rows), size=cap, replace=False))
    return rows.take(index)


def champion_training_ids(session: Session, sla: Sla) -> list[int] | None:
    """Prediction ids the serving champion was trained on (this tenant's rows only), when the registry knows."""
    try:
        from flywheel.retrain.registry import champion_for
    except ImportError:
        return None
    try:
        champion = champion_for(session, sla.task_id, sla.tenant_id)
    except Exception:  # the registry is another area's; drift falls back to a reference window
        log.warning("could not read the champion of task %s", sla.task_id, exc_info=True)
        return None
    if champion is None or not champion.artifact_path:
        return None
    lineage = Path(champion.artifact_path) / "lineage.json"
    if not lineage.exists():
        return None
    try:
        ids = [int(i) for i in json.loads(lineage.read_text()).get("train_ids", [])]
    except (ValueError, TypeError, OSError):
        return None
    return ids or None


def _embed(session: Session, texts: list[str], settings: Settings) -> np.ndarray:
    from flywheel.retrain.encoder import load_encoder

    encoder = load_encoder(settings.base_model or None)
    try:
        from flywheel.feedback.embeddings import get_embeddings
    except ImportError:
        return encoder.embed(texts)
    return np.asarray(get_embeddings(session, texts, encoder=encoder))


def _texts(session: Session, ids: np.ndarray) -> list[str]:
    found: dict[int, str] = {}
    id_list = [int(i) for i in ids]
    for start in range(0, len(id_list), _CHUNK):
        chunk = id_list[start : start + _CHUNK]
        for pid, text in session.execute(select(Prediction.id, Prediction.text).where(Prediction.id.in_(chunk))):
            found[pid] = text
    return [found[i] for i in id_list]


@dataclass
class DriftInputs:
    reference: pd.DataFrame
    current: pd.DataFrame
    reference_kind: str
    window_start: datetime
    window_end: datetime


def load_drift_inputs(session: Session, sla: Sla, settings: Settings, *, now: datetime) -> DriftInputs:
    """The reference and current frames of one SLA's tenant and task (sampled, embedded when configured)."""
    from flywheel.monitoring.drift import build_frame

    start = now - timedelta(days=sla.window_days)
    scope = and_(Prediction.tenant_id == sla.tenant_id, Prediction.task_id == sla.task_id)
    current = _rows(session, and_(scope, Prediction.created_at >= start, Prediction.created_at < now))
    cap = settings.drift_sample_cap
    if settings.drift_text_embeddings:
        cap = min(cap, settings.drift_embedding_cap)
    reference_kind = "window"
    reference = Rows(np.zeros(0, dtype=np.int64), [], np.zeros(0), np.zeros(0, dtype=np.int64))
    train_ids = champion_training_ids(session, sla)
    if train_ids:
        ids = np.unique(np.asarray(train_ids, dtype=np.int64))
        if len(ids) > 4 * cap:  # a shared champion's data spans tenants: pre-sample ids, this tenant's rows stay
            ids = np.sort(np.random.default_rng(sla.id).choice(ids, size=4 * cap, replace=False))
        parts = [
            _rows(session, and_(scope, Prediction.id.in_([int(i) for i in ids[s : s + _CHUNK]])))
            for s in range(0, len(ids), _CHUNK)
        ]
        found = _concat(parts)
        if len(found) >= settings.drift_min_rows:
            reference, reference_kind = found, "training_data"
    if reference_kind == "window":
        before = start - timedelta(days=sla.window_days)
        reference = _rows(session, and_(scope, Prediction.created_at >= before, Prediction.created_at < start))
    reference = sample(reference, cap, seed=sla.id)
    current = sample(current, cap, seed=sla.id + 1)
    ref_emb = cur_emb = None
    enough = len(reference) >= settings.drift_min_rows and len(current) >= settings.drift_min_rows
    if settings.drift_text_embeddings and enough:
        ref_emb = _embed(session, _texts(session, reference.ids), settings)
        cur_emb = _embed(session, _texts(session, current.ids), settings)
    return DriftInputs(
        reference=build_frame(reference.labels, reference.confidences, reference.lengths, ref_emb),
        current=build_frame(current.labels, current.confidences, current.lengths, cur_emb),
        reference_kind=reference_kind,
        window_start=start,
        window_end=now,
    )
