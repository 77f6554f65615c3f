"""Declared operations: one decorator validates a request and records it for the OpenAPI 3.1 document.

Why by hand: the contract fixes the error shape (one problem+json with every bad batch item by index, 400 for
malformed JSON, 413 by size) and our scopes; flask-openapi3/spectree impose their own error bodies and request
hooks. What is hand-written here is only the glue: pydantic validates and generates every JSON Schema.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError

from flywheel.core.errors import BadRequest, PayloadTooLarge, Unprocessable
from flywheel.domain.auth import Principal, authenticate
from flywheel.domain.ingest import Batch
from flywheel.web.context import get_connection, get_keys

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Operation:
    method: str
    rule: str
    summary: str
    tag: str
    scope: str | None
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    responses: dict[int, type[BaseModel] | str | None]
    description: str = ""
    path_params: list[str] = field(default_factory=list)


OPERATIONS: list[Operation] = []


def validation_errors(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """pydantic errors as the contract's ``{"loc": [...], "msg": ...}`` items."""
    out = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        msg = err["msg"].removeprefix("Value error, ")
        out.append({"loc": [*prefix, *err["loc"]], "msg": msg})
    return out


def check_body_size(raw: bytes) -> None:
    if len(raw) > current_app.config["FLYWHEEL_MAX_BODY_BYTES"]:
        raise PayloadTooLarge(f"the request body exceeds {current_app.config['FLYWHEEL_MAX_BODY_BYTES']} bytes")
    if not raw or raw.isspace():  # (no copy of a large body, as strip() would make)
        raise BadRequest("the request body is empty; send a JSON document")


def parse_body(model: type[BaseModel], raw: bytes) -> BaseModel:
    check_body_size(raw)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest("the request body is not valid JSON") from None
        errors = validation_errors(exc)
        raise Unprocessable(f"{len(errors)} problem(s) in the request body", errors=errors) from None


@functools.cache
def _batch_start(root: str) -> re.Pattern[bytes]:
    """How a batch body begins: an object whose first key is ``root`` (a batch has no other key, and an item may not
    have that one)."""
    return re.compile(rb'\s*\{\s*"' + re.escape(root.encode()) + rb'"\s*:')


def parse_batch(raw: bytes, *, root: str, item: type[BaseModel], batch: type[BaseModel]) -> Batch:
    """Parse ``{root: [...]}`` (or one bare item), validating each item on its own so that a 422 can list every bad
    item by index, including the ones whose problems only the service can see."""
    check_body_size(raw)
    # The common case, valid: one pass of pydantic's JSON parser, with the model the body's start names. (A union of
    # both, tried in turn, spent a single item's first try on the batch model: ~2 µs, half of its parse, measured.)
    is_batch = _batch_start(root).match(raw) is not None
    try:
        parsed = (batch if is_batch else item).model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest("the request body is not valid JSON") from None
    else:
        items = list(getattr(parsed, root)) if is_batch else [parsed]
        return Batch(items=items, indexes=list(range(len(items))), errors=[], size=len(items))
    doc = json.loads(raw)  # valid JSON (400 above otherwise); now find every problem, item by item
    if isinstance(doc, dict) and root not in doc and "id" in doc:
        doc = {root: [doc]}  # a single bare item
    if not isinstance(doc, dict) or not isinstance(doc.get(root), list) or set(doc) != {root} or not doc[root]:
        try:
            batch.model_validate(doc)
        except ValidationError as exc:
            raise Unprocessable("the request body has the wrong shape", errors=validation_errors(exc)) from None
    out = Batch(items=[], indexes=[], errors=[], size=len(doc[root]))
    for i, raw_item in enumerate(doc[root]):
        try:
            out.items.append(item.model_validate(raw_item))
            out.indexes.append(i)
        except ValidationError as exc:
            out.errors += validation_errors(exc, (root, i))
    return out


def parse_query(model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        errors = validation_errors(exc, ("query",))
        raise Unprocessable("invalid query parameters", errors=errors) from None


def operation(
    bp: Blueprint,
    method: str,
    rule: str,
    *,
    summary: str,
    scope: str | None,
    responses: dict[int, type[BaseModel] | str | None],
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    tag: str | None = None,
    documented_body: type[BaseModel] | None = None,
) -> Callable[[F], F]:
    """Declare an endpoint. The view gets ``principal`` (when ``scope``), ``body`` and ``query`` as keywords.

    ``documented_body`` documents a body that the view parses itself (e.g. one that accepts two forms).
    """

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(**path_args: Any) -> Any:
            kwargs: dict[str, Any] = dict(path_args)
            if scope is not None:
                principal: Principal = authenticate(request.headers.get("Authorization"), get_connection, get_keys())
                kwargs["principal"] = principal.require(scope)
                g.principal = principal
            if query is not None:
                kwargs["query"] = parse_query(query)
            if body is not None:
                kwargs["body"] = parse_body(body, request.get_data(cache=False))
            return view(**kwargs)

        bp.add_url_rule(rule, view_func=wrapper, methods=[method])
        OPERATIONS.append(
            Operation(
                method=method.lower(),
                rule=(bp.url_prefix or "") + rule,
                summary=summary,
                description=(view.__doc__ or "").strip(),
                tag=tag or bp.name,
                scope=scope,
                body=body or documented_body,
                query=query,
                responses=responses,
                path_params=re.findall(r"<(?:\w+:)?(\w+)>", rule),
            )
        )
        return wrapper  # type: ignore[return-value]

    return decorator


def json_response(model: BaseModel | dict[str, Any], status: int = 200) -> Response:
    if isinstance(model, BaseModel):  # pydantic's own serializer: one pass, no intermediate dict
        return Response(model.model_dump_json(), status=status, mimetype="application/json")
    response = jsonify(model)
    response.status_code = status
    return response


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, generated from the same pydantic models that validate requests."""
    from flywheel.domain.schemas import Problem

    components: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    problem_ref = ref(Problem)
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", op.rule)
        item: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "responses": {}}
        if op.description:
            item["description"] = op.description
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in op.path_params
        ]
        if op.query is not None:
            qschema = op.query.model_json_schema()
            for name, prop in qschema.get("properties", {}).items():
                params.append(
                    {"name": name, "in": "query", "required": name in qschema.get("required", []), "schema": prop}
                )
        if params:
            item["parameters"] = params
        if op.body is not None:
            item["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(op.body)}}}
        if op.scope is not None:
            item["security"] = [{"bearer": [op.scope]}]
        for status, resp in op.responses.items():
            if isinstance(resp, str):
                item["responses"][str(status)] = {"description": "", "content": {resp: {}}}
            elif resp is None:
                item["responses"][str(status)] = {"description": "no body"}
            else:
                item["responses"][str(status)] = {
                    "description": resp.__doc__ or "",
                    "content": {"application/json": {"schema": ref(resp)}},
                }
        item["responses"]["default"] = {
            "description": "an error, as RFC 9457 problem+json",
            "content": {"application/problem+json": {"schema": problem_ref}},
        }
        paths.setdefault(path, {})[op.method] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "Flywheel API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
