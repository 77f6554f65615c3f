"""Tenants and API keys, for admins (the CLI does the same through ``flywheel.domain.tenants``)."""

from __future__ import annotations

from flask import Blueprint, Response
from sqlalchemy import select

from flywheel.core.errors import NotFound
from flywheel.domain.auth import Principal, create_key
from flywheel.domain.schemas import MAX_ID, KeyCreated, KeyIn, KeyList, KeyOut, TenantIn, TenantList, TenantOut
from flywheel.domain.tenants import create_tenant, revoke_key
from flywheel.models.records import ApiKey, Tenant
from flywheel.web.context import get_keys, get_session
from flywheel.web.serializers import key_out, tenant_out
from flywheel.web.spec import json_response, operation

bp = Blueprint("admin", __name__, url_prefix="/v1")


@operation(bp, "POST", "/tenants", summary="Create a tenant", scope="admin", body=TenantIn, responses={201: TenantOut},
           errors=(409,))  # fmt: skip
def post_tenant(*, principal: Principal, body: TenantIn) -> Response:
    session = get_session()
    tenant = create_tenant(session, slug=body.slug, name=body.name, webhook_url=body.webhook_url)
    out = tenant_out(tenant)
    session.commit()
    return json_response(out, 201)


@operation(bp, "GET", "/tenants", summary="List tenants", scope="admin", responses={200: TenantList})
def list_tenants(*, principal: Principal) -> Response:
    tenants = get_session().scalars(select(Tenant).order_by(Tenant.slug))
    return json_response(TenantList(items=[tenant_out(t) for t in tenants]))


@operation(bp, "POST", "/keys", summary="Create an API key", scope="admin", body=KeyIn, responses={201: KeyCreated},
           errors=(404,))  # fmt: skip
def post_key(*, principal: Principal, body: KeyIn) -> Response:
    """The secret is in the response once; only its hash is stored. A key without a tenant must have the
    ``admin`` scope (422 naming ``tenant`` otherwise); a tenant that does not exist is a 404."""
    session = get_session()
    tenant = None
    if body.tenant is not None:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == body.tenant))
        if tenant is None:
            raise NotFound(f"tenant '{body.tenant}' does not exist")
    row, secret = create_key(session, tenant=tenant, scopes=sorted(set(body.scopes)), name=body.name)
    out = KeyCreated(**key_out(row).model_dump(), key=secret)
    session.commit()
    return json_response(out, 201)


@operation(bp, "GET", "/keys", summary="List API keys", scope="admin", responses={200: KeyList})
def list_keys(*, principal: Principal) -> Response:
    keys = get_session().scalars(select(ApiKey).order_by(ApiKey.id))
    return json_response(KeyList(items=[key_out(k) for k in keys]))


@operation(bp, "DELETE", f"/keys/<int(max={MAX_ID}):key_id>", summary="Revoke an API key", scope="admin",
           responses={200: KeyOut})  # fmt: skip
def delete_key(key_id: int, *, principal: Principal) -> Response:
    session = get_session()
    row = revoke_key(session, key_id)
    out = key_out(row)
    session.commit()
    get_keys().forget(key_id)  # at once here; the other processes' caches let it go within key_cache_seconds
    return json_response(out)
