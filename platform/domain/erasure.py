"""Erasure: removing a tenant's records everywhere they are referenced, and following them into model lineage.

One function removes a set of predictions (``erase_predictions``): their feedback (reviewer decisions are feedback
with ``source: reviewer``, counted apart), label-quality results, cached embeddings of their texts and lineage rows;
each model version those rows trained is marked tainted (``tainted_rows`` grows by the rows it lost). An
``Erasure`` audit row keeps the counts and the SHA-256 of each erased prediction id, never any content. A request,
the retention job and a tenant's deletion all go through it, so "erased" means the same thing everywhere.

Services take the session and never commit; the job drivers at the bottom (retention, tenant deletion) open their
own sessions and commit once per batch, so a large deletion never holds one long transaction that blocks ingest,
and one interrupted half-way resumes from what the database says is left.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from flywheel.core.db import utcnow
from flywheel.domain import artifacts, partitions
from flywheel.domain.encoder import text_hash
from flywheel.models.label_quality import EmbeddingCache, LabelQualityResult
from flywheel.models.records import ApiKey, Feedback, Prediction, Tenant
from flywheel.models.rights import Erasure
from flywheel.models.training import ModelTrainingRow, ModelVersion

if TYPE_CHECKING:
    from flywheel.core.db import Database

log = logging.getLogger(__name__)

CHUNK = 500  # ids per IN (...): well under every backend's bound-parameter limit
BATCH = 1000  # predictions per transaction in the retention and tenant-deletion jobs


@dataclass
class ErasureCounts:
    """What an erasure removed, per kind of record, and how many model versions it tainted."""

    predictions: int = 0
    feedback: int = 0
    review_decisions: int = 0
    label_quality_results: int = 0
    embeddings: int = 0
    training_rows: int = 0
    models_tainted: int = 0

    def add(self, other: ErasureCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def id_hash(client_id: str) -> str:
    """What the audit keeps of an erased prediction: the SHA-256 of its client id (anyone holding the id can check
    that it was erased; nobody can read anything back from it)."""
    return hashlib.sha256(client_id.encode("utf-8")).hexdigest()


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start : start + CHUNK])


def taint_models(session: Session, rows_by_model: dict[int, int], now: datetime) -> int:
    """Mark model versions tainted: ``tainted_rows`` grows by the rows each lost, ``tainted_at`` keeps the first
    time. Returns how many models became tainted for the first time or more."""
    for model in session.scalars(select(ModelVersion).where(ModelVersion.id.in_(list(rows_by_model)))):
        model.tainted_rows = (model.tainted_rows or 0) + rows_by_model[model.id]
        if model.tainted_at is None:
            model.tainted_at = now
    return len(rows_by_model)


def _erase_chunk(session: Session, rows: list[tuple[int, datetime]], now: datetime, tainted: set[int]) -> ErasureCounts:
    """Erase these ``(id, created_at)`` predictions (the ``created_at`` names their months' partitions, and their
    feedback's, on PostgreSQL) and what points at them."""
    pks = [pk for pk, _ in rows]
    counts = ErasureCounts(predictions=len(pks))
    feedback = partitions.feedback_of(rows)
    by_source = session.execute(select(Feedback.source, func.count()).where(feedback).group_by(Feedback.source)).all()
    for source, n in by_source:
        if source == "reviewer":
            counts.review_decisions += int(n)
        else:
            counts.feedback += int(n)
    lineage = dict(
        session.execute(
            select(ModelTrainingRow.model_id, func.count())
            .where(ModelTrainingRow.prediction_id.in_(pks))
            .group_by(ModelTrainingRow.model_id)
        ).all()
    )
    counts.training_rows = sum(int(n) for n in lineage.values())
    if lineage:
        taint_models(session, {int(k): int(v) for k, v in lineage.items()}, now)
        tainted.update(int(k) for k in lineage)
    these = partitions.predictions_in(rows)
    texts = session.scalars(select(Prediction.text).where(these))
    hashes = sorted({text_hash(t) for t in texts})

    def gone(stmt: object) -> int:
        result = session.execute(stmt.execution_options(synchronize_session=False))  # type: ignore[attr-defined]
        return int(getattr(result, "rowcount", 0) or 0)

    gone(delete(ModelTrainingRow).where(ModelTrainingRow.prediction_id.in_(pks)))
    counts.label_quality_results = gone(delete(LabelQualityResult).where(LabelQualityResult.prediction_id.in_(pks)))
    for start in range(0, len(hashes), CHUNK):
        counts.embeddings += gone(
            delete(EmbeddingCache).where(EmbeddingCache.text_hash.in_(hashes[start : start + CHUNK]))
        )
    partitions.delete_feedback(session, feedback)  # with their idempotency keys
    gone(delete(Prediction).where(these))
    return counts


def erase_predictions(
    session: Session,
    tenant: Tenant,
    pks: Sequence[int],
    *,
    reason: str,
    requested_by: str | None,
    now: datetime | None = None,
) -> ErasureCounts:
    """Erase the tenant's predictions with these row ids (others' ids are ignored) and everything that refers to
    them; taint the models they trained; record one audit row. Erasing ids already gone counts zeros."""
    now = now or utcnow()
    counts = ErasureCounts()
    hashes: list[str] = []
    tainted: set[int] = set()  # distinct model versions, over every chunk
    for chunk in _chunks(sorted(set(pks))):
        rows = session.execute(
            select(Prediction.id, Prediction.client_id, Prediction.created_at).where(
                Prediction.id.in_(chunk), Prediction.tenant_id == tenant.id
            )
        ).all()
        if not rows:
            continue
        hashes += [id_hash(cid) for _, cid, _ in rows]
        counts.add(_erase_chunk(session, [(pk, at) for pk, _, at in rows], now, tainted))
        partitions.forget_keys(session, tenant.id, [cid for _, cid, _ in rows])
    counts.models_tainted = len(tainted)
    session.add(
        Erasure(
            tenant_id=tenant.id,
            tenant_slug=tenant.slug,
            reason=reason,
            requested_by=requested_by,
            counts=counts.to_dict(),
            id_hashes=hashes,
            created_at=now,
        )
    )
    session.flush()
    return counts


def predictions_by_client_ids(session: Session, tenant_id: int, client_ids: Sequence[str]) -> list[int]:
    """Row ids of the tenant's predictions with these client ids (the ones that exist)."""
    out: list[int] = []
    unique = sorted(set(client_ids))
    for start in range(0, len(unique), CHUNK):
        out += session.scalars(
            select(Prediction.id).where(partitions.by_client_ids(session, tenant_id, unique[start : start + CHUNK]))
        )
    return out


def predictions_of_user(session: Session, tenant_id: int, user_id: str, *, chunk: int = 5000) -> list[int]:
    """Row ids of the tenant's predictions whose ``metadata.user_id`` is ``user_id`` (a number matches its decimal
    text: ``42`` is user "42").

    Read in keyset chunks and matched here rather than with the database's JSON operators: PostgreSQL's ``->>`` on a
    ``json`` column fails on any stored document holding an escaped NUL (``\\u0000``, which clients may send), and one
    such prediction must not make a user's erasure impossible.
    """
    out: list[int] = []
    last = 0
    while True:
        rows = session.execute(
            select(Prediction.id, Prediction.metadata_)
            .where(Prediction.tenant_id == tenant_id, Prediction.id > last, Prediction.metadata_.is_not(None))
            .order_by(Prediction.id)
            .limit(chunk)
        ).all()
        if not rows:
            return out
        last = rows[-1][0]
        for pk, metadata in rows:
            value = metadata.get("user_id") if isinstance(metadata, dict) else None
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value) == user_id:
                out.append(pk)


