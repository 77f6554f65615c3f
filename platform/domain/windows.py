"""How many tokens a model reads at once, chosen from the task's own text lengths ("length follows the data").

Two windows, both in tokens counted with the tokenizer's special tokens (what ``max_length`` counts):

- the **embedding window** of the frozen base encoder (few-shot and kNN heads, the label-quality pass): a text up to
  it is embedded whole; a longer one is split into overlapping chunks of the window, each embedded, and mean-pooled
  weighted by token count (``flywheel.domain.encoder.WindowedEncoder``), so no token is dropped;
- the **fine-tuning window** of the fine-tuned model: a longer text keeps its head and its tail
  (:func:`head_tail`), at training and at inference alike.

:func:`choose_window` takes the 95th percentile of a sample of the task's token lengths, rounded up to a multiple of
32, never below the default window (128 to embed, 64 to fine-tune: a short-text task reads its texts exactly as the
bare encoder and a default fine-tuning do, and batches are padded to their own longest text, so a smaller window
would save nothing) and never above the base model's limit (``flywheel.domain.encoder.window_limit``: 256 for
all-MiniLM-L6-v2). A sample of fewer than 20 texts keeps the default window. Pure Python: importing this module
loads nothing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: The smallest windows, which short-text tasks keep: the bare encoder's 128 tokens and fine-tuning's 64.
DEFAULT_EMBEDDING_WINDOW = 128
DEFAULT_FINE_TUNING_WINDOW = 64
#: Windows are multiples of this many tokens.
WINDOW_STEP = 32
#: The share of the sampled texts a window covers whole.
WINDOW_PERCENTILE = 95.0
#: Texts whose lengths are measured (a seeded sample beyond it); fewer than ``MIN_SAMPLE``: the default window.
SAMPLE_SIZE = 10_000
MIN_SAMPLE = 20
#: The share of a fine-tuning window given to the text's head when it is cut (the rest keeps its tail).
HEAD_SHARE = 0.25


def choose_window(
    lengths: Sequence[int],
    *,
    limit: int,
    default: int,
    percentile: float = WINDOW_PERCENTILE,
    step: int = WINDOW_STEP,
    min_sample: int = MIN_SAMPLE,
) -> int:
    """The window for texts of these token ``lengths``: their ``percentile`` rounded up to a multiple of ``step``,
    at least ``default`` (and ``step``), at most ``limit``; ``default`` (capped by ``limit``) for a tiny sample."""
    if limit < 1:
        raise ValueError(f"limit must be positive, not {limit}")
    floor = max(default, step)
    if len(lengths) < min_sample:
        return min(floor, limit)
    want = math.ceil(_percentile(lengths, percentile) / step) * step
    return int(min(max(want, floor), limit))


def _percentile(values: Sequence[int], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without importing numpy."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def sample_texts(texts: Sequence[str], n: int = SAMPLE_SIZE, *, seed: int = 0) -> list[str]:
    """Up to ``n`` of ``texts``: all of them, or a seeded sample (the same texts give the same sample)."""
    if len(texts) <= n:
        return list(texts)
    picked = sorted(random.Random(seed).sample(range(len(texts)), n))
    return [texts[i] for i in picked]


@dataclass(frozen=True)
class TextWindows:
    """The windows chosen for a task's texts, and what they were chosen from (recorded with every model)."""

    embedding: int
    fine_tuning: int
    limit: int  # the base model's limit: chunked (embedding) or cut head + tail (fine-tuning) beyond it
    sampled: int  # how many texts were measured
    p95_tokens: int | None  # their 95th-percentile length (None: too few to measure)
    max_tokens: int | None
    over_embedding: float  # share of the sampled texts longer than the embedding window (chunked)
    over_fine_tuning: float  # share longer than the fine-tuning window (cut head + tail)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "chunking": "overlapping windows, mean-pooled by token count",
            "truncation": "head_tail",
        }


def text_windows(texts: Sequence[str], lengths_of: Callable[[list[str]], list[int]], *, limit: int) -> TextWindows:
    """Both windows for ``texts``, measuring a sample with ``lengths_of`` (token lengths with special tokens)."""
    sample = sample_texts(texts)
    lengths = lengths_of(sample) if sample else []
    embedding = choose_window(lengths, limit=limit, default=DEFAULT_EMBEDDING_WINDOW)
    fine_tuning = choose_window(lengths, limit=limit, default=DEFAULT_FINE_TUNING_WINDOW)
    measured = len(lengths) >= MIN_SAMPLE
    n = max(len(lengths), 1)
    return TextWindows(
        embedding=embedding,
        fine_tuning=fine_tuning,
        limit=limit,
        sampled=len(lengths),
        p95_tokens=math.ceil(_percentile(lengths, WINDOW_PERCENTILE)) if measured else None,
        max_tokens=max(lengths) if lengths else None,
        over_embedding=round(sum(1 for x in lengths if x > embedding) / n, 4),
        over_fine_tuning=round(sum(1 for x in lengths if x > fine_tuning) / n, 4),
    )


def chunk_spans(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of at most ``size`` tokens covering ``n_tokens``, consecutive ones sharing ``overlap``
    tokens; the last may be shorter. One span when the text fits."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    if n_tokens <= size:
        return [(0, n_tokens)]
    stride = size - overlap
    spans = []
    start = 0
    while True:
        end = min(start + size, n_tokens)
        spans.append((start, end))
        if end == n_tokens:
            return spans
        start += stride


def keep_head_and_tail(items: list[Any], most: int) -> list[Any]:
    """At most ``most`` of ``items``: a quarter from the head, the rest from the tail (a thread's last message is
    usually the one that matters)."""
    if len(items) <= most:
        return items
    head = max(1, int(most * HEAD_SHARE))
    return items[:head] + items[len(items) - (most - head) :]


def head_tail(body: list[int], room: int) -> list[int]:
    """``body`` (token ids, no special tokens) cut to ``room`` tokens: its first quarter and its last three
    quarters (Sun et al., 2019: head + tail beats either alone on long reviews); unchanged when it fits."""
    if len(body) <= room:
        return body
    head = int(room * HEAD_SHARE)
    return body[:head] + body[len(body) - (room - head) :]
