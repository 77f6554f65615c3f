"""Data-rights tables: the audit trail of what was erased, kept after the records (and even the tenant) are gone."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from flywheel.core.db import Base, UTCDateTime, utcnow
from flywheel.models.records import JSONType

ERASURE_REASONS = ("request", "user", "retention", "tenant_deleted", "opt_out")


class Erasure(Base):
    """One erasure (a request, a retention batch, a batch of a tenant's deletion): counts per kind of record and
    the SHA-256 of each erased prediction id, never any content. ``tenant_id`` is a plain number, not a foreign
    key: the trail outlives the tenant."""

    __tablename__ = "erasures"
    __table_args__ = (Index("ix_erasures_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(Integer)
    tenant_slug: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str | None] = mapped_column(String(200))  # "key:<id>", "retention", "tenant-deletion"
    counts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    id_hashes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
