"""The OpenAPI document against the live server: schemathesis (its engine, as ``st run`` drives it) generates
requests from ``/openapi.json`` for every operation and runs every check on every answer: no 500, declared status
codes, content types and headers, responses that match their schemas, schema-violating requests rejected and
schema-valid ones accepted, auth not ignored, 405 with ``Allow`` for other methods. Phases: coverage (each constraint
at its boundaries and broken in turn) and fuzzing (``EXAMPLES`` generated cases per operation), seeded and
deterministic; not stateful (the document declares no links).

A real server on a free port (werkzeug, threaded) answers on the shared fixtures' database (SQLite, and PostgreSQL
when configured), seeded with real ids the fuzzer could not guess (predictions, models, a drift report, a training
run, a key to revoke); schemathesis draws them from dictionaries half of the time and generates its own the other
half. A ``before_call`` hook makes each schema-valid request follow the rules that depend on stored data, as a client
would (:func:`_as_a_client_would`). Two runs: an admin key, on every operation (naming a tenant where it acts on one,
as the contract requires), and a tenant's ingest+read key, on the operations it may call. The model server answers
with a stub classifier: the contract is about HTTP, and the real encoder would spend minutes of the budget.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import requests
from flask import Flask
from sqlalchemy import select
from werkzeug.serving import WSGIRequestHandler, make_server

from flywheel.api.predict import SERVER_KEY
from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.domain.auth import create_key
from flywheel.models.records import Task, Tenant
from flywheel.models.slas import Alert, DriftReport
from flywheel.retrain.registry import ensure_zero_shot
from flywheel.retrain.serving import ModelServer

from support import LABELS
from support.dashboard import add_evaluation, add_model, add_predictions, add_training_run, put_sla

pytestmark = pytest.mark.slow

schemathesis = pytest.importorskip("schemathesis")

# Generated cases per operation in the fuzzing phase (the coverage phase adds its own: boundaries, each constraint
# broken in turn, missing and unexpected values).
EXAMPLES = int(os.environ.get("FLYWHEEL_CONTRACT_EXAMPLES", "30"))
SEED = 20261127
PROTECTED_KEYS = ("900001", "900002")  # the admin's and the tenant's key ids
VICTIM_KEY = 900_003
VICTIM_TENANT = "victim"


class _StubClassifier:
    """Deterministic probabilities over the task's labels (the real encoder is tested elsewhere)."""

    def __init__(self, labels: list[str]) -> None:
        self.labels = list(labels)

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = np.full((len(texts), len(self.labels)), 0.1 / max(len(self.labels) - 1, 1))
        for i, text in enumerate(texts):
            out[i, len(text) % len(self.labels)] = 0.9
        return out


class _StubCache:
    def get(self, model: Any) -> _StubClassifier:
        return _StubClassifier(model.task.labels if model.task is not None else LABELS)

    def keep_only(self, _ids: Any) -> None:
        return None


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


@dataclass
class Contract:
    url: str
    keys: dict[str, str]
    dictionaries: dict[str, list[Any]] = field(default_factory=dict)


def _seed(db: Database) -> tuple[dict[str, str], dict[str, list[Any]]]:
    """Two tenants, the task with its zero-shot champion, acme's own champion and a shared candidate, predictions
    with feedback, a training run, an SLA with an evaluation, a drift report, an alert, and the keys."""
    with db.session() as session:
        acme, globex = Tenant(slug="acme", name="Acme Corp"), Tenant(slug="globex", name="Globex")
        victim = Tenant(slug=VICTIM_TENANT, name="To be deleted")  # the one `DELETE /v1/tenants/{tenant}` deletes
        task = Task(name="intent", labels=LABELS, label_descriptions={}, description="")
        session.add_all([acme, globex, victim, task])
        session.flush()
        zero_shot_id = ensure_zero_shot(session, task).id
        # Ids the fuzzer will not revoke by accident (`DELETE /v1/keys/{key_id}` draws small integers too).
        keys = {
            "admin": _key(session, int(PROTECTED_KEYS[0]), None, ["admin"]),
            "tenant": _key(session, int(PROTECTED_KEYS[1]), acme, ["ingest", "read"]),
        }
        _key(session, VICTIM_KEY, acme, ["read"])  # the one to revoke
    add_predictions(db, "acme", n=12, labels=LABELS)
    add_predictions(db, "globex", n=4, labels=LABELS)
    model_id = add_model(db, "intent-acme-1", tenant_slug="acme", status="champion")
    shared_id = add_model(db, "intent-shared-1", tenant_slug=None)
    run_id = add_training_run(db, model_id=shared_id, status="succeeded", decision="promoted", reasons=["better"])
    sla_id = put_sla(db, "acme", metric="accuracy", threshold=0.8, window_days=7, min_labeled=10)
    add_evaluation(db, sla_id, status="met", value=0.9)
    with db.session() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))
        task_id = session.scalar(select(Task.id).where(Task.name == "intent"))
        now = utcnow()
        report = DriftReport(
            tenant_id=tenant_id,
            task_id=task_id,
            status="unknown",
            share=None,
            reference_kind="window",
            window_start=now - timedelta(days=7),
            window_end=now,
            n_reference=3,
            n_current=2,
            summary={},
            snapshot=None,
        )
        session.add(report)
        session.add(
            Alert(
                tenant_id=tenant_id,
                task_id=task_id,
                sla_id=sla_id,
                kind="sla_status",
                from_status="met",
                to_status="at_risk",
                message="accuracy is at risk",
                payload={"value": 0.81},
                delivery_status="no_webhook",
            )
        )
        session.flush()
        report_id = report.id
    dictionaries = {
        "prediction_ids": ["p-acme-0", "p-acme-1", "p-acme-11"],
        "tasks": ["intent"],
        "tenants": ["acme"],
        "model_refs": [str(zero_shot_id), str(model_id), "intent-acme-1", str(shared_id)],
        "report_ids": [report_id],
        "run_ids": [run_id],
        "key_ids": [VICTIM_KEY],
    }
    return keys, dictionaries


