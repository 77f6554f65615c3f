"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against a real server.

One scenario, in order: sign in as admin, see the at-risk tenant on the overview, open it, relabel an item in the
review queue and see the feedback recorded, promote and roll back a model, then sign in with another tenant's read
key and fail to see the first tenant's page. Screenshots of the main pages go to docs/screenshots/.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from flywheel.app import create_app
from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.core.migrate import upgrade
from flywheel.domain.auth import create_key
from flywheel.models.records import Feedback, Prediction, Task, Tenant
from flywheel.models.training import ModelVersion

from support import LABELS
from support.dashboard import (
    BROWSER_TEST,
    CHROMIUM,
    CHROMIUM_ARGS,
    add_model,
    add_predictions,
    add_training_run,
    seed_monitoring,
)

# `make screenshots` points this at docs/screenshots to refresh the README's pictures; a test run writes to a
# temporary folder and leaves the tree clean.
SCREENSHOTS_ENV = "FLYWHEEL_SCREENSHOTS_DIR"

pytestmark = BROWSER_TEST


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the page screenshots go: ``$FLYWHEEL_SCREENSHOTS_DIR`` when set, else a temporary folder."""
    chosen = os.environ.get(SCREENSHOTS_ENV)
    return Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")


@dataclass
class Site:
    url: str
    db: Database
    admin: str
    acme_read: str
    globex_read: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A real server (werkzeug, threaded) on 127.0.0.1 and a free port, over a migrated SQLite file."""
    from werkzeug.serving import make_server

    tmp = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{tmp / 'flywheel.db'}"
    db = Database(url)
    upgrade(db.engine)
    with db.session() as session:
        acme = Tenant(slug="acme", name="Acme Corp")
        globex = Tenant(slug="globex", name="Globex")
        session.add_all([acme, globex, Task(name="intent", labels=LABELS, label_descriptions={}, description="")])
        session.flush()
        admin = create_key(session, tenant=None, scopes=["admin"])[1]
        acme_read = create_key(session, tenant=acme, scopes=["read"])[1]
        globex_read = create_key(session, tenant=globex, scopes=["read"])[1]
    # acme was right until two days ago, then every other label disagreed with the prediction (at risk);
    # globex is always right (met).
    settings = Settings(database_url=url, artifacts_dir=tmp / "artifacts", secret_key="browser-test-secret")
    start = utcnow() - timedelta(hours=120)
    half_hour = timedelta(minutes=30)
    add_predictions(db, "acme", n=144, labels=LABELS, correct_every=1, start=start, step=half_hour, prefix="old")
    add_predictions(db, "acme", n=96, labels=LABELS, correct_every=2, start=start + timedelta(hours=72), step=half_hour)
    add_predictions(db, "globex", n=240, labels=LABELS, correct_every=1, start=start, step=half_hour)
    # Tabular drift only (label mix, confidence, length): text-embedding drift would load the encoder.
    seed_monitoring(db, settings.with_(drift_text_embeddings=False))
    add_model(db, "intent-v1", tenant_slug=None, status="champion")
    v2 = add_model(db, "intent-v2", tenant_slug=None)
    add_training_run(
        db,
        model_id=None,
        status="rejected",
        decision="rejected",
        reasons=["macro_f1 0.84 is below the champion's 0.88 on the holdout"],
    )
    add_training_run(
        db,
        model_id=v2,
        status="succeeded",
        decision="skipped",
        reasons=["passed the gate; waiting for an admin to promote"],
    )
    add_training_run(db, model_id=None, status="running", decision=None, reasons=[])
    app = create_app(settings, db=db)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(f"http://127.0.0.1:{server.server_port}", db, admin, acme_read, globex_read)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        db.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _shot(page, folder: Path, name: str) -> None:
    """A screenshot of the whole page. The viewport is grown to the page's height instead of ``full_page=True``,
    which leaves the sandboxed (out-of-process) report iframe blank."""
    folder.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"]
    height = min(int(page.evaluate("document.documentElement.scrollHeight")), 2000)
    page.set_viewport_size({"width": width, "height": max(height, 900)})
    page.wait_for_timeout(300)  # let plotly and the report re-layout to the new size
    page.screenshot(path=str(folder / f"{name}.png"))
    page.set_viewport_size({"width": width, "height": 900})


def _sign_in(page, site: Site, key: str) -> None:
    page.goto(f"{site.url}/dashboard/")
    assert "/dashboard/login" in page.url  # signed out: sent to the sign-in page
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/dashboard/")