# --- opting out of the shared models ------------------------------------------------------------------------------


def taint_shared_models_of(session: Session, tenant_id: int, now: datetime | None = None) -> int:
    """A tenant stopped sharing its labels: every shared model they trained is tainted by the rows of it that it
    used, and those lineage rows are dropped (they are counted on the model now). Returns the models tainted."""
    now = now or utcnow()
    own = select(Prediction.id).where(Prediction.tenant_id == tenant_id)
    shared = select(ModelVersion.id).where(ModelVersion.tenant_id.is_(None))
    rows = session.execute(
        select(ModelTrainingRow.model_id, func.count())
        .where(ModelTrainingRow.prediction_id.in_(own), ModelTrainingRow.model_id.in_(shared))
        .group_by(ModelTrainingRow.model_id)
    ).all()
    if not rows:
        return 0
    tainted = taint_models(session, {int(m): int(n) for m, n in rows}, now)
    session.execute(
        delete(ModelTrainingRow)
        .where(ModelTrainingRow.prediction_id.in_(own), ModelTrainingRow.model_id.in_(shared))
        .execution_options(synchronize_session=False)
    )
    return tainted


# --- retention ----------------------------------------------------------------------------------------------------


def expire_old_records(
    session: Session, now: datetime, *, batch_size: int = BATCH, default_days: int = 0
) -> ErasureCounts:
    """One batch of retention: for every active tenant with ``retention_days`` (or, with ``default_days``, the
    deployment's ``FLYWHEEL_RETENTION_DAYS``, every tenant without its own), erase up to ``batch_size`` of its
    predictions created before the cutoff (with their feedback, as any erasure). The caller commits and calls
    again until nothing is left (``predictions == 0``). On partitioned PostgreSQL the deployment-wide policy first
    drops whole months (``drop_expired_months``); this erases what is left row by row.
    """
    total = ErasureCounts()
    has_policy = Tenant.retention_days.is_not(None) | (default_days > 0)
    tenants = session.scalars(select(Tenant).where(has_policy, Tenant.status == "active").order_by(Tenant.id)).all()
    for tenant in tenants:
        cutoff = now - timedelta(days=int(tenant.retention_days or default_days))
        pks = session.scalars(
            select(Prediction.id)
            .where(Prediction.tenant_id == tenant.id, Prediction.created_at < cutoff)
            .order_by(Prediction.id)
            .limit(batch_size)
        ).all()
        if pks:
            total.add(erase_predictions(session, tenant, pks, reason="retention", requested_by="retention", now=now))
    return total


