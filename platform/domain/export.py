"""Export: a tenant's predictions with their feedback and effective label, as JSON Lines or Parquet, streamed.

Rows are read in chunks with a keyset cursor on ``(created_at, id)``, which the ``(tenant, task, created_at)`` index
serves on every database (and, partitioned, month by month), one short session per chunk, so an export of a
million rows never holds them in memory nor one transaction open for its whole length. Parquet is written one row
group per chunk with pyarrow, and the bytes are handed on as each group is finished.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, tuple_

from flywheel.domain.partitions import feedback_of
from flywheel.models.records import Feedback, Prediction

if TYPE_CHECKING:
    from flywheel.core.db import Database

CHUNK = 1000  # predictions per query (and per Parquet row group)
FORMATS = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def export_rows(db: Database, tenant_id: int, task_id: int, *, chunk: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    """Chunks of export records, oldest first: ``id``, ``text``, ``label``, ``confidence``, ``probabilities``,
    ``model_version``, ``created_at``, ``metadata``, ``feedback`` (oldest first) and ``effective_label``."""
    last: tuple[datetime, int] | None = None
    while True:
        with db.session() as session:
            rows = session.execute(
                select(
                    Prediction.id,
                    Prediction.client_id,
                    Prediction.text,
                    Prediction.label,
                    Prediction.confidence,
                    Prediction.probabilities,
                    Prediction.model_version,
                    Prediction.created_at,
                    Prediction.metadata_,
                    Prediction.effective_label,
                    Prediction.feedback_count,
                )
                .where(
                    Prediction.tenant_id == tenant_id,
                    Prediction.task_id == task_id,
                    *([tuple_(Prediction.created_at, Prediction.id) > tuple_(*last)] if last else []),
                )
                .order_by(Prediction.created_at, Prediction.id)
                .limit(chunk)
            ).all()
            if not rows:
                return
            feedback: dict[int, list[dict[str, Any]]] = defaultdict(list)
            with_feedback = [(r.id, r.created_at) for r in rows if r.feedback_count]
            if with_feedback:
                for fb in session.scalars(
                    select(Feedback).where(feedback_of(with_feedback)).order_by(Feedback.created_at, Feedback.id)
                ):
                    feedback[fb.prediction_id].append(
                        {
                            "id": fb.client_id,
                            "label": fb.label,
                            "source": fb.source,
                            "source_id": fb.source_id,
                            "decision": fb.decision,
                            "created_at": _iso(fb.created_at),
                        }
                    )
        last = (rows[-1].created_at, rows[-1].id)
        yield [
            {
                "id": r.client_id,
                "text": r.text,
                "label": r.label,
                "confidence": r.confidence,
                "probabilities": r.probabilities,
                "model_version": r.model_version,
                "created_at": _iso(r.created_at),
                "metadata": r.metadata_,
                "feedback": feedback.get(r.id, []),
                "effective_label": r.effective_label,
            }
            for r in rows
        ]


def jsonl_stream(chunks: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    """One JSON object per line."""
    for rows in chunks:
        yield "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows).encode("utf-8")


class _Sink:
    """A write-only file for pyarrow that keeps what was written until it is taken."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def parquet_schema() -> Any:
    import pyarrow as pa

    feedback = pa.struct(
        [
            ("id", pa.string()),
            ("label", pa.string()),
            ("source", pa.string()),
            ("source_id", pa.string()),
            ("decision", pa.string()),
            ("created_at", pa.string()),
        ]
    )
    return pa.schema(
        [
            ("id", pa.string()),
            ("text", pa.string()),
            ("label", pa.string()),
            ("confidence", pa.float64()),
            ("probabilities", pa.string()),  # JSON: a map whose keys vary by task
            ("model_version", pa.string()),
            ("created_at", pa.string()),
            ("metadata", pa.string()),  # JSON: free-form
            ("feedback", pa.list_(feedback)),
            ("effective_label", pa.string()),
        ]
    )


def parquet_stream(chunks: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    """A Parquet file, one row group per chunk; ``probabilities`` and ``metadata`` as JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    sink = _Sink()
    writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema)
    try:
        for rows in chunks:
            for r in rows:
                r["probabilities"] = None if r["probabilities"] is None else json.dumps(r["probabilities"])
                r["metadata"] = None if r["metadata"] is None else json.dumps(r["metadata"])
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            yield sink.take()
    finally:
        writer.close()
    yield sink.take()
