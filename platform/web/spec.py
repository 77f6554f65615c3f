"""Declared operations: one decorator validates a request and records it for the OpenAPI 3.1 document.

Why by hand: the contract fixes the error shape (one problem+json with every bad batch item by index, 400 for
malformed JSON, 413 by size) and our scopes; flask-openapi3/spectree impose their own error bodies and request
hooks. What is hand-written here is only the glue: pydantic validates and generates every JSON Schema.

The document never lies (tests/api/test_contract.py fuzzes it against the server): every status an operation can
answer is declared (the errors as problem+json), every rule a JSON Schema can state is in the schemas, and the
server rejects what the schemas forbid, including a repeated query parameter and a body that is not JSON.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import BaseModel, TypeAdapter, ValidationError

from flywheel.core.errors import BadRequest, NotFound, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from flywheel.domain.auth import Principal, authenticate
from flywheel.domain.ingest import Batch
from flywheel.domain.schemas import ClientId, Name, Problem
from flywheel.web.context import get_connection, get_keys

F = TypeVar("F", bound=Callable[..., Any])

# Path parameters by name: what the views accept (anything else is a 404, as an id that does not exist).
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "prediction_id": {**TypeAdapter(ClientId).json_schema(), "description": "the prediction's client id"},
    "name": {**TypeAdapter(Name).json_schema(), "description": "a task's name"},
    "task": {**TypeAdapter(Name).json_schema(), "description": "a task's name"},
    "tenant": {**TypeAdapter(Name).json_schema(), "description": "a tenant's slug"},
    "ref": {"type": "string", "pattern": r"^[^\x00]{1,200}$", "description": "a model's id or version"},
}
_RULE_PARAM = re.compile(r"<(?:(\w+)(?:\(([^)]*)\))?:)?(\w+)>")

# Headers that go with an error status.
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "required": True, "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds", "required": True, "schema": {"type": "string"}}},
}
_ERROR_MEANING: dict[int, str] = {
    400: "the body is not JSON (or is empty)",
    401: "no API key, or an unknown or revoked one",
    403: "the key lacks the scope",
    404: "a named resource does not exist or belongs to another tenant",
    409: "conflicts with stored data",
    413: "the body or the batch is larger than the limits",
    415: "the body is not application/json",
    422: "the request breaks a rule of its schema or of the stored data; `errors` lists each problem",
    503: "the database is unreachable; nothing was written",
}


@dataclass
class Operation:
    method: str
    rule: str
    summary: str
    tag: str
    scope: str | None
    body: type[BaseModel] | tuple[type[BaseModel], ...] | None
    query: type[BaseModel] | None
    responses: dict[int, type[BaseModel] | str | tuple[str, ...] | None]
    description: str = ""
    path_params: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    errors: tuple[int, ...] = ()
    body_required: bool = True

    def error_statuses(self) -> list[int]:
        """Every error status this operation can answer."""
        codes = set(self.errors)
        if self.rule.startswith("/v1/"):
            codes.add(503)
            if self.method != "get":
                codes.add(409)  # a write can lose a race to a concurrent one (a uniqueness check)
        if self.scope is not None:
            codes |= {401, 403}
        if self.body is not None:
            codes |= {400, 413, 415, 422}
        if self.query is not None:
            codes.add(422)
        if self.path_params:
            codes.add(404)
        if self.query is not None and "tenant" in self.query.model_fields:
            codes |= {404, 422}
        return sorted(codes)


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


def check_json_body() -> None:
    """The documented media type, ``application/json`` (or a ``+json`` type); anything else is a 415."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise UnsupportedMediaType(
            f"the request body must be application/json (Content-Type: {request.content_type or 'absent'})"
        )


def parse_body(model: type[BaseModel], raw: bytes) -> BaseModel:
    check_body_size(raw)
    check_json_body()
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
    check_json_body()
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
    repeated = sorted(name for name, values in request.args.lists() if len(values) > 1)
    if repeated:
        raise Unprocessable(
            "invalid query parameters",
            errors=[{"loc": ["query", name], "msg": "given more than once"} for name in repeated],
        )
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        errors = validation_errors(exc, ("query",))
        raise Unprocessable("invalid query parameters", errors=errors) from None


def _path_params(rule: str) -> list[tuple[str, dict[str, Any]]]:
    """The rule's parameters with their schemas: ``<int(min=1, max=9):x>`` is a bounded integer."""
    out = []
    for converter, args, name in _RULE_PARAM.findall(rule):
        if converter == "int":
            bounds = dict(re.findall(r"(min|max)=(\d+)", args))
            schema: dict[str, Any] = {"type": "integer", "minimum": int(bounds.get("min", 0))}
            if "max" in bounds:
                schema["maximum"] = int(bounds["max"])
        else:
            schema = dict(PATH_PARAMETERS.get(name, {"type": "string"}))
        out.append((name, schema))
    return out