def run_retention(
    db: Database, *, now: datetime | None = None, batch_size: int = BATCH, default_days: int = 0
) -> dict[str, int]:
    """The nightly retention job. With a deployment-wide policy on partitioned PostgreSQL, the months every tenant's
    policy has expired go whole first (``drop_expired_months``); then batches of ``expire_old_records``, one
    transaction each, until none is left."""
    now = now or utcnow()
    total = ErasureCounts()
    if default_days > 0:
        with db.session() as session:
            if partitions.is_partitioned(session):
                # No tenant may lose a row its own (longer) retention keeps: the whole months go only past the longest.
                longest = max(default_days, session.scalar(select(func.max(Tenant.retention_days))) or 0)
                dropped = drop_expired_months(session, now - timedelta(days=longest), now)
                total.predictions, total.feedback = dropped.predictions, dropped.feedback
    while True:
        with db.session() as session:
            counts = expire_old_records(session, now, batch_size=batch_size, default_days=default_days)
        total.add(counts)
        if counts.predictions == 0:
            break
    if total.predictions:
        log.info("retention erased %s", total.to_dict())
    return total.to_dict()


def drop_expired_months(session: Session, cutoff: datetime, now: datetime) -> partitions.Dropped:
    """The deployment-wide retention on partitioned PostgreSQL: each month that ends before ``cutoff`` goes whole.
    The models its rows trained are tainted by them first, and each tenant's audit row records the month and its
    count (a month's millions of ids are not hashed one by one: the month is the record)."""
    for part in partitions.expired(session, cutoff):
        ids = f'SELECT id FROM "{part.name}"'
        lineage = session.execute(
            text(f"SELECT model_id, count(*) FROM model_training_rows WHERE prediction_id IN ({ids}) GROUP BY 1")
        ).all()
        if lineage:
            taint_models(session, {int(m): int(n) for m, n in lineage}, now)
        per_tenant = session.execute(
            text(
                f'SELECT p.tenant_id, t.slug, count(*) FROM "{part.name}" p JOIN tenants t ON t.id = p.tenant_id '
                "GROUP BY 1, 2"
            )
        ).all()
        for tenant_id, slug, n in per_tenant:
            session.add(
                Erasure(
                    tenant_id=tenant_id,
                    tenant_slug=slug,
                    reason="retention",
                    requested_by="retention",
                    counts={"predictions": int(n), "partition": part.name},
                    id_hashes=[],
                    created_at=now,
                )
            )
    return partitions.drop_before(session, cutoff)