def _key(session: Any, key_id: int, tenant: Tenant | None, scopes: list[str]) -> str:
    row, secret = create_key(session, tenant=tenant, scopes=scopes, name=f"contract-{key_id}")
    row.id = key_id
    session.flush()
    return secret


@pytest.fixture
def contract(db: Database, settings: Settings) -> Iterator[Contract]:
    from flywheel.app import create_app

    keys, dictionaries = _seed(db)
    app: Flask = create_app(settings, db=db)
    server = ModelServer()
    server.cache = _StubCache()  # type: ignore[assignment]
    app.extensions[SERVER_KEY] = server
    http = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    logging.getLogger("flywheel").setLevel(logging.CRITICAL)  # ~10,000 request log lines help nobody
    try:
        yield Contract(url=f"http://127.0.0.1:{http.server_port}", keys=keys, dictionaries=dictionaries)
    finally:
        http.shutdown()
        thread.join()
        logging.getLogger("flywheel").setLevel(logging.NOTSET)


def _config(contract: Contract, who: str) -> Any:
    from schemathesis.config import SchemathesisConfig

    half = 0.5
    parameters: dict[str, Any] = {
        "path.prediction_id": {"dictionary": "prediction_ids", "probability": half},
        "path.name": {"dictionary": "tasks", "probability": half},
        "path.task": {"dictionary": "tasks", "probability": half},
        "path.tenant": {"dictionary": "tenants", "probability": half},
        "path.ref": {"dictionary": "model_refs", "probability": half},
        "path.report_id": {"dictionary": "report_ids", "probability": half},
        "path.run_id": {"dictionary": "run_ids", "probability": half},
        "path.key_id": {"dictionary": "key_ids", "probability": 1.0},
        "query.task": {"dictionary": "tasks", "probability": half},
        "body.task": {"dictionary": "tasks", "probability": half},
        "body.tenant": {"dictionary": "tenants", "probability": half},
    }
    if who == "admin":
        # An admin key belongs to no tenant: on tenant-scoped endpoints it names one (API.md, docs/api.md).
        parameters["query.tenant"] = "acme"
    return SchemathesisConfig.from_dict(
        {
            "base-url": contract.url,
            "seed": SEED,
            "request-timeout": 30,  # (no `max-time`: under a time budget schemathesis fuzzes until it runs out)
            "headers": {"Authorization": f"Bearer {contract.keys[who]}"},
            "generation": {"max-examples": EXAMPLES, "deterministic": True},
            "checks": {
                # 413 is how this API rejects a batch above its documented maxItems (API.md, "up to 1,000 items").
                "negative_data_rejection": {
                    "expected-statuses": ["400", "401", "403", "404", "405", "409", "413", "415", "422"]
                },
            },
            "phases": {"stateful": {"enabled": False}},  # no links to follow
            "dictionaries": {name: {"values": values} for name, values in contract.dictionaries.items()},
            "parameters": parameters,
        }
    )


@dataclass
class Outcome:
    cases: dict[str, int] = field(default_factory=dict)  # by phase
    statuses: dict[str, set[int]] = field(default_factory=dict)  # by operation: every status it answered
    failures: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # by operation and check
    errors: list[str] = field(default_factory=list)

    def summary(self, who: str, seconds: float) -> str:
        phases = ", ".join(f"{n} {phase}" for phase, n in sorted(self.cases.items()))
        return (
            f"{who}: {len(self.statuses)} operations, {sum(self.cases.values())} requests ({phases}), "
            f"{sum(len(f) for f in self.failures.values())} failures, {seconds:.0f} s"
        )


