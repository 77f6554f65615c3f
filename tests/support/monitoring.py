"""Helpers for the monitoring tests: bulk-insert predictions with effective labels, a local webhook receiver."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import insert, select

from flywheel.core.db import Database
from flywheel.domain import partitions
from flywheel.models.records import Prediction, Task, Tenant

NOW = datetime.fromisoformat("2026-11-27T12:00:00+00:00")


def add_predictions(
    db: Database,
    tenant: str,
    rows: Sequence[tuple[str, str | None, float]],
    *,
    task: str = "intent",
    at: datetime | None = None,
    prefix: str = "p",
    discarded: bool = False,
    text_length: int | None = None,
) -> None:
    """Insert ``(label, effective_label, confidence)`` rows created at ``at`` (default: an hour before NOW)."""
    at = at or NOW - timedelta(hours=1)
    with db.session() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == tenant))
        task_id = session.scalar(select(Task.id).where(Task.name == task))
        values: list[dict[str, Any]] = []
        for i, (label, effective, confidence) in enumerate(rows):
            cid = f"{prefix}-{i}"
            text = f"text {cid} " + ("x" * text_length if text_length else "")
            values.append(
                {
                    "tenant_id": tenant_id,
                    "task_id": task_id,
                    "client_id": cid,
                    "text": text,
                    "label": label,
                    "confidence": confidence,
                    "probabilities": None,
                    "model_version": "v1",
                    "metadata_": None,
                    "created_at": at,
                    "received_at": at,
                    "content_hash": hashlib.sha256(cid.encode()).hexdigest(),
                    "bucket": i % 100,
                    "effective_label": effective,
                    "label_discarded": discarded,
                    "feedback_count": 0 if effective is None else 1,
                }
            )
        session.execute(insert(Prediction), values)
        partitions.register_keys(session)  # written around ingest: their idempotency keys too (PostgreSQL)


def labeled(
    n: int, correct: int, *, right: str = "card_arrival", wrong: str = "card_linking", conf: float = 0.9
) -> list[tuple[str, str | None, float]]:
    """``n`` labeled rows predicted ``right`` of which ``correct`` were right."""
    return [(right, right if i < correct else wrong, conf) for i in range(n)]


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 recording every POST; answers ``codes`` in turn, then the last one."""

    codes: list[int] = field(default_factory=lambda: [200])
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def record(self, headers: dict[str, str], body: bytes) -> int:
        self.requests.append({"headers": headers, "body": body, "json": json.loads(body)})
        index = min(len(self.requests) - 1, len(self.codes) - 1)
        return self.codes[index]


@contextmanager
def webhook_receiver(codes: list[int] | None = None) -> Iterator[Receiver]:
    receiver = Receiver(codes=codes or [200])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            code = receiver.record({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/flywheel"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
