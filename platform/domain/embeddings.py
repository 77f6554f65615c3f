"""Frozen base-encoder embeddings through the ``embedding_cache`` table: never embed the same text twice.

Keyed by (encoder id, SHA-256 of the text). Other areas (drift, few-shot, simulation) call ``get_embeddings``
instead of embedding themselves. The service takes the session and never commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from flywheel.core.db import utcnow
from flywheel.models.label_quality import EmbeddingCache

if TYPE_CHECKING:
    from flywheel.domain.encoder import Encoder

LOOKUP_CHUNK = 500  # hashes per IN (...) query: well under every backend's bound-parameter limit
EMBED_CHUNK = 256  # texts embedded (and stored) per step


def get_embeddings(
    session: Session,
    texts: Sequence[str],
    *,
    encoder: Encoder | Any | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``(N, D)`` float32 unit-norm embeddings of ``texts``, computing (and caching) only the missing ones.

    ``encoder``: anything with ``.id`` and ``.embed(texts) -> (n, D)``; the packaged base encoder by default.
    ``progress(n)`` is called with the number of texts done at each step (cached ones count at once).
    """
    from flywheel.domain.encoder import load_encoder, text_hash

    enc = encoder if encoder is not None else load_encoder()
    texts = list(texts)
    if not texts:
        dim = int(getattr(enc, "dim", 0) or 0)
        return np.zeros((0, dim), dtype=np.float32)
    hashes = [text_hash(t) for t in texts]
    unique = list(dict.fromkeys(hashes))
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(unique), LOOKUP_CHUNK):
        chunk = unique[start : start + LOOKUP_CHUNK]
        rows = session.execute(
            select(EmbeddingCache.text_hash, EmbeddingCache.dim, EmbeddingCache.vector).where(
                EmbeddingCache.encoder_id == enc.id, EmbeddingCache.text_hash.in_(chunk)
            )
        )
        for h, dim, blob in rows:
            found[h] = np.frombuffer(blob, dtype="<f4", count=dim)
    if progress is not None:
        progress(sum(1 for h in hashes if h in found))
    first_text = {h: t for h, t in zip(hashes, texts, strict=True)}
    missing = [h for h in unique if h not in found]
    for start in range(0, len(missing), EMBED_CHUNK):
        chunk = missing[start : start + EMBED_CHUNK]
        vectors = np.asarray(enc.embed([first_text[h] for h in chunk]), dtype=np.float32)
        _store(session, enc.id, chunk, vectors)
        for h, v in zip(chunk, vectors, strict=True):
            found[h] = v
        if progress is not None:
            done = set(chunk)
            progress(sum(1 for h in hashes if h in done))
    return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False)


def _store(session: Session, encoder_id: str, hashes: list[str], vectors: np.ndarray) -> None:
    """Insert, ignoring rows another process stored meanwhile (same key, same vector)."""
    now = utcnow()
    rows = [
        {
            "encoder_id": encoder_id,
            "text_hash": h,
            "dim": int(v.shape[0]),
            "vector": v.astype("<f4").tobytes(),
            "created_at": now,
        }
        for h, v in zip(hashes, vectors, strict=True)
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(EmbeddingCache).on_conflict_do_nothing(index_elements=["encoder_id", "text_hash"])
    session.execute(stmt, rows)