def operation(
    bp: Blueprint,
    method: str,
    rule: str,
    *,
    summary: str,
    scope: str | None,
    responses: dict[int, type[BaseModel] | str | tuple[str, ...] | None],
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    tag: str | None = None,
    documented_body: type[BaseModel] | tuple[type[BaseModel], ...] | None = None,
    body_required: bool = True,
    errors: Iterable[int] = (),
) -> Callable[[F], F]:
    """Declare an endpoint. The view gets ``principal`` (when ``scope``), ``body`` and ``query`` as keywords.

    ``documented_body`` documents a body that the view parses itself (e.g. one that accepts two forms: a tuple of
    models is documented as ``anyOf``). ``errors`` adds error statuses to the ones derived from the declaration
    (401/403 from ``scope``, 400/413/415/422 from a body, 422 from a query, 404 from path parameters and a
    ``tenant`` query parameter, 503 from any ``/v1`` operation).
    """

    params = _path_params(rule)
    patterns = {name: re.compile(schema["pattern"]) for name, schema in params if "pattern" in schema}

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(**path_args: Any) -> Any:
            for name, pattern in patterns.items():  # outside its documented form, no such thing exists
                if not pattern.fullmatch(path_args[name]):
                    raise NotFound(f"there is no {name} '{path_args[name]}'")
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
                path_params=params,
                errors=tuple(errors),
                body_required=body_required,
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


def _query_parameter(name: str, prop: dict[str, Any], required: bool) -> dict[str, Any]:
    """A query parameter from a model property: a URL has no null, so ``X | None`` is documented as optional X."""
    schema = dict(prop)
    branches = schema.pop("anyOf", None)
    if branches is not None:
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept
    if schema.get("default", 0) is None:
        del schema["default"]
    description = schema.pop("description", None)
    schema.pop("title", None)
    param: dict[str, Any] = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        param["description"] = description
    return param


def _apply_limits(node: Any, limits: Mapping[str, int]) -> None:
    """``{"x-limit": name}`` marks an array bounded by a setting: it becomes ``maxItems`` (413 above it)."""
    if isinstance(node, dict):
        name = node.pop("x-limit", None)
        if name is not None:
            node["maxItems"] = limits[name]
        for value in node.values():
            _apply_limits(value, limits)
    elif isinstance(node, list):
        for value in node:
            _apply_limits(value, limits)


class _Components:
    """The document's ``components.schemas``, filled as operations reference their models."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def absorb(self, schema: dict[str, Any]) -> dict[str, Any]:
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, sub)
        return schema

    def ref(self, model: type[BaseModel]) -> dict[str, Any]:
        self.schemas[model.__name__] = self.absorb(model.model_json_schema(ref_template="#/components/schemas/{model}"))
        return {"$ref": f"#/components/schemas/{model.__name__}"}


def _parameters(op: Operation, components: _Components) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": schema} for name, schema in op.path_params
    ]
    if op.query is not None:
        qschema = components.absorb(op.query.model_json_schema(ref_template="#/components/schemas/{model}"))
        for name, prop in qschema.get("properties", {}).items():
            params.append(_query_parameter(name, prop, name in qschema.get("required", [])))
    return params


def _responses(op: Operation, components: _Components) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, resp in op.responses.items():
        if isinstance(resp, str | tuple):  # media types other than JSON (one, or one of several)
            types = (resp,) if isinstance(resp, str) else resp
            responses[str(status)] = {
                "description": HTTPStatus(status).phrase,
                "content": {t: {"schema": {"type": "string"}} for t in types},
            }
        elif resp is None:
            responses[str(status)] = {"description": "no body"}
        else:
            responses[str(status)] = {
                "description": (resp.__doc__ or HTTPStatus(status).phrase).strip(),
                "content": {"application/json": {"schema": components.ref(resp)}},
            }
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for status in op.error_statuses():
        response: dict[str, Any] = {
            "description": _ERROR_MEANING.get(status, HTTPStatus(status).phrase),
            "content": {"application/problem+json": {"schema": problem_ref}},
        }
        if status in _ERROR_HEADERS:
            response["headers"] = copy.deepcopy(_ERROR_HEADERS[status])
        responses[str(status)] = response
    return responses


def _operation(op: Operation, path: str, components: _Components) -> dict[str, Any]:
    item: dict[str, Any] = {
        "operationId": f"{op.method}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
        "summary": op.summary,
        "tags": [op.tag],
    }
    if op.description:
        item["description"] = op.description
    params = _parameters(op, components)
    if params:
        item["parameters"] = params
    if op.body is not None:
        models = op.body if isinstance(op.body, tuple) else (op.body,)
        schema = components.ref(models[0]) if len(models) == 1 else {"anyOf": [components.ref(m) for m in models]}
        item["requestBody"] = {"required": op.body_required, "content": {"application/json": {"schema": schema}}}
    if op.scope is not None:
        item["security"] = [{"bearer": [op.scope]}]
    item["responses"] = _responses(op, components)
    return item


def openapi_document(limits: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document, generated from the same pydantic models that validate requests; ``limits`` are the
    app's batch limits (settings), stated as ``maxItems``."""
    components = _Components()
    components.ref(Problem)
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        path = _RULE_PARAM.sub(r"{\3}", op.rule)
        paths.setdefault(path, {})[op.method] = _operation(op, path, components)
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Flywheel API",
            "version": "1",
            "description": (
                "Every error is application/problem+json (RFC 9457) with a `detail`, and `errors` "
                '(`[{"loc": [...], "msg": ...}]`) for a 422. An admin key belongs to no tenant: on the endpoints that '
                "act on one tenant's data it names the tenant with the `tenant` parameter (422 without it)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key with the scope the operation names (`admin` implies every scope)",
                }
            },
        },
    }
    _apply_limits(document, limits or DEFAULT_LIMITS)
    return document


DEFAULT_LIMITS = {"max_batch_items": 1000, "max_predict_inputs": 256}
