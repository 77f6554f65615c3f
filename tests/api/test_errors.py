"""Every error is a 4xx problem+json with a reason: one regression test per way a request used to end in a 500, and
per rule the OpenAPI document states that the server did not enforce (or the other way round). Each runs on every
backend: a NUL or an integer past 2**31 only fails on PostgreSQL."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError

from flywheel.core.errors import Conflict
from flywheel.domain.catalog import create_task
from flywheel.domain.schemas import URL_PATTERN, TaskIn
from flywheel.domain.tenants import create_tenant
from flywheel.models.records import Task, Tenant

from support import World, prediction
from support.dashboard import sign_in

HUGE = "9" * 30  # past every integer column, and past SQLite's 64-bit integers


def problem(r: Any, status: int, loc: list[Any] | None = None) -> dict[str, Any]:
    """The response is the problem+json ``status``, with a reason, and names ``loc`` among its errors when given."""
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    assert r.content_type == "application/problem+json"
    body: dict[str, Any] = r.json
    assert body["status"] == status and body.get("detail")
    if loc is not None:
        assert loc in [e["loc"] for e in body.get("errors") or []], body
    return body


# --- 500s that were ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{"scopes": ["read"]}, {"tenant": None, "scopes": ["ingest", "read"]}])
def test_a_key_without_tenant_or_admin_scope_is_422_naming_tenant(client: FlaskClient, world: World, body) -> None:
    """Was: ``create_key`` raised ValueError, a 500."""
    problem(client.post("/v1/keys", json=body, headers=world.auth(world.admin)), 422, ["tenant"])
    assert client.post("/v1/keys", json={"scopes": ["admin"]}, headers=world.auth(world.admin)).status_code == 201


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("delete", f"/v1/keys/{HUGE}"),
        ("get", f"/v1/reports/{HUGE}"),
        ("get", f"/v1/training-runs/{HUGE}"),
        ("get", f"/v1/models/{HUGE}"),
        ("get", "/v1/models/2147483648"),
        ("post", f"/v1/models/{HUGE}/promote"),
        ("get", "/v1/models/\u00b2"),  # a superscript two: str.isdigit() says yes, int() says no
    ],
)
def test_ids_past_every_column_are_404(client: FlaskClient, world: World, method: str, path: str) -> None:
    """Was: OverflowError (SQLite) or DataError (PostgreSQL) on the lookup, or ValueError from ``int()``: a 500."""
    problem(getattr(client, method)(path, headers=world.auth(world.admin)), 404)


def test_dashboard_ids_past_every_column_are_404(client: FlaskClient, world: World) -> None:
    sign_in(client, world.admin)
    for path in (f"/dashboard/reports/{HUGE}", f"/dashboard/models/{HUGE}/promote"):
        assert client.get(path).status_code == 404, path


@pytest.mark.parametrize(
    ("path", "loc"),
    [
        ("/v1/predictions?since=0001-01-01T00:00:00%2B05:00", ["query", "since"]),
        ("/v1/predictions?until=9999-12-31T23:00:00-05:00", ["query", "until"]),
        ("/v1/predictions?since=1700000000", ["query", "since"]),  # a number is not an RFC 3339 date-time
    ],
)
def test_instants_no_backend_can_store_are_422(client: FlaskClient, world: World, path: str, loc: list[str]) -> None:
    """Was: OverflowError converting year 1 at +05:00 to UTC (year 0), a 500."""
    problem(client.get(path, headers=world.auth(world.acme_read)), 422, loc)


def test_a_prediction_dated_year_one_at_an_eastern_offset_is_422(client: FlaskClient, world: World) -> None:
    item = prediction("p-old", created_at="0001-01-01T00:00:00+01:00")
    r = client.post("/v1/predictions", json={"predictions": [item]}, headers=world.auth(world.acme_rw))
    problem(r, 422, ["predictions", 0, "created_at"])


def test_a_dashboard_report_period_past_year_9999_is_400(client: FlaskClient, world: World) -> None:
    """Was: OverflowError adding a day to 9999-12-31 (and subtracting 29 from 0001-01-05), a 500."""
    sign_in(client, world.admin)
    assert client.get("/dashboard/tenants/acme/report?end=9999-12-31").status_code == 400
    assert client.get("/dashboard/tenants/acme/report?end=0001-01-05").status_code == 400


def test_an_sla_min_labeled_past_the_column_is_422(client: FlaskClient, world: World) -> None:
    """Was: OverflowError (SQLite) or DataError (PostgreSQL) storing 10**30 in an integer column, a 500."""
    body = {"metric": "accuracy", "threshold": 0.9, "min_labeled": int(HUGE)}
    problem(client.put("/v1/slas/acme/intent", json=body, headers=world.auth(world.admin)), 422, ["min_labeled"])


@pytest.mark.parametrize(
    ("cursor", "status"),
    [
        ("garbage", 422),
        ("MjAyNi0xMS0yN1QwMTowMDowMCswMDowMHwx", 422),  # the old base64 form
        (f"{'9' * 18}.1", 200),  # past year 9999: the start of the list
        (f"-{'9' * 18}.1", 200),  # before year 1: past its end
        ("0.9999999999", 200),  # an id past the column's range (PostgreSQL refused to compare it)
    ],
)
def test_every_cursor_of_the_documented_form_is_a_position(client, world: World, cursor: str, status: int) -> None:
    r = client.get(f"/v1/predictions?cursor={cursor}", headers=world.auth(world.acme_read))
    if status == 422:
        problem(r, 422, ["query", "cursor"])
    else:
        assert r.status_code == 200, r.json


def test_cursor_pagination_walks_every_item_once(client: FlaskClient, world: World) -> None:
    items = [prediction(f"c{i}", created_at=f"2026-11-{10 + i // 3:02d}T00:00:00Z") for i in range(7)]
    r = client.post("/v1/predictions", json={"predictions": items}, headers=world.auth(world.acme_rw))
    assert r.status_code == 201
    seen: list[str] = []
    cursor = ""
    while True:
        r = client.get(f"/v1/predictions?limit=2{cursor}", headers=world.auth(world.acme_read))
        assert re.fullmatch(r"-?[0-9]{1,18}\.[0-9]{1,10}", r.json["next_cursor"] or "0.0")
        seen += [p["id"] for p in r.json["items"]]
        if r.json["next_cursor"] is None:
            break
        cursor = f"&cursor={r.json['next_cursor']}"
    assert sorted(seen) == sorted(i["id"] for i in items) and len(seen) == 7


@pytest.mark.parametrize(
    ("method", "path", "body", "loc"),
    [
        (
            "post",
            "/v1/predictions?tenant=acme",
            {"predictions": [prediction("n", text="a\x00")]},
            ["predictions", 0, "text"],
        ),
        ("post", "/v1/tenants", {"slug": "nul", "name": "a\x00"}, ["name"]),
        ("post", "/v1/tasks", {"name": "nul", "labels": ["a", "b\x00"]}, ["labels", 1]),
        ("post", "/v1/keys", {"tenant": "acme", "scopes": ["read"], "name": "\x00"}, ["name"]),
        ("put", "/v1/tenants/acme/webhook", {"url": "https://x.example", "secret": "s" * 15 + "\x00"}, ["secret"]),
    ],
)
def test_a_nul_in_stored_text_is_422(client: FlaskClient, world: World, method, path, body, loc) -> None:
    """Was: DataError on PostgreSQL (a text column cannot hold NUL), a 500."""
    problem(getattr(client, method)(path, json=body, headers=world.auth(world.admin)), 422, loc)


@pytest.mark.parametrize(
    "path",
    ["/v1/predictions/a%00b?tenant=acme", "/v1/tasks/a%00", "/v1/models/a%00", "/v1/slas/acme/in%00tent/history"],
)
def test_a_nul_in_a_path_is_404(client: FlaskClient, world: World, path: str) -> None:
    """Was: DataError on PostgreSQL comparing a NUL, a 500. A value outside a parameter's documented form names
    nothing that exists."""
    problem(client.get(path, headers=world.auth(world.admin)), 404)


def test_a_nul_in_a_dashboard_path_or_query_is_404(client: FlaskClient, world: World) -> None:
    sign_in(client, world.admin)
    assert client.get("/dashboard/tenants/a%00").status_code == 404
    assert client.get("/dashboard/models?task=a%00").status_code == 200  # an unknown task: every task's models
    assert client.get("/dashboard/models/rollback?task=a%00").status_code == 404


def test_a_write_that_loses_a_uniqueness_race_is_409(world: World) -> None:
    """Was: IntegrityError on the flush when a concurrent request created the same slug after the check, a 500."""
    with world.db.session() as session:
        with session.no_autoflush:
            session.add(Tenant(slug="racer", name="first"))  # not flushed: the check below cannot see it
            with pytest.raises(Conflict):
                create_tenant(session, slug="racer", name="second")
        session.rollback()


def test_a_task_create_that_loses_the_name_race_is_a_conflict_naming_the_task(world: World) -> None:
    with world.db.session() as session:
        with session.no_autoflush:
            session.add(Task(name="racer", labels=["a", "b"], label_descriptions={}, description=""))  # not flushed
            with pytest.raises(Conflict, match="task 'racer' already exists"):
                create_task(session, TaskIn(name="racer", labels=["a", "b"]))
        session.rollback()


def test_a_task_created_concurrently_under_the_same_name_is_the_documented_409(app: Flask, world: World) -> None:
    """Another transaction holds the name, uncommitted, while the request runs: on PostgreSQL the request's check
    sees nothing and its insert waits on the unique index until that transaction commits (the race itself); on
    SQLite the request waits for the write lock and then sees the name. Either way: 409, naming the task."""
    holder = world.db.engine.connect()
    transaction = holder.begin()
    holder.execute(insert(Task).values(name="racer", labels=["a", "b"], label_descriptions={}, description=""))
    responses: list[Any] = []
    body = {"name": "racer", "labels": ["x", "y"]}
    request = threading.Thread(
        target=lambda: responses.append(app.test_client().post("/v1/tasks", json=body, headers=world.auth(world.admin)))
    )
    request.start()
    if holder.dialect.name == "postgresql":
        _wait_until_a_backend_waits_on_a_lock(world)
    transaction.commit()
    holder.close()
    request.join(timeout=60)
    body = problem(responses[0], 409)
    assert body["detail"] == "task 'racer' already exists"
    with world.db.session() as session:
        assert session.scalars(select(Task.labels).where(Task.name == "racer")).one() == ["a", "b"]


def _wait_until_a_backend_waits_on_a_lock(world: World) -> None:
    with world.db.engine.connect() as conn:
        for _ in range(600):
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = "
                    "current_database()"
                )
            ).scalar()
            if waiting:
                return
            conn.rollback()  # a fresh snapshot of pg_stat_activity
            time.sleep(0.05)
    raise AssertionError("the request never waited on the uncommitted name")


def test_an_integrity_error_anywhere_is_a_409_problem(app: Flask, client: FlaskClient) -> None:
    @app.get("/race")
    def race() -> str:
        raise IntegrityError("INSERT …", {}, Exception("duplicate key value violates unique constraint"))

    body = problem(client.get("/race"), 409)
    assert "INSERT" not in body["detail"] and "duplicate key" not in body["detail"]


# --- the document's rules, enforced ------------------------------------------------------------------------------


def test_an_admin_key_names_the_tenant_it_ingests_for(client: FlaskClient, world: World) -> None:
    """Was: a 422 pointing at a ``tenant`` query parameter that ingestion did not have."""
    body = {"predictions": [prediction("adm-1")]}
    problem(client.post("/v1/predictions", json=body, headers=world.auth(world.admin)), 422, ["query", "tenant"])
    r = client.post("/v1/predictions?tenant=acme", json=body, headers=world.auth(world.admin))
    assert r.status_code == 201
    assert client.get("/v1/predictions/adm-1", headers=world.auth(world.acme_read)).status_code == 200
    fb = {"id": "f-adm", "prediction_id": "adm-1", "label": "card_arrival", "source": "agent"}
    assert client.post("/v1/feedback?tenant=acme", json=fb, headers=world.auth(world.admin)).status_code == 201
    problem(client.post("/v1/predictions?tenant=nobody", json=body, headers=world.auth(world.admin)), 404)
    # a tenant's key may name its own tenant, and no other
    assert client.post("/v1/predictions?tenant=acme", json=body, headers=world.auth(world.acme_rw)).status_code == 200
    problem(client.post("/v1/predictions?tenant=globex", json=body, headers=world.auth(world.acme_rw)), 404)


def test_an_admin_key_names_the_tenant_it_predicts_for_in_the_body(client: FlaskClient, world: World) -> None:
    r = client.post("/v1/predict", json={"task": "intent", "inputs": [{"text": "x"}]}, headers=world.auth(world.admin))
    problem(r, 422, ["tenant"])


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_is_415(client: FlaskClient, world: World, content_type: str | None) -> None:
    headers = {**world.auth(world.admin), **({"Content-Type": content_type} if content_type else {})}
    body = b'{"slug": "plain", "name": "Plain"}'
    problem(client.post("/v1/tenants", data=body, headers=headers), 415)
    ok = {**world.auth(world.admin), "Content-Type": "application/json; charset=utf-8"}
    assert client.post("/v1/tenants", data=body, headers=ok).status_code == 201


def test_a_repeated_query_parameter_is_422(client: FlaskClient, world: World) -> None:
    """The document declares each parameter once; the first of several was silently used."""
    r = client.get("/v1/predictions?limit=1&limit=1000", headers=world.auth(world.acme_read))
    problem(r, 422, ["query", "limit"])


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"warning_margin": False}, ["warning_margin"]),  # a boolean is not a number
        ({"threshold": "0.9"}, ["threshold"]),  # nor is a string
        ({"window_days": "7"}, ["window_days"]),
        ({"window_days": 7.5}, ["window_days"]),
        ({"metric": "f1"}, ["metric"]),
        ({"metric": "recall:nope"}, ["metric"]),
    ],
)
def test_sla_terms_are_the_documented_types(client: FlaskClient, world: World, change: dict, loc: list) -> None:
    terms = {"metric": "accuracy", "threshold": 0.9, "window_days": 7, **change}
    problem(client.put("/v1/slas/acme/intent", json=terms, headers=world.auth(world.admin)), 422, loc)
    ok = {**terms, "warning_margin": 0.02, "threshold": 0.9, "window_days": 7.0, "metric": "recall:card_arrival"}
    assert client.put("/v1/slas/acme/intent", json=ok, headers=world.auth(world.admin)).status_code in (200, 201)


def test_a_confidence_given_as_a_string_is_422(client: FlaskClient, world: World) -> None:
    item = prediction("str-conf", confidence="0.7")
    r = client.post("/v1/predictions", json={"predictions": [item]}, headers=world.auth(world.acme_rw))
    problem(r, 422, ["predictions", 0, "confidence"])


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "example.com", "http://", "http://exa mple.com", "http://a:99999"]
)
def test_webhook_urls_are_http_urls_everywhere(client: FlaskClient, world: World, url: str) -> None:
    """``POST /v1/tenants`` stored any string as the webhook URL."""
    admin = world.auth(world.admin)
    tenant = {"slug": "hooked", "name": "H", "webhook_url": url}
    problem(client.post("/v1/tenants", json=tenant, headers=admin), 422, ["webhook_url"])
    problem(client.put("/v1/tenants/acme/webhook", json={"url": url}, headers=admin), 422, ["url"])
    fine = {"url": "https://hooks.example:8443/in?x=1"}
    assert client.put("/v1/tenants/acme/webhook", json=fine, headers=admin).status_code == 200


@pytest.mark.slow
def test_every_url_the_pattern_admits_is_a_uri() -> None:
    """The document states ``format: uri`` and the pattern; the server checks the pattern, which must imply the
    format (the contract test reads the pattern alone)."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    uri = jsonschema_rs.validator_for({"type": "string", "format": "uri"}, validate_formats=True)

    @hypothesis.settings(max_examples=300, database=None, derandomize=True, deadline=None)
    @hypothesis.given(st.from_regex(URL_PATTERN, fullmatch=True))
    def check(url: str) -> None:
        assert uri.is_valid(url), url
        assert len(url) <= 2000

    check()


