"""The training run's stages and their typed results: what they decide, and the shapes stored from them."""

from __future__ import annotations

import math

import pytest

from flywheel.models.training import ModelVersion
from flywheel.retrain.dataset import LabeledSet, TrainingData
from flywheel.retrain.finetune import EarlyStopping, EpochResult, FineTuneStats
from flywheel.retrain.gate import Evaluation, GatePolicy
from flywheel.retrain.pipeline import (
    Candidate,
    ChampionEvaluation,
    OptimizationCheck,
    RunInputs,
    RunMetrics,
    best_candidate,
    gate_record,
    judge,
)

from support import gate as paired


def ev(accuracy: float, n: int = 100, **tenants: float) -> Evaluation:
    return Evaluation(
        overall={"n": float(n), "accuracy": accuracy},
        tenants={slug: {"n": 50.0, "accuracy": acc} for slug, acc in tenants.items()},
    )


def stats(history: list[EpochResult]) -> FineTuneStats:
    return FineTuneStats(
        train_samples=90,
        val_samples=10,
        steps=12,
        epochs_run=len(history),
        best_epoch=1,
        stopped_early=False,
        history=history,
        metrics={"val_loss": 0.5, "val_accuracy": 0.9},
        class_weights=[1.0, 2.0],
        probe_train_accuracy=None,
        device="cpu",
        precision="fp32",
        samples_seen=180,
        train_seconds=1.5,
        samples_per_second=120.0,
        wall_seconds=2.0,
        config={"epochs": 2},
    )


def inputs(*, tenant_id: int | None = None, champion: ModelVersion | None = None) -> RunInputs:
    data = TrainingData(
        task_id=1, tenant_id=tenant_id, labels=["a", "b"], train=LabeledSet(), holdout=LabeledSet(), excluded=0
    )
    return RunInputs(
        run_id=1,
        task_name="support",
        base=None,
        data=data,
        lineage=data.lineage(),
        champion=champion,
        variant_tenants=["acme"],
        slas={},
    )


def test_run_metrics_are_stored_in_the_shape_the_api_returns() -> None:
    candidate = ev(0.9, acme=0.8)
    metrics = RunMetrics(
        rung="fine_tuned",
        metric="accuracy",
        candidate=candidate,
        champion=ChampionEvaluation("support-v1", ev(0.8)),
        alternatives={"few_shot": {"n": 100.0, "accuracy": 0.85}},
        training={"steps": 12},
        optimization=OptimizationCheck(agreement=0.995, accepted=True),
    ).to_dict()
    assert list(metrics) == [
        "rung",
        "metric",
        "candidate",
        "champion",
        "champion_version",
        "alternatives",
        "training",
        "optimization",
        "gate",
    ]
    assert metrics["candidate"] == {
        "overall": {"n": 100.0, "accuracy": 0.9},
        "tenants": {"acme": {"n": 50.0, "accuracy": 0.8}},
    }
    assert metrics["champion"] == {"overall": {"n": 100.0, "accuracy": 0.8}, "tenants": {}}
    assert metrics["champion_version"] == "support-v1"
    assert metrics["optimization"] == {"agreement": 0.995, "accepted": True}
    bare = RunMetrics("few_shot", "accuracy", candidate, ChampionEvaluation(None, None), {}, {}, None).to_dict()
    assert (bare["champion"], bare["champion_version"], bare["optimization"]) == (None, None, None)


def test_fine_tune_stats_record_each_epoch_and_the_training_summary_leaves_out_the_bulky_parts() -> None:
    history = [EpochResult(1, 6), EpochResult(2, 12, val_loss=0.5, val_accuracy=0.9)]
    record = stats(history).to_dict()
    assert record["history"] == [
        {"epoch": 1, "steps": 6},
        {"epoch": 2, "steps": 12, "val_loss": 0.5, "val_accuracy": 0.9},
    ]
    assert list(record)[:6] == ["train_samples", "val_samples", "steps", "epochs_run", "best_epoch", "stopped_early"]
    summary = Candidate("fine_tuned", None, ev(0.9), stats(history)).training_summary()
    assert "history" not in summary and "class_weights" not in summary and summary["steps"] == 12
    assert Candidate("few_shot", None, ev(0.9)).training_summary() == {}


