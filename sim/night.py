"""One simulated night, run the way the scheduler (``flywheel scheduler``, platform/scheduler.py) runs it.

The scheduler records each cron job once per fire time (``run_once``, keyed by ``fire_key``); its hourly job is the
monitoring pass, its nightly job ``nightly_pipeline`` (the label-quality pass, then one queued training run per task
and eligible tenant), and its training thread claims and runs the queued runs with their gate. The simulation calls
those same functions, one after another on the simulated clock instead of on timers:

1. the hourly job's 23:00 fire: ``run_monitoring`` at 23:00 (SLAs, drift, alerts);
2. the nightly job at the nightly cron's next fire (02:00 the next morning by default): ``nightly_pipeline``;
3. the reviewer's decisions, if there is a reviewer: on the queue the night's pass has just refreshed;
4. the training worker: ``process_queue`` (the loop the scheduler's training thread runs: claim, train, gate).

Left out: the scheduler's early-retrain check. Training runs are stamped with the real clock, so its debounce window
cannot be simulated, and every simulated day ends with the nightly run anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.monitoring.jobs import run_monitoring
from flywheel.retrain.jobs import process_queue
from flywheel.scheduler import JOB_MONITORING, JOB_NIGHTLY, fire_key, job_triggers, nightly_pipeline, run_once
from sim.scenario import sim_time

OWNER = "simulation"  # the owner of the simulated nights' job runs (a scheduler records its host:pid:key)

T = TypeVar("T")


@dataclass(frozen=True)
class Night:
    """What the scheduler's jobs did on one simulated night."""

    monitored_at: datetime
    monitoring: dict[str, Any]  # run_monitoring's result
    nightly_at: datetime
    queued: list[int]  # the training runs the nightly job queued
    trained: list[int]  # the runs the training worker ran


def nightly_fire(settings: Settings, day: int) -> datetime:
    """When the scheduler's nightly job fires after simulated ``day``: the nightly cron's first fire from 23:00 on."""
    evening = sim_time(day)
    fire: datetime = job_triggers(settings)[JOB_NIGHTLY].get_next_fire_time(None, evening)
    return fire


def run_night(db: Database, settings: Settings, day: int, before_training: Callable[[], None] | None = None) -> Night:
    """Simulated ``day``'s night: monitoring, the nightly pipeline, ``before_training`` (a reviewer), training."""
    evening, night = sim_time(day), nightly_fire(settings, day)
    monitoring = run_scheduled(db, settings, JOB_MONITORING, evening, lambda: run_monitoring(db, settings, now=evening))
    queued = run_scheduled(db, settings, JOB_NIGHTLY, night, lambda: nightly_pipeline(db, settings))
    if before_training is not None:
        before_training()
    trained = process_queue(db, settings)
    return Night(evening, monitoring, night, queued, trained)


def run_scheduled(db: Database, settings: Settings, job_id: str, now: datetime, job: Callable[[], T]) -> T:
    """Run ``job`` as the scheduler fires ``job_id`` at ``now`` (once per fire time, recorded in ``job_runs``) and
    return its result. The scheduler logs a failed job and carries on; a simulation stops at the first failure."""
    key = fire_key(job_triggers(settings)[job_id], now)
    results: list[T] = []
    errors: list[Exception] = []

    def recorded() -> T:
        try:
            result = job()
        except Exception as exc:
            errors.append(exc)
            raise
        results.append(result)
        return result

    if not run_once(db, job_id, key, OWNER, recorded):
        raise RuntimeError(f"{job_id} already ran for {key}: an arm's database must be fresh")
    if errors:
        raise RuntimeError(f"the scheduler's job {job_id} failed for {key}") from errors[0]
    return results[0]
