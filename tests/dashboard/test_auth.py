"""Dashboard sign-in, session cookie, expiry, CSRF refusal and tenant scoping of every page (server side)."""

from __future__ import annotations

import base64
import json
import time
import zlib

import pytest
from sqlalchemy import func, select

from flywheel.core.db import utcnow
from flywheel.dashboard.security import SESSION_SIGNED_IN_AT
from flywheel.models.records import ApiKey, Feedback
from flywheel.models.training import ModelVersion

from support import World
from support.dashboard import add_model, add_predictions, add_training_run, csrf_from, page_token, sign_in

# Every page that shows data, with the tenant in the path where it has one.
TENANT_PAGES = [
    "/dashboard/tenants/{t}",
    "/dashboard/tenants/{t}?task=intent",
    "/dashboard/tenants/{t}/review",
    "/dashboard/tenants/{t}/report",
    "/dashboard/tenants/{t}/report.csv",
]
OTHER_PAGES = ["/dashboard/", "/dashboard/review", "/dashboard/models"]


def _session_payload(cookie_value: str) -> dict:
    """The (signed, not encrypted) payload of Flask's session cookie: ``[.]base64(json).timestamp.signature``."""
    compressed = cookie_value.startswith(".")
    raw = cookie_value.lstrip(".").split(".")[0]
    decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    return json.loads(zlib.decompress(decoded) if compressed else decoded)


def test_login_page_has_an_api_key_field(client, world: World):
    r = client.get("/dashboard/login")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert 'name="api_key"' in html and 'type="password"' in html
    assert 'name="csrf_token"' in html


@pytest.mark.parametrize(
    "path",
    [p.format(t="acme") for p in TENANT_PAGES]
    + OTHER_PAGES
    + ["/dashboard/reports/1", "/dashboard/models/1/promote", "/dashboard/models/rollback?task=intent"],
)
def test_every_page_redirects_to_login_when_signed_out(client, world: World, path: str):
    r = client.get(path)
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/dashboard/login")
    assert "next=" in r.headers["Location"]


def test_sign_in_keeps_a_signed_httponly_samesite_cookie_without_the_key(client, world: World):
    page = client.get("/dashboard/login")
    r = client.post(
        "/dashboard/login",
        data={"api_key": world.acme_read, "csrf_token": csrf_from(page.get_data(as_text=True))},
    )
    assert r.status_code == 302 and r.headers["Location"] == "/dashboard/"
    cookie = next(h for h in r.headers.getlist("Set-Cookie") if h.startswith("session="))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Expires=" in cookie
    value = cookie.split(";")[0].removeprefix("session=")
    assert world.acme_read not in value
    payload = _session_payload(value)
    assert world.acme_read not in json.dumps(payload)
    assert client.get("/dashboard/").status_code == 200


def test_sign_in_returns_to_the_page_asked_for(client, world: World):
    r = client.get("/dashboard/models")
    login_url = r.headers["Location"]
    page = client.get(login_url)
    html = page.get_data(as_text=True)
    assert 'name="next" value="/dashboard/models"' in html
    r = client.post(
        "/dashboard/login",
        data={"api_key": world.admin, "csrf_token": csrf_from(html), "next": "/dashboard/models"},
    )
    assert r.headers["Location"] == "/dashboard/models"


def test_sign_in_never_redirects_off_site(client, world: World):
    page = client.get("/dashboard/login")
    r = client.post(
        "/dashboard/login",
        data={
            "api_key": world.admin,
            "csrf_token": csrf_from(page.get_data(as_text=True)),
            "next": "https://evil.example/dashboard",
        },
    )
    assert r.headers["Location"] == "/dashboard/"


@pytest.mark.parametrize("key_name", ["unknown", "acme_ingest"])
def test_unknown_and_write_only_keys_cannot_sign_in(client, world: World, key_name: str):
    key = "fw_nope_" + "x" * 40 if key_name == "unknown" else getattr(world, key_name)
    page = client.get("/dashboard/login")
    r = client.post("/dashboard/login", data={"api_key": key, "csrf_token": csrf_from(page.get_data(as_text=True))})
    assert r.status_code == 401
    assert client.get("/dashboard/").status_code == 302


