"""Ingestion services: batches of predictions and feedback, atomic and idempotent on the client id.

Services take the session first and never commit; the caller (a view, the serving path, a job) owns the transaction.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from flywheel.api.schemas import FeedbackIn, PredictionIn
from flywheel.api.spec import Batch
from flywheel.db import utcnow
from flywheel.errors import Conflict, Unprocessable
from flywheel.models.core import Feedback, Prediction, Task, Tenant

PROBABILITY_SUM_TOLERANCE = 1e-3
CONFIDENCE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    ids: list[int]  # database ids of the stored or already-stored items, in input order


def content_hash(item: PredictionIn | FeedbackIn) -> str:
    """The idempotency fingerprint: what the client sent (unset fields excluded, so a retry matches)."""
    payload = item.model_dump(mode="json", exclude_unset=True)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def holdout_bucket(client_id: str) -> int:
    """A stable 0-99 bucket from the client id; the evaluation holdout is ``bucket < holdout_percent``."""
    return int.from_bytes(hashlib.blake2b(client_id.encode(), digest_size=8).digest(), "big") % 100


def _insert_ignoring_conflicts(session: Session, table: Table) -> Any:
    dialect = session.get_bind().dialect.name
    stmt = (postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)).on_conflict_do_nothing(
        index_elements=["tenant_id", "client_id"]
    )
    return stmt.returning(table.c.client_id, table.c.id)


def _check_probabilities(item: PredictionIn, labels: set[str]) -> list[tuple[str, str]]:
    """Problems as (field, message) pairs."""
    problems: list[tuple[str, str]] = []
    probs = item.probabilities
    if probs is None:
        return problems
    unknown = sorted(set(probs) - labels)
    if unknown:
        problems.append(("probabilities", f"not labels of task '{item.task}': {', '.join(map(repr, unknown))}"))
        return problems
    total = math.fsum(probs.values())
    if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
        problems.append(("probabilities", f"values must sum to 1 (within 1e-3); they sum to {total:.6f}"))
    if item.label in probs:
        top = max(probs.values())
        if probs[item.label] < top:
            problems.append(("probabilities", f"label '{item.label}' must have the highest probability"))
        if abs(probs[item.label] - item.confidence) > CONFIDENCE_TOLERANCE:
            problems.append(("confidence", f"must equal probabilities['{item.label}'] ({probs[item.label]})"))
    else:
        problems.append(("probabilities", f"must include the predicted label '{item.label}'"))
    return problems


def _dedupe_batch(
    items: Sequence[PredictionIn] | Sequence[FeedbackIn], hashes: list[str], root: str, index: list[int]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Position of each id's first occurrence; an id repeated with different content in one batch is an error."""
    first: dict[str, int] = {}
    errors: list[dict[str, Any]] = []
    for pos, item in enumerate(items):
        j = first.setdefault(item.id, pos)
        if j != pos and hashes[j] != hashes[pos]:
            msg = f"id '{item.id}' appears earlier in this batch (index {index[j]}) with different content"
            errors.append({"loc": [root, index[pos], "id"], "msg": msg})
    return first, errors


def _store(
    session: Session,
    model: type[Prediction] | type[Feedback],
    tenant: Tenant,
    rows: list[dict[str, Any]],
    hashes: dict[str, str],
    noun: str,
) -> tuple[int, dict[str, int]]:
    """Insert new rows, skip replays; any id already stored with other content is a 409 for the whole batch."""
    table: Table = model.__table__  # type: ignore[assignment]
    ids = list(hashes)
    existing = {
        cid: (pk, h)
        for cid, pk, h in session.execute(
            select(table.c.client_id, table.c.id, table.c.content_hash).where(
                table.c.tenant_id == tenant.id, table.c.client_id.in_(ids)
            )
        )
    }
    _raise_on_changed(existing, hashes, noun)
    new_rows = [r for r in rows if r["client_id"] not in existing]
    stored = {cid: pk for cid, (pk, _h) in existing.items()}
    if new_rows:
        inserted = dict(session.execute(_insert_ignoring_conflicts(session, table), new_rows).tuples().all())
        stored.update(inserted)
        missing = [r["client_id"] for r in new_rows if r["client_id"] not in inserted]
        if missing:  # a concurrent request stored these ids between our read and our insert
            raced = {
                cid: (pk, h)
                for cid, pk, h in session.execute(
                    select(table.c.client_id, table.c.id, table.c.content_hash).where(
                        table.c.tenant_id == tenant.id, table.c.client_id.in_(missing)
                    )
                )
            }
            _raise_on_changed(raced, hashes, noun)
            stored.update({cid: pk for cid, (pk, _h) in raced.items()})
        accepted = len(inserted)
    else:
        accepted = 0
    return accepted, stored


def _raise_on_changed(existing: dict[str, tuple[int, str]], hashes: dict[str, str], noun: str) -> None:
    changed = sorted(cid for cid, (_pk, h) in existing.items() if hashes[cid] != h)
    if changed:
        shown = ", ".join(changed[:10]) + (" …" if len(changed) > 10 else "")
        raise Conflict(
            f"{len(changed)} {noun} id(s) already exist with different content: {shown}; nothing was stored",
            errors=[{"loc": ["id"], "msg": f"'{cid}' already exists with different content"} for cid in changed],
        )


