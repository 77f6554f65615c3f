"""JSON encoding of items and the chunking of batches by item count and body size."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

# The server's limits (API.md): 1,000 items and 5 MB a request for predictions and feedback, 256 inputs for predict.
MAX_BATCH_ITEMS = 1000
MAX_PREDICT_INPUTS = 256
# Bodies are kept under 4 MiB, well inside the 5 MB limit (the envelope and any proxy headroom included).
MAX_BATCH_BYTES = 4 * 1024 * 1024


def rfc3339(value: datetime) -> str:
    """An RFC 3339 timestamp; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _default(value: object) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# One encoder for every call: json.dumps with options builds a new one each time (a third of an item's cost).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_default, allow_nan=False)


def encode(value: object) -> bytes:
    """Compact UTF-8 JSON; datetimes become RFC 3339 strings (naive ones taken as UTC)."""
    return _ENCODER.encode(value).encode()


def encode_item(item: Mapping[str, Any]) -> bytes:
    """One item of a batch; raises TypeError for anything that is not a JSON object."""
    if isinstance(item, dict):
        return encode(item)
    if not isinstance(item, Mapping):
        raise TypeError(f"an item must be a dict, not {type(item).__name__}")
    return encode(dict(item))


def batch_body(root: str, parts: Sequence[bytes]) -> bytes:
    """``{"<root>": [part, part, ...]}`` from items already encoded."""
    return b'{"' + root.encode() + b'":[' + b",".join(parts) + b"]}"


def chunks(sizes: Sequence[int], *, max_items: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` ranges over items of the given encoded sizes: at most ``max_items`` items and about
    ``max_bytes`` bytes each (an item larger than ``max_bytes`` goes alone)."""
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_items or total + size + 1 > max_bytes):
            yield start, i
            start, total = i, 0
        total += size + 1
    if start < len(sizes):
        yield start, len(sizes)
