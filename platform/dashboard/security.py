"""Dashboard sign-in, session expiry and CSRF protection.

The browser never holds the API key: sign-in checks it once and keeps only the key's id in Flask's signed session
cookie (HttpOnly, SameSite=Lax, Secure when configured), together with the sign-in time, so a session expires a fixed
time after sign-in whatever the browser does with the cookie, and a revoked key ends its sessions at the next request.

CSRF uses the synchronizer-token pattern, written here rather than taken from Flask-WTF: it is a few lines on top of
the session Flask already signs, it needs no new dependency (customers install air-gapped), and it covers every
POST of the blueprint in one ``before_request`` hook instead of per form class. The token is 256 random bits, one
per session, compared in constant time, and rotated at sign-in and sign-out (so a token seen before sign-in cannot
be replayed after it).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import abort, g, redirect, request, session, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.domain.auth import Principal, hash_key
from flywheel.models.records import ApiKey

CSRF_FIELD = "csrf_token"
SESSION_KEY_ID = "dashboard_key_id"
SESSION_SIGNED_IN_AT = "dashboard_signed_in_at"
SESSION_CSRF = "dashboard_csrf"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

F = TypeVar("F", bound=Callable[..., Any])


class CsrfError(Exception):
    """A state-changing request without the session's CSRF token."""


def csrf_token() -> str:
    """The session's CSRF token, created on first use (templates call it for every form)."""
    token = session.get(SESSION_CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[SESSION_CSRF] = token
    return token


def check_csrf() -> None:
    """Refuse an unsafe request whose form token does not match the session's token."""
    if request.method not in UNSAFE_METHODS:
        return
    expected = session.get(SESSION_CSRF)
    given = request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not expected or not given:
        raise CsrfError("the form's security token is missing; reload the page and try again")
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise CsrfError("the form's security token does not match this session; reload the page and try again")


def find_key(db_session: Session, api_key: str) -> ApiKey | None:
    key = api_key.strip()
    if not key:
        return None
    return db_session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))


def dashboard_allowed(row: ApiKey) -> bool:
    """The dashboard shows data, so it needs a key that may read it: ``read`` (its tenant) or ``admin`` (all)."""
    scopes = row.scope_set
    return "admin" in scopes or ("read" in scopes and row.tenant_id is not None)


def sign_in(row: ApiKey) -> None:
    """Start a fresh session for this key (a new session and CSRF token: no fixation of a pre-sign-in session)."""
    session.clear()
    session.permanent = True
    session[SESSION_KEY_ID] = row.id
    session[SESSION_SIGNED_IN_AT] = int(time.time())
    session[SESSION_CSRF] = secrets.token_urlsafe(32)


def sign_out() -> None:
    session.clear()
    session[SESSION_CSRF] = secrets.token_urlsafe(32)


def load_principal(db_session: Session, *, lifetime_s: int, now: float | None = None) -> Principal | None:
    """The signed-in key as a Principal, or None (signed out, expired, or the key was revoked since)."""
    key_id = session.get(SESSION_KEY_ID)
    signed_in_at = session.get(SESSION_SIGNED_IN_AT)
    if not isinstance(key_id, int) or not isinstance(signed_in_at, int):
        return None
    current = time.time() if now is None else now
    if current - signed_in_at > lifetime_s or signed_in_at > current + 60:
        sign_out()
        return None
    row = db_session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None or not dashboard_allowed(row):
        sign_out()
        return None
    return Principal(
        key_id=row.id,
        tenant_id=row.tenant_id,
        tenant_slug=row.tenant.slug if row.tenant else None,
        scopes=row.scope_set,
    )


def current_principal() -> Principal:
    principal: Principal | None = g.get("dashboard_principal")
    if principal is None:  # only reachable from a view that forgot @signed_in
        abort(401)
    return principal


def signed_in(view: F) -> F:
    """Redirect to the sign-in page when nobody is signed in (with ``next`` to come back)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.get("dashboard_principal") is None:
            return redirect(url_for("dashboard.login", next=safe_next(request.full_path)))
        return view(*args, **kwargs)

    return cast(F, wrapper)


def admin_only(view: F) -> F:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_principal().is_admin:
            abort(403)
        return view(*args, **kwargs)

    return cast(F, signed_in(wrapper))


def safe_next(target: str | None) -> str | None:
    """Only same-site dashboard paths may be a redirect target (no open redirect to another host)."""
    if not target:
        return None
    target = target.rstrip("?")
    if not target.startswith("/dashboard") or target.startswith("//") or "\\" in target:
        return None
    return target
