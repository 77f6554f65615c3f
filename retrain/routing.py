"""Where a training run executes: in the scheduler's process, on this Celery worker, or on a GPU worker.

Workers register themselves in ``worker_processes`` with their queues, device and a heartbeat. A run that the
data sends to the fine-tuned rung needs a GPU when it runs on a worker: a CPU worker hands it to the ``gpu`` queue
while a live GPU worker exists, and otherwise the ladder stops at the few-shot rung (the run says why), so a
deployment without a GPU worker never queues a fine-tune that would wait forever. In-process (no broker) the
scheduler fine-tunes on whatever device it has, as it always did.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from sqlalchemy import select

from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.models.training import WorkerProcess

QUEUE_CPU = "cpu"
QUEUE_GPU = "gpu"


def owner() -> tuple[str, int]:
    """This process as a run's owner: ``(host, pid)``, as a claim records it."""
    return socket.gethostname()[:255], os.getpid()


@dataclass(frozen=True)
class Executor:
    """What the process running a job can do: its name (``host:pid``), the queues it consumes, its device."""

    name: str
    queues: tuple[str, ...]
    device: str

    @property
    def has_gpu(self) -> bool:
        return self.device.startswith("cuda")


def detect_device() -> str:
    """``"cuda: <card name>"`` where torch sees a GPU, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return "cpu"


def executor_for(queues: Sequence[str] | None = None) -> Executor:
    """This process as an executor: ``queues`` as given, else ``cpu`` plus ``gpu`` where CUDA is available."""
    device = detect_device()
    chosen = tuple(queues) if queues else ((QUEUE_CPU, QUEUE_GPU) if device.startswith("cuda") else (QUEUE_CPU,))
    host, pid = owner()
    return Executor(name=f"{host}:{pid}", queues=chosen, device=device)


def live_gpu_workers(db: Database, settings: Settings) -> list[str]:
    """Names of the registered workers that consume ``gpu`` and sent a heartbeat in the last three periods."""
    fresh = utcnow() - timedelta(seconds=3 * settings.worker_heartbeat_seconds)
    with db.session() as session:
        rows = session.execute(
            select(WorkerProcess.name, WorkerProcess.queues).where(WorkerProcess.heartbeat_at >= fresh)
        ).all()
    return [name for name, queues in rows if QUEUE_GPU in queues.split(",")]


Route = Literal["here", "gpu_queue", "few_shot"]


def route_fine_tune(db: Database, settings: Settings, executor: Executor | None) -> tuple[Route, str]:
    """Where a run whose data calls for fine-tuning should go, and why."""
    if executor is None or executor.has_gpu:
        return "here", "fine-tuning here"
    if settings.fine_tune_on_cpu:
        return "here", "fine-tuning on this CPU worker (FLYWHEEL_FINE_TUNE_ON_CPU)"
    gpus = live_gpu_workers(db, settings)
    if gpus:
        return "gpu_queue", f"fine-tuning goes to the gpu queue ({len(gpus)} GPU worker(s) alive)"
    return "few_shot", "fine-tuning needs a GPU worker and none is alive: the ladder stops at the few-shot rung"
