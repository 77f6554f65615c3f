"""A deterministic fake encoder for label-quality tests: fast, and well separated by true label."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class FakeEncoder:
    """Texts "acme text {i}" embed near the centroid of their true label; counts what it embeds."""

    truth: dict[str, int]
    id: str = "fake-encoder-1"
    dim: int = 16
    calls: list[int] = field(default_factory=list)

    def embed(self, texts, **_kwargs):
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, text in enumerate(texts):
            rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
            out[r, self.truth.get(text, 0)] = 1.0
            out[r] += rng.normal(scale=0.15, size=self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)
