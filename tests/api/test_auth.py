"""Auth and tenancy: 401 vs 403, keys shown once and stored hashed, and tenants walled off on every endpoint."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from flywheel.app import create_app
from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.domain.auth import hash_key
from flywheel.models.records import ApiKey

from support import World, prediction


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/v1/predictions"),
        ("post", "/v1/feedback"),
        ("get", "/v1/predictions"),
        ("get", "/v1/predictions/p1"),
        ("get", "/v1/tasks"),
        ("post", "/v1/tasks"),
        ("get", "/v1/tenants"),
        ("post", "/v1/keys"),
    ],
)
def test_missing_unknown_and_malformed_keys_are_401(client, world: World, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer fw_nope_nope"}, {"Authorization": "Basic abc"}):
        r = getattr(client, method)(path, headers=headers, json={})
        assert r.status_code == 401, (path, headers)
        assert r.content_type == "application/problem+json"
        assert "WWW-Authenticate" in r.headers


@pytest.mark.parametrize(
    ("key", "method", "path"),
    [
        ("acme_read", "post", "/v1/predictions"),
        ("acme_read", "post", "/v1/feedback"),
        ("acme_ingest", "get", "/v1/predictions"),
        ("acme_ingest", "get", "/v1/predictions/p1"),
        ("acme_rw", "post", "/v1/tasks"),
        ("acme_rw", "get", "/v1/tenants"),
        ("acme_rw", "post", "/v1/keys"),
        ("acme_rw", "delete", "/v1/keys/1"),
    ],
)
def test_a_key_without_the_scope_is_403(client, world: World, key: str, method: str, path: str) -> None:
    r = getattr(client, method)(path, headers=world.auth(getattr(world, key)), json={})
    assert r.status_code == 403
    assert r.content_type == "application/problem+json"


def test_revoked_key_is_401_and_keys_are_stored_only_as_hashes(client, world: World) -> None:
    r = client.post("/v1/keys", json={"tenant": "acme", "scopes": ["read"]}, headers=world.auth(world.admin))
    assert r.status_code == 201
    secret, key_id = r.json["key"], r.json["id"]
    assert len(secret) > 40 and secret.startswith("fw_")
    with world.db.session() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.id == key_id))
        assert row is not None and row.key_hash == hash_key(secret) and secret not in row.key_hash
    assert client.get("/v1/tasks", headers=world.auth(secret)).status_code == 200
    listed = client.get("/v1/keys", headers=world.auth(world.admin)).json["items"]
    assert all("key" not in k for k in listed)
    assert client.delete(f"/v1/keys/{key_id}", headers=world.auth(world.admin)).status_code == 200
    assert client.get("/v1/tasks", headers=world.auth(secret)).status_code == 401


def test_a_process_trusts_a_key_it_has_seen_for_key_cache_seconds_and_drops_one_it_revokes(
    db: Database, world: World, settings: Settings
) -> None:
    client = create_app(settings.with_(key_cache_seconds=60), db=db).test_client()
    reader, admin = world.auth(world.acme_read), world.auth(world.admin)
    assert client.get("/v1/tasks", headers=reader).status_code == 200
    # Revoked by another process (here: straight in the database). This one trusts what it saw, up to a minute here.
    with db.session() as session:
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(world.acme_read)).values(revoked_at=utcnow()))
    assert client.get("/v1/tasks", headers=reader).status_code == 200
    uncached = create_app(settings.with_(key_cache_seconds=0), db=db).test_client()
    assert uncached.get("/v1/tasks", headers=reader).status_code == 401  # no cache: seen at once
    # Revoked through this process's API: dropped at once, whatever the cache's lifetime.
    r = client.post("/v1/keys", json={"tenant": "acme", "scopes": ["read"]}, headers=admin)
    secret, key_id = r.json["key"], r.json["id"]
    assert client.get("/v1/tasks", headers=world.auth(secret)).status_code == 200
    assert client.delete(f"/v1/keys/{key_id}", headers=admin).status_code == 200
    assert client.get("/v1/tasks", headers=world.auth(secret)).status_code == 401


def test_tenant_b_cannot_read_or_touch_tenant_a_predictions(client, world: World) -> None:
    a, b = world.auth(world.acme_rw), world.auth(world.globex_rw)
    assert client.post("/v1/predictions", json={"predictions": [prediction("shared-id")]}, headers=a).status_code == 201
    assert client.post("/v1/predictions", json={"predictions": [prediction("a-only")]}, headers=a).status_code == 201
    # reading by id: another tenant's prediction answers exactly like one that does not exist
    other = client.get("/v1/predictions/a-only", headers=b)
    missing = client.get("/v1/predictions/never-existed", headers=b)
    assert other.status_code == missing.status_code == 404
    assert other.json["title"] == missing.json["title"]
    # listing shows only the caller's own predictions
    assert client.get("/v1/predictions", headers=b).json["items"] == []
    # feedback on another tenant's prediction: the same answer as for an unknown prediction (422 naming the index,
    # as API.md fixes for batches), and nothing is stored
    fb = {"feedback": [{"id": "f1", "prediction_id": "a-only", "label": "card_arrival", "source": "end_user"}]}
    r = client.post("/v1/feedback", json=fb, headers=b)
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["feedback", 0, "prediction_id"]
    assert r.json["errors"][0]["msg"] == "prediction 'a-only' does not exist"
    # client ids are per tenant: globex may use the same id for its own prediction, which stays separate
    assert (
        client.post(
            "/v1/predictions",
            json={"predictions": [prediction("shared-id", label="exchange_rate", probabilities=None, confidence=0.9)]},
            headers=b,
        ).status_code
        == 201
    )
    assert client.get("/v1/predictions/shared-id", headers=a).json["label"] == "card_arrival"
    assert client.get("/v1/predictions/shared-id", headers=b).json["label"] == "exchange_rate"
    # feedback ids are per tenant too, and globex feedback lands on globex's prediction only
    fb_b = {"feedback": [{"id": "f1", "prediction_id": "shared-id", "label": "card_linking", "source": "agent"}]}
    assert client.post("/v1/feedback", json=fb_b, headers=b).status_code == 201
    assert client.get("/v1/predictions/shared-id", headers=a).json["feedback"] == []


def test_a_tenant_cannot_name_another_tenant_in_the_query(client, world: World) -> None:
    client.post("/v1/predictions", json={"predictions": [prediction("p1")]}, headers=world.auth(world.acme_rw))
    r = client.get("/v1/predictions/p1?tenant=acme", headers=world.auth(world.globex_rw))
    assert r.status_code == 404
    r = client.get("/v1/predictions?tenant=acme", headers=world.auth(world.globex_rw))
    assert r.status_code == 404


def test_admin_reads_any_tenant_by_naming_it(client, world: World) -> None:
    client.post("/v1/predictions", json={"predictions": [prediction("p1")]}, headers=world.auth(world.acme_rw))
    r = client.get("/v1/predictions/p1?tenant=acme", headers=world.auth(world.admin))
    assert r.status_code == 200
    r = client.get("/v1/predictions/p1", headers=world.auth(world.admin))
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["query", "tenant"]
    assert client.get("/v1/predictions/p1?tenant=globex", headers=world.auth(world.admin)).status_code == 404


def test_tasks_and_tenants_admin_flow(client, world: World) -> None:
    admin = world.auth(world.admin)
    body = {
        "name": "moderation",
        "labels": ["ok", "spam", "abuse"],
        "description": "d",
        "label_descriptions": {"spam": "unsolicited ads"},
    }
    r = client.post("/v1/tasks", json=body, headers=admin)
    assert r.status_code == 201 and r.json["labels"] == ["ok", "spam", "abuse"]
    assert client.post("/v1/tasks", json=body, headers=admin).status_code == 409
    bad = client.post("/v1/tasks", json={"name": "x", "labels": ["a", "a"]}, headers=admin)
    assert bad.status_code == 422 and bad.json["errors"][0]["loc"] == ["labels"]
    bad = client.post("/v1/tasks", json={**body, "name": "y", "label_descriptions": {"nope": "?"}}, headers=admin)
    assert bad.status_code == 422
    assert client.get("/v1/tasks/moderation", headers=world.auth(world.acme_read)).json["name"] == "moderation"
    assert client.get("/v1/tasks/nope", headers=world.auth(world.acme_read)).status_code == 404
    r = client.post("/v1/tenants", json={"slug": "initech", "name": "Initech"}, headers=admin)
    assert r.status_code == 201
    assert client.post("/v1/tenants", json={"slug": "initech", "name": "again"}, headers=admin).status_code == 409
    assert {t["slug"] for t in client.get("/v1/tenants", headers=admin).json["items"]} == {"acme", "globex", "initech"}
