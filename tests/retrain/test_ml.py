"""The model ladder's ML: zero-shot, few-shot head, fine-tuning (tiny BertConfig model), save/load, ONNX INT8 check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flywheel.retrain import classifiers
from flywheel.retrain.classifiers import (
    FALLBACK_MARGIN,
    ONNX_FILE,
    OPTIMIZED_PRECISION,
    FewShotClassifier,
    FineTunedClassifier,
    TextClassifier,
    ZeroShotClassifier,
    build_zero_shot,
    load_classifier,
    read_metadata,
    train_few_shot,
    verify_optimized,
)
from flywheel.retrain.finetune import FineTuneConfig, balanced_class_weights, fine_tune, make_batches

from support.retrain import LABELS, synthetic_per_label

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def tiny_config(base: Path, **changes: object) -> FineTuneConfig:
    values: dict[str, object] = {
        "base_model": str(base),
        "epochs": 6,
        "batch_size": 16,
        "learning_rate": 3e-3,
        "max_length": 16,
        "device": "cpu",
        "seed": 0,
        "patience": 3,
    }
    values.update(changes)
    return FineTuneConfig(**values)  # type: ignore[arg-type]


def test_fine_tune_trains_saves_reloads_and_predicts(tiny_base: Path, tmp_path: Path) -> None:
    texts, ys = synthetic_per_label({"card": 60, "refund": 60, "login": 60}, seed=1)
    calls: list[tuple[float, str]] = []
    clf, stats = fine_tune(texts, ys, LABELS, config=tiny_config(tiny_base), progress=lambda f, m: calls.append((f, m)))
    assert isinstance(clf, TextClassifier) and clf.rung == "fine_tuned"
    assert stats.train_samples + stats.val_samples == 180 and stats.val_samples == 18
    assert stats.precision == "fp32" and stats.device == "cpu"
    assert stats.steps > 0 and stats.samples_per_second > 0
    # Progress is reported as it runs, never goes backwards, and ends at 1.0.
    fractions = [f for f, _ in calls]
    assert len(calls) > 5 and fractions == sorted(fractions) and fractions[-1] == 1.0

    test_texts, test_y = synthetic_per_label({"card": 20, "refund": 20, "login": 20}, seed=2)
    proba = clf.predict_proba(test_texts)
    assert proba.shape == (60, 3) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    accuracy = np.mean(np.array(LABELS)[proba.argmax(1)] == np.array(test_y))
    assert accuracy >= 0.9, accuracy

    out = tmp_path / "model"
    lineage = {"prediction_ids_sha256": "abc", "tenants": [1, 2]}
    clf.save(out, metadata={"lineage": lineage, "metrics": {"holdout_accuracy": float(accuracy)}})
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert (out / "tokenizer_config.json").exists()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["rung"] == "fine_tuned" and meta["labels"] == LABELS and meta["base_model"] == str(tiny_base)
    assert meta["lineage"] == lineage and meta["metrics"]["holdout_accuracy"] == float(accuracy)
    assert meta["training_seconds"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "card", "1": "refund", "2": "login"}

    again = load_classifier(out, device="cpu")
    assert isinstance(again, FineTunedClassifier) and again.labels == LABELS
    np.testing.assert_allclose(again.predict_proba(test_texts), proba, atol=1e-5)


def test_fine_tune_is_seeded(tiny_base: Path) -> None:
    texts, ys = synthetic_per_label({"card": 30, "refund": 30, "login": 30}, seed=3)
    cfg = tiny_config(tiny_base, epochs=2)
    a, _ = fine_tune(texts, ys, LABELS, config=cfg)
    b, _ = fine_tune(texts, ys, LABELS, config=cfg)
    c, _ = fine_tune(texts, ys, LABELS, config=tiny_config(tiny_base, epochs=2, seed=1))
    probe = texts[:20]
    np.testing.assert_allclose(a.predict_proba(probe), b.predict_proba(probe), atol=1e-6)
    assert not np.allclose(a.predict_proba(probe), c.predict_proba(probe), atol=1e-4)


def test_class_weights_favor_the_rare_label(tiny_base: Path) -> None:
    texts, ys = synthetic_per_label({"card": 150, "refund": 12, "login": 150}, seed=4)
    weights = balanced_class_weights(np.array([LABELS.index(v) for v in ys]), 3)
    assert weights[1] > 5 * weights[0]
    # A random head and CLS pooling: only the loss weighting differs between the two runs.
    common = {"epochs": 2, "val_fraction": 0.0, "head_init": "random", "pooling": "cls"}
    weighted, stats_w = fine_tune(texts, ys, LABELS, config=tiny_config(tiny_base, **common))
    plain, stats_p = fine_tune(texts, ys, LABELS, config=tiny_config(tiny_base, class_weights=False, **common))
    assert stats_w.class_weights[1] == pytest.approx(float(weights[1]), rel=1e-3)
    assert stats_p.class_weights is None
    probe, _ = synthetic_per_label({"card": 20, "refund": 20, "login": 20}, seed=5)
    # After two short epochs the unweighted model gives the rare label little mass; the weighted one far more.
    assert weighted.predict_proba(probe)[:, 1].mean() > 2 * plain.predict_proba(probe)[:, 1].mean()


def test_early_stopping_stops_and_restores_the_best_epoch(tiny_base: Path) -> None:
    texts, _ = synthetic_per_label({"card": 40, "refund": 40, "login": 40}, seed=6)
    noise = list(np.random.default_rng(0).choice(LABELS, size=len(texts)))  # unlearnable: validation loss rises
    cfg = tiny_config(tiny_base, epochs=30, patience=2, val_fraction=0.25, learning_rate=3e-3, monitor="val_loss")
    _, stats = fine_tune(texts, noise, LABELS, config=cfg)
    assert stats.stopped_early is True
    assert stats.epochs_run < 30 and stats.epochs_run == stats.best_epoch + 2
    losses = [h.val_loss for h in stats.history]
    assert stats.metrics["val_loss"] == min(losses)


def test_linear_probe_head_starts_where_the_few_shot_head_ends(tiny_base: Path) -> None:
    texts, ys = synthetic_per_label({"card": 60, "refund": 60, "login": 60}, seed=9)
    probe, probe_y = synthetic_per_label({"card": 20, "refund": 20, "login": 20}, seed=10)
    # One step at a negligible learning rate: the model is (almost exactly) its initialization.
    frozen = {"max_steps": 1, "learning_rate": 1e-12, "val_fraction": 0.0}
    lp, stats = fine_tune(texts, ys, LABELS, config=tiny_config(tiny_base, head_init="linear_probe", **frozen))
    rnd, _ = fine_tune(texts, ys, LABELS, config=tiny_config(tiny_base, head_init="random", **frozen))
    assert stats.probe_train_accuracy >= 0.9
    assert accuracy(lp, probe, probe_y) >= 0.8 > accuracy(rnd, probe, probe_y) + 0.3


def test_mean_pooling_model_reproduces_the_base_encoder() -> None:
    import torch

    from flywheel.domain.encoder import base_model_path, load_encoder
    from flywheel.retrain.architectures import load_model_for_training
    from flywheel.retrain.finetune import collate, tokenize

    texts = ["I am still waiting on my card?", "How do I top up with apple pay", "refund please"]
    tokenizer, model = load_model_for_training(base_model_path(), ["a", "b"], pooling="mean")
    model.eval()
    captured: list[np.ndarray] = []
    model.classifier.register_forward_hook(lambda _m, i, _o: captured.append(i[0].numpy()))
    with torch.no_grad():
        model(**collate(tokenize(tokenizer, texts, 64), np.arange(3), tokenizer.pad_token_id))
    # The classifier sees exactly the sentence embedding the frozen rungs use.
    np.testing.assert_allclose(captured[0], load_encoder().embed(texts), atol=1e-5)


def test_make_batches_cover_every_example_once_and_group_by_length() -> None:
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(3, 60, size=1000))
    batches = make_batches(lengths, 32, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    spread = np.mean([np.ptp(np.asarray(lengths)[b]) for b in batches if len(b) == 32])
    random_spread = np.mean([np.ptp(np.asarray(lengths)[rng.permutation(1000)[:32]]) for _ in range(20)])
    assert spread < random_spread / 4


def _op_types(data: bytes) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load_from_string(data).graph.node}


def test_verify_optimized_gates_the_onnx_int8_variant(tiny_base: Path, tmp_path: Path) -> None:
    texts, ys = synthetic_per_label({"card": 50, "refund": 50, "login": 50}, seed=7)
    clf, _ = fine_tune(texts, ys, LABELS, config=tiny_config(tiny_base, epochs=4))  # mean pooling (the default)
    out = tmp_path / "model"
    clf.save(out, metadata={})
    fp32 = load_classifier(out, device="cpu")
    assert isinstance(fp32, FineTunedClassifier)
    holdout, _ = synthetic_per_label({"card": 30, "refund": 30, "login": 30}, seed=8)

    # Not verified yet: optimize=True still serves fp32.
    assert load_classifier(out, device="cpu", optimize=True).precision == "fp32"  # type: ignore[union-attr]

    fast = fp32.optimized()
    assert fast.precision == OPTIMIZED_PRECISION and fast.session is not None and fast.fallback is fp32
    assert fp32.optimized() is fast  # built once
    # Exported, fused by ONNX Runtime's BERT optimizer (attention, residual + LayerNorm) and INT8. (The embedding
    # LayerNorm is fused too on a real model; not on this one, whose vocabulary is smaller than its positions.)
    assert fast.onnx_model is not None
    ops = _op_types(fast.onnx_model)
    assert "SkipLayerNormalization" in ops
    assert ops & {"QAttention", "Attention"} and ops & {"DynamicQuantizeMatMul", "MatMulInteger"}
    ref, got = fp32.logits(holdout), fast.logits(holdout)
    raw = fast._forward(holdout, 32)  # without the fp32 re-scoring of near ties
    # INT8 noise, not a different model: within a fifth of the logits' scale. The noise depends on the CPU's
    # integer kernels (1.5 against logits of about 9 on an AVX2-only EPYC).
    assert np.abs(ref - raw).max() < 0.2 * np.abs(ref).max()
    expected = float(np.mean(ref.argmax(1) == got.argmax(1)))
    assert expected >= 0.95

    # An impossible bar is refused, and load keeps serving fp32 (and no ONNX file is kept).
    agreement, accepted = verify_optimized(fp32, holdout, min_agreement=1.01)
    assert agreement == pytest.approx(expected) and accepted is False
    assert read_metadata(out)["optimization"]["accepted"] is False
    assert not (out / ONNX_FILE).exists()
    assert load_classifier(out, device="cpu", optimize=True).precision == "fp32"  # type: ignore[union-attr]
    # A bar it meets is recorded in metadata.json with the ONNX file beside it, and load then serves ONNX INT8.
    agreement, accepted = verify_optimized(fp32, holdout, min_agreement=min(expected, 0.99))
    assert accepted is True
    record = read_metadata(out)["optimization"]
    assert {k: v for k, v in record.items() if k not in ("onnx_sha256", "onnxruntime")} == {
        "precision": OPTIMIZED_PRECISION,
        "agreement": round(expected, 6),
        "accepted": True,
        "min_agreement": min(expected, 0.99),
        "checked_on": 90,
        "fallback_margin": FALLBACK_MARGIN,
    }
    assert (out / ONNX_FILE).read_bytes() == fast.onnx_model
    served = load_classifier(out, device="cpu", optimize=True)
    assert isinstance(served, FineTunedClassifier) and served.precision == OPTIMIZED_PRECISION
    np.testing.assert_allclose(served.logits(holdout), got, atol=1e-5)
    assert served.predict_proba(holdout).shape == (90, 3)

    # Missing file: rebuilt from the fp32 weights, the same bytes, so still served. A record of another model: fp32.
    (out / ONNX_FILE).unlink()
    rebuilt = load_classifier(out, device="cpu", optimize=True)
    assert rebuilt.precision == OPTIMIZED_PRECISION  # type: ignore[union-attr]
    meta = read_metadata(out)
    meta["optimization"]["onnx_sha256"] = "0" * 64
    (out / "metadata.json").write_text(json.dumps(meta))
    assert load_classifier(out, device="cpu", optimize=True).precision == "fp32"  # type: ignore[union-attr]


def test_verified_variant_is_saved_with_a_model_checked_before_saving(tiny_base: Path, tmp_path: Path) -> None:
    """The training job verifies the fresh classifier, then saves it: the ONNX file goes with it."""
    texts, ys = synthetic_per_label({"card": 40, "refund": 40, "login": 40}, seed=3)
    clf, _ = fine_tune(texts, ys, LABELS, config=tiny_config(tiny_base, epochs=3, pooling="cls"))
    holdout, _ = synthetic_per_label({"card": 20, "refund": 20, "login": 20}, seed=4)
    agreement, accepted = verify_optimized(clf, holdout, min_agreement=0.9)
    assert accepted is True and agreement >= 0.9
    clf.save(tmp_path / "m", metadata={})
    assert (tmp_path / "m" / ONNX_FILE).exists()
    served = load_classifier(tmp_path / "m", device="cpu", optimize=True)
    assert served.precision == OPTIMIZED_PRECISION  # type: ignore[union-attr]
    assert float(np.mean(served.predict_proba(holdout).argmax(1) == clf.predict_proba(holdout).argmax(1))) >= 0.9


def test_without_onnxruntime_fp32_is_served(tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts, ys = synthetic_per_label({"card": 20, "refund": 20, "login": 20}, seed=5)
    clf, _ = fine_tune(texts, ys, LABELS, config=tiny_config(tiny_base, epochs=1))
    holdout, _ = synthetic_per_label({"card": 5, "refund": 5, "login": 5}, seed=6)
    verify_optimized(clf, holdout, min_agreement=0.0)
    clf.save(tmp_path / "m", metadata={})
    monkeypatch.setattr(classifiers, "onnxruntime_available", lambda: False)
    assert load_classifier(tmp_path / "m", device="cpu", optimize=True).precision == "fp32"  # type: ignore[union-attr]
    fresh = load_classifier(tmp_path / "m", device="cpu")
    assert fresh.optimized() is fresh  # type: ignore[union-attr]
    assert verify_optimized(fresh, holdout) == (1.0, False)


# ------------------------------------------------------------------------------------- real base, real text


def banking_slice(n_labels: int, train_per_label: int, test_per_label: int) -> tuple[list[str], ...]:
    import csv

    if not (DATA / "banking77" / "train.csv").exists():
        pytest.skip(f"../shared/data not present: {DATA}")

    def read(name: str) -> list[dict[str, str]]:
        with (DATA / "banking77" / name).open(newline="") as fh:
            return list(csv.DictReader(fh))

    train, test = read("train.csv"), read("test.csv")
    labels = sorted({r["label"] for r in train})[:: 77 // n_labels][:n_labels]

    def take(rows: list[dict[str, str]], per: int) -> tuple[list[str], list[str]]:
        out: dict[str, list[str]] = {label: [] for label in labels}
        for r in rows:
            if r["label"] in out and len(out[r["label"]]) < per:
                out[r["label"]].append(r["text"])
        pairs = [(t, label) for label in labels for t in out[label]]
        return [t for t, _ in pairs], [label for _, label in pairs]

    tr_x, tr_y = take(train, train_per_label)
    te_x, te_y = take(test, test_per_label)
    return labels, tr_x, tr_y, te_x, te_y


def accuracy(clf: TextClassifier, texts: list[str], ys: list[str]) -> float:
    return float(np.mean(np.array(clf.labels)[clf.predict_proba(texts).argmax(1)] == np.array(ys)))


def test_real_base_loads_from_the_package() -> None:
    from flywheel.domain.encoder import base_model_path
    from flywheel.retrain.architectures import load_model_for_training

    base = base_model_path()
    assert (base / "config.json").exists()
    tokenizer, model = load_model_for_training(base, ["a", "b", "c"])
    assert model.config.num_labels == 3 and model.config.hidden_size == 384
    assert tokenizer("card arrival")["input_ids"][0] == tokenizer.cls_token_id


def test_zero_shot_and_few_shot_beat_chance_on_banking77(tmp_path: Path) -> None:
    labels, tr_x, tr_y, te_x, te_y = banking_slice(n_labels=12, train_per_label=8, test_per_label=15)
    chance = 1 / len(labels)

    zero = build_zero_shot(labels)
    zero_acc = accuracy(zero, te_x, te_y)
    assert zero_acc > 4 * chance, zero_acc

    few = train_few_shot(tr_x, tr_y, labels, seed=0)
    few_acc = accuracy(few, te_x, te_y)
    assert few_acc > 7 * chance and few_acc > zero_acc, (few_acc, zero_acc)

    for clf, name in ((zero, "zero"), (few, "few")):
        clf.save(tmp_path / name, metadata={"lineage": {"n": len(tr_x)}})
        again = load_classifier(tmp_path / name)
        assert isinstance(again, ZeroShotClassifier | FewShotClassifier) and again.rung == clf.rung
        np.testing.assert_allclose(again.predict_proba(te_x[:10]), clf.predict_proba(te_x[:10]), atol=1e-5)
        assert read_metadata(tmp_path / name)["lineage"] == {"n": len(tr_x)}
    # Zero-shot and few-shot have no optimized variant.
    assert verify_optimized(few, te_x[:5]) == (1.0, False)


def test_zero_shot_uses_label_descriptions() -> None:
    labels, _, _, te_x, te_y = banking_slice(n_labels=12, train_per_label=0, test_per_label=15)
    codes = [f"L{i:02d}" for i in range(len(labels))]
    code_of = dict(zip(labels, codes, strict=True))
    y_codes = [code_of[v] for v in te_y]
    bare = build_zero_shot(codes)
    described = build_zero_shot(codes, descriptions={code_of[lb]: lb.replace("_", " ") for lb in labels})
    assert accuracy(described, te_x, y_codes) > accuracy(bare, te_x, y_codes) + 0.3


def test_few_shot_takes_cached_embeddings_and_keeps_unseen_labels_at_zero() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    X = np.concatenate([c + 0.1 * rng.normal(size=(10, 16)) for c in centers]).astype(np.float32)
    y = np.repeat([0, 1, 3], 10)  # label index 2 ("d") has no example
    clf = train_few_shot([""] * 30, y, ["a", "b", "d", "c"], embeddings=X)
    proba = clf.predict_proba_embeddings(X)
    assert proba.shape == (30, 4) and np.all(proba[:, 2] == 0)
    assert np.mean(proba.argmax(1) == y) == 1.0
    with pytest.raises(ValueError, match="not in the task's label set"):
        train_few_shot(["x", "y"], ["a", "zzz"], ["a", "b"], embeddings=X[:2])


def test_few_shot_weights_each_example_and_a_zero_weight_leaves_it_out() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(3, 16))
    X = np.concatenate([c + 0.3 * rng.normal(size=(20, 16)) for c in centers]).astype(np.float32)
    y = np.repeat([0, 1, 2], 20)
    noisy = y.copy()
    noisy[:6] = 1  # six of class 0 mislabeled as 1
    weights = np.ones(len(y))
    weights[:6] = 0.0
    labels = ["a", "b", "c"]
    dropped = train_few_shot([""] * 54, noisy[6:], labels, embeddings=X[6:])
    zeroed = train_few_shot([""] * 60, noisy, labels, embeddings=X, sample_weight=weights)
    plain = train_few_shot([""] * 60, noisy, labels, embeddings=X)
    np.testing.assert_allclose(zeroed.predict_proba_embeddings(X), dropped.predict_proba_embeddings(X), atol=1e-3)
    assert not np.allclose(plain.predict_proba_embeddings(X), dropped.predict_proba_embeddings(X), atol=1e-3)
    assert zeroed.train_info["weighted_samples"] == 6 and plain.train_info["weighted_samples"] == 0
    with pytest.raises(ValueError, match="sample_weight"):
        train_few_shot([""] * 60, noisy, labels, embeddings=X, sample_weight=weights[:10])


def test_fine_tune_weights_each_example(tiny_base: Path) -> None:
    texts, ys = synthetic_per_label({"card": 30, "refund": 30, "login": 30}, seed=7)
    cfg = tiny_config(tiny_base, epochs=2)
    plain, _ = fine_tune(texts, ys, LABELS, config=cfg)
    ones, _ = fine_tune(texts, ys, LABELS, config=cfg, sample_weight=np.ones(len(ys)))
    # half the examples at weight 0.1: a different model from the same seed and batches
    tenth, _ = fine_tune(texts, ys, LABELS, config=cfg, sample_weight=np.where(np.arange(len(ys)) % 2, 1.0, 0.1))
    probe = texts[:20]
    # all-ones weights reproduce the class-weighted mean loss exactly
    np.testing.assert_allclose(ones.predict_proba(probe), plain.predict_proba(probe), atol=1e-5)
    assert not np.allclose(tenth.predict_proba(probe), plain.predict_proba(probe), atol=1e-4)
    with pytest.raises(ValueError, match="sample_weight"):
        fine_tune(texts, ys, LABELS, config=cfg, sample_weight=np.ones(3))


def test_the_knn_head_votes_by_nearest_neighbours_and_round_trips(tmp_path: Path) -> None:
    from flywheel.retrain.classifiers import KnnClassifier, load_classifier, train_knn

    rng = np.random.default_rng(0)
    centres = np.eye(4, 8, dtype=np.float32)
    y = [i % 3 for i in range(60)]  # label 3 ("d") never occurs
    x = centres[y] + rng.normal(scale=0.1, size=(60, 8)).astype(np.float32)
    knn = train_knn(y, ["a", "b", "c", "d"], embeddings=x, k=5)
    probe = centres[[0, 1, 2]] + 0.05
    proba = knn.predict_proba_embeddings(probe)
    assert proba.shape == (3, 4) and np.allclose(proba.sum(axis=1), 1.0)
    assert list(proba.argmax(axis=1)) == [0, 1, 2] and (proba[:, 3] == 0).all()
    knn.save(tmp_path / "knn", metadata={"lineage": {"n": 60}})
    loaded = load_classifier(tmp_path / "knn")
    assert isinstance(loaded, KnnClassifier) and loaded.rung == "few_shot" and loaded.k == 5
    assert np.allclose(loaded.predict_proba_embeddings(probe), proba, atol=1e-6)
