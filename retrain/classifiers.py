"""The model ladder's classifiers: zero-shot, few-shot head and fine-tuned, behind one ``TextClassifier`` protocol.

Every rung answers ``predict_proba(texts) -> (N, K)`` with columns in ``.labels`` order and saves to a directory
that holds a ``metadata.json`` (rung, labels, base model, plus whatever the caller passes: lineage, metrics...).
The fine-tuned rung is a ``save_pretrained`` directory (safetensors + tokenizer) beside that file.

torch, transformers and sklearn are imported inside the functions: importing this module costs nothing in a web
worker. The transformers training loop lives in ``flywheel.retrain.finetune``, the ONNX INT8 export in
``flywheel.retrain.onnx_int8``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from flywheel.retrain.onnx_int8 import build_onnx_int8, onnx_session, onnxruntime_available, sha256

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
# The optimized CPU variant: the model exported to ONNX, fused by ONNX Runtime's BERT optimizer and dynamically
# quantized to INT8, run by ONNX Runtime. Saved beside the fp32 weights once verified.
OPTIMIZED_PRECISION = "onnx_int8"
ONNX_FILE = "model_int8.onnx"
# Optimized answers whose top-2 logits are closer than this are recomputed by the fp32 model (0 turns it off). On
# banking77 INT8 alone agreed with fp32 on 98.8% of the test split, under the 99% bar; every disagreement had a
# margin under 0.6, and about 5% of rows fall under 0.5: with the re-scoring 99.97% (bench/train.py).
FALLBACK_MARGIN = 0.5
# Cosine similarities live in [-1, 1]; a temperature of 0.05 turns them into usable confidences.
ZERO_SHOT_SCALE = 20.0


@runtime_checkable
class TextClassifier(Protocol):
    """What every rung of the ladder provides."""

    rung: str
    labels: list[str]

    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """``(N, K)`` float32 probabilities, columns in ``self.labels`` order, rows summing to 1."""
        ...

    def save(self, directory: str | Path, *, metadata: Mapping[str, Any]) -> None:
        """Write the model and ``metadata.json`` (the classifier's own fields, updated with ``metadata``)."""
        ...


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _embed(base_model: str | None, texts: Sequence[str], batch_size: int, window: int | None = None) -> np.ndarray:
    """``(N, D)`` embeddings of ``texts`` by the frozen base encoder, for the heads that sit on it: at the model's
    recorded embedding ``window`` (longer texts chunked and pooled), or, for a model that records none, as the bare
    encoder embeds them (cut at 128 tokens)."""
    from flywheel.domain.encoder import load_encoder

    encoder = load_encoder(base_model)
    batch = max(batch_size, 64)
    if window:
        return np.asarray(encoder.windowed(window).embed(list(texts), batch_size=batch))
    return np.asarray(encoder.embed(list(texts), batch_size=batch))


def token_ids(tokenizer: Any, texts: Sequence[str], max_length: int, truncation: str = "head") -> list[list[int]]:
    """Each text's token ids with special tokens, at most ``max_length``: cut at the end (``head``: models whose
    metadata names no truncation) or keeping head and tail (``head_tail``,
    ``flywheel.domain.windows.head_tail``). A text that fits is the same either way."""
    texts = list(texts)
    if truncation == "head":
        return [list(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    if truncation != "head_tail":
        raise ValueError(f"truncation must be 'head' or 'head_tail', not {truncation!r}")
    from flywheel.domain.encoder import special_frame
    from flywheel.domain.windows import head_tail

    prefix, suffix = special_frame(tokenizer)
    room = max_length - len(prefix) - len(suffix)
    bodies = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return [[*prefix, *head_tail(list(body), room), *suffix] for body in bodies]


def pad_ids(rows: Sequence[list[int]], pad_id: int) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64), the rows padded to their longest."""
    width = max((len(r) for r in rows), default=0)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        input_ids[j, : len(r)] = r
        mask[j, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def base_name(base_model: str | Path | None) -> str | None:
    """The base as stored in metadata: ``None`` means the packaged all-MiniLM-L6-v2 (portable across machines)."""
    return str(base_model) if base_model else None


def _write_metadata(directory: Path, own: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(extra)
    if isinstance(own.get("metrics"), dict) and isinstance(extra.get("metrics"), dict):
        merged["metrics"] = {**own["metrics"], **extra["metrics"]}  # the caller's metrics add to training's
    meta = {**own, **merged, "format_version": FORMAT_VERSION, "rung": own["rung"], "labels": own["labels"]}
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return meta


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The ``metadata.json`` of a saved classifier."""
    path = Path(directory) / METADATA_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: not a saved classifier directory")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def humanize_label(label: str) -> str:
    """``card_arrival`` -> ``card arrival``: the text a label name is embedded as."""
    return " ".join(label.replace("_", " ").replace("-", " ").split())


def label_prompts(labels: Sequence[str], descriptions: Mapping[str, str] | None = None) -> list[str]:
    """The texts embedded for zero-shot: the readable name, followed by the label's description where one exists."""
    descriptions = descriptions or {}
    out = []
    for label in labels:
        desc = (descriptions.get(label) or "").strip()
        name = humanize_label(label)
        out.append(f"{name}: {desc}" if desc else name)
    return out


# --------------------------------------------------------------------------------------------------- zero-shot


@dataclass
class ZeroShotClassifier:
    """Cosine similarity between the text's embedding and each label's (name + description) embedding."""

    labels: list[str]
    label_embeddings: np.ndarray  # (K, D) unit-norm
    base_model: str | None = None
    descriptions: dict[str, str] = field(default_factory=dict)
    scale: float = ZERO_SHOT_SCALE
    rung: str = "zero_shot"

    def predict_proba_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities from precomputed ``(N, D)`` unit-norm text embeddings (e.g. from the embedding cache)."""
        return _softmax(self.scale * (np.asarray(embeddings, dtype=np.float32) @ self.label_embeddings.T))

    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        return self.predict_proba_embeddings(_embed(self.base_model, texts, batch_size))

    def save(self, directory: str | Path, *, metadata: Mapping[str, Any]) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "label_embeddings.npy", self.label_embeddings.astype(np.float32))
        own = {
            "rung": self.rung,
            "labels": self.labels,
            "base_model": self.base_model,
            "descriptions": self.descriptions,
            "scale": self.scale,
        }
        _write_metadata(path, own, metadata)


def build_zero_shot(
    labels: Sequence[str],
    *,
    descriptions: Mapping[str, str] | None = None,
    base_model: str | Path | None = None,
    label_embeddings: np.ndarray | None = None,
) -> ZeroShotClassifier:
    """The day-one rung: embed each label's name (and description, where given) with the base encoder.

    ``label_embeddings`` (K, D), if given, are used as they are (e.g. from the embedding cache of
    :func:`label_prompts`), so nothing is embedded here.
    """
    labels = list(labels)
    if not labels:
        raise ValueError("labels must not be empty")
    if label_embeddings is None:
        from flywheel.domain.encoder import load_encoder

        label_embeddings = load_encoder(base_model).embed(label_prompts(labels, descriptions))
    emb = np.asarray(label_embeddings, dtype=np.float32)
    if emb.shape[0] != len(labels):
        raise ValueError(f"label_embeddings has {emb.shape[0]} rows for {len(labels)} labels")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb / np.clip(norms, 1e-9, None)
    return ZeroShotClassifier(
        labels=labels,
        label_embeddings=emb,
        base_model=base_name(base_model),
        descriptions=dict(descriptions or {}),
    )


# ---------------------------------------------------------------------------------------------------- few-shot


@dataclass
class FewShotClassifier:
    """Frozen base-encoder embeddings + a multinomial logistic-regression head (stored as plain arrays)."""

    labels: list[str]
    coef: np.ndarray  # (K, D): one row per label; labels never seen in training get -inf bias
    intercept: np.ndarray  # (K,)
    base_model: str | None = None
    train_info: dict[str, Any] = field(default_factory=dict)
    rung: str = "few_shot"
    embed_window: int | None = None  # the embedding window it trained at (None: the bare encoder's 128, cut)

    def predict_proba_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities from precomputed ``(N, D)`` text embeddings (e.g. from the embedding cache)."""
        logits = np.asarray(embeddings, dtype=np.float32) @ self.coef.T + self.intercept
        return _softmax(logits)

    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        return self.predict_proba_embeddings(_embed(self.base_model, texts, batch_size, self.embed_window))

    def save(self, directory: str | Path, *, metadata: Mapping[str, Any]) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "head.npz", coef=self.coef.astype(np.float32), intercept=self.intercept.astype(np.float32))
        own = {
            "rung": self.rung,
            "labels": self.labels,
            "base_model": self.base_model,
            "embed_window": self.embed_window,
            **self.train_info,
        }
        _write_metadata(path, own, metadata)


def label_indices(y: Sequence[Any] | np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """``y`` as label indices: accepts label names or integer indices into ``labels``."""
    arr = np.asarray(y)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() >= len(labels)):
            raise ValueError(f"label index out of range 0..{len(labels) - 1}")
        return arr.astype(np.int64)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(v) for v in arr.tolist() if v not in index})
    if unknown:
        raise ValueError(f"labels not in the task's label set: {unknown[:5]}")
    return np.array([index[v] for v in arr.tolist()], dtype=np.int64)