def _without_redundant_formats(node: Any) -> Any:
    """The document as the fuzzer reads it: ``format: uri`` dropped where a ``pattern`` already implies it (every
    string the URL pattern matches is a URI: test_errors.py checks it). The set of valid values is the same, and
    generating for both costs ~40 s of the budget."""
    if isinstance(node, dict):
        out = {k: _without_redundant_formats(v) for k, v in node.items()}
        if out.get("format") == "uri" and "pattern" in out:
            del out["format"]
        return out
    if isinstance(node, list):
        return [_without_redundant_formats(v) for v in node]
    return node


def _as_a_client_would(who: str, prediction_ids: list[str]) -> Any:
    """A ``before_call`` hook: a schema-valid request that the documented data rules (descriptions, not JSON Schema)
    would reject is made to follow them, as a client would: names of things that exist (the task, its labels, a
    prediction), probabilities that sum to 1 with the label on top, ids unique within a batch, and, for an admin key,
    the tenant it acts on. Only positive cases are touched; the negative ones go out as generated."""

    def item_ids(items: list[Any]) -> None:
        seen: set[Any] = set()
        for i, item in enumerate(items):
            if isinstance(item, dict) and item.get("id") in seen:
                item["id"] = f"{str(item['id'])[:100]}-{i}"
            if isinstance(item, dict):
                seen.add(item.get("id"))

    def label_of(value: Any) -> str:
        return LABELS[len(str(value)) % len(LABELS)]

    def prediction(item: Any) -> None:
        if not isinstance(item, dict):
            return
        item["task"] = "intent"
        item["label"] = label = label_of(item.get("label"))
        if item.get("probabilities") is not None:
            top = max(float(item.get("confidence", 0.5)), 0.5)
            other = next(x for x in LABELS if x != label)
            item["confidence"] = top
            item["probabilities"] = {label: top, other: 1.0 - top}

    def feedback(item: Any) -> None:
        if isinstance(item, dict):
            item["prediction_id"] = prediction_ids[len(str(item.get("prediction_id"))) % len(prediction_ids)]
            item["label"] = label_of(item.get("label"))

    def keep_seeded_data(case: Any) -> None:
        """Erasure and tenant deletion, in any mode, never touch what the rest of the run relies on: the seeded
        predictions (feedback refers to them) and the tenants the keys belong to. They erase and delete victims."""
        op, path, body = case.method.upper(), case.operation.path, case.body
        if (op, path) == ("DELETE", "/v1/predictions/{prediction_id}"):
            if case.path_parameters.get("prediction_id") in prediction_ids:
                case.path_parameters["prediction_id"] = "victim-prediction"
        elif (op, path) == ("POST", "/v1/erasure") and isinstance(body, dict):
            if isinstance(body.get("prediction_ids"), list):
                body["prediction_ids"] = [
                    p if p not in prediction_ids else "victim-prediction" for p in body["prediction_ids"]
                ]
        elif (op, path) == ("DELETE", "/v1/tenants/{tenant}"):
            positive = case.meta is not None and case.meta.generation.mode.is_positive
            if positive or case.path_parameters.get("tenant") in ("acme", "globex"):
                case.path_parameters["tenant"] = VICTIM_TENANT
            if positive and isinstance(body, dict) and isinstance(body.get("confirm"), str):
                body["confirm"] = VICTIM_TENANT

    def before_call(context: Any, case: Any, kwargs: Any) -> None:
        if case.operation.path == "/v1/keys/{key_id}" and str(case.path_parameters.get("key_id")) in PROTECTED_KEYS:
            # Ids seen in responses (GET /v1/keys) feed later requests: never revoke the keys the run signs with.
            case.path_parameters["key_id"] = VICTIM_KEY
        keep_seeded_data(case)
        meta = case.meta
        if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
            return
        body, label = case.body, f"{case.method} {case.operation.path}"
        if label in ("POST /v1/predictions", "POST /v1/feedback"):
            root, fix = ("predictions", prediction) if label.endswith("predictions") else ("feedback", feedback)
            items = body[root] if isinstance(body.get(root), list) else [body]
            for item in items:
                fix(item)
            item_ids(items)
        elif label == "POST /v1/predict" and who == "admin" and body.get("tenant") is None:
            body["tenant"] = "acme"
        elif label == "PUT /v1/slas/{tenant}/{task}" and str(body.get("metric", "")).startswith(("recall:", "preci")):
            body["metric"] = f"{body['metric'].split(':', 1)[0]}:{label_of(body['metric'])}"
        elif label == "POST /v1/tasks" and isinstance(body.get("label_descriptions"), dict):
            labels = body.get("labels") or []
            body["label_descriptions"] = {k: v for k, v in body["label_descriptions"].items() if k in labels}
        elif label == "POST /v1/review/{prediction_id}" and body.get("decision") == "relabel":
            body["label"] = label_of(body.get("label"))
        elif label == "PUT /v1/tasks/{name}/rules" and isinstance(body.get("rules"), list):
            # Labels of the task, patterns that compile, names unique and (shared vs a tenant's) never clashing.
            case.path_parameters["name"] = "intent"  # the labels below are this task's
            scope = "t" if who != "admin" or (case.query or {}).get("tenant") is not None else "s"
            for i, rule in enumerate(body["rules"]):
                if isinstance(rule, dict):
                    rule["label"] = label_of(rule.get("label"))
                    rule["name"] = f"{scope}{i}-{str(rule.get('name'))[:50]}"
                    if isinstance(rule.get("pattern"), str):
                        rule["pattern"] = re.escape(rule["pattern"][:400])  # at most 800 characters

    return before_call