def test_a_run_with_a_non_finite_validation_score_did_not_finish_cleanly() -> None:
    assert Candidate("few_shot", None, ev(0.9)).finished_cleanly()
    assert Candidate("fine_tuned", None, ev(0.9), stats([EpochResult(1, 6, 0.5, 0.9)])).finished_cleanly()
    broken = Candidate("fine_tuned", None, ev(0.9), stats([EpochResult(1, 6, math.nan, 0.9)]))
    assert not broken.finished_cleanly()
    decision = judge(inputs(), broken, ChampionEvaluation(None, None), GatePolicy())
    assert not decision.promote and decision.reasons == ["the training run did not finish cleanly"]


def test_the_best_candidate_by_the_gate_rule_ties_keep_the_head() -> None:
    champion = ChampionEvaluation("support-v1", paired.ev(0.70))
    head = Candidate("few_shot", None, paired.ev(0.80))
    same = Candidate("fine_tuned", None, paired.ev(0.80))
    judged = [(c, judge(inputs(), c, champion, GatePolicy())) for c in (head, same)]
    assert best_candidate(judged, "accuracy")[0] is head
    better = Candidate("fine_tuned", None, paired.ev(0.90))
    judged = [(c, judge(inputs(), c, champion, GatePolicy())) for c in (head, better)]
    best, decision = best_candidate(judged, "accuracy")
    assert best is better and decision.promote
    record = gate_record(judged, best, decision, "accuracy")
    assert record["paired"]["difference"] == pytest.approx(0.2) and record["paired"]["tenants"]["solo"]["n"] == 200
    assert [(c["rung"], c["verdict"], c["chosen"]) for c in record["candidates"]] == [
        ("few_shot", "promoted", False),
        ("fine_tuned", "promoted", True),
    ]
    assert record["candidates"][0]["paired"]["ci_low"] > 0
    # One the gate refuses never goes on over one it promotes, whatever its point estimate.
    refused = (better, judge(inputs(), better, champion, GatePolicy()))
    refused = (better, type(refused[1])(False, ["no"], refused[1].paired))
    assert best_candidate([(head, judged[0][1]), refused], "accuracy")[0] is head
    # Without a champion to pair with, the highest holdout value goes on.
    alone = [(c, judge(inputs(), c, ChampionEvaluation(None, None), GatePolicy())) for c in (head, better)]
    assert best_candidate(alone, "accuracy")[0] is better
    assert gate_record(alone, better, alone[1][1], "accuracy")["paired"] is None


def test_judge_holds_a_variant_to_a_gain_over_the_shared_model_and_notes_an_unloadable_champion() -> None:
    shared = ModelVersion(version="support-v2", tenant_id=None)
    same = Candidate("fine_tuned", None, paired.ev(0.8))
    champion = ChampionEvaluation("support-v2", paired.ev(0.8))
    refused = judge(inputs(tenant_id=7, champion=shared), same, champion, GatePolicy())
    assert not refused.promote and "does not beat the current model" in refused.reasons[0]
    # The shared model is within tolerance of itself, and not judged on tenants with variants of their own.
    regressing_on_acme = Candidate("few_shot", None, paired.ev(acme=(0.1, 100), globex=(1.0, 400)))
    champion = ChampionEvaluation("support-v2", paired.ev(acme=(0.9, 100), globex=(0.7, 400)))
    shared_run = judge(inputs(champion=shared), regressing_on_acme, champion, GatePolicy())
    assert shared_run.promote
    note = "the champion support-v2 could not be evaluated (gone); compared with none"
    noted = judge(inputs(champion=shared), same, ChampionEvaluation("support-v2", None, note), GatePolicy())
    assert noted.promote and noted.reasons[-1] == note


def test_early_stopping_waits_for_patience_and_restores_the_best_epoch() -> None:
    import torch

    model = torch.nn.Linear(2, 2)
    stopping = EarlyStopping("val_loss", patience=2, min_delta=1e-4)
    stopping.update(1, accuracy=0.5, loss=1.0, model=model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    stopping.update(2, accuracy=0.6, loss=0.4, model=model)  # best: its weights are kept
    best = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.fill_(-1.0)
    stopping.update(3, accuracy=0.5, loss=0.40005, model=model)  # within min_delta; lower accuracy breaks the tie
    assert (stopping.best_epoch, stopping.bad_epochs, stopping.should_stop) == (2, 1, False)
    stopping.update(4, accuracy=0.9, loss=0.7, model=model)
    assert stopping.should_stop
    stopping.restore_best(model, epochs_run=4)
    assert torch.equal(model.weight, best)
    with pytest.raises(ValueError, match="monitor must be"):
        EarlyStopping("f1", patience=1, min_delta=0.0).update(1, accuracy=0.5, loss=1.0, model=model)
