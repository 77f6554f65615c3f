"""Dashboard pages over real data: what each page shows, the actions it takes, and the SQL aggregates behind it."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from flywheel.dashboard import queries
from flywheel.models.records import Feedback, Prediction, Task, Tenant
from flywheel.models.training import ModelVersion

from support import World
from support.dashboard import (
    add_evaluation,
    add_model,
    add_predictions,
    add_training_run,
    page_token,
    put_sla,
    sign_in,
)


def test_plotly_is_served_from_the_installed_package(client, world: World):
    import plotly

    r = client.get("/dashboard/vendor/plotly.min.js")
    assert r.status_code == 200
    assert r.mimetype == "text/javascript"
    assert plotly.__version__ in r.get_data(as_text=True)[:2000] or len(r.get_data()) > 1_000_000
    r.close()


def test_pages_forbid_inline_scripts_and_framing(client, world: World):
    sign_in(client, world.admin)
    r = client.get("/dashboard/")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in csp
    assert r.headers["Cache-Control"] == "no-store"
    assert "<script>" not in r.get_data(as_text=True)  # no inline script anywhere on the page


def test_tenant_page_draws_charts_from_server_built_figures(client, world: World):
    add_predictions(world.db, "acme", n=40, labels=world.labels)
    add_model(world.db, "intent-v1", tenant_slug=None, status="champion")
    sign_in(client, world.acme_read)
    html = client.get("/dashboard/tenants/acme").get_data(as_text=True)
    assert 'data-chart="chart-calibration"' in html
    assert "/dashboard/vendor/plotly.min.js" in html
    assert "intent-v1" in html  # the serving model
    assert "</script" not in html.split('data-chart="chart-calibration">')[1].split("</script>")[0]


def test_calibration_bins_are_aggregated_in_sql(world: World):
    add_predictions(world.db, "acme", n=100, labels=world.labels, correct_every=2)
    with world.db.session() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == "acme"))
        task = session.scalar(select(Task).where(Task.name == "intent"))
        now = datetime.now(UTC)
        bins = queries.calibration_bins(
            session, tenant_id=tenant.id, task_id=task.id, since=now - timedelta(days=30), until=now
        )
        rows = list(
            session.scalars(select(Prediction).where(Prediction.tenant_id == tenant.id, Prediction.task_id == task.id))
        )
    assert sum(b.count for b in bins) == 100
    # Recompute one bin by hand from the rows.
    top = [p for p in rows if min(int(p.confidence * 10), 9) == 9]
    top_bin = next(b for b in bins if abs(b.confidence - sum(p.confidence for p in top) / len(top)) < 1e-9)
    assert top_bin.count == len(top)
    assert abs(top_bin.accuracy - sum(p.effective_label == p.label for p in top) / len(top)) < 1e-9


def test_review_relabel_is_recorded_as_reviewer_feedback(client, world: World):
    ids = add_predictions(world.db, "acme", n=10, labels=world.labels, correct_every=2)
    sign_in(client, world.acme_rw)
    html = client.get("/dashboard/tenants/acme/review?task=intent").get_data(as_text=True)
    assert 'id="review-queue"' in html
    target = ids[1]  # odd index: the given label disagrees with the prediction, so it is in the queue
    assert f'data-prediction="{target}"' in html
    r = client.post(
        f"/dashboard/tenants/acme/review/{target}",
        data={"decision": "relabel", "label": "exchange_rate", "note": "checked", "csrf_token": page_token(client)},
    )
    assert r.status_code == 302
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "relabelled as" in page
    with world.db.session() as session:
        fb = session.scalars(select(Feedback).where(Feedback.source == "reviewer")).one()
        assert (fb.prediction_id, fb.decision, fb.label, fb.note) == (target, "relabel", "exchange_rate", "checked")
        assert session.get(Prediction, target).effective_label == "exchange_rate"


def test_review_rejects_a_label_outside_the_task_and_read_only_keys(client, world: World):
    ids = add_predictions(world.db, "acme", n=4, labels=world.labels)
    sign_in(client, world.acme_rw)
    r = client.post(
        f"/dashboard/tenants/acme/review/{ids[1]}",
        data={"decision": "relabel", "label": "not-a-label", "csrf_token": page_token(client)},
    )
    assert r.status_code == 302
    reader = client.application.test_client()
    sign_in(reader, world.acme_read)
    r = reader.post(
        f"/dashboard/tenants/acme/review/{ids[1]}", data={"decision": "discard", "csrf_token": page_token(reader)}
    )
    assert r.status_code == 403
    with world.db.session() as session:
        assert session.scalars(select(Feedback).where(Feedback.source == "reviewer")).first() is None


def test_promote_asks_for_confirmation_then_promotes(client, world: World):
    v1 = add_model(world.db, "intent-v1", tenant_slug=None, status="champion")
    v2 = add_model(world.db, "intent-v2", tenant_slug=None)
    sign_in(client, world.admin)
    r = client.get(f"/dashboard/models/{v2}/promote")
    assert r.status_code == 200 and "Yes, promote intent-v2" in r.get_data(as_text=True)
    token = page_token(client)
    r = client.post(f"/dashboard/models/{v2}/promote", data={"csrf_token": token})  # no confirm=yes
    assert r.status_code == 200
    assert _statuses(world) == {"intent-v1": "champion", "intent-v2": "candidate"}
    r = client.post(f"/dashboard/models/{v2}/promote", data={"csrf_token": token, "confirm": "yes"})
    assert r.status_code == 302
    assert _statuses(world) == {"intent-v1": "retired", "intent-v2": "champion"}
    r = client.get("/dashboard/models/rollback?task=intent")
    assert "intent-v1" in r.get_data(as_text=True)  # the confirmation names what it restores
    r = client.post("/dashboard/models/rollback", data={"task": "intent", "confirm": "yes", "csrf_token": token})
    assert r.status_code == 302
    assert _statuses(world) == {"intent-v1": "champion", "intent-v2": "retired"}
    del v1


def test_rollback_with_nothing_to_restore_is_a_409_page(client, world: World):
    add_model(world.db, "intent-v1", tenant_slug=None, status="champion")
    sign_in(client, world.admin)
    r = client.post(
        "/dashboard/models/rollback", data={"task": "intent", "confirm": "yes", "csrf_token": page_token(client)}
    )
    assert r.status_code == 409
    assert "text/html" in r.content_type
    assert _statuses(world) == {"intent-v1": "champion"}


def test_models_page_shows_runs_with_gate_decision_and_reasons(client, world: World):
    model_id = add_model(world.db, "intent-v2", tenant_slug=None)
    add_training_run(
        world.db,
        model_id=model_id,
        status="rejected",
        decision="rejected",
        reasons=["accuracy 0.86 < champion 0.88 - 0.01"],
        gate={
            "paired": PAIRED,
            "candidates": [
                {"rung": "few_shot", "value": 0.86, "verdict": "rejected", "chosen": True, "paired": PAIRED}
            ],
        },
    )
    add_training_run(world.db, model_id=None, status="running", decision=None, reasons=[])
    sign_in(client, world.acme_read)
    html = client.get("/dashboard/models").get_data(as_text=True)
    assert 'data-status="rejected"' in html and "accuracy 0.86 &lt; champion 0.88 - 0.01" in html
    assert 'data-status="running"' in html and "epoch 2 of 3" in html
    # The paired interval, overall and for the reader's own tenant only.
    assert "accuracy -0.020 [-0.060, +0.015] · n=200" in html
    assert "acme: -0.040 [-0.100, +0.010] · n=120" in html and "globex" not in html


PAIRED = {
    "metric": "accuracy",
    "difference": -0.02,
    "ci_low": -0.06,
    "ci_high": 0.015,
    "n": 200,
    "tenants": {
        "acme": {"metric": "accuracy", "difference": -0.04, "ci_low": -0.1, "ci_high": 0.01, "n": 120},
        "globex": {"metric": "accuracy", "difference": 0.01, "ci_low": -0.03, "ci_high": 0.05, "n": 80},
    },
}


def test_report_csv_counts_match_the_rows(client, world: World):
    start = datetime(2026, 11, 1, 6, tzinfo=UTC)
    add_predictions(world.db, "acme", n=48, labels=world.labels, correct_every=3, labeled_every=2, start=start)
    add_predictions(world.db, "globex", n=24, labels=world.labels, start=start)
    sign_in(client, world.acme_read)
    r = client.get("/dashboard/tenants/acme/report.csv?start=2026-11-01&end=2026-11-03")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert 'filename="flywheel-sla-acme-2026-11-01-2026-11-03.csv"' in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert {row["tenant"] for row in rows} == {"acme"}
    # 48 hourly predictions from 06:00 on Nov 1: 18 that day, 24 on Nov 2, 6 on Nov 3.
    by_day = {row["date"]: row for row in rows}
    assert [int(by_day[d]["predictions"]) for d in ("2026-11-01", "2026-11-02", "2026-11-03")] == [18, 24, 6]
    with world.db.session() as session:
        preds = list(session.scalars(select(Prediction).join(Tenant).where(Tenant.slug == "acme")))
    for day, row in by_day.items():
        mine = [p for p in preds if p.created_at.date().isoformat() == day]
        labeled = [p for p in mine if p.effective_label is not None]
        assert int(row["labeled"]) == len(labeled)
        correct = sum(p.effective_label == p.label for p in labeled)
        assert abs(float(row["accuracy_on_labeled"]) - correct / len(labeled)) < 1e-5
    html = client.get("/dashboard/tenants/acme/report?start=2026-11-01&end=2026-11-03").get_data(as_text=True)
    assert 'id="report-summary"' in html and "48" in html
    assert client.get("/dashboard/tenants/acme/report?start=nonsense").status_code == 400


def test_overview_filters_by_status(client, world: World):
    add_predictions(world.db, "acme", n=3, labels=world.labels)
    sign_in(client, world.admin)
    html = client.get("/dashboard/?status=no_sla").get_data(as_text=True)
    assert 'data-tenant="acme"' in html
    html = client.get("/dashboard/?status=breached").get_data(as_text=True)
    assert 'data-tenant="acme"' not in html


def _statuses(world: World) -> dict[str, str]:
    with world.db.session() as session:
        return dict(session.execute(select(ModelVersion.version, ModelVersion.status)).tuples().all())


def test_customer_text_is_escaped(client, world: World):
    ids = add_predictions(world.db, "acme", n=2, labels=world.labels, correct_every=2)
    with world.db.session() as session:
        session.get(Prediction, ids[1]).text = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    sign_in(client, world.acme_rw)
    html = client.get("/dashboard/tenants/acme/review").get_data(as_text=True)
    assert "&lt;script&gt;alert" in html
    assert "<img src=x" not in html and '<script>alert("x")' not in html


def test_figure_json_cannot_close_its_script_block(app):
    from flywheel.dashboard.views import _json_for_script

    with app.app_context():
        out = str(_json_for_script('{"name": "</script><script>alert(1)</script>"}'))
    assert "</script" not in out and "\\u003c/script\\u003e" in out


def _tenant(world: World, slug: str) -> None:
    with world.db.session() as session:
        session.add(Tenant(slug=slug, name=slug.title()))


def test_overview_sorts_worst_first_and_filters(client, world: World):
    for slug in ("initech", "umbrella", "hooli"):
        _tenant(world, slug)
    for slug in ("acme", "globex", "initech", "umbrella", "hooli"):
        add_predictions(world.db, slug, n=2, labels=world.labels)
    now = datetime.now(UTC)
    terms = {"metric": "accuracy", "threshold": 0.9, "window_days": 7, "min_labeled": 10, "warning_margin": 0.02}
    cases = {
        "acme": ("met", 0.95),
        "globex": ("breached", 0.70),
        "initech": ("at_risk", 0.905),
        "umbrella": ("insufficient_data", None),
    }
    for slug, (status, value) in cases.items():
        sla_id = put_sla(world.db, slug, **terms)
        add_evaluation(world.db, sla_id, status="met", value=0.99, at=now - timedelta(hours=2))  # older
        add_evaluation(world.db, sla_id, status=status, value=value, at=now - timedelta(hours=1))
    sign_in(client, world.admin)
    html = client.get("/dashboard/").get_data(as_text=True)
    order = re.findall(r'<tr class="row-[a-z_]+" data-tenant="([a-z]+)"', html)
    assert order == ["globex", "initech", "umbrella", "acme", "hooli"]  # hooli has no SLA
    assert "Breached" in html and "At risk" in html and "Insufficient data" in html and "No SLA" in html
    assert "[67.0%, 73.0%]" in html  # globex's interval
    filtered = client.get("/dashboard/?status=at_risk,breached").get_data(as_text=True)
    assert re.findall(r'data-tenant="([a-z]+)" data-task', filtered) == ["globex", "initech"]


def test_tenant_page_shows_history_alerts_and_drift_report(client, world: World):
    from flywheel.models.slas import Alert, DriftReport

    add_predictions(world.db, "acme", n=30, labels=world.labels)
    sla_id = put_sla(
        world.db, "acme", metric="accuracy", threshold=0.9, window_days=7, min_labeled=10, warning_margin=0.02
    )
    now = datetime.now(UTC)
    for k, value in enumerate([0.95, 0.93, 0.88]):
        add_evaluation(
            world.db, sla_id, status="met" if value > 0.92 else "at_risk", value=value, at=now - timedelta(days=3 - k)
        )
    with world.db.session() as session:
        acme = session.scalar(select(Tenant).where(Tenant.slug == "acme"))
        globex = session.scalar(select(Tenant).where(Tenant.slug == "globex"))
        task = session.scalar(select(Task).where(Task.name == "intent"))
        reports = {}
        for tenant in (acme, globex):
            report = DriftReport(
                tenant_id=tenant.id,
                task_id=task.id,
                status="detected",
                share=0.67,
                reference_kind="window",
                window_start=now - timedelta(days=7),
                window_end=now,
                summary={"n_current": 3},
                snapshot=None,
                created_at=now,
            )
            session.add(report)
            session.flush()
            reports[tenant.slug] = report.id
        session.add(
            Alert(
                tenant_id=acme.id,
                task_id=task.id,
                sla_id=sla_id,
                kind="sla_status",
                from_status="met",
                to_status="at_risk",
                message="accuracy fell to 0.88",
                payload={},
                created_at=now,
            )
        )
    sign_in(client, world.acme_read)
    html = client.get("/dashboard/tenants/acme").get_data(as_text=True)
    assert 'data-chart="chart-metric"' in html and 'data-chart="chart-coverage"' in html
    assert "threshold (now 0.9)" in html  # each evaluation's own threshold, drawn as a step
    assert "accuracy fell to 0.88" in html
    assert f'src="/dashboard/reports/{reports["acme"]}"' in html and 'sandbox="allow-scripts"' in html
    r = client.get(f"/dashboard/reports/{reports['acme']}")
    assert r.status_code == 200 and "sandbox allow-scripts" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert client.get(f"/dashboard/reports/{reports['globex']}").status_code == 404  # another tenant's report
    assert client.get("/dashboard/reports/999999").status_code == 404


def test_report_summarises_evaluations_of_the_period(client, world: World):
    start = datetime(2026, 11, 1, 6, tzinfo=UTC)
    add_predictions(world.db, "acme", n=48, labels=world.labels, start=start)
    sla_id = put_sla(
        world.db, "acme", metric="accuracy", threshold=0.9, window_days=7, min_labeled=10, warning_margin=0.02
    )
    day = timedelta(days=1)
    for at, status, value in [
        (start - day, "breached", 0.10),  # before the period: ignored
        (start, "met", 0.95),
        (start + timedelta(hours=6), "met", 0.93),
        (start + day, "at_risk", 0.91),
        (start + day + timedelta(hours=3), "breached", 0.80),
    ]:
        add_evaluation(world.db, sla_id, status=status, value=value, at=at)
    sign_in(client, world.acme_read)
    html = client.get("/dashboard/tenants/acme/report?start=2026-11-01&end=2026-11-03").get_data(as_text=True)
    summary = html.split('id="report-summary"')[1].split("</table>")[0]
    assert "50%" in summary and "of 4 checks" in summary  # 2 of the 4 checks in the period were met
    assert "80.0%" in summary  # the worst value in the period, not the one before it
    rows = list(
        csv.DictReader(
            io.StringIO(
                client.get("/dashboard/tenants/acme/report.csv?start=2026-11-01&end=2026-11-03").get_data(as_text=True)
            )
        )
    )
    by_day = {r["date"]: r for r in rows}
    assert (by_day["2026-11-01"]["sla_status"], by_day["2026-11-01"]["sla_value"]) == ("met", "0.93")
    assert (by_day["2026-11-02"]["sla_status"], by_day["2026-11-02"]["sla_value"]) == ("breached", "0.8")
    assert by_day["2026-11-03"]["sla_status"] == ""
    assert by_day["2026-11-01"]["sla_metric"] == "accuracy" and by_day["2026-11-01"]["sla_threshold"] == "0.9"


def test_figures_are_valid_plotly_specs():
    """The charts are written as plain dicts for speed; plotly's own validators must accept every property."""
    import json

    import plotly.graph_objects as go

    from flywheel.dashboard import charts

    now = datetime.now(UTC)
    points = [
        charts.MetricPoint(now - timedelta(hours=i), 0.8, 0.77, 0.83, 0.81, 0.3, 300, 0.05, "met") for i in range(5)
    ]
    bins = [charts.CalibrationBin(0.15, 0.2, 5), charts.CalibrationBin(0.85, 0.8, 50)]
    specs = [
        charts.metric_over_time(points, metric="accuracy", threshold=0.85),
        charts.coverage_over_time(points),
        charts.calibration(bins, ece=charts.expected_calibration_error(bins)),
    ]
    for spec in specs:
        figure = go.Figure(json.loads(spec))  # raises ValueError on any unknown or invalid property
        assert figure.data
    assert abs(charts.expected_calibration_error(bins) - (5 * 0.05 + 50 * 0.05) / 55) < 1e-12


def test_admin_queues_a_training_run_and_a_read_key_cannot(client, world: World):
    from flywheel.models.training import TrainingRun

    sign_in(client, world.admin)
    html = client.get("/dashboard/models").get_data(as_text=True)
    assert 'id="queue-run"' in html
    token = page_token(client, "/dashboard/models")
    for _ in range(2):  # a second request while one is queued returns the same run
        r = client.post("/dashboard/training-runs", data={"task": "intent", "tenant": "acme", "csrf_token": token})
        assert r.status_code == 302
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "is queued" in page
    with world.db.session() as session:
        runs = list(session.scalars(select(TrainingRun)))
        assert [(run.status, run.trigger, run.tenant.slug) for run in runs] == [("queued", "dashboard", "acme")]
    reader = client.application.test_client()
    sign_in(reader, world.acme_read)
    assert 'id="queue-run"' not in reader.get("/dashboard/models").get_data(as_text=True)
    r = reader.post("/dashboard/training-runs", data={"task": "intent", "csrf_token": page_token(reader)})
    assert r.status_code == 403