def train_few_shot(
    texts: Sequence[str],
    y: Sequence[Any] | np.ndarray,
    labels: Sequence[str],
    *,
    base_model: str | Path | None = None,
    seed: int = 0,
    embeddings: np.ndarray | None = None,
    c: float = 10.0,
    sample_weight: Sequence[float] | np.ndarray | None = None,
    embed_window: int | None = None,
) -> FewShotClassifier:
    """Fit the few-shot head: logistic regression on frozen, unit-norm base-encoder embeddings.

    ``y`` holds label names or indices into ``labels``; ``embeddings`` (N, D), if given, replace embedding
    ``texts`` (pass the cached ones, made at ``embed_window``); ``sample_weight`` (N,) weighs each example's loss
    (the label-quality pass's probability that its label is right). ``embed_window``: the task's embedding window,
    recorded and used again at inference (None: the bare encoder, cut at 128 tokens). Labels with no example keep
    probability 0.
    """
    import time

    from sklearn.linear_model import LogisticRegression

    labels = list(labels)
    idx = label_indices(y, labels)
    if len(idx) != len(texts) and embeddings is None:
        raise ValueError(f"{len(texts)} texts but {len(idx)} labels")
    if len(np.unique(idx)) < 2:
        raise ValueError("the few-shot head needs examples of at least 2 labels")
    X = _frozen_features(texts, embeddings, base_model, n=len(idx), window=embed_window)
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if weights is not None and weights.shape != (len(idx),):
        raise ValueError(f"{len(idx)} labels but sample_weight has shape {weights.shape}")
    started = time.perf_counter()
    # C=10 suits unit-norm embeddings (the default 1.0 over-regularizes them: measured on banking77).
    head = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(X, idx, sample_weight=weights)
    coef, intercept, classes = per_label_coefficients(head, len(labels))
    intercept[np.setdiff1d(np.arange(len(labels)), classes)] = -np.inf
    info = {
        "train_samples": len(idx),
        "train_labels_present": len(classes),
        "weighted_samples": 0 if weights is None else int((weights != 1.0).sum()),
        "training_seconds": round(time.perf_counter() - started, 3),
        "c": c,
        "seed": seed,
    }
    return FewShotClassifier(
        labels=labels,
        coef=coef,
        intercept=intercept,
        base_model=base_name(base_model),
        train_info=info,
        embed_window=embed_window,
    )


