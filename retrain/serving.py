"""Serving: the champion of the caller's (task, tenant) answers, and every answer is logged as a prediction.

Each web worker keeps its loaded models in memory, keyed by model id. Per request it reads the champion slot
(one indexed row: model id and ``updated_at``), so a promotion or rollback made by any process reaches every running
worker on its next request, with no restart and no message bus. Web workers never train.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from flywheel.core.errors import Conflict, ServiceUnavailable
from flywheel.domain import champions, partitions
from flywheel.domain.ingest import ingest_predictions
from flywheel.domain.schemas import PredictionIn
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.training import ModelVersion
from flywheel.retrain import registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeInput:
    id: str | None
    text: str
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = None  # when the request happened, if not now (replays, simulations)


@dataclass(frozen=True)
class Served:
    id: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    model_version: str


class InferenceSlots:
    """At most ``slots`` inferences at once across a server's worker processes (the semaphore is made before
    gunicorn forks them), each on ``threads`` torch threads. On a small machine inference then never takes every
    core, and the cheap requests that share the server (logging, reads) keep one of their own instead of queueing
    behind model calls. A request that waits longer than ``wait_s`` for a slot answers 503 with ``Retry-After``."""

    def __init__(self, slots: int, threads: int, *, wait_s: float = 30.0) -> None:
        self.slots, self.threads, self.wait_s = slots, threads, wait_s
        self._semaphore = multiprocessing.get_context("fork").BoundedSemaphore(slots)
        self._threads_set_in: int | None = None

    @classmethod
    def for_machine(cls, slots: int = 0) -> InferenceSlots:
        """``slots`` (0: one fewer than the CPU cores, at least one) sharing the cores that leaves."""
        cores = os.cpu_count() or 1
        slots = slots or max(1, cores - 1)
        return cls(slots, max(1, (cores - 1) // slots))

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self._threads_set_in != os.getpid():
            import torch

            torch.set_num_threads(self.threads)
            self._threads_set_in = os.getpid()
        if not self._semaphore.acquire(timeout=self.wait_s):
            raise ServiceUnavailable("every inference slot is busy; retry shortly", retry_after=2)
        try:
            yield
        finally:
            self._semaphore.release()


class ModelServer:
    """One per process: a cache of loaded champions, reloaded when a scope's champion changes. ``slots`` bounds
    the inferences that run at once (none: unbounded)."""

    def __init__(
        self,
        *,
        optimize: bool = False,
        batch_size: int = 32,
        default_base: str | None = None,
        slots: InferenceSlots | None = None,
    ) -> None:
        self.cache = registry.ModelCache(optimize=optimize, default_base=default_base)
        self.batch_size = batch_size
        self.slots = slots
        self._serving: dict[tuple[int, int], int] = {}  # (task, tenant key) -> model id last served
        self._lock = threading.Lock()

    def champion(self, session: Session, task: Task, tenant: Tenant) -> ModelVersion:
        state = champions.serving_state(session, task.id, tenant.id)
        if state is None:  # a task created before the registry existed: its zero-shot model, now
            registry.ensure_zero_shot(session, task)
            state = champions.serving_state(session, task.id, tenant.id)
            assert state is not None
        model = session.get(ModelVersion, state[0])
        assert model is not None
        key = (task.id, tenant.id)
        with self._lock:
            previous = self._serving.get(key)
            self._serving[key] = model.id
            in_use = set(self._serving.values())
        if previous is not None and previous != model.id:
            log.info(
                "champion of task %s for tenant %s changed: model %s -> %s", task.name, tenant.slug, previous, model.id
            )
            self.cache.keep_only(in_use)
        return model

    def predict(self, session: Session, tenant: Tenant, task: Task, inputs: list[ServeInput]) -> list[Served]:
        """Answer ``inputs`` with the champion and log every answer through the ingest service (not committed).

        An input whose id was already answered with the same text is answered from the log (a retry); the same
        id with another text is a 409.
        """
        ids = [i.id or f"pred-{uuid.uuid4().hex}" for i in inputs]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise Conflict(f"ids repeated in one request: {', '.join(sorted(dupes)[:10])}")
        stored = {
            p.client_id: p
            for p in session.scalars(select(Prediction).where(partitions.by_client_ids(session, tenant.id, ids)))
        }
        changed = [cid for cid, inp in zip(ids, inputs, strict=True) if cid in stored and stored[cid].text != inp.text]
        if changed:
            raise Conflict(
                f"{len(changed)} id(s) were already used for another text: {', '.join(changed[:10])}",
                errors=[
                    {"loc": ["inputs", ids.index(c), "id"], "msg": "already used for another text"} for c in changed
                ],
            )
        fresh = [k for k, cid in enumerate(ids) if cid not in stored]
        out: dict[int, Served] = {}
        for k, cid in enumerate(ids):
            if cid in stored:
                p = stored[cid]
                out[k] = Served(cid, p.label, p.confidence, dict(p.probabilities or {}), p.model_version or "")
        if fresh:
            model = self.champion(session, task, tenant)
            try:
                clf = self.cache.get(model)
            except FileNotFoundError as exc:  # the artifact store lost the champion's files (or cannot be reached)
                log.error("cannot load the champion %s: %s", model.version, exc)
                raise ServiceUnavailable(
                    f"the serving model {model.version} cannot be loaded from the artifact store; retry shortly",
                    retry_after=30,
                ) from exc
            texts = [inputs[k].text for k in fresh]
            with self.slots.hold() if self.slots is not None else nullcontext():
                raw = clf.predict_proba(texts, batch_size=self.batch_size)
            proba = np.clip(np.asarray(raw, dtype=np.float64), 0, 1)
            cols = list(clf.labels)
            items = []
            for row, k in zip(proba, fresh, strict=True):
                probs = {label: float(p) for label, p in zip(cols, row, strict=True)}
                label = cols[int(row.argmax())]
                served = Served(ids[k], label, probs[label], probs, model.version)
                out[k] = served
                items.append(
                    PredictionIn(
                        id=served.id,
                        task=task.name,
                        text=inputs[k].text,
                        label=label,
                        confidence=served.confidence,
                        probabilities=probs,
                        model_version=model.version,
                        metadata=inputs[k].metadata,
                        created_at=inputs[k].created_at,
                    )
                )
            ingest_predictions(session, tenant.id, items)
        return [out[k] for k in range(len(inputs))]
