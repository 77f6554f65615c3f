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


@dataclass
class LineEncoder:
    """Embeds a text as the mean of its lines, the way a sentence encoder's pooling blurs a long text: a line in
    ``truth`` sits near its label's centroid, any other line (small talk) at a random point of its own."""

    truth: dict[str, int]
    id: str = "line-encoder-1"
    dim: int = 16

    def embed(self, texts, **_kwargs):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, text in enumerate(texts):
            lines = [line.strip() for line in text.splitlines() if line.strip()] or [text]
            out[r] = np.mean([self._line(line) for line in lines], axis=0)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def _line(self, line: str) -> np.ndarray:
        rng = np.random.default_rng(int(hashlib.sha256(line.encode()).hexdigest()[:8], 16))
        if line in self.truth:
            v = rng.normal(scale=0.15, size=self.dim)
            v[self.truth[line]] += 1.0
        else:
            v = rng.normal(size=self.dim)
        return v / np.linalg.norm(v)