def _operation_ids(document: dict[str, Any], *, scopes: set[str]) -> list[str]:
    return [
        op["operationId"]
        for item in document["paths"].values()
        for op in item.values()
        if set(op.get("security", [{}])[0].get("bearer", [])) & scopes
    ]


def _run(contract: Contract, who: str) -> Outcome:
    from schemathesis.engine import events, from_schema

    document = _without_redundant_formats(requests.get(f"{contract.url}/openapi.json", timeout=10).json())
    schema = schemathesis.openapi.from_dict(document, config=_config(contract, who))
    if who == "tenant":  # the operations a tenant's key may call; the admin run covers the rest
        schema = schema.include(operation_id=_operation_ids(document, scopes={"read", "ingest"}))
    outcome = Outcome()
    hook = _as_a_client_would(who, contract.dictionaries["prediction_ids"])
    schemathesis.hook("before_call")(hook)
    try:
        events_ = list(from_schema(schema).execute())
    finally:
        schemathesis.hooks.unregister(hook)
    for event in events_:
        if isinstance(event, events.ScenarioFinished):
            _record(outcome, event)
        elif isinstance(event, events.NonFatalError):
            outcome.errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            outcome.errors.append(f"fatal: {event.exception!r}")
    return outcome


def _record(outcome: Outcome, event: Any) -> None:
    recorder = event.recorder
    phase = str(getattr(event.phase, "value", event.phase))
    outcome.cases[phase] = outcome.cases.get(phase, 0) + len(recorder.interactions)
    statuses = outcome.statuses.setdefault(recorder.label, set())
    statuses.update(i.response.status_code for i in recorder.interactions.values() if i.response is not None)
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.failure_info is None:
                continue
            case = recorder.cases[case_id].value
            interaction = recorder.interactions.get(case_id)
            response = interaction.response if interaction else None
            outcome.failures.setdefault((recorder.label, check.name), []).append(
                f"{check.failure_info.failure.title}: {case.method} {case.formatted_path} query={case.query} "
                f"body={str(case.body)[:300]} -> {response.status_code if response else None} "
                f"{response.content[:300] if response else b''!r}"
            )


def _documented(paths: dict[str, Any], who: str) -> set[str]:
    return {
        f"{method.upper()} {path}"
        for path, item in paths.items()
        for method, op in item.items()
        if who == "admin" or {"read", "ingest"} & set(op.get("security", [{}])[0].get("bearer", []))
    }


@pytest.mark.parametrize("who", ["admin", "tenant"])
def test_every_operation_keeps_the_contract(contract: Contract, who: str) -> None:
    """0 failures of every check, on every operation the key may call, each of which answered a 2xx at least once
    (the fuzzer reached what it tested)."""
    started = time.monotonic()
    outcome = _run(contract, who)
    print(f"\n{outcome.summary(who, time.monotonic() - started)}")
    assert not outcome.errors, outcome.errors
    report = "\n".join(
        f"{label} [{check}] x{len(items)}\n    " + "\n    ".join(items[:3])
        for (label, check), items in sorted(outcome.failures.items())
    )
    assert not outcome.failures, report
    paths = requests.get(f"{contract.url}/openapi.json", timeout=10).json()["paths"]
    assert set(outcome.statuses) == _documented(paths, who)
    unreached = sorted(op for op, codes in outcome.statuses.items() if not any(200 <= c < 300 for c in codes))
    assert not unreached, {op: sorted(outcome.statuses[op]) for op in unreached}
    auth = {"Authorization": f"Bearer {contract.keys[who]}"}
    assert requests.get(f"{contract.url}/v1/tasks", headers=auth, timeout=10).status_code == 200  # signed in to the end