def test_sign_out_ends_the_session(client, world: World):
    sign_in(client, world.acme_read)
    r = client.post("/dashboard/logout", data={"csrf_token": page_token(client)})
    assert r.status_code == 302
    assert client.get("/dashboard/").status_code == 302


# --- CSRF ---------------------------------------------------------------------------------------------------------


def test_login_without_csrf_token_is_refused(client, world: World):
    client.get("/dashboard/login")
    r = client.post("/dashboard/login", data={"api_key": world.admin})
    assert r.status_code == 400
    assert client.get("/dashboard/").status_code == 302  # not signed in


def test_logout_with_a_wrong_token_is_refused(client, world: World):
    sign_in(client, world.acme_read)
    r = client.post("/dashboard/logout", data={"csrf_token": "forged"})
    assert r.status_code == 400
    assert client.get("/dashboard/").status_code == 200  # still signed in


def test_review_decision_without_csrf_is_refused_and_records_nothing(client, world: World):
    ids = add_predictions(world.db, "acme", n=4, labels=world.labels)
    sign_in(client, world.acme_rw)
    before = _reviewer_feedback(world)
    for data in ({"decision": "discard"}, {"decision": "discard", "csrf_token": "x" * 43}):
        r = client.post(f"/dashboard/tenants/acme/review/{ids[0]}", data=data)
        assert r.status_code == 400
    assert _reviewer_feedback(world) == before


def test_promote_without_csrf_is_refused_and_changes_nothing(client, world: World):
    model_id = add_model(world.db, "intent-v1", tenant_slug=None)
    sign_in(client, world.admin)
    r = client.post(f"/dashboard/models/{model_id}/promote", data={"confirm": "yes"})
    assert r.status_code == 400
    with world.db.session() as session:
        assert session.get(ModelVersion, model_id).status == "candidate"


def test_a_token_from_another_session_is_refused(app, world: World):
    model_id = add_model(world.db, "intent-v1", tenant_slug=None)
    attacker, victim = app.test_client(), app.test_client()
    sign_in(attacker, world.admin)
    sign_in(victim, world.admin)
    stolen = page_token(attacker)
    r = victim.post(f"/dashboard/models/{model_id}/promote", data={"confirm": "yes", "csrf_token": stolen})
    assert r.status_code == 400
    assert page_token(victim) != stolen


def test_the_csrf_token_changes_at_sign_in(client, world: World):
    before = csrf_from(client.get("/dashboard/login").get_data(as_text=True))
    sign_in(client, world.admin)
    assert page_token(client) != before


# --- session expiry -----------------------------------------------------------------------------------------------


def test_session_expires_a_fixed_time_after_sign_in(client, world: World, app):
    sign_in(client, world.acme_read)
    assert client.get("/dashboard/").status_code == 200
    lifetime = app.extensions["flywheel"]["settings"].dashboard_session_minutes * 60
    with client.session_transaction() as sess:
        sess[SESSION_SIGNED_IN_AT] = int(time.time()) - lifetime + 120
    assert client.get("/dashboard/").status_code == 200  # still inside the lifetime
    with client.session_transaction() as sess:
        sess[SESSION_SIGNED_IN_AT] = int(time.time()) - lifetime - 1
    r = client.get("/dashboard/")
    assert r.status_code == 302 and r.headers["Location"].startswith("/dashboard/login")
    with client.session_transaction() as sess:
        assert "dashboard_key_id" not in sess  # the stale session was cleared, not just refused once


def test_session_lifetime_is_configurable(settings, db, world: World):
    from flywheel.app import create_app

    app = create_app(settings.with_(dashboard_session_minutes=5), db=db)
    client = app.test_client()
    sign_in(client, world.acme_read)
    with client.session_transaction() as sess:
        sess[SESSION_SIGNED_IN_AT] = int(time.time()) - 6 * 60
    assert client.get("/dashboard/").status_code == 302


def test_a_revoked_key_ends_its_sessions(client, world: World):
    sign_in(client, world.acme_read)
    with world.db.session() as session:
        for row in session.scalars(select(ApiKey).where(ApiKey.tenant_id.is_not(None))):
            row.revoked_at = utcnow()
    assert client.get("/dashboard/").status_code == 302


