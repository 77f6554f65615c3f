"""The transformers adapter for training: fine-tune the base encoder + a classification head.

A plain PyTorch loop over ``AutoModelForSequenceClassification`` rather than ``transformers.Trainer``: it is a
short loop, it runs as fast as a bare loop on the same batches (bench/train.py measures both), and it gives direct
control over class weights, mixed precision, early stopping and the progress callback the job writes to its
status row. :func:`fine_tune` reads as its stages, like transformers' ``run_glue.py``:

- build the model: seed Python, NumPy and torch (``transformers.set_seed``), then load the base and a fresh head;
- prepare the data (:func:`prepare_split`): a stratified validation set split off the training texts (early
  stopping watches it, and the best epoch's weights are restored), every text tokenized once, at the fine-tuning
  window chosen from the texts' lengths unless the config sets one (a longer text keeps its head and tail);
  batches are padded to their own longest text (dynamic padding) and grouped by length;
- initialize the head: from a logistic regression on the base's features (linear probe, then fine-tune all);
- train epochs with early stopping: the loss weighted by inverse class frequency (``balanced``) so rare labels
  count, and each example by its ``sample_weight`` (the label-quality pass's probability that its label is
  right); on CUDA under bf16 autocast, or fp16 autocast with a GradScaler where bf16 is missing; fp32 on CPU;
- evaluate (the best epoch's validation metrics) and return the classifier with typed :class:`FineTuneStats`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.retrain.architectures import load_model_for_training
from flywheel.retrain.classifiers import (
    FineTunedClassifier,
    base_name,
    label_indices,
    per_label_coefficients,
    token_ids,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    Progress = Callable[[float, str], None]


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
    # The fine-tuning window in tokens; None: chosen from the training texts (``flywheel.domain.windows``: their
    # p95 length rounded up to 32, at least 64, at most the base model's limit). Recorded with the model.
    max_length: int | None = None
    # How a longer text is cut: "head_tail" (first quarter + last three quarters of the window) or "head".
    truncation: str = "head_tail"
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


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int, truncation: str = "head") -> list[list[int]]:
    """Token ids per text, at most ``max_length`` (cut as ``truncation`` says), unpadded (padding happens per
    batch)."""
    return token_ids(tokenizer, texts, max_length, truncation)


def fine_tuning_window(tokenizer: Any, model_dir: Any, config: Any, texts: Sequence[str]) -> int:
    """The fine-tuning window for ``texts``: chosen from their token lengths under the base model's limit, by the
    rule a training run uses (``flywheel.domain.windows.text_windows``)."""
    from flywheel.domain.encoder import special_frame, window_limit
    from flywheel.domain.windows import text_windows

    special = sum(len(part) for part in special_frame(tokenizer))

    def lengths_of(sample: list[str]) -> list[int]:
        bodies = tokenizer(sample, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [len(body) + special for body in bodies]

    return text_windows(texts, lengths_of, limit=window_limit(model_dir, tokenizer, config)).fine_tuning


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
    with torch.inference_mode(), _autocast(precision):
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
    n_labels = model.classifier.weight.shape[0]
    weight, bias, classes = per_label_coefficients(probe, n_labels)
    absent = np.setdiff1d(np.arange(n_labels), classes)
    bias[absent] = bias[classes].min() - 10.0  # labels with no example start improbable
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight))
        model.classifier.bias.copy_(torch.from_numpy(bias))
    return float(probe.score(features, y))


def _autocast(precision: str) -> Any:
    """bf16 or fp16 autocast on CUDA; nothing (fp32) otherwise."""
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


# ------------------------------------------------------------------------------------------------ typed results


@dataclass(frozen=True)
class TrainingSplit:
    """The prepared data: tokenized training rows (label index and example weight each) and validation rows."""

    train_ids: list[list[int]]
    train_y: np.ndarray  # (N,) label indices
    train_w: np.ndarray  # (N,) example weights
    val_ids: list[list[int]]
    val_y: np.ndarray  # (M,) label indices; M is 0 without validation (and then there is no early stopping)

    @property
    def has_validation(self) -> bool:
        return len(self.val_ids) > 0


@dataclass(frozen=True)
class EpochResult:
    """One epoch: the optimizer steps taken so far and, with a validation split, its loss and accuracy."""

    epoch: int
    steps: int
    val_loss: float | None = None  # rounded to 6 decimals, as recorded
    val_accuracy: float | None = None

    def validation_metrics(self) -> dict[str, float]:
        """``val_loss`` and ``val_accuracy``, where measured."""
        values = {"val_loss": self.val_loss, "val_accuracy": self.val_accuracy}
        return {k: v for k, v in values.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "steps": self.steps, **self.validation_metrics()}

    def is_finite(self) -> bool:
        return all(math.isfinite(v) for v in self.validation_metrics().values())


@dataclass
class TrainingLog:
    """How the epochs went: steps, samples, the optimizer steps' time, each epoch's result, an early stop."""

    steps: int = 0
    samples: int = 0
    epochs_run: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False
    history: list[EpochResult] = field(default_factory=list)


@dataclass(frozen=True)
class FineTuneStats:
    """What a fine-tuning run did, returned beside the classifier (``to_dict()``: the recorded shape)."""

    train_samples: int
    val_samples: int
    steps: int
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    history: list[EpochResult]
    metrics: dict[str, float]  # the best epoch's validation metrics
    class_weights: list[float] | None
    probe_train_accuracy: float | None
    device: str
    precision: str
    samples_seen: int
    train_seconds: float  # the optimizer steps only (validation excluded)
    samples_per_second: float
    wall_seconds: float
    config: dict[str, Any]  # the FineTuneConfig, less the base model's path

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["history"] = [epoch.to_dict() for epoch in self.history]
        return out

    def finished_cleanly(self) -> bool:
        """No epoch's validation loss or accuracy is NaN or infinite."""
        return all(epoch.is_finite() for epoch in self.history)


