"""Data rights (API.md, "Data rights"): erasure, a tenant's sharing and retention settings, its deletion, export.

Every call is scoped like the rest of the API: a tenant key erases and exports only its own records (another
tenant's ids count as unknown, zero); an admin names the tenant. What erasure removes and how it follows the
records into model lineage is ``flywheel.domain.erasure``'s; these views parse, call it and commit.
"""

from __future__ import annotations

from flask import Blueprint, Response
from sqlalchemy import select

from flywheel.core.errors import Conflict, NotFound, Unprocessable
from flywheel.domain.auth import Principal
from flywheel.domain.erasure import (
    begin_tenant_deletion,
    erase_predictions,
    predictions_by_client_ids,
    predictions_of_user,
    taint_shared_models_of,
)
from flywheel.domain.export import FORMATS, export_rows, jsonl_stream, parquet_stream
from flywheel.domain.schemas import (
    ErasureIn,
    ErasureOut,
    ExportQuery,
    TenantDelete,
    TenantOut,
    TenantPatch,
    TenantQuery,
)
from flywheel.models.records import Task, Tenant
from flywheel.web.context import get_db, get_keys, get_session
from flywheel.web.serializers import tenant_out
from flywheel.web.spec import json_response, operation

bp = Blueprint("rights", __name__, url_prefix="/v1")


def _erase(principal: Principal, tenant: Tenant, pks: list[int], reason: str) -> Response:
    session = get_session()
    counts = erase_predictions(session, tenant, pks, reason=reason, requested_by=f"key:{principal.key_id}")
    session.commit()
    return json_response(ErasureOut(**counts.to_dict()))


@operation(bp, "DELETE", "/predictions/<prediction_id>", summary="Erase a prediction and everything derived from it",
           scope="ingest", query=TenantQuery, responses={200: ErasureOut})  # fmt: skip
def delete_prediction(prediction_id: str, *, principal: Principal, query: TenantQuery) -> Response:
    """Removes the prediction, its feedback and review decisions, its label-quality result and cached embedding,
    and taints the model versions it trained. Idempotent: an id that is not (or no longer) there answers 200 with
    zero counts."""
    session = get_session()
    tenant = principal.tenant_for(session, query.tenant)
    return _erase(principal, tenant, predictions_by_client_ids(session, tenant.id, [prediction_id]), "request")


@operation(bp, "POST", "/erasure", summary="Erase predictions by id (up to 1,000) or by metadata.user_id",
           scope="ingest", query=TenantQuery, body=ErasureIn, responses={200: ErasureOut})  # fmt: skip
def post_erasure(*, principal: Principal, query: TenantQuery, body: ErasureIn) -> Response:
    """As ``DELETE /v1/predictions/{id}`` for many at once, in one transaction; unknown ids count zero."""
    session = get_session()
    tenant = principal.tenant_for(session, query.tenant)
    if "prediction_ids" in body.model_fields_set:
        return _erase(principal, tenant, predictions_by_client_ids(session, tenant.id, body.prediction_ids), "request")
    return _erase(principal, tenant, predictions_of_user(session, tenant.id, body.user_id), "user")


def _tenant(principal: Principal, slug: str) -> Tenant:
    """The named tenant, if the key may see it (an admin: any; a tenant key: its own); 404 otherwise."""
    tenant = get_session().scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None or not principal.can_see_tenant(tenant.id):
        raise NotFound(f"tenant '{slug}' does not exist")
    return tenant


@operation(bp, "GET", "/tenants/<tenant>", summary="A tenant with its data-rights settings", scope="read",
           responses={200: TenantOut})  # fmt: skip
def get_tenant(tenant: str, *, principal: Principal) -> Response:
    """An admin reads any tenant, a tenant key its own. ``status`` is ``deleting`` while its deletion runs; a
    deleted tenant is a 404."""
    return json_response(tenant_out(_tenant(principal, tenant)))


@operation(bp, "PATCH", "/tenants/<tenant>", summary="Set a tenant's sharing and retention", scope="admin",
           body=TenantPatch, responses={200: TenantOut})  # fmt: skip
def patch_tenant(tenant: str, *, principal: Principal, body: TenantPatch) -> Response:
    """Turning ``share_labels`` off taints every shared model its labels trained; later shared models leave them
    out (their ``lineage.tenants`` has no entry for it) while its own variant still trains on them. A tenant being
    deleted: 409."""
    session = get_session()
    row = _tenant(principal, tenant)
    if row.status != "active":
        raise Conflict(f"tenant '{tenant}' is being deleted")
    if body.share_labels is not None and body.share_labels != row.share_labels:
        row.share_labels = body.share_labels
        if not body.share_labels:
            taint_shared_models_of(session, row.id)
    if "retention_days" in body.model_fields_set:
        row.retention_days = body.retention_days
    session.flush()
    out = tenant_out(row)
    session.commit()
    return json_response(out)


@operation(bp, "DELETE", "/tenants/<tenant>", summary="Delete a tenant and all of its data", scope="admin",
           body=TenantDelete, responses={202: TenantOut})  # fmt: skip
def delete_tenant(tenant: str, *, principal: Principal, body: TenantDelete) -> Response:
    """Its keys are refused at once and its status becomes ``deleting``; a job then removes its rows in batches
    (tainting the shared models they trained), its variants and their artifacts, and finally the tenant (404 from
    then on). ``confirm`` must repeat the slug (422 otherwise). Asking again while it runs answers 202 again."""
    session = get_session()
    row = _tenant(principal, tenant)
    if body.confirm != row.slug:
        raise Unprocessable(
            "confirm must repeat the tenant's slug",
            errors=[{"loc": ["confirm"], "msg": f"expected '{row.slug}'"}],
        )
    revoked = begin_tenant_deletion(session, row)
    out = tenant_out(row)
    session.commit()
    for key_id in revoked:
        get_keys().forget(key_id)
    return json_response(out, 202)


@operation(bp, "GET", "/export", summary="Export predictions with feedback and effective labels (streamed)",
           scope="read", query=ExportQuery, responses={200: tuple(FORMATS.values())})  # fmt: skip
def export(*, principal: Principal, query: ExportQuery) -> Response:
    """``jsonl``: one object per line (``id``, ``text``, ``label``, ``confidence``, ``probabilities``,
    ``model_version``, ``created_at``, ``metadata``, ``feedback``, ``effective_label``), oldest first; ``parquet``:
    the same columns (``probabilities`` and ``metadata`` as JSON text), one row group per 1,000 rows. Streamed: the
    rows are read in chunks as the response is sent."""
    session = get_session()
    tenant = principal.tenant_for(session, query.tenant)
    task_id = session.scalar(select(Task.id).where(Task.name == query.task))
    if task_id is None:
        raise NotFound(f"task '{query.task}' does not exist")
    chunks = export_rows(get_db(), tenant.id, task_id)
    body = parquet_stream(chunks) if query.format == "parquet" else jsonl_stream(chunks)
    filename = f"{tenant.slug}-{query.task}.{query.format}"
    return Response(
        body,
        mimetype=FORMATS[query.format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