# --- deleting a tenant --------------------------------------------------------------------------------------------


def begin_tenant_deletion(session: Session, tenant: Tenant, now: datetime | None = None) -> list[int]:
    """Mark the tenant ``deleting`` and revoke its keys at once; returns the revoked key ids (for the caller's key
    cache). Its rows go in batches (``delete_tenant_batch``). Calling it again is harmless."""
    now = now or utcnow()
    tenant.status = "deleting"
    keys = list(session.scalars(select(ApiKey.id).where(ApiKey.tenant_id == tenant.id)))
    session.execute(
        update(ApiKey)
        .where(ApiKey.tenant_id == tenant.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return keys


def delete_tenant_batch(session: Session, tenant_id: int, *, batch_size: int = BATCH) -> bool:
    """One step of a tenant's deletion: erase up to ``batch_size`` of its predictions (tainting the shared models
    they trained); once none is left, remove its variants' artifacts and the tenant row, which takes every other
    row of it along (keys, SLAs and their history, alerts, runs, model versions: ``ON DELETE CASCADE``). Returns
    True when the tenant is gone. The state lives in the database, so a step interrupted anywhere is redone."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        return True
    pks = session.scalars(
        select(Prediction.id).where(Prediction.tenant_id == tenant_id).order_by(Prediction.id).limit(batch_size)
    ).all()
    if pks:
        erase_predictions(session, tenant, pks, reason="tenant_deleted", requested_by="tenant-deletion")
        return False
    for location in session.scalars(
        select(ModelVersion.artifact_path).where(
            ModelVersion.tenant_id == tenant_id, ModelVersion.artifact_path.is_not(None)
        )
    ):
        if location:
            artifacts.delete(location)
    session.add(
        Erasure(
            tenant_id=tenant.id,
            tenant_slug=tenant.slug,
            reason="tenant_deleted",
            requested_by="tenant-deletion",
            counts={"tenant": 1},
            id_hashes=[],
        )
    )
    session.delete(tenant)
    session.flush()
    return True


def run_tenant_deletions(db: Database, *, batch_size: int = BATCH, max_batches: int | None = None) -> list[str]:
    """The deletion job: every tenant marked ``deleting``, batch after batch (one transaction each) until it is
    gone. ``max_batches`` bounds this call's work (the next call resumes). Returns the slugs deleted."""
    done: list[str] = []
    batches = 0
    with db.session() as session:
        pending = [(t.id, t.slug) for t in session.scalars(select(Tenant).where(Tenant.status == "deleting"))]
    for tenant_id, slug in pending:
        while max_batches is None or batches < max_batches:
            with db.session() as session:
                finished = delete_tenant_batch(session, tenant_id, batch_size=batch_size)
            batches += 1
            if finished:
                done.append(slug)
                log.info("tenant %s deleted", slug)
                break
    return done