def test_customer_success_walkthrough(site: Site, browser, screenshots: Path) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Sign in.
    page.goto(f"{site.url}/dashboard/login")
    _shot(page, screenshots, "login")
    _sign_in(page, site, site.admin)
    cookie = next(c for c in context.cookies() if c["name"] == "session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    # The overview puts the at-risk tenant first, in words and colour.
    row = page.locator("#overview tbody tr").first
    assert row.get_attribute("data-tenant") == "acme"
    assert row.get_attribute("data-status") == "at_risk"
    assert row.locator("td.sla-status .status").inner_text() == "At risk"
    _shot(page, screenshots, "overview")
    page.click(".filters a[data-filter=at_risk]")
    assert page.locator("#overview tbody tr").count() >= 1
    assert all(
        s in ("at_risk",)
        for s in page.locator("#overview tbody tr").evaluate_all("rows => rows.map(r => r.dataset.status)")
    )

    # Open it: the charts render from the served plotly.js, the drift report is embedded.
    page.click("#overview tbody tr[data-tenant=acme] a")
    page.wait_for_url("**/dashboard/tenants/acme**")
    page.wait_for_selector("#chart-metric[data-rendered=true]")
    page.wait_for_selector("#chart-calibration[data-rendered=true]")
    assert page.locator("#serving-model").inner_text().count("intent-v1") == 1
    # The Evidently report renders inside its sandboxed iframe (its own inline scripts, no network).
    report = page.frame_locator("#drift-report")
    report.locator("[id^=root_] > *").first.wait_for(timeout=60_000)
    assert "Drift" in report.locator("body").inner_text()
    _shot(page, screenshots, "tenant")

    # Relabel an item in the review queue and see the feedback recorded.
    page.click("#tenant-review")
    page.wait_for_selector("#review-queue")
    first = page.locator("#review-queue tbody tr").first
    prediction_id = int(first.get_attribute("data-prediction") or 0)
    first.locator("select[name=label]").select_option("exchange_rate")
    _shot(page, screenshots, "review")
    first.locator("button:has-text('Relabel')").click()
    page.wait_for_selector(".flash-ok")
    assert "relabelled as" in page.locator(".flash-ok").inner_text()
    recorded = page.locator(f"#recent-reviews tr[data-prediction='{prediction_id}']")
    assert "relabel" in recorded.inner_text() and "exchange_rate" in recorded.inner_text()
    with site.db.session() as session:
        fb = session.scalars(
            select(Feedback).where(Feedback.prediction_id == prediction_id, Feedback.source == "reviewer")
        ).one()
        assert (fb.decision, fb.label) == ("relabel", "exchange_rate")
        assert session.get(Prediction, prediction_id).effective_label == "exchange_rate"

    # Promote a candidate (with a confirmation step), then roll back.
    page.click("text=Models & runs")
    page.locator("#models tr[data-version='intent-v2'] a:has-text('Promote')").click()
    assert page.locator("h1").inner_text().startswith("Promote intent-v2")
    assert _status(site, "intent-v2") == "candidate"  # nothing happens before confirming
    page.click("#confirm")
    page.wait_for_selector(".flash-ok")
    assert page.locator("#models tr[data-version='intent-v2']").get_attribute("data-status") == "champion"
    assert _status(site, "intent-v2") == "champion" and _status(site, "intent-v1") == "retired"
    _shot(page, screenshots, "models")
    page.locator("#models tr[data-version='intent-v2'] a:has-text('Roll back')").click()
    page.click("#confirm")
    page.wait_for_selector(".flash-ok")
    assert "intent-v1" in page.locator(".flash-ok").inner_text()
    assert page.locator("#models tr[data-version='intent-v1']").get_attribute("data-status") == "champion"
    assert _status(site, "intent-v1") == "champion" and _status(site, "intent-v2") == "retired"

    # The printable customer report.
    page.goto(f"{site.url}/dashboard/tenants/acme/report")
    page.wait_for_selector("#report-summary")
    _shot(page, screenshots, "report")

    # Sign out; another tenant's read key cannot see acme.
    page.click("#sign-out")
    page.wait_for_url("**/dashboard/login**")
    _sign_in(page, site, site.globex_read)
    assert page.locator("#overview tbody tr[data-tenant=acme]").count() == 0
    response = page.goto(f"{site.url}/dashboard/tenants/acme")
    assert response is not None and response.status == 404
    assert "Acme" not in page.content()
    assert not errors, errors
    context.close()


def _status(site: Site, version: str) -> str:
    with site.db.session() as session:
        return session.scalars(select(ModelVersion.status).where(ModelVersion.version == version)).one()
