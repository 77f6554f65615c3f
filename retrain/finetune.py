"""The transformers adapter for training: fine-tune the base encoder + a classification head.

A plain PyTorch loop over ``AutoModelForSequenceClassification`` rather than ``transformers.Trainer``: it is a
short loop, it runs as fast as a bare loop on the same batches (bench/train.py measures both), and it gives direct
control over class weights, mixed precision, early stopping and the progress callback the job writes to its
status row. What it does, in order:

- seeds Python, NumPy and torch (``transformers.set_seed``) before the head is initialized;
- splits a stratified validation set off the training texts (early stopping watches its loss, and the best
  epoch's weights are restored);
- tokenizes once, then pads each batch to its own longest text (dynamic padding), with batches grouped by length;
- weights the loss by inverse class frequency (``balanced``) so rare labels count, and each example by its
  ``sample_weight`` (the label-quality pass's probability that its label is right);
- on CUDA runs under bf16 autocast, or fp16 autocast with a GradScaler where bf16 is missing; fp32 on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.retrain.architectures import load_model_for_training
from flywheel.retrain.classifiers import FineTunedClassifier, base_name, label_indices

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


@dataclass
class FineTuneConfig:
    """Hyper-parameters and run settings of one fine-tuning run (the defaults suit MiniLM on intent text)."""

    base_model: str | None = None  # a local save_pretrained directory; None: the packaged all-MiniLM-L6-v2
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 5e-5
    head_learning_rate: float | None = None  # None: same as learning_rate
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 64
    seed: int = 0
    val_fraction: float = 0.1  # 0 disables the validation split (and so early stopping)
    patience: int = 3  # epochs without a better validation score before stopping
    min_delta: float = 1e-4
    # What early stopping watches: "val_accuracy" (ties broken by the lower loss) or "val_loss". Accuracy is what
    # the gate compares; validation loss often rises (over-confidence) while accuracy still improves.
    monitor: str = "val_accuracy"
    class_weights: bool = True
    max_steps: int | None = None  # cap on optimizer steps (benchmarks, smoke runs)
    device: str | None = None  # None: cuda when available, else cpu
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (bf16/fp16 only on CUDA)
    eval_batch_size: int = 128
    group_by_length: bool = True
    label_smoothing: float = 0.0
    # "cls": transformers' BertForSequenceClassification (pooler over [CLS]); "mean": the same encoder with the
    # classifier on the unit-norm mean-pooled embedding, the representation all-MiniLM-L6-v2 was trained for.
    pooling: str = "mean"
    # "linear_probe": start the classifier from a logistic regression on the base's features of the training
    # split (then fine-tune everything: LP-FT), so fine-tuning starts where the few-shot head ends; "random".
    head_init: str = "linear_probe"
    probe_c: float = 10.0


# ------------------------------------------------------------------------------------------------ data helpers


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated, unpadded (padding happens per batch)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return [list(ids) for ids in enc["input_ids"]]


def make_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, *, group_by_length: bool = True
) -> list[np.ndarray]:
    """One epoch's batches (index arrays): shuffled; with ``group_by_length`` texts of similar length share a
    batch (sorted inside windows of 50 batches, then the batches shuffled), so dynamic padding wastes little."""
    n = len(lengths)
    perm = rng.permutation(n)
    if group_by_length:
        window = batch_size * 50
        lens = np.asarray(lengths)
        chunks = []
        for start in range(0, n, window):
            part = perm[start : start + window]
            chunks.append(part[np.argsort(-lens[part], kind="stable")])
        perm = np.concatenate(chunks) if chunks else perm
    batches = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def collate(ids: Sequence[list[int]], index: np.ndarray, pad_id: int) -> dict[str, Any]:
    """Pad the selected token-id lists to their longest: ``input_ids`` and ``attention_mask`` (int64, CPU)."""
    import torch

    rows = [ids[i] for i in index]
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):  # numpy row assignment: a few microseconds a row, no tensor per row
        input_ids[j, : len(r)] = r
        mask[j, : len(r)] = 1
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}


def balanced_class_weights(y: np.ndarray, n_labels: int) -> np.ndarray:
    """``n / (k * count)`` per label present (k = labels present); 1.0 for labels absent from training."""
    counts = np.bincount(y, minlength=n_labels).astype(np.float64)
    present = counts > 0
    weights = np.ones(n_labels, dtype=np.float64)
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights.astype(np.float32)


def split_validation(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices: stratified where every label has at least 2 examples."""
    n = len(y)
    n_val = round(n * fraction)
    if fraction <= 0 or n_val < 2 or n - n_val < 2:
        return np.arange(n), np.array([], dtype=np.int64)
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 and n_val >= len(np.unique(y)) else None
    train_idx, val_idx = train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(train_idx), np.sort(val_idx)