def _raise_if_invalid(errors: list[dict[str, Any]], batch: Batch | None, n: int, noun: str) -> None:
    if batch is not None:
        errors = batch.errors + errors
    if errors:
        errors.sort(key=lambda e: e["loc"][1])
        bad = len({e["loc"][1] for e in errors})
        total = batch.size if batch is not None else n
        raise Unprocessable(f"{bad} of {total} {noun} are invalid; nothing was stored", errors=errors)


def ingest_predictions(
    session: Session, tenant: Tenant, items: Sequence[PredictionIn], *, batch: Batch | None = None
) -> IngestResult:
    """Validate against the tasks, then store every item or none (422 lists every bad item by index).

    ``batch`` carries the items' original indexes and the schema errors of items that did not parse.
    """
    index = batch.indexes if batch is not None else list(range(len(items)))
    task_names = {item.task for item in items}
    tasks = {t.name: t for t in session.scalars(select(Task).where(Task.name.in_(task_names)))}
    label_sets = {name: set(t.labels) for name, t in tasks.items()}
    hashes = [content_hash(item) for item in items]
    first, errors = _dedupe_batch(items, hashes, "predictions", index)
    for i, item in zip(index, items, strict=True):
        labels = label_sets.get(item.task)
        if labels is None:
            errors.append({"loc": ["predictions", i, "task"], "msg": f"task '{item.task}' does not exist"})
            continue
        if item.label not in labels:
            errors.append(
                {"loc": ["predictions", i, "label"], "msg": f"'{item.label}' is not a label of task '{item.task}'"}
            )
        errors.extend({"loc": ["predictions", i, f], "msg": m} for f, m in _check_probabilities(item, labels))
    _raise_if_invalid(errors, batch, len(items), "predictions")

    now = utcnow()
    rows = [
        {
            "tenant_id": tenant.id,
            "task_id": tasks[item.task].id,
            "client_id": item.id,
            "text": item.text,
            "label": item.label,
            "confidence": item.confidence,
            "probabilities": item.probabilities,
            "model_version": item.model_version,
            "metadata": item.metadata,
            "created_at": item.created_at or now,
            "received_at": now,
            "content_hash": hashes[i],
            "bucket": holdout_bucket(item.id),
            "effective_label": None,
            "label_discarded": False,
            "feedback_count": 0,
        }
        for i, item in enumerate(items)
        if first[item.id] == i
    ]
    accepted, stored = _store(
        session, Prediction, tenant, rows, {r["client_id"]: r["content_hash"] for r in rows}, "prediction"
    )
    return IngestResult(accepted=accepted, duplicates=len(items) - accepted, ids=[stored[i.id] for i in items])


def ingest_feedback(
    session: Session, tenant: Tenant, items: Sequence[FeedbackIn], *, batch: Batch | None = None
) -> IngestResult:
    """Store feedback atomically and idempotently, then re-derive the effective label of the touched predictions."""
    from flywheel.feedback.effective import apply_rule

    pred_ids = {item.prediction_id for item in items}
    preds = {
        cid: (pk, labels, name)
        for cid, pk, labels, name in session.execute(
            select(Prediction.client_id, Prediction.id, Task.labels, Task.name)
            .join(Task, Task.id == Prediction.task_id)
            .where(Prediction.tenant_id == tenant.id, Prediction.client_id.in_(pred_ids))
        )
    }
    hashes = [content_hash(item) for item in items]
    index = batch.indexes if batch is not None else list(range(len(items)))
    first, errors = _dedupe_batch(items, hashes, "feedback", index)
    for i, item in zip(index, items, strict=True):
        found = preds.get(item.prediction_id)
        if found is None:
            msg = f"prediction '{item.prediction_id}' does not exist"
            errors.append({"loc": ["feedback", i, "prediction_id"], "msg": msg})
        elif item.label not in found[1]:
            errors.append(
                {"loc": ["feedback", i, "label"], "msg": f"'{item.label}' is not a label of task '{found[2]}'"}
            )
    _raise_if_invalid(errors, batch, len(items), "feedback items")

    now = utcnow()
    rows = [
        {
            "tenant_id": tenant.id,
            "prediction_id": preds[item.prediction_id][0],
            "client_id": item.id,
            "label": item.label,
            "source": item.source,
            "source_id": item.source_id,
            "decision": None,
            "note": None,
            "created_at": item.created_at or now,
            "received_at": now,
            "content_hash": hashes[i],
        }
        for i, item in enumerate(items)
        if first[item.id] == i
    ]
    accepted, stored = _store(
        session, Feedback, tenant, rows, {r["client_id"]: r["content_hash"] for r in rows}, "feedback"
    )
    if accepted:
        apply_rule(session, sorted({preds[i.prediction_id][0] for i in items}))
    return IngestResult(accepted=accepted, duplicates=len(items) - accepted, ids=[stored[i.id] for i in items])


def record_feedback(
    session: Session,
    prediction: Prediction,
    *,
    client_id: str,
    label: str | None,
    source: str,
    source_id: str | None,
    decision: str | None = None,
    note: str | None = None,
    created_at: datetime | None = None,
) -> Feedback:
    """Store one feedback row (used for reviewer decisions, which may carry no label) and re-derive the label."""
    from flywheel.feedback.effective import apply_rule

    now = utcnow()
    payload = {"label": label, "source": source, "source_id": source_id, "decision": decision, "note": note}
    row = Feedback(
        tenant_id=prediction.tenant_id,
        prediction_id=prediction.id,
        client_id=client_id,
        created_at=created_at or now,
        received_at=now,
        content_hash=hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest(),
        **payload,
    )
    session.add(row)
    session.flush()
    apply_rule(session, [prediction.id])
    return row
