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
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Integer, Select, and_, func, select, type_coerce
from sqlalchemy.orm import Session

from flywheel.core.config import Settings
from flywheel.domain import artifacts
from flywheel.domain.champions import champion_for
from flywheel.domain.embeddings import get_embeddings
from flywheel.domain.encoder import load_encoder
from flywheel.models.records import Prediction
from flywheel.models.slas import Sla

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
_CHUNK = 900  # ids per IN (...) query, below SQLite's variable limit
_BATCH = 250  # rows turned into columns at a time, fewer than a young GC generation holds (see _fetch)


_P = Prediction.__table__.c
# What drift reads per row: no ORM objects, no text (only its length), no ORDER BY (rows are put in id order in numpy).
_FIELDS = (_P.id, _P.label, _P.confidence, func.length(_P.text))


@dataclass
class Rows:
    """Rows in id order: ids, predicted labels (object array), confidences and text lengths."""

    ids: np.ndarray
    labels: np.ndarray
    confidences: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> Rows:
        return Rows(self.ids[index], self.labels[index], self.confidences[index], self.lengths[index])


def _empty() -> Rows:
    return Rows(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object), np.zeros(0), np.zeros(0, dtype=np.int64))


def _fetch(session: Session, stmt: Select[Any]) -> tuple[Rows, np.ndarray]:
    """The result of ``select(*_FIELDS, [flag])`` as Rows in id order, and the flag column (empty without one).

    Rows are read in batches and turned into columns batch by batch. Row objects are tracked by the garbage collector:
    holding a window's 10,000 of them at once set off young collections that promoted them, and the old generation's
    full collections then came every few tenants at ~0.4 s each (this process has torch and Evidently loaded). A batch
    of 250 is freed before a young collection is due (700 allocations), so reading a window sets off none.
    """
    columns: list[list[Any]] = [[] for _ in range(len(stmt.selected_columns))]
    for batch in session.execute(stmt).partitions(_BATCH):
        for column, values in zip(columns, zip(*batch, strict=True), strict=True):
            column.extend(values)
    ids = np.asarray(columns[0], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    rows = Rows(
        ids[order],
        np.asarray(columns[1], dtype=object)[order],
        np.asarray(columns[2], dtype=np.float64)[order],
        np.asarray(columns[3], dtype=np.int64)[order],
    )
    flags = np.asarray(columns[4], dtype=bool)[order] if len(columns) > 4 else np.zeros(0, dtype=bool)
    return rows, flags


def _rows(session: Session, where: Any) -> Rows:
    return _fetch(session, select(*_FIELDS).where(where))[0]


def _windows(session: Session, scope: Any, before: datetime, start: datetime, end: datetime) -> tuple[Rows, Rows]:
    """The windows ``[before, start)`` and ``[start, end)`` in one query (a flag column tells them apart)."""
    in_current = type_coerce(_P.created_at >= start, Integer)  # 0/1 as the driver gives it (no per-row processor)
    stmt = select(*_FIELDS, in_current).where(scope, _P.created_at >= before, _P.created_at < end)
    rows, current = _fetch(session, stmt)
    return rows.take(np.flatnonzero(~current)), rows.take(np.flatnonzero(current))


def _concat(parts: list[Rows]) -> Rows:
    if not parts:
        return _empty()
    return Rows(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.labels for p in parts]),
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
    champion = champion_for(session, sla.task_id, sla.tenant_id)
    if champion is None or not champion.artifact_path:
        return None
    try:
        text = artifacts.read_text(champion.artifact_path, "lineage.json")
        if text is None:
            return None
        ids = [int(i) for i in json.loads(text).get("train_ids", [])]
    except (ValueError, TypeError, OSError):
        return None
    return ids or None


def _embed(session: Session, texts: list[str], settings: Settings) -> np.ndarray:
    encoder = load_encoder(settings.base_model or None)
    return np.asarray(get_embeddings(session, texts, encoder=encoder))


def _texts(session: Session, ids: np.ndarray) -> list[str]:
    found: dict[int, str] = {}
    id_list = [int(i) for i in ids]
    for start in range(0, len(id_list), _CHUNK):
        chunk = id_list[start : start + _CHUNK]
        for pid, text in session.execute(select(_P.id, _P.text).where(_P.id.in_(chunk))):
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
    scope = and_(_P.tenant_id == sla.tenant_id, _P.task_id == sla.task_id)
    cap = settings.drift_sample_cap
    if settings.drift_text_embeddings:
        cap = min(cap, settings.drift_embedding_cap)
    reference_kind = "window"
    reference = _empty()
    train_ids = champion_training_ids(session, sla)
    if train_ids:
        ids = np.unique(np.asarray(train_ids, dtype=np.int64))
        if len(ids) > 4 * cap:  # a shared champion's data spans tenants: pre-sample ids, this tenant's rows stay
            ids = np.sort(np.random.default_rng(sla.id).choice(ids, size=4 * cap, replace=False))
        parts = [
            _rows(session, and_(scope, _P.id.in_([int(i) for i in ids[s : s + _CHUNK]])))
            for s in range(0, len(ids), _CHUNK)
        ]
        found = _concat(parts)
        if len(found) >= settings.drift_min_rows:
            reference, reference_kind = found, "training_data"
    if reference_kind == "window":
        reference, current = _windows(session, scope, start - timedelta(days=sla.window_days), start, now)
    else:
        current = _rows(session, and_(scope, _P.created_at >= start, _P.created_at < now))
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