# ------------------------------------------------------------------------------------------------- fine-tuning


def fine_tune(
    texts: Sequence[str],
    y: Sequence[Any] | np.ndarray,
    labels: Sequence[str],
    *,
    config: FineTuneConfig,
    progress: Progress | None = None,
    sample_weight: Sequence[float] | np.ndarray | None = None,
) -> tuple[FineTunedClassifier, FineTuneStats]:
    """Fine-tune the base encoder with a classification head on ``texts`` / ``y`` (names or indices), each
    example's loss weighted by ``sample_weight`` (N,) when given.

    Returns the classifier (best validation epoch, on ``config.device``) and its :class:`FineTuneStats`.
    ``progress(fraction, message)`` is called as it runs, ending with ``1.0``.
    """
    import torch
    from transformers import set_seed

    from flywheel.domain.encoder import base_model_path

    wall_started = time.perf_counter()
    cfg, labels, texts = config, list(labels), list(texts)
    y_idx, example_weights = _checked_targets(texts, y, labels, sample_weight)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(device, cfg.precision)
    report = _clamped(progress)

    report(0.0, "loading base model")
    set_seed(cfg.seed)  # before the head is initialized
    base_dir = base_model_path(cfg.base_model)
    tokenizer, model = load_model_for_training(base_dir, labels, pooling=cfg.pooling)
    if cfg.max_length is None:
        cfg = replace(cfg, max_length=fine_tuning_window(tokenizer, base_dir, model.config, texts))
    model.to(device).train()
    pad_id = int(tokenizer.pad_token_id or 0)
    split = prepare_split(tokenizer, texts, y_idx, example_weights, cfg)
    probe_accuracy = init_head(model, split, pad_id, device, cfg, report)
    loop = _Loop(
        model, split, cfg, device=device, precision=precision, pad_id=pad_id, n_labels=len(labels), report=report
    )
    stopping = EarlyStopping(cfg.monitor, patience=cfg.patience, min_delta=cfg.min_delta)
    log = train_epochs(loop, stopping)
    stopping.restore_best(model, epochs_run=log.epochs_run)
    model.eval()
    stats = _stats(cfg, split, log, stopping, loop, probe_accuracy, wall_started)
    clf = _classifier(model, tokenizer, labels, cfg, stats)
    report(1.0, f"done: {log.steps} steps, {log.epochs_run} epochs, best epoch {stats.best_epoch}")
    return clf, stats


