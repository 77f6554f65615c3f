"""Frozen base-encoder embeddings through the ``embedding_cache`` table: never embed the same text twice.

Keyed by (encoder id, SHA-256 of the text). Other areas (drift, few-shot, simulation) call ``get_embeddings``
instead of embedding themselves. The service takes the session and never commits.

An encoder at a task's window (``flywheel.domain.encoder.WindowedEncoder``) keys each text by ``cache_keys``: the bare
encoder's id where the text is embedded exactly as the bare encoder embeds it, its own id (which names the window
and the chunking) where the window changes the embedding, so embeddings made at different windows never mix.
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

    ``encoder``: anything with ``.id`` and ``.embed(texts) -> (n, D)`` (and, optionally, ``.cache_keys(texts)``
    giving each text's key); the packaged base encoder by default. ``progress(n)`` is called with the number of
    texts done at each step (cached ones count at once).
    """
    from flywheel.domain.encoder import load_encoder, text_hash

    enc = encoder if encoder is not None else load_encoder()
    texts = list(texts)
    if not texts:
        dim = int(getattr(enc, "dim", 0) or 0)
        return np.zeros((0, dim), dtype=np.float32)
    hashes = [text_hash(t) for t in texts]
    first = dict(zip(hashes, texts, strict=True))  # one text per hash
    unique = list(first)
    key_of = dict(zip(unique, _cache_keys(enc, [first[h] for h in unique]), strict=True))
    found: dict[str, np.ndarray] = {}
    for key in dict.fromkeys(key_of.values()):
        _lookup(session, key, [h for h in unique if key_of[h] == key], found)
    if progress is not None:
        progress(sum(1 for h in hashes if h in found))
    missing = [h for h in unique if h not in found]
    for start in range(0, len(missing), EMBED_CHUNK):
        chunk = missing[start : start + EMBED_CHUNK]
        vectors = np.asarray(enc.embed([first[h] for h in chunk]), dtype=np.float32)
        _store(session, [key_of[h] for h in chunk], chunk, vectors)
        for h, v in zip(chunk, vectors, strict=True):
            found[h] = v
        if progress is not None:
            done = set(chunk)
            progress(sum(1 for h in hashes if h in done))
    return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False)


def _cache_keys(enc: Any, texts: list[str]) -> list[str]:
    """Each text's cache key: the encoder's ``cache_keys`` where it has them, else its id for every text."""
    keys = getattr(enc, "cache_keys", None)
    return list(keys(texts)) if callable(keys) else [str(enc.id)] * len(texts)


def _lookup(session: Session, encoder_id: str, hashes: list[str], found: dict[str, np.ndarray]) -> None:
    """Add to ``found`` the cached vectors of ``hashes`` under ``encoder_id``."""
    for start in range(0, len(hashes), LOOKUP_CHUNK):
        rows = session.execute(
            select(EmbeddingCache.text_hash, EmbeddingCache.dim, EmbeddingCache.vector).where(
                EmbeddingCache.encoder_id == encoder_id,
                EmbeddingCache.text_hash.in_(hashes[start : start + LOOKUP_CHUNK]),
            )
        )
        for h, dim, blob in rows:
            found[h] = np.frombuffer(blob, dtype="<f4", count=dim)


def _store(session: Session, encoder_ids: list[str], hashes: list[str], vectors: np.ndarray) -> None:
    """Insert, ignoring rows another process stored meanwhile (same key, same vector)."""
    now = utcnow()
    rows = [
        {
            "encoder_id": key,
            "text_hash": h,
            "dim": int(v.shape[0]),
            "vector": v.astype("<f4").tobytes(),
            "created_at": now,
        }
        for key, h, v in zip(encoder_ids, hashes, vectors, strict=True)
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(EmbeddingCache).on_conflict_do_nothing(index_elements=["encoder_id", "text_hash"])
    session.execute(stmt, rows)