def test_task_labels_are_unique_and_descriptions_name_labels(client: FlaskClient, world: World) -> None:
    admin = world.auth(world.admin)
    problem(client.post("/v1/tasks", json={"name": "dup", "labels": ["a", "a"]}, headers=admin), 422, ["labels"])
    body = {"name": "desc", "labels": ["a", "b"], "label_descriptions": {"c": "no such label"}}
    problem(client.post("/v1/tasks", json=body, headers=admin), 422, ["label_descriptions", "c"])


def test_a_review_label_goes_with_relabel_only(client: FlaskClient, world: World) -> None:
    client.post("/v1/predictions", json={"predictions": [prediction("rv")]}, headers=world.auth(world.acme_rw))
    auth = world.auth(world.acme_rw)
    problem(client.post("/v1/review/rv", json={"decision": "keep", "label": "card_arrival"}, headers=auth), 422)
    problem(client.post("/v1/review/rv", json={"decision": "relabel"}, headers=auth), 422, ["label"])
    assert client.post("/v1/review/rv", json={"decision": "keep"}, headers=auth).status_code == 201


def test_the_document_declares_every_error_as_problem_json(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").json
    assert doc["paths"]["/v1/keys"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    key_in = doc["components"]["schemas"]["KeyIn"]
    assert key_in["then"]["properties"]["scopes"]["contains"] == {"const": "admin"}  # no tenant: an admin key
    assert doc["components"]["schemas"]["TaskIn"]["properties"]["labels"]["uniqueItems"] is True
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "default" not in op["responses"], (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (method, path, status)
            if path.startswith("/v1/"):
                assert {"401", "403", "503"} <= set(op["responses"]), (method, path)
            for param in op.get("parameters", []):
                assert param["schema"].get("type") != "null" and "null" not in str(param["schema"]), (path, param)
    tenant = next(p for p in doc["paths"]["/v1/predictions"]["get"]["parameters"] if p["name"] == "tenant")
    assert "admin key" in tenant["description"] and "422" in tenant["description"]
    assert doc["paths"]["/v1/keys/{key_id}"]["delete"]["parameters"][0]["schema"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 2**31 - 1,
    }


def test_the_document_states_the_app_s_own_limits(app: Flask, client: FlaskClient) -> None:
    app.config["FLYWHEEL_MAX_BATCH_ITEMS"] = 50
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    assert schemas["PredictionBatch"]["properties"]["predictions"]["maxItems"] == 50
    assert schemas["PredictRequest"]["properties"]["inputs"]["maxItems"] == 256
