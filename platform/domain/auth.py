"""API keys: random 256-bit secrets shown once, stored as SHA-256 hashes; scopes; the caller's tenant."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache
from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from flywheel.core.db import HotStatement
from flywheel.core.errors import Forbidden, NotFound, Unauthorized, Unprocessable
from flywheel.models.records import ApiKey, Tenant, split_scopes

SCOPES = ("ingest", "read", "admin")
#: Where a request names the tenant it acts on, unless the view says otherwise.
TENANT_LOC = ("query", "tenant")
KEY_PREFIX = "fw"


def hash_key(key: str) -> str:
    # A plain SHA-256 is enough: the key is 256 random bits, so there is nothing to brute-force
    # (a slow KDF only matters for low-entropy secrets like passwords).
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new key and its public prefix (shown in listings so a key can be recognized without revealing it)."""
    prefix = secrets.token_hex(4)
    return f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def parse_scopes(raw: str | list[str] | tuple[str, ...]) -> list[str]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    scopes = sorted({s.strip() for s in items if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {', '.join(SCOPES)}; got {', '.join(unknown)}")
    return scopes


def create_key(
    session: Session, *, tenant: Tenant | None, scopes: list[str], name: str | None = None
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the secret, which is never stored and cannot be shown again."""
    if tenant is None and "admin" not in scopes:
        raise Unprocessable(
            "a key without a tenant must have the admin scope",
            errors=[{"loc": ["tenant"], "msg": "required unless the scopes include 'admin'"}],
        )
    key, prefix = generate_key()
    row = ApiKey(tenant=tenant, prefix=prefix, key_hash=hash_key(key), scopes=",".join(scopes), name=name)
    session.add(row)
    session.flush()
    return row, key


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key, its tenant (None for an admin key without one) and its scopes."""

    key_id: int
    tenant_id: int | None
    tenant_slug: str | None
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def require(self, scope: str) -> Principal:
        if scope not in self.scopes and not self.is_admin:
            raise Forbidden(f"this API key lacks the '{scope}' scope")
        return self

    def tenant_for(self, session: Session, slug: str | None = None, *, loc: tuple[str, ...] = TENANT_LOC) -> Tenant:
        """The tenant a request acts on: the key's own; an admin may name any tenant with ``slug`` (at ``loc`` in
        the request), and must when its key belongs to no tenant."""
        tenant = session.get(Tenant, self.tenant_id_for(session, slug, loc=loc))
        assert tenant is not None
        return tenant

    def tenant_id_for(
        self, db: Session | Connection, slug: str | None = None, *, loc: tuple[str, ...] = TENANT_LOC
    ) -> int:
        """:meth:`tenant_for`, as an id; no query unless an admin names a tenant (the ingestion hot path)."""
        if self.is_admin and slug is not None and slug != self.tenant_slug:
            tenant_id = db.scalar(select(Tenant.id).where(Tenant.slug == slug))
            if tenant_id is None:
                raise NotFound(f"tenant '{slug}' does not exist")
            return int(tenant_id)
        if slug is not None and slug != self.tenant_slug:
            raise NotFound(f"tenant '{slug}' does not exist")
        return self.own_tenant_id(loc=loc)

    def own_tenant_id(self, *, loc: tuple[str, ...] = TENANT_LOC) -> int:
        """The key's tenant; an admin key without one gets a 422 naming ``loc``, where the request names a tenant."""
        if self.tenant_id is None:
            raise Unprocessable(
                f"this admin key belongs to no tenant: name one with '{loc[-1]}'"
                + (" (a query parameter)" if loc[0] == "query" else ""),
                errors=[{"loc": list(loc), "msg": "required for an admin key that belongs to no tenant"}],
            )
        return self.tenant_id

    def can_see_tenant(self, tenant_id: int) -> bool:
        return self.is_admin or self.tenant_id == tenant_id


# A key cache miss runs this: one statement, columns only (no ORM objects, no lazy load of the tenant).
_KEY_LOOKUP = HotStatement(
    select(ApiKey.id, ApiKey.tenant_id, Tenant.slug, ApiKey.scopes)
    .outerjoin(Tenant, Tenant.id == ApiKey.tenant_id)
    .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
)


class KeyCache:
    """The principals of API keys this process has found, trusted for ``ttl`` seconds without a lookup.

    The lookup is one query on every request: ~22 µs of a single-item POST's time under gunicorn and ~35 µs of its
    CPU (measured, SQLite), and a network round trip on PostgreSQL. A key revoked through the API is dropped at once
    by the process that revoked it; other processes (the other workers, a ``flywheel keys revoke``) stop accepting
    it within ``ttl`` seconds. Only keys found are kept, so a key just created works at once and unknown keys cannot
    fill the cache. ``ttl`` 0 turns it off. cachetools' TTLCache, behind a lock: the worker's threads share it.
    """

    def __init__(self, ttl: float, maxsize: int = 10_000) -> None:
        self._principals: TTLCache[str, Principal] | None = TTLCache(maxsize, ttl) if ttl > 0 else None
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Principal | None:
        if self._principals is None:
            return None
        with self._lock:
            return self._principals.get(key_hash)

    def put(self, key_hash: str, principal: Principal) -> None:
        if self._principals is not None:
            with self._lock:
                self._principals[key_hash] = principal

    def forget(self, key_id: int) -> None:
        """Drop a key at once (it was revoked)."""
        if self._principals is not None:
            with self._lock:
                for key_hash in [h for h, p in self._principals.items() if p.key_id == key_id]:
                    del self._principals[key_hash]


def authenticate(
    authorization: str | None, connection: Callable[[], Connection | Session], keys: KeyCache | None = None
) -> Principal:
    """The caller's principal from ``Authorization: Bearer <key>``: from ``keys`` when it holds the key, otherwise
    looked up on ``connection()`` (called only then) and kept in ``keys``."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized()
    key_hash = hash_key(authorization.removeprefix("Bearer ").strip())
    if keys is not None and (principal := keys.get(key_hash)) is not None:
        return principal
    row = _KEY_LOOKUP.cursor(connection(), {"key_hash": key_hash}, alone=True).fetchone()  # one read: no BEGIN
    if row is None:
        raise Unauthorized("unknown or revoked API key")
    key_id, tenant_id, slug, scopes = row
    principal = Principal(key_id=key_id, tenant_id=tenant_id, tenant_slug=slug, scopes=split_scopes(scopes))
    if keys is not None:
        keys.put(key_hash, principal)
    return principal