#: Neighbours that vote in the kNN head, and the temperature of their similarity weights.
KNN_K = 10
KNN_TEMPERATURE = 0.05


@dataclass
class KnnClassifier:
    """Frozen base-encoder embeddings + nearest neighbours: the ``k`` training examples most cosine-similar to a
    text vote for their labels, weighted by ``exp(similarity / temperature)``. A few-shot head of another kind:
    nothing to fit, and often better than the linear head while the training set is small. Labels with no
    example keep probability 0."""

    labels: list[str]
    memory: np.ndarray  # (N, D) unit-norm training embeddings
    targets: np.ndarray  # (N,) label indices into ``labels``
    k: int = KNN_K
    base_model: str | None = None
    train_info: dict[str, Any] = field(default_factory=dict)
    rung: str = "few_shot"
    head: str = "knn"
    embed_window: int | None = None  # the embedding window it trained at (None: the bare encoder's 128, cut)

    def predict_proba_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, K)`` from precomputed ``(N, D)`` text embeddings."""
        x = np.asarray(embeddings, dtype=np.float32)
        x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-9, None)
        k = min(self.k, len(self.memory))
        out = np.zeros((len(x), len(self.labels)), dtype=np.float64)
        for start in range(0, len(x), 1024):
            sims = x[start : start + 1024] @ self.memory.T  # (B, N)
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            s = np.take_along_axis(sims, top, axis=1)
            w = np.exp((s - s.max(axis=1, keepdims=True)) / KNN_TEMPERATURE)
            rows = np.repeat(np.arange(len(top)), k)
            np.add.at(out[start : start + 1024], (rows, self.targets[top].ravel()), w.ravel())
        return out / out.sum(axis=1, keepdims=True)

    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        return self.predict_proba_embeddings(_embed(self.base_model, texts, batch_size, self.embed_window))

    def save(self, directory: str | Path, *, metadata: Mapping[str, Any]) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "knn.npz", memory=self.memory.astype(np.float32), targets=self.targets.astype(np.int32))
        own = {
            "rung": self.rung,
            "head": self.head,
            "k": self.k,
            "labels": self.labels,
            "base_model": self.base_model,
            "embed_window": self.embed_window,
            **self.train_info,
        }
        _write_metadata(path, own, metadata)


def train_knn(
    y: Sequence[Any] | np.ndarray,
    labels: Sequence[str],
    *,
    embeddings: np.ndarray,
    base_model: str | Path | None = None,
    k: int = KNN_K,
    embed_window: int | None = None,
) -> KnnClassifier:
    """The kNN head over ``(N, D)`` training embeddings (the cached ones, made at ``embed_window``) and their
    labels."""
    labels = list(labels)
    idx = label_indices(y, labels)
    memory = np.asarray(embeddings, dtype=np.float32)
    if memory.shape[0] != len(idx) or len(idx) == 0:
        raise ValueError(f"{memory.shape[0]} embeddings but {len(idx)} labels")
    memory = memory / np.clip(np.linalg.norm(memory, axis=1, keepdims=True), 1e-9, None)
    info = {"train_samples": len(idx), "train_labels_present": len(np.unique(idx))}
    return KnnClassifier(
        labels, memory, idx.astype(np.int64), k, base_name(base_model), info, embed_window=embed_window
    )


def _frozen_features(
    texts: Sequence[str],
    embeddings: np.ndarray | None,
    base_model: str | Path | None,
    *,
    n: int,
    window: int | None = None,
) -> np.ndarray:
    """``(N, D)`` float32: the given embeddings, or the texts embedded by the base encoder (at ``window``)."""
    if embeddings is None:
        embeddings = _embed(base_name(base_model), texts, 64, window)
    X = np.asarray(embeddings, dtype=np.float32)
    if X.shape[0] != n:
        raise ValueError(f"{X.shape[0]} embeddings but {n} labels")
    return X


def per_label_coefficients(head: Any, n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fitted sklearn ``LogisticRegression`` as one weight row ``(K, D)`` and bias ``(K,)`` per label of the task,
    and the label indices it saw. Labels it never saw get zeros (the caller decides their bias); for two classes
    sklearn's one row becomes logits ``(0, z)``, which give the same softmax."""
    classes = head.classes_.astype(np.int64)
    coef = np.zeros((n_labels, head.coef_.shape[1]), dtype=np.float32)
    intercept = np.zeros(n_labels, dtype=np.float32)
    if len(classes) == 2:
        coef[classes[1]], intercept[classes[1]] = head.coef_[0], head.intercept_[0]
    else:
        coef[classes], intercept[classes] = head.coef_, head.intercept_
    return coef, intercept, classes