def _checked_targets(
    texts: Sequence[str],
    y: Sequence[Any] | np.ndarray,
    labels: Sequence[str],
    sample_weight: Sequence[float] | np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Label indices ``(N,)`` and example weights ``(N,)`` (ones when none are given), checked against the texts."""
    y_idx = label_indices(y, labels)
    if len(texts) != len(y_idx):
        raise ValueError(f"{len(texts)} texts but {len(y_idx)} labels")
    if len(np.unique(y_idx)) < 2:
        raise ValueError("fine-tuning needs examples of at least 2 labels")
    weights = np.ones(len(y_idx)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != (len(y_idx),):
        raise ValueError(f"{len(y_idx)} labels but sample_weight has shape {weights.shape}")
    return y_idx, weights


def _clamped(progress: Progress | None) -> Progress:
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(min(1.0, max(0.0, fraction)), message)

    return report


def prepare_split(
    tokenizer: Any, texts: Sequence[str], y_idx: np.ndarray, example_weights: np.ndarray, cfg: FineTuneConfig
) -> TrainingSplit:
    """Split off the validation rows (stratified, ``cfg.val_fraction``) and tokenize every text once."""
    train_idx, val_idx = split_validation(y_idx, cfg.val_fraction, cfg.seed)
    if cfg.max_length is None:
        raise ValueError("prepare_split needs the config's max_length (fine_tune chooses it from the texts)")
    ids = tokenize(tokenizer, texts, cfg.max_length, cfg.truncation)
    return TrainingSplit(
        train_ids=[ids[i] for i in train_idx],
        train_y=y_idx[train_idx],
        train_w=example_weights[train_idx],
        val_ids=[ids[i] for i in val_idx],
        val_y=y_idx[val_idx],
    )


def init_head(
    model: Any, split: TrainingSplit, pad_id: int, device: str, cfg: FineTuneConfig, report: Progress
) -> float | None:
    """Start the classifier from the linear probe (returns its training accuracy), or leave it random (None)."""
    if cfg.head_init == "random":
        return None
    if cfg.head_init != "linear_probe":
        raise ValueError(f"head_init must be 'linear_probe' or 'random', not {cfg.head_init!r}")
    report(0.0, "fitting the linear probe that initializes the classifier")
    return linear_probe_init(
        model, split.train_ids, split.train_y, pad_id, device, c=cfg.probe_c, seed=cfg.seed, sample_weight=split.train_w
    )


@dataclass
class EarlyStopping:
    """Watches the validation score after each epoch and keeps the best epoch's weights (on the CPU)."""

    monitor: str  # "val_accuracy" (ties broken by the lower loss) or "val_loss"
    patience: int  # epochs without a better score before stopping
    min_delta: float
    best_score: tuple[float, float] = (-math.inf, -math.inf)
    best_epoch: int = 0
    best_state: dict[str, Any] | None = None
    bad_epochs: int = 0

    def update(self, epoch: int, accuracy: float, loss: float, model: Any) -> None:
        score = _score(self.monitor, accuracy, loss)
        if _improves(score, self.best_score, self.min_delta):
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def restore_best(self, model: Any, *, epochs_run: int) -> None:
        """Load the best epoch's weights, unless the last epoch was the best (or nothing was validated)."""
        if self.best_state is not None and self.best_epoch != epochs_run:
            model.load_state_dict(self.best_state)


class _Loop:
    """What the epochs share: the model and its data, the weighted loss, AdamW with its warm-up schedule, (fp16)
    the grad scaler, and the running log. ``train_epoch`` runs one epoch's optimizer steps; ``validate`` scores it."""

    def __init__(
        self,
        model: Any,
        split: TrainingSplit,
        cfg: FineTuneConfig,
        *,
        device: str,
        precision: str,
        pad_id: int,
        n_labels: int,
        report: Progress,
    ) -> None:
        import torch

        self.model, self.split, self.cfg, self.report = model, split, cfg, report
        self.device, self.precision, self.pad_id = device, precision, pad_id
        self.class_weights = balanced_class_weights(split.train_y, n_labels) if cfg.class_weights else None
        self.loss_fn = _weighted_loss(self.class_weights, cfg.label_smoothing, device)
        self.total_steps = math.ceil(len(split.train_ids) / cfg.batch_size) * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.optimizer = _optimizer(model, cfg, device)
        self.scheduler = _linear_warmup(self.optimizer, self.total_steps, int(cfg.warmup_ratio * self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.train_y = torch.tensor(split.train_y, dtype=torch.long)  # CPU tensors, indexed per batch
        self.train_w = torch.tensor(split.train_w, dtype=torch.float32)
        self.log = TrainingLog()
        self.running_loss = torch.zeros((), device=device)  # read back once per progress report, not per step
        self.running_n = 0

    def train_epoch(self, epoch: int, batches: list[np.ndarray]) -> None:
        split, device, log = self.split, self.device, self.log
        report_every = max(1, self.total_steps // 100)
        _sync(device)
        epoch_started = time.perf_counter()
        # The epoch's batches are padded and moved to the device before its first step: a copy from pageable
        # host memory inside the loop would stall the host until the GPU drained its queue, every step.
        ready = [
            (
                {k: v.to(device) for k, v in collate(split.train_ids, index, self.pad_id).items()},
                self.train_y[index].to(device),
                self.train_w[index].to(device),
            )
            for index in batches
        ]
        for index, (batch, target, example_w) in zip(batches, ready, strict=True):
            loss = self._step(batch, target, example_w)
            log.steps += 1
            log.samples += len(index)
            self.running_loss += loss.detach()
            self.running_n += 1
            if log.steps % report_every == 0:
                mean_loss = float(self.running_loss.item()) / max(1, self.running_n)  # one sync per report
                self.running_loss.zero_()
                self.running_n = 0
                self.report(
                    0.95 * log.steps / self.total_steps,
                    f"epoch {epoch}/{self.cfg.epochs} step {log.steps}/{self.total_steps} loss {mean_loss:.4f}",
                )
        _sync(device)
        log.train_seconds += time.perf_counter() - epoch_started

    def _step(self, batch: dict[str, Any], target: Any, example_w: Any) -> Any:
        """One optimizer step (forward, weighted loss, backward, clipped update, schedule); returns the loss."""
        import torch

        with _autocast(self.precision):
            logits = self.model(**batch).logits
        loss = self.loss_fn(logits.float(), target, example_w)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
        self.scheduler.step()
        return loss

    def validate(self) -> tuple[float, float]:
        """The current weights' validation loss and accuracy."""
        split = self.split
        logits = evaluate_logits(
            self.model, split.val_ids, self.pad_id, self.device, self.precision, self.cfg.eval_batch_size
        )
        return _cross_entropy_np(logits, split.val_y), float(np.mean(logits.argmax(1) == split.val_y))


def train_epochs(loop: _Loop, stopping: EarlyStopping) -> TrainingLog:
    """Up to ``cfg.epochs`` epochs (or ``cfg.max_steps`` steps), validating after each; stops early when the
    validation score has not improved for ``cfg.patience`` epochs."""
    cfg, log, validated = loop.cfg, loop.log, loop.split.has_validation
    rng = np.random.default_rng(cfg.seed)
    lengths = [len(r) for r in loop.split.train_ids]
    for epoch in range(1, cfg.epochs + 1):
        if log.steps >= loop.total_steps:
            break
        log.epochs_run = epoch
        batches = make_batches(lengths, cfg.batch_size, rng, group_by_length=cfg.group_by_length)
        loop.train_epoch(epoch, batches[: loop.total_steps - log.steps])
        result = EpochResult(epoch=epoch, steps=log.steps)
        if validated:
            loss, accuracy = loop.validate()
            result = EpochResult(epoch=epoch, steps=log.steps, val_loss=round(loss, 6), val_accuracy=accuracy)
            stopping.update(epoch, accuracy, loss, loop.model)
        log.history.append(result)
        loop.report(0.95 * log.steps / loop.total_steps, f"epoch {epoch} done: {result.to_dict()}")
        if validated and stopping.should_stop:
            log.stopped_early = epoch < cfg.epochs and log.steps < loop.total_steps
            break
    return log


def _weighted_loss(class_weights: np.ndarray | None, label_smoothing: float, device: str) -> Callable[..., Any]:
    """The class-weighted mean cross-entropy (as ``CrossEntropyLoss`` computes it), each example also weighted."""
    import torch

    class_w = torch.tensor(class_weights, device=device, dtype=torch.float32) if class_weights is not None else None
    per_example = torch.nn.CrossEntropyLoss(weight=class_w, label_smoothing=label_smoothing, reduction="none")

    def loss_fn(logits: Any, target: Any, example_w: Any) -> Any:
        w = example_w if class_w is None else example_w * class_w[target]
        return (per_example(logits, target) * example_w).sum() / w.sum().clamp_min(1e-12)

    return loss_fn


def _stats(
    cfg: FineTuneConfig,
    split: TrainingSplit,
    log: TrainingLog,
    stopping: EarlyStopping,
    loop: _Loop,
    probe_accuracy: float | None,
    wall_started: float,
) -> FineTuneStats:
    best = next((h for h in log.history if h.epoch == stopping.best_epoch), log.history[-1] if log.history else None)
    weights = loop.class_weights
    return FineTuneStats(
        train_samples=len(split.train_ids),
        val_samples=len(split.val_ids),
        steps=log.steps,
        epochs_run=log.epochs_run,
        best_epoch=stopping.best_epoch or log.epochs_run,
        stopped_early=log.stopped_early,
        history=log.history,
        metrics=best.validation_metrics() if best is not None else {},
        class_weights=weights.round(4).tolist() if weights is not None else None,
        probe_train_accuracy=probe_accuracy,
        device=loop.device,
        precision=loop.precision,
        samples_seen=log.samples,
        train_seconds=round(log.train_seconds, 3),
        samples_per_second=round(log.samples / log.train_seconds, 2) if log.train_seconds else 0.0,
        wall_seconds=round(time.perf_counter() - wall_started, 3),
        config={k: v for k, v in asdict(cfg).items() if k != "base_model"},
    )


def _classifier(
    model: Any, tokenizer: Any, labels: list[str], cfg: FineTuneConfig, stats: FineTuneStats
) -> FineTunedClassifier:
    return FineTunedClassifier(
        model=model,
        tokenizer=tokenizer,
        labels=labels,
        base_model=base_name(cfg.base_model),
        max_length=int(cfg.max_length or 64),
        truncation=cfg.truncation,
        device=stats.device,
        train_info={
            "metrics": stats.metrics,
            "training_seconds": stats.wall_seconds,
            "seed": cfg.seed,
            "train_samples": stats.train_samples,
            "precision_trained": stats.precision,
            "pooling": cfg.pooling,
            "head_init": cfg.head_init,
        },
    )


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
