"""Served predictions: ``POST /v1/predict`` (API.md, "Served predictions")."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app
from pydantic import BaseModel, Field
from sqlalchemy import select

from flywheel.core import metrics
from flywheel.core.errors import NotFound, PayloadTooLarge
from flywheel.domain.auth import Principal
from flywheel.domain.schemas import ClientId, Name, SafeStr, Strict, Timestamp
from flywheel.models.records import Task
from flywheel.retrain.serving import ModelServer, ServeInput
from flywheel.web.context import EXTENSION, get_session, get_settings
from flywheel.web.spec import json_response, operation

bp = Blueprint("predict", __name__, url_prefix="/v1")

SERVER_KEY = "flywheel.retrain.serving"


class PredictInput(Strict):
    id: ClientId | None = Field(default=None, description="the idempotency key; generated when absent")
    text: SafeStr = Field(min_length=1, max_length=100_000)
    metadata: dict[str, Any] | None = None
    created_at: Timestamp | None = Field(default=None, description="when the request happened; default now")


class PredictRequest(Strict):
    """Inputs are unique by ``id`` (409 otherwise, as for an ``id`` already logged with another text)."""

    task: Name = Field(description="an existing task (404 otherwise)")
    inputs: list[PredictInput] = Field(
        min_length=1, json_schema_extra={"x-limit": "max_predict_inputs"}, description="413 above the limit"
    )
    tenant: Name | None = Field(
        default=None,
        description="the tenant to predict for: required with an admin key that belongs to no tenant (422), "
        "else absent or the key's own tenant (another: 404)",
    )


class PredictOutput(BaseModel):
    id: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    model_version: str


class PredictResponse(BaseModel):
    predictions: list[PredictOutput]


def model_server() -> ModelServer:
    """This worker's model server (created on first use; each process has its own)."""
    server = current_app.extensions.get(SERVER_KEY)
    if server is None:
        settings = get_settings()
        server = ModelServer(
            optimize=settings.serve_optimized,
            default_base=settings.base_model or None,
            slots=current_app.extensions[EXTENSION]["inference"],
        )
        current_app.extensions[SERVER_KEY] = server
    assert isinstance(server, ModelServer)
    return server


@operation(
    bp,
    "POST",
    "/predict",
    summary="Predict with the champion model; every answer is logged as a prediction",
    scope="ingest",
    body=PredictRequest,
    responses={200: PredictResponse},
    errors=(404, 409),
)
def post_predict(*, principal: Principal, body: PredictRequest) -> Response:
    """The caller's tenant variant answers when it has one, else the task's shared champion."""
    limit = get_settings().max_predict_inputs
    if len(body.inputs) > limit:
        raise PayloadTooLarge(f"{len(body.inputs)} inputs in one request; the limit is {limit}")
    session = get_session()
    tenant = principal.tenant_for(session, body.tenant, loc=("tenant",))
    task = session.scalar(select(Task).where(Task.name == body.task))
    if task is None:
        raise NotFound(f"task '{body.task}' does not exist")
    served = model_server().predict(
        session, tenant, task, [ServeInput(i.id, i.text, i.metadata, i.created_at) for i in body.inputs]
    )
    session.commit()
    metrics.PREDICTIONS_INGESTED.inc(len(served))
    return json_response(
        PredictResponse(
            predictions=[
                PredictOutput(
                    id=s.id,
                    label=s.label,
                    confidence=s.confidence,
                    probabilities=s.probabilities,
                    model_version=s.model_version,
                )
                for s in served
            ]
        )
    )