def resolve_precision(device: str, requested: str = "auto") -> str:
    """``fp32`` on CPU; on CUDA ``bf16`` where supported, else ``fp16`` (which needs a GradScaler)."""
    import torch

    if not device.startswith("cuda"):
        if requested not in ("auto", "fp32"):
            raise ValueError(f"precision {requested!r} needs CUDA; CPU trains in fp32")
        return "fp32"
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _optimizer(model: Any, cfg: FineTuneConfig, device: str) -> Any:
    import torch

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    head_lr = cfg.head_learning_rate or cfg.learning_rate
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = name.startswith(("classifier", "pre_classifier", "score"))
        decay = not any(k in name for k in no_decay)
        groups.setdefault((is_head, decay), []).append(param)
    params = [
        {
            "params": ps,
            "lr": head_lr if is_head else cfg.learning_rate,
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (is_head, decay), ps in groups.items()
    ]
    kwargs: dict[str, Any] = {"fused": True} if device.startswith("cuda") else {}
    return torch.optim.AdamW(params, lr=cfg.learning_rate, **kwargs)


def _linear_warmup(optimizer: Any, total_steps: int, warmup_steps: int) -> Any:
    import torch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def evaluate_logits(
    model: Any, ids: Sequence[list[int]], pad_id: int, device: str, precision: str, batch_size: int
) -> np.ndarray:
    """``(N, K)`` float32 logits of pre-tokenized texts (sorted by length, dynamic padding)."""
    import torch

    out: np.ndarray | None = None
    order = np.argsort([len(r) for r in ids], kind="stable")
    model.eval()
    with torch.inference_mode(), _autocast(device, precision):
        for start in range(0, len(ids), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(ids, idx, pad_id).items()}
            logits = model(**batch).logits.float().cpu().numpy()
            if out is None:
                out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
            out[idx] = logits
    model.train()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def linear_probe_init(
    model: Any,
    ids: Sequence[list[int]],
    y: np.ndarray,
    pad_id: int,
    device: str,
    *,
    c: float,
    seed: int,
    sample_weight: np.ndarray | None = None,
) -> float:
    """Fit a logistic regression on the classifier's input features (the pooled base output, dropout off) and
    copy it into the classifier: fine-tuning then starts from the linear probe. Returns its training accuracy."""
    import torch
    from sklearn.linear_model import LogisticRegression

    captured: list[np.ndarray] = []
    hook = model.classifier.register_forward_hook(
        lambda _m, inputs, _o: captured.append(inputs[0].detach().float().cpu().numpy())
    )
    order = np.argsort([len(r) for r in ids], kind="stable")
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(ids), 128):
                idx = order[start : start + 128]
                model(**{k: v.to(device) for k, v in collate(ids, idx, pad_id).items()})
    finally:
        hook.remove()
        model.train()
    features = np.zeros((len(ids), captured[0].shape[1]), dtype=np.float32)
    features[order] = np.concatenate(captured)
    probe = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(features, y, sample_weight=sample_weight)
    n_labels, dim = model.classifier.weight.shape
    weight = np.zeros((n_labels, dim), dtype=np.float32)
    bias = np.zeros(n_labels, dtype=np.float32)
    classes = probe.classes_.astype(np.int64)
    if len(classes) == 2:
        weight[classes[1]], bias[classes[1]] = probe.coef_[0], probe.intercept_[0]
    else:
        weight[classes], bias[classes] = probe.coef_, probe.intercept_
    absent = np.setdiff1d(np.arange(n_labels), classes)
    bias[absent] = bias[classes].min() - 10.0  # labels with no example start improbable
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight))
        model.classifier.bias.copy_(torch.from_numpy(bias))
    return float(probe.score(features, y))


