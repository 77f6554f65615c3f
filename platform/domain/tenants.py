"""Tenant and key services, shared by the CLI and the admin API."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flywheel.core.db import utcnow
from flywheel.core.errors import Conflict, NotFound, Unprocessable
from flywheel.models.records import ApiKey, Tenant

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def create_tenant(session: Session, *, slug: str, name: str, webhook_url: str | None = None) -> Tenant:
    if not SLUG.match(slug):
        raise Unprocessable(
            f"invalid tenant slug '{slug}'",
            errors=[{"loc": ["slug"], "msg": "1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit"}],
        )
    if session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is not None:
        raise Conflict(f"tenant '{slug}' already exists")
    tenant = Tenant(slug=slug, name=name, webhook_url=webhook_url)
    try:
        with session.begin_nested():  # a concurrent create of the same slug passed the check above too
            session.add(tenant)
    except IntegrityError:
        raise Conflict(f"tenant '{slug}' already exists") from None
    return tenant


def revoke_key(session: Session, key_id: int) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} does not exist")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
