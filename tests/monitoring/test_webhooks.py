"""Webhooks to a real local HTTP receiver: one signed POST per transition, retries with backoff, alerts kept."""

from __future__ import annotations

from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy import select

from flywheel.core.config import Settings
from flywheel.models.slas import Alert, WebhookDelivery
from flywheel.monitoring.alerts import SIGNATURE_HEADER, sign, verify
from flywheel.monitoring.jobs import run_monitoring

from support import World
from support.monitoring import NOW, add_predictions, labeled, webhook_receiver

SLA = {"metric": "accuracy", "threshold": 0.9, "window_days": 7, "min_labeled": 100, "warning_margin": 0.02}


def setup_sla(client: FlaskClient, world: World, url: str) -> str:
    admin = world.auth(world.admin)
    assert client.put("/v1/slas/acme/intent", json=SLA, headers=admin).status_code == 201
    assert client.put("/v1/tenants/acme/webhook", json={"url": "ftp://x"}, headers=admin).status_code == 422
    hook = client.put("/v1/tenants/acme/webhook", json={"url": url}, headers=admin)
    assert hook.status_code == 200
    secret = hook.get_json()["secret"]
    assert secret and len(secret) >= 32
    assert (
        client.put("/v1/tenants/acme/webhook", json={"url": url}, headers=world.auth(world.acme_rw)).status_code == 403
    )
    return str(secret)


def quick(settings: Settings, **changes: object) -> Settings:
    return settings.with_(drift_text_embeddings=False, webhook_backoff_s=0.01, webhook_timeout_s=5.0, **changes)


def test_one_signed_post_per_transition(client: FlaskClient, world: World, settings: Settings) -> None:
    with webhook_receiver() as receiver:
        secret = setup_sla(client, world, receiver.url)
        add_predictions(world.db, "acme", labeled(300, 240), prefix="bad")  # 0.80: breached
        for minutes in (0, 5, 10):  # three evaluations, one transition
            run_monitoring(world.db, quick(settings), now=NOW + timedelta(minutes=minutes), drift=False)
        assert len(receiver.requests) == 1
        first = receiver.requests[0]
        assert verify(secret, first["body"], first["headers"][SIGNATURE_HEADER.lower()])
        assert first["headers"][SIGNATURE_HEADER.lower()] == sign(secret, first["body"])
        assert not verify("another-secret-entirely-000000", first["body"], first["headers"][SIGNATURE_HEADER.lower()])
        assert first["headers"]["x-flywheel-event"] == "sla.status_changed"
        assert first["json"]["to"] == "breached" and first["json"]["tenant"] == "acme"
        assert first["json"]["value"] == 0.8

        add_predictions(world.db, "acme", labeled(3000, 3000), prefix="good")  # now 0.98: met
        run_monitoring(world.db, quick(settings), now=NOW + timedelta(minutes=15), drift=False)
        run_monitoring(world.db, quick(settings), now=NOW + timedelta(minutes=20), drift=False)
        assert len(receiver.requests) == 2
        second = receiver.requests[1]
        assert (second["json"]["from"], second["json"]["to"]) == ("breached", "met")
        assert verify(secret, second["body"], second["headers"][SIGNATURE_HEADER.lower()])
    alerts = client.get("/v1/alerts", headers=world.auth(world.acme_read)).get_json()["items"]
    assert [a["delivery_status"] for a in alerts] == ["delivered", "delivered"]
    assert [a["attempts"] for a in alerts] == [1, 1]


def test_failing_receiver_is_retried_and_the_alert_is_kept(
    client: FlaskClient, world: World, settings: Settings
) -> None:
    with webhook_receiver(codes=[500]) as receiver:
        setup_sla(client, world, receiver.url)
        add_predictions(world.db, "acme", labeled(300, 240))
        run_monitoring(world.db, quick(settings, webhook_max_attempts=3), now=NOW, drift=False)
        assert len(receiver.requests) == 3  # every attempt reached the receiver
        bodies = {r["body"] for r in receiver.requests}
        assert len(bodies) == 1  # the same signed body each time
    alerts = client.get("/v1/alerts", headers=world.auth(world.acme_read)).get_json()["items"]
    assert len(alerts) == 1
    assert alerts[0]["delivery_status"] == "failed" and alerts[0]["attempts"] == 3
    assert alerts[0]["to_status"] == "breached"
    with world.db.session() as session:
        attempts = session.execute(select(WebhookDelivery.attempt, WebhookDelivery.status_code)).all()
    assert sorted(attempts) == [(1, 500), (2, 500), (3, 500)]


def test_receiver_recovering_mid_retries_gets_the_alert(client: FlaskClient, world: World, settings: Settings) -> None:
    with webhook_receiver(codes=[503, 502, 200]) as receiver:
        setup_sla(client, world, receiver.url)
        add_predictions(world.db, "acme", labeled(300, 240))
        run_monitoring(world.db, quick(settings, webhook_max_attempts=5), now=NOW, drift=False)
        assert len(receiver.requests) == 3
    with world.db.session() as session:
        alert = session.scalars(select(Alert)).one()
        assert alert.delivery_status == "delivered" and alert.attempts == 3 and alert.delivered_at is not None


def test_unreachable_receiver_is_recorded(client: FlaskClient, world: World, settings: Settings) -> None:
    with webhook_receiver() as receiver:
        url = receiver.url
    setup_sla(client, world, url)  # the server is gone: connection refused
    add_predictions(world.db, "acme", labeled(300, 240))
    run_monitoring(world.db, quick(settings, webhook_max_attempts=2), now=NOW, drift=False)
    with world.db.session() as session:
        alert = session.scalars(select(Alert)).one()
        errors = list(session.scalars(select(WebhookDelivery.error)))
    assert alert.delivery_status == "failed" and alert.attempts == 2
    assert len(errors) == 2 and all(e and "Connection" in e for e in errors)
