"""Retraining through the job path: the ladder on a tiny BertConfig base, the gate, the registry, recovery."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from flywheel.cli import cli
from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.core.errors import Conflict
from flywheel.domain import champions
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.training import ChampionSlot, ModelVersion, TrainingRun
from flywheel.retrain import jobs, pipeline, registry
from flywheel.retrain.classifiers import load_classifier

from support.retrain import HOLDOUT, LABELS, TASK, add_labeled, make_task, shuffle_training_labels, synthetic

TINY_FT = {"batch_size": 16, "learning_rate": 3e-3, "max_length": 16, "device": "cpu", "patience": 3}


def queue(db: Database, tenant: str | None = None, trigger: str = "test") -> int:
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        ten = session.scalar(select(Tenant).where(Tenant.slug == tenant)) if tenant else None
        assert task is not None
        return jobs.queue_run(session, task, ten, trigger=trigger).id


def get_run(db: Database, run_id: int) -> TrainingRun:
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        return run


def champion(db: Database, tenant_id: int | None = None) -> ModelVersion:
    with db.session() as session:
        task_id = session.scalar(select(Task.id).where(Task.name == TASK))
        assert task_id is not None
        model = champions.champion_for(session, task_id, tenant_id)
        assert model is not None
        return model


def test_task_creation_makes_a_zero_shot_champion(db: Database, tiny_base: Path) -> None:
    make_task(db, tiny_base)
    model = champion(db)
    assert (model.rung, model.status, model.tenant_id) == ("zero_shot", "champion", None)
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        assert task is not None
        assert registry.ensure_zero_shot(session, task).id == model.id  # idempotent
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1
    clf = registry.load_model(model)
    assert clf.labels == LABELS and clf.predict_proba(["my card"]).shape == (1, 3)


def test_training_run_promotes_a_better_model_then_refuses_a_worse_one(
    db: Database, rs: Settings, tiny_base: Path
) -> None:
    make_task(db, tiny_base)
    zero = champion(db)
    add_labeled(db, "acme", 150, seed=1)
    add_labeled(db, "globex", 150, seed=2)

    good_id = queue(db)
    assert jobs.run_training(db, rs, good_id) == "succeeded"
    good = get_run(db, good_id)
    assert (good.decision, good.rung) == ("promoted", "few_shot")
    cand = good.metrics["candidate"]["overall"]
    assert cand["accuracy"] > good.metrics["champion"]["overall"]["accuracy"]
    assert cand["accuracy"] >= 0.8
    assert set(good.metrics["candidate"]["tenants"]) == {"acme", "globex"}
    new = champion(db)
    assert new.id == good.model_id and new.id != zero.id and new.replaced_id == zero.id
    # Lineage: which tenants' data trained it, and the holdout never trained.
    assert set(new.lineage["tenants"]) == {"acme", "globex"} and new.lineage["n_train"] == good.lineage["n_train"]
    ids = json.loads((Path(new.artifact_path or "") / "lineage.json").read_text())
    assert ids["train_sha256"] == good.lineage["train_sha256"]
    with db.session() as session:
        buckets = dict(session.execute(select(Prediction.id, Prediction.bucket)).tuples().all())
    assert ids["train_ids"] and ids["holdout_ids"]
    assert all(buckets[i] >= HOLDOUT for i in ids["train_ids"]) and all(
        buckets[i] < HOLDOUT for i in ids["holdout_ids"]
    )
    assert len(ids["train_ids"]) + len(ids["holdout_ids"]) == 300
    assert load_classifier(new.artifact_path or "").predict_proba(["refund my money"]).shape == (1, 3)

    # The same data with wrong training labels: a worse candidate, refused; the champion stays.
    shuffle_training_labels(db, HOLDOUT)
    bad_id = queue(db)
    assert jobs.run_training(db, rs, bad_id) == "rejected"
    bad = get_run(db, bad_id)
    assert bad.decision == "rejected" and any("worse than the champion" in r for r in bad.reasons)
    assert bad.metrics["candidate"]["overall"]["accuracy"] < cand["accuracy"] - 0.3
    assert champion(db).id == new.id
    with db.session() as session:
        rejected = session.get(ModelVersion, bad.model_id)
        assert rejected is not None and rejected.status == "candidate"
    # Safe to run twice: a finished run is not redone.
    assert jobs.run_training(db, rs, bad_id) == "rejected"


@pytest.mark.slow
def test_a_tiny_bert_fine_tunes_through_the_job_path(db: Database, rs: Settings, tiny_base: Path) -> None:
    make_task(db, tiny_base)
    add_labeled(db, "acme", 240, seed=3)
    settings = rs.with_(fine_tune_min_labels=100)
    progress: list[float] = []
    run_id = queue(db)
    status = jobs.run_training(
        db, settings, run_id, progress=lambda f, _m: progress.append(f), fine_tune_overrides=TINY_FT
    )
    run = get_run(db, run_id)
    assert status == "succeeded", (run.reasons, run.error)
    # Every candidate (the two few-shot heads, the fine-tuned rung) was trained and compared; one goes on.
    candidates = run.metrics["gate"]["candidates"]
    assert [c["head"] for c in candidates] == ["few_shot", "knn", "fine_tuned"]
    assert sum(c["chosen"] for c in candidates) == 1 and len(run.metrics["alternatives"]) == 2
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert run.progress == 1.0 and run.finished_at is not None
    model = champion(db)
    assert model.id == run.model_id
    if model.rung == "fine_tuned":
        assert run.metrics["training"]["steps"] > 0
        assert (Path(model.artifact_path or "") / "model.safetensors").exists()
        assert run.metrics["optimization"] is not None  # the INT8 variant was checked on the holdout
    assert registry.load_model(model).predict_proba(["login password reset"]).shape == (1, 3)


@pytest.mark.slow
def test_a_tenant_variant_is_judged_on_its_own_holdout_against_the_shared_model(
    db: Database, rs: Settings, tiny_base: Path
) -> None:
    make_task(db, tiny_base)
    add_labeled(db, "acme", 300, seed=4)
    add_labeled(db, "globex", 150, seed=5)
    assert len(jobs.nightly_retrain(db, rs)) == 1  # nobody has enough labels for a variant yet
    jobs.process_queue(db, rs)
    shared_before = champion(db)
    assert shared_before.rung == "few_shot"
    # acme now labels by its own convention (every label rotated): only a variant of its own can fit it.
    rotate = dict(zip(LABELS, LABELS[1:] + LABELS[:1], strict=True))
    with db.session() as session:
        for p in session.scalars(select(Prediction).join(Tenant).where(Tenant.slug == "acme")):
            p.effective_label = rotate[p.effective_label or ""]
    # acme has ~225 training labels, globex ~110; the scheduler path takes fine-tuning options from settings.
    settings = rs.with_(fine_tune_min_labels=150, extra={"fine_tune": {**TINY_FT, "epochs": 10}})
    queued = jobs.nightly_retrain(db, settings)
    assert len(queued) == 2
    assert [get_run(db, r).tenant_id is None for r in queued] == [True, False]
    assert jobs.process_queue(db, settings) == queued
    shared, variant = (get_run(db, r) for r in queued)
    assert shared.status in ("succeeded", "rejected") and variant.rung == "fine_tuned"
    assert set(variant.metrics["candidate"]["tenants"]) == {"acme"}  # judged on acme's holdout alone
    assert variant.metrics["champion_version"] == champion(db).version  # against tonight's shared model
    assert variant.decision == "promoted", variant.reasons
    assert variant.metrics["candidate"]["overall"]["accuracy"] > variant.metrics["champion"]["overall"]["accuracy"]
    acme_id, globex_id = variant.tenant_id, None
    assert champion(db, acme_id).tenant_id == acme_id and champion(db, acme_id).id == variant.model_id
    with db.session() as session:
        globex_id = session.scalar(select(Tenant.id).where(Tenant.slug == "globex"))
    assert champion(db, globex_id).tenant_id is None  # other tenants keep the shared model


def test_nothing_to_train_is_skipped_not_failed(db: Database, rs: Settings, tiny_base: Path) -> None:
    make_task(db, tiny_base)
    run_id = queue(db)
    assert jobs.run_training(db, rs, run_id) == "succeeded"
    run = get_run(db, run_id)
    assert run.decision == "skipped" and "only 0 clean labels" in run.reasons[0]
    assert champion(db).rung == "zero_shot"


def test_rollback_restores_the_previous_champion(db: Database, tiny_base: Path) -> None:
    make_task(db, tiny_base)
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        assert task is not None
        zero = champions.champion_for(session, task.id, None)
        assert zero is not None
        made = []
        for rung in ("few_shot", "fine_tuned"):
            m = ModelVersion(
                task_id=task.id, version=registry.version_name(session, task, None), rung=rung, metrics={}, lineage={}
            )
            session.add(m)
            session.flush()
            registry.promote(session, m.id)
            made.append(m.id)
        acme = Tenant(slug="acme2", name="Acme")
        session.add(acme)
        session.flush()
        variant = ModelVersion(
            task_id=task.id, tenant_id=acme.id, version=registry.version_name(session, task, acme), rung="fine_tuned"
        )
        session.add(variant)
        session.flush()
        registry.promote(session, variant.id)
        ids = (task.id, acme.id, zero.id, variant.id)
    task_id, acme_id, zero_id, variant_id = ids
    with db.session() as session:
        assert champions.champion_for(session, task_id, None).id == made[1]  # type: ignore[union-attr]
        assert registry.rollback(session, task_id, None).id == made[0]
        statuses = dict(session.execute(select(ModelVersion.id, ModelVersion.status)).tuples().all())
        assert statuses[made[1]] == "retired" and statuses[made[0]] == "champion"
        assert registry.rollback(session, task_id, None).id == zero_id
        with pytest.raises(Conflict):
            registry.rollback(session, task_id, None)
        # A tenant variant serves that tenant first (serving reads the same slots), and rolls back to the shared model.
        assert champions.champion_for(session, task_id, acme_id).id == variant_id  # type: ignore[union-attr]
        assert champions.serving_state(session, task_id, acme_id)[0] == variant_id  # type: ignore[index]
        assert champions.serving_state(session, task_id, None)[0] == zero_id  # type: ignore[index]
        assert registry.rollback(session, task_id, acme_id).id == zero_id
        assert champions.champion_for(session, task_id, acme_id).id == zero_id  # type: ignore[union-attr]
        assert (
            session.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.status == "champion")) == 1
        )
        assert session.scalar(select(func.count()).select_from(ChampionSlot)) == 1


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_left_running_by_dead_processes_are_released_and_do_not_block(
    db: Database, rs: Settings, tiny_base: Path
) -> None:
    make_task(db, tiny_base)
    now = utcnow()
    with db.session() as session:
        task_id = session.scalar(select(Task.id).where(Task.name == TASK))
        dead = TrainingRun(
            task_id=task_id, status="running", host=socket.gethostname(), pid=dead_pid(), heartbeat_at=now
        )
        stale = TrainingRun(
            task_id=task_id, status="running", host="elsewhere", pid=1, heartbeat_at=now - timedelta(hours=1)
        )
        alive = TrainingRun(
            task_id=task_id, status="running", host=socket.gethostname(), pid=os.getpid(), heartbeat_at=now
        )
        session.add_all([dead, stale, alive])
        session.flush()
        ids = (dead.id, stale.id, alive.id)
    champion_before = champion(db).id
    assert sorted(jobs.recover_stale_runs(db, rs)) == sorted(ids[:2])
    assert [get_run(db, i).status for i in ids] == ["queued", "queued", "running"]  # their next attempt
    assert "gone" in (get_run(db, ids[0]).message or "") and "no heartbeat" in (get_run(db, ids[1]).message or "")
    # The live run still holds its scope; once it is gone, a queued run of that scope is claimed.
    queued = queue(db)
    assert queued == ids[0]  # the released run is the scope's queued run: no second one
    assert jobs.claim_next(db) is None
    with db.session() as session:
        session.get(TrainingRun, ids[2]).status = "failed"  # type: ignore[union-attr]
    assert jobs.claim_next(db) == queued
    assert champion(db).id == champion_before


@pytest.mark.slow
def test_kill_9_mid_run_changes_no_champion_and_the_next_scheduler_recovers(
    db: Database, rs: Settings, tiny_base: Path
) -> None:
    from flywheel.scheduler import SchedulerService

    make_task(db, tiny_base)
    before = champion(db).id
    run_id = queue(db)
    # A worker that claims the run, reports progress, then "trains" forever; kill -9 it mid-way.
    code = (
        "import sys, time\n"
        "from flywheel.core.db import Database\n"
        "from flywheel.retrain import jobs\n"
        "db = Database(sys.argv[1])\n"
        "with db.session() as s:\n"
        "    assert jobs.claim_run(s, int(sys.argv[2]))\n"
        "print('claimed', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, db.url, str(run_id)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "claimed"
        assert get_run(db, run_id).status == "running"
        proc.kill()
    finally:
        proc.wait()
    nxt = queue(db)  # queued behind the dead one
    service = SchedulerService(Database(db.url), rs.with_(training_poll_seconds=3600, early_retrain_check_seconds=3600))
    service.start()
    try:
        assert service.leading.wait(30)
        for _ in range(300):  # the dead worker's run is queued again and trained, then the next one of its scope
            if all(get_run(db, r).status not in ("queued", "running") for r in (run_id, nxt)):
                break
            service._stop.wait(0.1)
        killed = get_run(db, run_id)
        assert killed.status == "succeeded" and killed.attempts == 2  # claimed by the dead process, then here
        assert get_run(db, nxt).status == "succeeded"
    finally:
        service.stop()
    assert champion(db).id == before


def test_an_abandoned_run_is_queued_again_until_its_attempts_are_used(
    db: Database, rs: Settings, tiny_base: Path
) -> None:
    make_task(db, tiny_base)
    run_id = queue(db)
    settings = rs.with_(run_max_attempts=2, run_stale_seconds=60)
    for attempt in (1, 2):
        with db.session() as session:
            assert jobs.claim_run(session, run_id)
            session.get(TrainingRun, run_id).heartbeat_at = utcnow() - timedelta(minutes=5)  # type: ignore[union-attr]
        assert jobs.recover_stale_runs(db, settings) == [run_id]
        run = get_run(db, run_id)
        assert run.attempts == attempt
        if attempt == 1:
            assert run.status == "queued" and run.host is None and "re-queued" in (run.message or "")
        else:
            assert run.status == "failed" and "abandoned" in (run.error or "")
    assert jobs.recover_stale_runs(db, settings) == []  # a finished run is left alone


def test_early_retrain_on_new_clean_labels_is_debounced(db: Database, rs: Settings, tiny_base: Path) -> None:
    make_task(db, tiny_base)
    settings = rs.with_(early_retrain_new_labels=50)
    add_labeled(db, "acme", 30, seed=6)
    assert jobs.check_early_retrain(db, settings) == []
    add_labeled(db, "acme", 30, seed=7)
    queued = jobs.check_early_retrain(db, settings)
    assert len(queued) == 1 and get_run(db, queued[0]).trigger == "early:labels"
    assert jobs.check_early_retrain(db, settings) == []  # already queued
    jobs.process_queue(db, settings)
    add_labeled(db, "acme", 60, seed=8)
    assert jobs.check_early_retrain(db, settings) == []  # debounced: a run was created just now
    assert jobs.check_early_retrain(db, settings.with_(early_retrain_debounce_minutes=0)) != []


def test_cli_retrain_runs_in_the_foreground(db: Database, rs: Settings, tiny_base: Path, tmp_path: Path) -> None:
    make_task(db, tiny_base)
    add_labeled(db, "acme", 90, seed=9)
    env = {
        "FLYWHEEL_ARTIFACTS_DIR": str(tmp_path / "cli-artifacts"),
        "FLYWHEEL_HOLDOUT_PERCENT": str(HOLDOUT),
        "FLYWHEEL_FINE_TUNE_MIN_LABELS": "100000",
    }
    result = CliRunner().invoke(
        cli, ["--database-url", db.url, "retrain", "--task", TASK, "--no-progress"], env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    version = result.stdout.strip().splitlines()[-1]
    assert version == champion(db).version and champion(db).rung == "few_shot"
    assert "decision: promoted" in result.stderr
    bad = CliRunner().invoke(cli, ["--database-url", db.url, "retrain", "--task", "nope"], env=env)
    assert bad.exit_code != 0 and "does not exist" in bad.output


def test_synthetic_data_is_what_the_tests_think() -> None:
    texts, ys = synthetic(30, 0)
    assert len(texts) == 30 and set(ys) == set(LABELS)


def test_a_breached_sla_queues_an_early_run_and_sets_the_gate_threshold(
    db: Database, rs: Settings, tiny_base: Path
) -> None:
    from flywheel.models.slas import Sla, SlaEvaluation

    make_task(db, tiny_base)
    settings = rs.with_(early_retrain_new_labels=10**6)
    now = utcnow()
    with db.session() as session:
        task_id = session.scalar(select(Task.id).where(Task.name == TASK))
        acme_id = session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))
        sla = Sla(
            tenant_id=acme_id,
            task_id=task_id,
            metric="accuracy",
            threshold=0.9,
            window_days=7,
            min_labeled=10,
            warning_margin=0.02,
        )
        session.add(sla)
        session.flush()

        def evaluation(status: str, at: timedelta) -> SlaEvaluation:
            return SlaEvaluation(
                sla_id=sla.id,
                tenant_id=acme_id,
                task_id=task_id,
                sla_version=1,
                metric="accuracy",
                threshold=0.9,
                window_days=7,
                window_start=now - timedelta(days=7),
                window_end=now,
                value=0.5,
                n_labeled=50,
                n_predictions=60,
                status=status,
                evaluated_at=now + at,
            )

        session.add(evaluation("met", timedelta(seconds=-10)))
        session.flush()
        assert pipeline.sla_thresholds(session, task_id or 0) == {"acme": [("accuracy", 0.9)]}
    assert jobs.check_early_retrain(db, settings) == []  # met: nothing to do
    with db.session() as session:
        session.add(evaluation("breached", timedelta(0)))
    queued = jobs.check_early_retrain(db, settings)
    assert len(queued) == 1
    run = get_run(db, queued[0])
    assert (run.trigger, run.tenant_id) == ("early:sla", None)  # acme is served by the shared model
    assert jobs.check_early_retrain(db, settings) == []  # queued already; then debounced
