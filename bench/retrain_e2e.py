"""The retraining platform end to end on banking77: log + label through the services, train through the job path,
gate, promote, then serve ``POST /v1/predict`` from the champion. Prints a table.

    .venv/bin/python bench/retrain_e2e.py --per-class 40 [--fine-tune-epochs 2]

Zero-shot (the day-one model) is the baseline column; the independent banking77 test split is scored too.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77"


def read(name: str) -> list[tuple[str, str]]:
    with (DATA / name).open(newline="", encoding="utf-8") as fh:
        return [(r["text"], r["label"]) for r in csv.DictReader(fh)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", type=int, default=40, help="labeled predictions logged per intent")
    parser.add_argument("--fine-tune-epochs", type=int, default=0, help="0: few-shot rung only")
    parser.add_argument("--test-limit", type=int, default=3080)
    parser.add_argument("--latency-calls", type=int, default=30)
    args = parser.parse_args()

    import numpy as np

    from flywheel.app import create_app
    from flywheel.core.config import Settings
    from flywheel.core.db import Database
    from flywheel.core.migrate import upgrade
    from flywheel.domain import champions
    from flywheel.domain.auth import create_key
    from flywheel.domain.ingest import ingest_feedback, ingest_predictions
    from flywheel.domain.schemas import FeedbackIn, PredictionIn
    from flywheel.models.records import Task, Tenant
    from flywheel.models.training import TrainingRun
    from flywheel.retrain import jobs, registry

    train, test = read("train.csv"), read("test.csv")[: args.test_limit]
    labels = sorted({y for _, y in train})
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, y in train:
        by_label[y].append(text)
    rng = np.random.default_rng(0)
    rows = [(t, y) for y in labels for t in rng.permutation(by_label[y])[: args.per_class]]

    tmp = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'bench.db'}",
        artifacts_dir=tmp / "artifacts",
        fine_tune_min_labels=1 if args.fine_tune_epochs else 10**9,
        fine_tune_epochs=max(args.fine_tune_epochs, 1),
    )
    db = Database(settings.database_url)
    upgrade(db.engine)
    with db.session() as session:
        tenant = Tenant(slug="acme", name="Acme")
        task = Task(name="banking77", labels=labels, label_descriptions={}, description="")
        session.add_all([tenant, task])
        session.flush()
        registry.ensure_zero_shot(session, task, settings)
        key = create_key(session, tenant=tenant, scopes=["ingest", "read"])[1]
    started = time.perf_counter()
    with db.session() as session:
        tenant = session.query(Tenant).one()
        ids = [f"b-{i}" for i in range(len(rows))]
        ingest_predictions(
            session,
            tenant.id,
            [
                PredictionIn(id=i, task="banking77", text=t, label=labels[0], confidence=0.5)
                for i, (t, _) in zip(ids, rows, strict=True)
            ],
        )
        ingest_feedback(
            session,
            tenant.id,
            [
                FeedbackIn(id=f"f-{i}", prediction_id=i, label=y, source="agent")
                for i, (_, y) in zip(ids, rows, strict=True)
            ],
        )
    log_s = time.perf_counter() - started

    with db.session() as session:
        run_id = jobs.queue_run(session, session.query(Task).one(), None, trigger="bench").id
    started = time.perf_counter()
    status = jobs.run_training(db, settings, run_id)
    train_s = time.perf_counter() - started
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        metrics, decision, lineage = run.metrics, run.decision, run.lineage
        champion = champions.champion_for(session, run.task_id, None)
        zero = session.get(type(champion), champion.replaced_id) if champion and champion.replaced_id else champion
    assert champion is not None and zero is not None

    test_texts, test_y = [t for t, _ in test], [y for _, y in test]

    def test_accuracy(model: object) -> float:
        clf = registry.load_model(model, optimize=True)  # type: ignore[arg-type]
        proba = clf.predict_proba(test_texts, batch_size=64)
        return float(np.mean([clf.labels[i] == y for i, y in zip(proba.argmax(1), test_y, strict=True)]))

    acc_zero, acc_champ = test_accuracy(zero), test_accuracy(champion)

    app = create_app(settings, db=db)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}

    def latency(batch: int) -> tuple[float, float]:
        times = []
        for call in range(args.latency_calls + 2):
            inputs = [{"text": test_texts[(call * batch + j) % len(test_texts)]} for j in range(batch)]
            t0 = time.perf_counter()
            r = client.post("/v1/predict", json={"task": "banking77", "inputs": inputs}, headers=headers)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.get_json()
        times = times[2:]  # the first calls load the model
        p50 = statistics.median(times)
        return p50 * 1000, batch / p50

    lat1, lat32 = latency(1), latency(32)
    cand = metrics["candidate"]["overall"]
    champ_eval = (metrics.get("champion") or {}).get("overall") or {}
    print(
        f"banking77, {args.per_class} labeled/intent logged ({len(rows)}), holdout {lineage['n_holdout']}, "
        f"train {lineage['n_train']}; logging + labeling {log_s:.1f}s"
    )
    print(f"run {run_id}: {status}, decision {decision}, rung {metrics['rung']}, wall {train_s:.1f}s")
    print()
    print(f"{'model':<28}{'holdout acc':>12}{'test acc':>10}{'vs zero-shot':>14}")
    print(f"{'zero-shot (day one)':<28}{champ_eval.get('accuracy', float('nan')):>12.4f}{acc_zero:>10.4f}{1.0:>13.2f}x")
    print(
        f"{'candidate: ' + metrics['rung']:<28}{cand['accuracy']:>12.4f}"
        f"{acc_champ:>10.4f}{acc_champ / acc_zero:>13.2f}x"
    )
    for rung, alt in (metrics.get("alternatives") or {}).items():
        print(f"{'  (also trained: ' + rung + ')':<28}{alt['accuracy']:>12.4f}")
    print()
    print(
        f"POST /v1/predict ({champion.rung} champion, logged): batch 1 p50 {lat1[0]:.1f} ms ({lat1[1]:.0f}/s), "
        f"batch 32 p50 {lat32[0]:.1f} ms ({lat32[1]:.0f}/s)"
    )


if __name__ == "__main__":
    main()