# --- tenant scoping -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", TENANT_PAGES)
def test_a_read_key_sees_its_own_tenant_pages(client, world: World, template: str):
    add_predictions(world.db, "acme", n=6, labels=world.labels)
    sign_in(client, world.acme_read)
    r = client.get(template.format(t="acme"))
    assert r.status_code == 200, r.get_data(as_text=True)[:500]


@pytest.mark.parametrize("template", TENANT_PAGES)
def test_another_tenants_pages_answer_404_like_a_missing_tenant(client, world: World, template: str):
    add_predictions(world.db, "globex", n=6, labels=world.labels)
    sign_in(client, world.acme_read)
    other = client.get(template.format(t="globex"))
    missing = client.get(template.format(t="nosuchtenant"))
    assert other.status_code == 404 and missing.status_code == 404
    assert "globex text" not in other.get_data(as_text=True)
    assert other.get_data(as_text=True).replace("globex", "X") == missing.get_data(as_text=True).replace(
        "nosuchtenant", "X"
    )


def test_admin_sees_every_tenant(client, world: World):
    add_predictions(world.db, "acme", n=3, labels=world.labels)
    add_predictions(world.db, "globex", n=3, labels=world.labels)
    sign_in(client, world.admin)
    html = client.get("/dashboard/").get_data(as_text=True)
    assert 'data-tenant="acme"' in html and 'data-tenant="globex"' in html
    for template in TENANT_PAGES:
        assert client.get(template.format(t="globex")).status_code == 200


def test_overview_and_review_index_show_only_the_read_keys_tenant(client, world: World):
    add_predictions(world.db, "acme", n=3, labels=world.labels)
    add_predictions(world.db, "globex", n=3, labels=world.labels)
    sign_in(client, world.acme_read)
    html = client.get("/dashboard/").get_data(as_text=True)
    assert 'data-tenant="acme"' in html and 'data-tenant="globex"' not in html
    r = client.get("/dashboard/review")
    assert r.status_code == 302 and r.headers["Location"].startswith("/dashboard/tenants/acme/review")


def test_review_decision_on_another_tenants_prediction_is_404(client, world: World):
    globex_ids = add_predictions(world.db, "globex", n=2, labels=world.labels)
    add_predictions(world.db, "acme", n=2, labels=world.labels)
    sign_in(client, world.acme_rw)
    token = page_token(client)
    # Through the other tenant's URL, and smuggled through one's own URL.
    for path in (
        f"/dashboard/tenants/globex/review/{globex_ids[0]}",
        f"/dashboard/tenants/acme/review/{globex_ids[0]}",
    ):
        r = client.post(path, data={"decision": "discard", "csrf_token": token})
        assert r.status_code == 404
    assert _reviewer_feedback(world) == 0


def test_models_page_hides_other_tenants_variants(client, world: World):
    add_model(world.db, "intent-v1", tenant_slug=None, status="champion")
    add_model(world.db, "intent@globex-v1", tenant_slug="globex", status="champion")
    add_model(world.db, "intent@acme-v1", tenant_slug="acme")
    add_training_run(
        world.db,
        model_id=None,
        status="rejected",
        decision="rejected",
        reasons=["tenant globex: accuracy fell 4 points", "tenant acme: within tolerance"],
    )
    sign_in(client, world.acme_read)
    html = client.get("/dashboard/models").get_data(as_text=True)
    assert "tenant acme: within tolerance" in html and "tenant globex" not in html
    assert "intent-v1" in html and "intent@acme-v1" in html
    assert "intent@globex-v1" not in html
    assert "Promote…" not in html  # no admin actions for a read key


def test_promote_and_rollback_are_admin_only(client, world: World):
    model_id = add_model(world.db, "intent-v1", tenant_slug=None)
    sign_in(client, world.acme_read)
    token = page_token(client)
    assert client.get(f"/dashboard/models/{model_id}/promote").status_code == 403
    r = client.post(f"/dashboard/models/{model_id}/promote", data={"confirm": "yes", "csrf_token": token})
    assert r.status_code == 403
    r = client.post("/dashboard/models/rollback", data={"task": "intent", "confirm": "yes", "csrf_token": token})
    assert r.status_code == 403
    with world.db.session() as session:
        assert session.get(ModelVersion, model_id).status == "candidate"


def _reviewer_feedback(world: World) -> int:
    with world.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Feedback).where(Feedback.source == "reviewer")))
