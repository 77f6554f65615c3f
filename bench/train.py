"""The model ladder on banking77: accuracy per rung, training throughput against a bare loop, inference speed.

    python bench/train.py --rungs zero,few,fine,infer                  # everything (a full CPU fine-tune is slow)
    python bench/train.py --rungs fine --max-steps 30 --throughput-steps 30   # CPU: bounded throughput check
    python bench/train.py --rungs infer --load-model DIR --raw-int8     # fp32 vs ONNX Runtime INT8 (saved model)

Rungs: ``zero`` (label-name embeddings, cosine), ``few`` (frozen embeddings + logistic regression, 10 per class and
all labels), ``fine`` (bf16 autocast on CUDA, fp32 on CPU; plus ``--throughput-steps`` steps of our loop and of a
bare PyTorch loop on the same batches, and optionally transformers' Trainer), ``infer`` (fp32 against the
optimized variant, ONNX Runtime INT8 on CPU, and a plain user's fp32 loop; samples/s at batch 32 in wall and CPU
seconds, p50 latency at batch 1 and 32, accuracy, agreement; the variants take turns, medians of ``--rounds``).
Prints a table; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77"


def read_split(data: Path, name: str) -> tuple[list[str], list[str]]:
    with (data / f"{name}.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def accuracy(proba: np.ndarray, labels: list[str], y: list[str]) -> float:
    return float(np.mean(np.array(labels)[proba.argmax(1)] == np.array(y)))


def per_class_sample(y: list[str], per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, label in enumerate(y):
        by.setdefault(label, []).append(i)
    picked = [i for label in sorted(by) for i in rng.permutation(by[label])[:per_class]]
    return np.array(sorted(picked))


# ------------------------------------------------------------------------------------------- training throughput


def bare_loop(args: argparse.Namespace, texts: list[str], y_idx: np.ndarray, labels: list[str], steps: int) -> dict:
    """A bare PyTorch loop on the batches fine_tune would draw first: forward, loss, backward, AdamW step.

    Batches are collated before the clock starts (the bare loop gets that for free), same precision, no
    scheduler, class weights, gradient clipping or progress reporting."""
    import torch

    from flywheel.domain.encoder import base_model_path
    from flywheel.retrain.architectures import load_model_for_training
    from flywheel.retrain.finetune import (
        _autocast,
        collate,
        make_batches,
        resolve_precision,
        split_validation,
        tokenize,
    )

    device = args.device
    precision = resolve_precision(device, args.precision)
    torch.manual_seed(args.seed)
    tokenizer, model = load_model_for_training(base_model_path(args.base), labels, pooling=args.pooling)
    model.to(device).train()
    train_idx, _ = split_validation(y_idx, 0.0, args.seed)
    ids = tokenize(tokenizer, [texts[i] for i in train_idx], args.max_length)
    yt = torch.tensor(y_idx[train_idx])
    rng = np.random.default_rng(args.seed)
    batches: list[Any] = []
    while len(batches) < steps:
        batches += make_batches([len(r) for r in ids], args.batch_size, rng)
    batches = batches[:steps]
    pad = int(tokenizer.pad_token_id or 0)
    ready = [({k: v.to(device) for k, v in collate(ids, b, pad).items()}, yt[b].to(device)) for b in batches]
    kwargs: dict[str, Any] = {"fused": True} if device.startswith("cuda") else {}
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, **kwargs)
    loss_fn = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    for batch, target in ready:
        with _autocast(precision):
            logits = model(**batch).logits
        loss = loss_fn(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    sync()
    seconds = time.perf_counter() - started
    n = sum(len(b) for b in batches)
    return {"steps": steps, "samples": n, "seconds": round(seconds, 3), "samples_per_second": round(n / seconds, 2)}


def trainer_loop(args: argparse.Namespace, texts: list[str], y_idx: np.ndarray, labels: list[str], steps: int) -> dict:
    """transformers' Trainer on the same data and precision, for the record (needs ``accelerate``)."""
    import tempfile

    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from flywheel.domain.encoder import base_model_path
    from flywheel.retrain.architectures import load_model_for_training
    from flywheel.retrain.finetune import resolve_precision

    precision = resolve_precision(args.device, args.precision)
    torch.manual_seed(args.seed)
    tokenizer, model = load_model_for_training(base_model_path(args.base), labels, pooling=args.pooling)
    enc = tokenizer(texts, truncation=True, max_length=args.max_length)
    data = [{"input_ids": enc["input_ids"][i], "labels": int(y_idx[i])} for i in range(len(texts))]
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            max_steps=steps,
            learning_rate=args.lr,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            use_cpu=not args.device.startswith("cuda"),
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=args.seed,
            train_sampling_strategy="group_by_length",
        )
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=data,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
        )
        out = trainer.train()
    return {
        "steps": steps,
        "seconds": round(float(out.metrics["train_runtime"]), 3),
        "samples_per_second": round(float(out.metrics["train_samples_per_second"]), 2),
    }