def _autocast(device: str, precision: str) -> Any:
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _cross_entropy_np(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


# ------------------------------------------------------------------------------------------------- fine-tuning


def fine_tune(
    texts: Sequence[str],
    y: Sequence[Any] | np.ndarray,
    labels: Sequence[str],
    *,
    config: FineTuneConfig,
    progress: Callable[[float, str], None] | None = None,
    sample_weight: Sequence[float] | np.ndarray | None = None,
) -> tuple[FineTunedClassifier, dict[str, Any]]:
    """Fine-tune the base encoder with a classification head on ``texts`` / ``y`` (names or indices), each
    example's loss weighted by ``sample_weight`` (N,) when given.

    Returns the classifier (best validation epoch, on ``config.device``) and run statistics: samples, steps,
    epochs run, whether it stopped early, validation loss/accuracy per epoch, class weights, precision, the
    training time and samples/s of the optimizer steps (validation excluded), and the total wall time.
    ``progress(fraction, message)`` is called as it runs, ending with ``1.0``.
    """
    import torch
    from transformers import set_seed

    from flywheel.domain.encoder import base_model_path

    wall_started = time.perf_counter()
    labels = list(labels)
    texts = list(texts)
    y_idx = label_indices(y, labels)
    if len(texts) != len(y_idx):
        raise ValueError(f"{len(texts)} texts but {len(y_idx)} labels")
    if len(np.unique(y_idx)) < 2:
        raise ValueError("fine-tuning needs examples of at least 2 labels")
    example_weights = np.ones(len(y_idx)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if example_weights.shape != (len(y_idx),):
        raise ValueError(f"{len(y_idx)} labels but sample_weight has shape {example_weights.shape}")
    cfg = config
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(device, cfg.precision)
    base = base_model_path(cfg.base_model)

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(min(1.0, max(0.0, fraction)), message)

    report(0.0, "loading base model")
    set_seed(cfg.seed)
    tokenizer, model = load_model_for_training(base, labels, pooling=cfg.pooling)
    model.to(device).train()
    pad_id = int(tokenizer.pad_token_id or 0)

    train_idx, val_idx = split_validation(y_idx, cfg.val_fraction, cfg.seed)
    ids = tokenize(tokenizer, texts, cfg.max_length)
    train_ids = [ids[i] for i in train_idx]
    train_y = y_idx[train_idx]
    train_w = example_weights[train_idx]
    val_ids = [ids[i] for i in val_idx]
    val_y = y_idx[val_idx]
    lengths = [len(r) for r in train_ids]
    probe_accuracy = None
    if cfg.head_init == "linear_probe":
        report(0.0, "fitting the linear probe that initializes the classifier")
        probe_accuracy = linear_probe_init(
            model, train_ids, train_y, pad_id, device, c=cfg.probe_c, seed=cfg.seed, sample_weight=train_w
        )
    elif cfg.head_init != "random":
        raise ValueError(f"head_init must be 'linear_probe' or 'random', not {cfg.head_init!r}")

    weights = balanced_class_weights(train_y, len(labels)) if cfg.class_weights else None
    class_w = torch.tensor(weights, device=device, dtype=torch.float32) if weights is not None else None
    per_example = torch.nn.CrossEntropyLoss(weight=class_w, label_smoothing=cfg.label_smoothing, reduction="none")

    def loss_fn(logits: Any, target: Any, example_w: Any) -> Any:
        """The class-weighted mean cross-entropy (as ``CrossEntropyLoss`` computes it), each example also weighted."""
        w = example_w if class_w is None else example_w * class_w[target]
        return (per_example(logits, target) * example_w).sum() / w.sum().clamp_min(1e-12)

    steps_per_epoch = math.ceil(len(train_ids) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    optimizer = _optimizer(model, cfg, device)
    scheduler = _linear_warmup(optimizer, total_steps, int(cfg.warmup_ratio * total_steps))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    rng = np.random.default_rng(cfg.seed)
    train_y_t = torch.tensor(train_y, dtype=torch.long)
    train_w_t = torch.tensor(train_w, dtype=torch.float32)
    report_every = max(1, total_steps // 100)

    history: list[dict[str, Any]] = []
    best_score: tuple[float, float] = (-math.inf, -math.inf)
    best_state: dict[str, Any] | None = None
    best_epoch = 0
    bad_epochs = 0
    step = 0
    epochs_run = 0
    samples = 0
    train_seconds = 0.0
    stopped_early = False
    running_loss = torch.zeros((), device=device)
    running_n = 0

    for epoch in range(1, cfg.epochs + 1):
        if step >= total_steps:
            break
        epochs_run = epoch
        batches = make_batches(lengths, cfg.batch_size, rng, group_by_length=cfg.group_by_length)
        batches = batches[: total_steps - step]
        _sync(device)
        epoch_started = time.perf_counter()
        # The epoch's batches are padded and moved to the device before its first step: a copy from pageable
        # host memory inside the loop would stall the host until the GPU drained its queue, every step.
        ready = [
            (
                {k: v.to(device) for k, v in collate(train_ids, index, pad_id).items()},
                train_y_t[index].to(device),
                train_w_t[index].to(device),
            )
            for index in batches
        ]
        for index, (batch, target, example_w) in zip(batches, ready, strict=True):
            with _autocast(device, precision):
                logits = model(**batch).logits
            loss = loss_fn(logits.float(), target, example_w)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
            scheduler.step()
            step += 1
            samples += len(index)
            running_loss += loss.detach()
            running_n += 1
            if step % report_every == 0:
                mean_loss = float(running_loss.item()) / max(1, running_n)  # one sync per report, not per step
                running_loss.zero_()
                running_n = 0
                report(
                    0.95 * step / total_steps,
                    f"epoch {epoch}/{cfg.epochs} step {step}/{total_steps} loss {mean_loss:.4f}",
                )
        _sync(device)
        train_seconds += time.perf_counter() - epoch_started

        record: dict[str, Any] = {"epoch": epoch, "steps": step}
        if len(val_ids):
            val_logits = evaluate_logits(model, val_ids, pad_id, device, precision, cfg.eval_batch_size)
            val_loss = _cross_entropy_np(val_logits, val_y)
            record.update(val_loss=round(val_loss, 6), val_accuracy=float(np.mean(val_logits.argmax(1) == val_y)))
            score = _score(cfg.monitor, record["val_accuracy"], val_loss)
            if _improves(score, best_score, cfg.min_delta):
                best_score, best_epoch, bad_epochs = score, epoch, 0
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
        history.append(record)
        report(0.95 * step / total_steps, f"epoch {epoch} done: {record}")
        if len(val_ids) and bad_epochs >= cfg.patience:
            stopped_early = epoch < cfg.epochs and step < total_steps
            break

    if best_state is not None and best_epoch != epochs_run:
        model.load_state_dict(best_state)
    model.eval()
    best = next((h for h in history if h["epoch"] == best_epoch), history[-1] if history else {})
    metrics = {k: best[k] for k in ("val_loss", "val_accuracy") if k in best}
    stats: dict[str, Any] = {
        "train_samples": len(train_ids),
        "val_samples": len(val_ids),
        "steps": step,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch or epochs_run,
        "stopped_early": stopped_early,
        "history": history,
        "metrics": metrics,
        "class_weights": weights.round(4).tolist() if weights is not None else None,
        "probe_train_accuracy": probe_accuracy,
        "device": device,
        "precision": precision,
        "samples_seen": samples,
        "train_seconds": round(train_seconds, 3),
        "samples_per_second": round(samples / train_seconds, 2) if train_seconds else 0.0,
        "wall_seconds": round(time.perf_counter() - wall_started, 3),
        "config": {k: v for k, v in asdict(cfg).items() if k != "base_model"},
    }
    clf = FineTunedClassifier(
        model=model,
        tokenizer=tokenizer,
        labels=labels,
        base_model=base_name(cfg.base_model),
        max_length=cfg.max_length,
        device=device,
        train_info={
            "metrics": metrics,
            "training_seconds": stats["wall_seconds"],
            "seed": cfg.seed,
            "train_samples": len(train_ids),
            "precision_trained": precision,
            "pooling": cfg.pooling,
            "head_init": cfg.head_init,
        },
    )
    report(1.0, f"done: {step} steps, {epochs_run} epochs, best epoch {stats['best_epoch']}")
    return clf, stats


def _score(monitor: str, accuracy: float, loss: float) -> tuple[float, float]:
    """Higher is better: (accuracy, -loss) or (-loss, accuracy)."""
    if monitor == "val_accuracy":
        return (accuracy, -loss)
    if monitor == "val_loss":
        return (-loss, accuracy)
    raise ValueError(f"monitor must be 'val_accuracy' or 'val_loss', not {monitor!r}")


def _improves(score: tuple[float, float], best: tuple[float, float], min_delta: float) -> bool:
    if score[0] > best[0] + min_delta:
        return True
    return abs(score[0] - best[0]) <= min_delta and score[1] > best[1]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