# --------------------------------------------------------------------------------------------------- fine-tuned


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class FineTunedClassifier:
    """A fine-tuned sequence classifier (``save_pretrained`` format) with its tokenizer.

    ``precision`` is ``fp32`` (torch), or ``onnx_int8`` for the optimized CPU variant (ONNX Runtime, INT8; see
    :func:`build_onnx_int8`), which keeps the fp32 torch model beside its session. ``optimization`` records the last
    :func:`verify_optimized` check and is saved in metadata.
    """

    model: Any
    tokenizer: Any
    labels: list[str]
    base_model: str | None = None
    max_length: int = 64  # its fine-tuning window, chosen from the training texts' lengths
    # How a longer text is cut: "head_tail" (its first quarter and last three quarters of the window), what
    # fine_tune trains with; "head" (the first tokens) where the metadata names none.
    truncation: str = "head"
    device: str = "cpu"
    precision: str = "fp32"
    train_info: dict[str, Any] = field(default_factory=dict)
    optimization: dict[str, Any] | None = None
    source_dir: Path | None = None
    # The optimized variant: its ONNX Runtime session and serialized model.
    session: Any = field(default=None, repr=False)
    onnx_model: bytes | None = field(default=None, repr=False)
    # Rows whose optimized top-2 logit margin is under ``fallback_margin`` (near ties, where quantization error can
    # flip the answer) are recomputed by ``fallback``, the fp32 classifier; a margin of 0 turns this off.
    fallback: FineTunedClassifier | None = field(default=None, repr=False)
    fallback_margin: float = FALLBACK_MARGIN
    rung: str = "fine_tuned"
    _variant: FineTunedClassifier | None = field(default=None, repr=False, compare=False)

    def logits(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """``(N, K)`` float32 logits; texts are sorted by length so every batch pads little."""
        out = self._forward(texts, batch_size)
        if self.fallback is not None and self.fallback_margin > 0 and len(texts) and out.shape[1] > 1:
            top2 = np.partition(out, -2, axis=1)[:, -2:]
            close = np.flatnonzero(np.abs(top2[:, 1] - top2[:, 0]) < self.fallback_margin)
            if len(close):
                out[close] = self.fallback._forward([texts[int(i)] for i in close], batch_size)
        return out

    def _forward(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Batches padded to their longest text (``padding=True``), after sorting by length."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not len(texts):
            return out
        order = np.argsort([len(t) for t in texts], kind="stable")
        batches = [order[start : start + batch_size] for start in range(0, len(texts), batch_size)]
        pad_id = int(self.tokenizer.pad_token_id or 0)

        def encode(idx: np.ndarray) -> dict[str, np.ndarray]:
            ids = token_ids(self.tokenizer, [texts[i] for i in idx], self.max_length, self.truncation)
            return pad_ids(ids, pad_id)

        if self.session is not None:
            for idx in batches:
                out[idx] = self.session.run(["logits"], encode(idx))[0]
            return out
        import torch

        self.model.eval()
        with torch.inference_mode():
            for idx in batches:
                enc = {k: torch.from_numpy(v).to(self.device) for k, v in encode(idx).items()}
                out[idx] = self.model(**enc).logits.float().cpu().numpy()
        return out

    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        return _softmax(self.logits(list(texts), batch_size=batch_size))

    def optimized(self) -> FineTunedClassifier:
        """The CPU-optimized variant (not yet verified): the model in ONNX Runtime, fused and INT8-quantized
        (:func:`build_onnx_int8`), built once and kept. Near ties go back to fp32 when ``fallback_margin`` > 0.

        Returns ``self`` where there is none: without ``onnxruntime``, and on a GPU (bf16 inference of this small
        model measured 0.15x fp32 on an H100, bench/train.py), which keeps fp32."""
        if self.precision != "fp32" or self.device != "cpu":
            return self
        if self._variant is None:
            if not onnxruntime_available():
                log.info("onnxruntime is not installed: no optimized CPU variant")
                return self
            self._variant = self._with_onnx(build_onnx_int8(self.model, self.tokenizer))
        return self._variant

    def _with_onnx(self, data: bytes) -> FineTunedClassifier:
        import torch

        return FineTunedClassifier(
            model=self.model,
            tokenizer=self.tokenizer,
            labels=self.labels,
            base_model=self.base_model,
            max_length=self.max_length,
            truncation=self.truncation,
            device=self.device,
            precision=OPTIMIZED_PRECISION,
            train_info=self.train_info,
            optimization=self.optimization,
            source_dir=self.source_dir,
            session=onnx_session(data, torch.get_num_threads()),
            onnx_model=data,
            fallback=self if self.fallback_margin > 0 else None,
            fallback_margin=self.fallback_margin,
        )

    def save(self, directory: str | Path, *, metadata: Mapping[str, Any]) -> None:
        """The fp32 model, and the optimized variant's ONNX file when :func:`verify_optimized` accepted it."""
        if self.precision != "fp32":
            raise ValueError("save the fp32 model; the optimized variant is saved with it once verified")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        own: dict[str, Any] = {
            "rung": self.rung,
            "labels": self.labels,
            "base_model": self.base_model,
            "max_length": self.max_length,
            "truncation": self.truncation,
            **self.train_info,
        }
        if self.optimization is not None:
            own["optimization"] = self.optimization
        self._save_variant(path)
        _write_metadata(path, own, metadata)
        self.source_dir = path

    def _save_variant(self, path: Path) -> None:
        opt = self.optimization or {}
        variant = self._variant
        if opt.get("accepted") and variant is not None and variant.onnx_model is not None:
            (path / ONNX_FILE).write_bytes(variant.onnx_model)
        else:
            (path / ONNX_FILE).unlink(missing_ok=True)


def _load_fine_tuned(path: Path, meta: Mapping[str, Any], device: str) -> FineTunedClassifier:
    import torch
    from transformers import AutoTokenizer

    from flywheel.retrain.architectures import model_class_for

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = model_class_for(path).from_pretrained(path, local_files_only=True, dtype=torch.float32)
    model.to(device).eval()
    info_keys = ("metrics", "training_seconds", "seed", "train_samples", "pooling", "head_init")
    return FineTunedClassifier(
        model=model,
        tokenizer=tokenizer,
        labels=list(meta["labels"]),
        base_model=meta.get("base_model"),
        max_length=int(meta.get("max_length", 64)),
        truncation=str(meta.get("truncation", "head")),
        device=device,
        train_info={k: meta[k] for k in info_keys if k in meta},
        optimization=meta.get("optimization"),
        source_dir=path,
    )


def _load_optimized(clf: FineTunedClassifier, path: Path) -> FineTunedClassifier:
    """The verified optimized variant of ``clf`` (loaded from ``path``), or ``clf`` (fp32) where it can't be had."""
    opt = clf.optimization or {}
    if not (opt.get("accepted") and opt.get("precision") == OPTIMIZED_PRECISION):
        log.info("optimized variant of %s not verified; serving fp32", path)
        return clf
    if not onnxruntime_available():
        log.warning("onnxruntime is not installed: serving %s in fp32", path)
        return clf
    file = path / ONNX_FILE
    data = file.read_bytes() if file.exists() else None
    if data is None or sha256(data) != opt.get("onnx_sha256"):
        data = build_onnx_int8(clf.model, clf.tokenizer)  # the same weights give the same bytes...
        if sha256(data) != opt.get("onnx_sha256"):  # ...unless the exporter or ONNX Runtime changed: not verified
            log.warning("optimized variant of %s differs from the verified one; serving fp32", path)
            return clf
    clf.fallback_margin = float(opt.get("fallback_margin", 0.0))
    clf._variant = clf._with_onnx(data)
    return clf._variant


def load_classifier(
    directory: str | Path, *, device: str | None = None, optimize: bool = False
) -> ZeroShotClassifier | FewShotClassifier | KnnClassifier | FineTunedClassifier:
    """Load any rung from its directory.

    ``optimize=True`` returns the optimized variant of a fine-tuned model (ONNX Runtime INT8) on CPU only when its
    metadata records a passed :func:`verify_optimized` check of that very ONNX model (by SHA-256) and onnxruntime
    is installed; otherwise (and on a GPU) the fp32 model.
    """
    path = Path(directory)
    meta = read_metadata(path)
    rung = meta.get("rung")
    labels = list(meta["labels"])
    if rung == "zero_shot":
        return ZeroShotClassifier(
            labels=labels,
            label_embeddings=np.load(path / "label_embeddings.npy"),
            base_model=meta.get("base_model"),
            descriptions=dict(meta.get("descriptions") or {}),
            scale=float(meta.get("scale", ZERO_SHOT_SCALE)),
        )
    if rung == "few_shot" and meta.get("head") == "knn":
        knn = np.load(path / "knn.npz")
        return KnnClassifier(
            labels,
            knn["memory"],
            knn["targets"].astype(np.int64),
            int(meta["k"]),
            meta.get("base_model"),
            embed_window=meta.get("embed_window"),
        )
    if rung == "few_shot":
        head = np.load(path / "head.npz")
        return FewShotClassifier(
            labels=labels,
            coef=head["coef"],
            intercept=head["intercept"],
            base_model=meta.get("base_model"),
            embed_window=meta.get("embed_window"),
        )
    if rung == "fine_tuned":
        clf = _load_fine_tuned(path, meta, device or _default_device())
        if optimize and clf.device == "cpu":
            return _load_optimized(clf, path)
        return clf
    raise ValueError(f"{path}: unknown rung {rung!r}")


def verify_optimized(
    clf: TextClassifier, texts: Sequence[str], *, min_agreement: float = 0.99, batch_size: int = 32
) -> tuple[float, bool]:
    """Check the optimized variant against fp32 on ``texts`` (the holdout): the share of equal top-1 answers.

    Accepted when the agreement is at least ``min_agreement``. The result is recorded on the classifier (saved
    with it, with the variant's ONNX file when accepted) and, when the classifier came from a directory, in that
    directory's ``metadata.json`` (and ONNX file), which is what ``load_classifier(optimize=True)`` reads.
    Zero-shot and few-shot rungs, a model on a GPU, and any model without onnxruntime installed have no optimized
    variant: ``(1.0, False)``.
    """
    if not isinstance(clf, FineTunedClassifier) or clf.device != "cpu":
        return 1.0, False
    texts = list(texts)
    if not texts:
        raise ValueError("verify_optimized needs at least one text")
    if clf.precision != "fp32":
        raise ValueError("verify_optimized takes the fp32 classifier")
    fast = clf.optimized()
    if fast is clf:  # onnxruntime missing
        return 1.0, False
    ref = clf.logits(texts, batch_size=batch_size)
    got = fast.logits(texts, batch_size=batch_size)
    agreement = float(np.mean(ref.argmax(1) == got.argmax(1)))
    accepted = agreement >= min_agreement and bool(np.isfinite(got).all())
    import onnxruntime

    assert fast.onnx_model is not None
    clf.optimization = {
        "precision": fast.precision,
        "agreement": round(agreement, 6),
        "accepted": accepted,
        "min_agreement": min_agreement,
        "checked_on": len(texts),
        "fallback_margin": fast.fallback_margin if fast.fallback is not None else 0.0,
        "onnx_sha256": sha256(fast.onnx_model),
        "onnxruntime": onnxruntime.__version__,
    }
    fast.optimization = clf.optimization
    if clf.source_dir is not None and (clf.source_dir / METADATA_FILE).exists():
        clf._save_variant(clf.source_dir)
        meta = read_metadata(clf.source_dir)
        meta["optimization"] = clf.optimization
        (clf.source_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return agreement, accepted