# ----------------------------------------------------------------------------------------------------- inference


class PlainFp32:
    """What a plain user runs: batches in the given order, ``tokenizer(padding=True, truncation=True)``, the model
    in eval mode under ``torch.inference_mode()``. Our fp32 path differs only in sorting texts by length first."""

    def __init__(self, clf: Any) -> None:
        self.clf, self.device, self.labels = clf, clf.device, clf.labels

    def predict_proba(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        import torch

        from flywheel.retrain.classifiers import _softmax

        out = []
        self.clf.model.eval()
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = self.clf.tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.clf.max_length,
                    return_tensors="pt",
                )
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                out.append(self.clf.model(**enc).logits.float().cpu().numpy())
        return _softmax(np.concatenate(out))


def time_inference(variants: dict[str, Any], texts: list[str], *, rounds: int, latency_calls: int) -> dict:
    """Per variant: samples/s over ``texts`` in batches of 32 (wall and CPU seconds of this process, all its
    threads), and p50 latency of one ``predict_proba`` call of 1 and of 32 texts. The variants take turns in every
    round on the same texts (interleaved, so a busy spell of the shared machine hits all of them); medians."""
    figures: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": [], "b1": [], "b32": []} for n in variants}
    for model in variants.values():  # warm-up
        model.predict_proba(texts[:64], batch_size=32)
    for r in range(rounds):
        for name, model in variants.items():
            sync = _syncer(model.device)
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            model.predict_proba(texts, batch_size=32)
            sync()
            figures[name]["wall"].append(len(texts) / (time.perf_counter() - t0))
            cpu = time.process_time() - c0
            figures[name]["cpu"].append(len(texts) / cpu if cpu else float("nan"))
            for size, key, calls in ((1, "b1", latency_calls), (32, "b32", max(1, latency_calls // 5))):
                for j in range(calls):
                    k = (r * calls + j) * size % max(1, len(texts) - size)
                    sync()
                    t0 = time.perf_counter()
                    model.predict_proba(texts[k : k + size], batch_size=32)
                    sync()
                    figures[name][key].append(1000 * (time.perf_counter() - t0))
    med = statistics.median
    return {
        name: {
            "samples_per_second": round(med(f["wall"]), 1),
            "samples_per_cpu_second": round(med(f["cpu"]), 1),
            "p50_ms_batch1": round(med(f["b1"]), 2),
            "p50_ms_batch32": round(med(f["b32"]), 1),
        }
        for name, f in figures.items()
    }


def _syncer(device: str) -> Any:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def bench_inference(args: argparse.Namespace, clf: Any, test_x: list[str], test_y: list[str]) -> dict:
    """fp32 against the optimized variant (and, on CPU, a plain user's fp32 loop and INT8 without re-scoring)."""
    import dataclasses

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(test_x))
    speed_texts = [test_x[i] for i in order[: args.infer_n]]
    t0 = time.perf_counter()
    fast = clf.optimized()
    out: dict[str, Any] = {"optimized_precision": fast.precision, "build_seconds": round(time.perf_counter() - t0, 2)}
    variants: dict[str, Any] = {"fp32": clf}
    if clf.device == "cpu":
        variants["fp32_plain"] = PlainFp32(clf)
    variants[fast.precision] = fast
    if args.raw_int8 and fast.fallback is not None:  # the same INT8 model without the fp32 re-scoring of near ties
        variants["int8_raw"] = dataclasses.replace(fast, fallback=None)
    answers = {}
    for name, model in variants.items():
        p = model.predict_proba(test_x, batch_size=32)
        answers[name] = p.argmax(1)
        out[name] = {"accuracy": accuracy(p, clf.labels, test_y)}
        if name != "fp32":
            # What verify_optimized computes (on the whole test split here).
            out[name]["agreement"] = float(np.mean(answers["fp32"] == answers[name]))
    for name, figures in time_inference(
        variants, speed_texts, rounds=args.rounds, latency_calls=args.latency_rounds
    ).items():
        out[name].update(figures)
    out["agreement"] = out[fast.precision].get("agreement", 1.0)
    out["accepted"] = out["agreement"] >= 0.99
    if fast.fallback is not None:
        probe = fast._forward(test_x, 32)
        top2 = np.sort(probe, axis=1)[:, -2:]
        out["fallback_share"] = float(np.mean(top2[:, 1] - top2[:, 0] < fast.fallback_margin))
    return out


# ---------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--base", default=None, help="base model directory (default: packaged all-MiniLM-L6-v2)")
    ap.add_argument("--rungs", default="zero,few,fine,infer")
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--few-per-class", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--head-lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--monitor", default="val_accuracy", choices=["val_accuracy", "val_loss"])
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--pooling", default="mean", choices=["mean", "cls"])
    ap.add_argument("--head-init", default="linear_probe", choices=["linear_probe", "random"])
    ap.add_argument("--max-steps", type=int, default=None, help="cap the fine-tune (CPU throughput runs)")
    ap.add_argument("--throughput-steps", type=int, default=0, help="steps of the bare loop to compare with")
    ap.add_argument("--trainer", action="store_true", help="also time transformers' Trainer")
    ap.add_argument("--save-model", type=Path, default=None)
    ap.add_argument("--load-model", type=Path, default=None, help="skip training; use this fine-tuned model")
    ap.add_argument("--infer-n", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (medians)")
    ap.add_argument("--latency-rounds", type=int, default=10, help="batch-1 calls per round (a fifth at batch 32)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--raw-int8", action="store_true", help="also time INT8 without the fp32 re-scoring of near ties")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rungs = set(args.rungs.split(","))
    train_x, train_y = read_split(args.data, "train")
    test_x, test_y = read_split(args.data, "test")
    labels = sorted(set(train_y))
    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    results: dict[str, Any] = {
        "device": args.device,
        "card": card,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train": len(train_x),
        "test": len(test_x),
        "labels": len(labels),
    }
    rows: list[tuple[str, str, str]] = []

    def show(what: str, figure: str, note: str = "") -> None:
        rows.append((what, figure, note))
        print(f"  {what:<44} {figure:>14}  {note}", flush=True)

    print(f"banking77: {len(train_x)} train, {len(test_x)} test, {len(labels)} labels; device {args.device} ({card})")
    from flywheel.domain.encoder import load_encoder
    from flywheel.retrain.classifiers import build_zero_shot, train_few_shot

    if rungs & {"zero", "few"}:
        encoder = load_encoder(args.base, device=args.device)
        t0 = time.perf_counter()
        test_emb = encoder.embed(test_x, batch_size=128)
        results["embed_test_per_s"] = round(len(test_x) / (time.perf_counter() - t0), 1)
    if "zero" in rungs:
        zero = build_zero_shot(labels, base_model=args.base)
        results["zero_shot_accuracy"] = accuracy(zero.predict_proba_embeddings(test_emb), labels, test_y)
        show("zero-shot (label names)", f"{results['zero_shot_accuracy']:.2%}")
    if "few" in rungs:
        train_emb = encoder.embed(train_x, batch_size=128)
        idx = per_class_sample(train_y, args.few_per_class, args.seed)
        few = train_few_shot(
            [train_x[i] for i in idx], [train_y[i] for i in idx], labels, embeddings=train_emb[idx], seed=args.seed
        )
        results["few_shot_accuracy"] = accuracy(few.predict_proba_embeddings(test_emb), labels, test_y)
        show(f"few-shot head ({args.few_per_class}/class, {len(idx)} labels)", f"{results['few_shot_accuracy']:.2%}")
        full = train_few_shot(train_x, train_y, labels, embeddings=train_emb, seed=args.seed)
        results["frozen_all_accuracy"] = accuracy(full.predict_proba_embeddings(test_emb), labels, test_y)
        show(f"frozen head (all {len(train_x)} labels)", f"{results['frozen_all_accuracy']:.2%}")

    clf: Any = None
    if "fine" in rungs and args.load_model is None:
        from flywheel.retrain.finetune import FineTuneConfig, fine_tune

        y_idx = np.array([labels.index(v) for v in train_y])
        if args.throughput_steps:
            # Warm-up so neither timed loop pays it. On CUDA a first pass over the same batches: cuBLAS and the
            # allocator warm up per batch shape, and a 10-step warm-up left our loop (timed first) paying for it.
            warm = args.throughput_steps if args.device.startswith("cuda") else min(10, args.throughput_steps)
            bare_loop(args, train_x, y_idx, labels, warm)

        def config(**changes: Any) -> FineTuneConfig:
            values = dict(
                base_model=args.base,
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                head_learning_rate=args.head_lr,
                max_length=args.max_length,
                seed=args.seed,
                val_fraction=0.0 if args.max_steps else args.val_fraction,
                patience=args.patience,
                monitor=args.monitor,
                label_smoothing=args.label_smoothing,
                max_steps=args.max_steps,
                device=args.device,
                precision=args.precision,
                pooling=args.pooling,
                head_init=args.head_init,
            )
            values.update(changes)
            return FineTuneConfig(**values)

        if args.throughput_steps:
            # Our loop and the bare loop on the same first N batches (whole train split, no validation).
            _, matched_stats = fine_tune(
                train_x,
                train_y,
                labels,
                config=config(max_steps=args.throughput_steps, val_fraction=0.0, head_init="random"),
            )
            matched = matched_stats.to_dict()
            bare = bare_loop(args, train_x, y_idx, labels, args.throughput_steps)
            results["ours_matched"] = {
                k: matched[k] for k in ("steps", "samples_seen", "train_seconds", "samples_per_second")
            }
            results["bare_loop"] = bare
            ratio = matched["samples_per_second"] / bare["samples_per_second"]
            results["throughput_ratio"] = round(ratio, 3)
            show(
                f"fine_tune loop ({matched['steps']} steps, {matched['precision']})",
                f"{matched['samples_per_second']:.1f} samples/s",
                "",
            )
            show(
                f"bare PyTorch loop ({bare['steps']} steps, same batches)",
                f"{bare['samples_per_second']:.1f} samples/s",
                f"ours / bare = {ratio:.2f}x",
            )
            if args.trainer:
                try:
                    tr = trainer_loop(args, train_x, y_idx, labels, args.throughput_steps)
                    results["trainer"] = tr
                    show(
                        f"transformers Trainer ({tr['steps']} steps)",
                        f"{tr['samples_per_second']:.1f} samples/s",
                        f"ours / Trainer = {matched['samples_per_second'] / tr['samples_per_second']:.2f}x",
                    )
                except Exception as exc:  # the record only: Trainer needs accelerate
                    results["trainer"] = {"error": repr(exc)}
                    show("transformers Trainer", "n/a", repr(exc)[:80])
        cfg = config()
        last = [0.0]

        def progress(fraction: float, message: str) -> None:
            if fraction - last[0] >= 0.1 or fraction >= 1.0 or "done" in message:
                last[0] = fraction
                print(f"    [{fraction:5.1%}] {message}", flush=True)

        clf, fine_tune_stats = fine_tune(train_x, train_y, labels, config=cfg, progress=progress)
        stats = fine_tune_stats.to_dict()
        results["fine_tune"] = stats
        ours = stats["samples_per_second"]
        show(
            f"fine-tune train loop ({stats['precision']}, {stats['steps']} steps)",
            f"{ours:.1f} samples/s",
            f"train {stats['train_seconds']:.1f}s, wall {stats['wall_seconds']:.1f}s, epochs {stats['epochs_run']}",
        )
        if not args.max_steps:
            t0 = time.perf_counter()
            proba = clf.predict_proba(test_x, batch_size=128)
            results["fine_tuned_accuracy"] = accuracy(proba, labels, test_y)
            results["fine_tuned_val_accuracy"] = stats["metrics"].get("val_accuracy")
            show(
                "fine-tuned (test)",
                f"{results['fine_tuned_accuracy']:.2%}",
                f"val {stats['metrics'].get('val_accuracy', float('nan')):.2%}, best epoch {stats['best_epoch']}, "
                f"eval {len(test_x) / (time.perf_counter() - t0):.0f}/s",
            )
        if args.save_model:
            clf.save(
                args.save_model,
                metadata={
                    "lineage": {"dataset": "banking77/train.csv"},
                    "metrics": {"test_accuracy": results.get("fine_tuned_accuracy")},
                },
            )
    if args.load_model is not None:
        from flywheel.retrain.classifiers import load_classifier

        clf = load_classifier(args.load_model, device=args.device)
    if "infer" in rungs and clf is not None:
        inf = bench_inference(args, clf, test_x, test_y)
        results["inference"] = inf
        opt = inf["optimized_precision"]
        base = inf["fp32"]
        for name in ("fp32", "fp32_plain", opt, "int8_raw"):
            if name not in inf or (name == opt and opt == "fp32"):
                continue
            r = inf[name]
            show(
                f"inference {name}: batch 32",
                f"{r['samples_per_cpu_second']:.1f} samples/CPU-s",
                f"{r['samples_per_cpu_second'] / base['samples_per_cpu_second']:.2f}x CPU time; "
                f"wall {r['samples_per_second']:.1f}/s ({r['samples_per_second'] / base['samples_per_second']:.2f}x); "
                f"p50 {r['p50_ms_batch32']:.1f} ms/batch, batch 1 {r['p50_ms_batch1']:.2f} ms; acc {r['accuracy']:.2%}"
                + (f"; agreement {r['agreement']:.2%}" if "agreement" in r else ""),
            )
        for key, figure in (
            ("samples_per_cpu_second", "cpu_time_speedup_batch32"),
            ("samples_per_second", "speedup_batch32"),
        ):
            results["inference"][figure] = round(inf[opt][key] / base[key], 2)
        show(
            f"{opt} vs fp32 (CPU time; wall)",
            f"{inf['cpu_time_speedup_batch32']:.2f}x; {inf['speedup_batch32']:.2f}x",
            f"agreement {inf['agreement']:.2%} (accepted={inf['accepted']}), "
            f"accuracy {100 * (inf[opt]['accuracy'] - base['accuracy']):+.2f} pt; "
            f"fp32 re-scoring of {inf.get('fallback_share', 0):.1%} of rows; built in {inf['build_seconds']:.1f}s",
        )

    print("\n| measure | figure | note |\n| --- | --- | --- |")
    for what, figure, note in rows:
        print(f"| {what} | {figure} | {note} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
