"""A long text's segments: its lines, and the sentences of an overlong line, each short enough to embed whole.

A sentence embedding of a long text is the mean of everything in it, so a support ticket whose request is two lines
among twenty of small talk embeds as small talk. The label-quality pass therefore also reads long texts segment by
segment (``flywheel.feedback.oos``: a classifier over segments, each text scored by its most telling segment).
Segments follow the text's own structure, line breaks first (the messages of a thread, the paragraphs of an
email), then sentence ends inside a line longer than ``MAX_SEGMENT_CHARS`` (about the bare encoder's 128 tokens,
at some four characters to a token); a line without a sentence end stays whole (the windowed encoder chunks it).
A text of one short line is one segment, itself: a task of short single-line texts has no segments, and reads
exactly as before. Pure Python: importing this module loads nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: Lines longer than this are split at sentence ends.
MAX_SEGMENT_CHARS = 512
#: The share of a set's texts that must split for the set to be read by segment: a few multi-line texts among
#: short ones are not worth a second cross-validation.
MIN_SPLIT_SHARE = 0.05
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_segments(text: str) -> list[str]:
    """``text``'s segments in order (``[text]`` itself for a text of one short line, or with nothing to split)."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if len(line) <= MAX_SEGMENT_CHARS:
            out.append(line)
        else:
            out.extend(s for s in _SENTENCE_END.split(line) if s.strip())
    return out if len(out) > 1 else [text]


def segment_texts(
    texts: Sequence[str], *, min_split_share: float = MIN_SPLIT_SHARE
) -> tuple[list[str], list[int]] | None:
    """Every segment of ``texts`` and the index of the text each belongs to (every text has at least one), or None
    when fewer than ``min_split_share`` of the texts split (a short-text set: nothing to gain over the whole texts'
    embeddings)."""
    segments: list[str] = []
    owner: list[int] = []
    split = 0
    for i, text in enumerate(texts):
        parts = split_segments(text)
        segments.extend(parts)
        owner.extend([i] * len(parts))
        split += len(parts) > 1
    if split == 0 or split < min_split_share * len(texts):
        return None
    return segments, owner
