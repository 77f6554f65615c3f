"""The dashboard's tenant page shows the data-rights state: sharing on or off, retention, tainted models."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import update

from flywheel.core.db import utcnow
from flywheel.models.training import ModelVersion

from support import World
from support.dashboard import add_model, add_predictions, sign_in


def card(html: str) -> str:
    found = re.search(r'<div class="card" id="data-rights">(.*?)</div>', html, re.S)
    assert found is not None
    return found.group(1)


def test_the_tenant_page_shows_sharing_retention_and_tainted_models(client: FlaskClient, world: World) -> None:
    add_predictions(world.db, "acme", n=3, labels=world.labels)
    add_model(world.db, "intent-shared-1", tenant_slug=None, status="champion")
    add_model(world.db, "intent-globex-1", tenant_slug="globex", status="champion")
    sign_in(client, world.acme_read)
    before = card(client.get("/dashboard/tenants/acme").get_data(as_text=True))
    assert "sharing on" in before and "kept until erased" in before and "data-tainted" not in before

    admin = world.auth(world.admin)
    client.patch("/v1/tenants/acme", json={"share_labels": False, "retention_days": 60}, headers=admin)
    client.patch("/v1/tenants/globex", json={"share_labels": False}, headers=admin)
    with world.db.session() as session:
        session.execute(update(ModelVersion).values(tainted_rows=4, tainted_at=utcnow()))
    after = card(client.get("/dashboard/tenants/acme").get_data(as_text=True))
    assert "sharing off" in after and "older than 60 days" in after
    assert 'data-tainted="intent-shared-1"' in after and "4 erased rows" in after
    assert "intent-globex-1" not in after  # another tenant's variant is not acme's business
    models = client.get("/dashboard/models").get_data(as_text=True)
    assert "tainted (4)" in models
