"""``flywheel retrain``: one training run in the foreground, with a progress bar."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click
from sqlalchemy import select

from flywheel.core.cli_context import Context, pass_ctx


@click.command("retrain")
@click.option("--task", "task_name", required=True, help="The task to train.")
@click.option("--tenant", "tenant_slug", help="Train this tenant's own variant (default: the shared model).")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs only).")
@pass_ctx
def retrain(ctx: Context, task_name: str, tenant_slug: str | None, no_progress: bool) -> None:
    """Run one training run now, in this process: the next rung of the ladder, the gate, maybe a promotion.

    Exits 0 when the run finished (promoted, rejected by the gate, or nothing to train) and 1 when it failed.
    """
    from tqdm import tqdm

    from flywheel.retrain import jobs

    run_id = _queue_and_claim(ctx, task_name, tenant_slug)
    click.echo(
        f"training run {run_id}: task {task_name}" + (f", tenant {tenant_slug}" if tenant_slug else ""), err=True
    )
    bar = tqdm(total=100, unit="%", disable=no_progress, bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}] {postfix}")
    if no_progress:
        logging.getLogger("flywheel").setLevel(logging.INFO)
    try:
        status = jobs.run_training(ctx.db, ctx.settings, run_id, progress=_shown_on(bar))
    finally:
        bar.close()
    click.echo(_report_outcome(ctx, run_id, status) or status)
    if status == "failed":
        raise SystemExit(1)


def _queue_and_claim(ctx: Context, task_name: str, tenant_slug: str | None) -> int:
    """Queue a run of the scope (the task's zero-shot model made first if it has none) and claim it here."""
    from flywheel.models.records import Task, Tenant
    from flywheel.retrain import jobs, registry

    with ctx.session() as session:
        task = session.scalar(select(Task).where(Task.name == task_name))
        if task is None:
            raise click.ClickException(f"task '{task_name}' does not exist")
        tenant = None
        if tenant_slug:
            tenant = session.scalar(select(Tenant).where(Tenant.slug == tenant_slug))
            if tenant is None:
                raise click.ClickException(f"tenant '{tenant_slug}' does not exist")
        registry.ensure_zero_shot(session, task, ctx.settings)
        run_id = jobs.queue_run(session, task, tenant, trigger="cli").id
    with ctx.session() as session:
        if not jobs.claim_run(session, run_id):
            raise click.ClickException(f"training run {run_id} was claimed by another process (the scheduler?)")
    return run_id


def _shown_on(bar: Any) -> Callable[[float, str], None]:
    """A progress callback that moves the tqdm ``bar`` and shows the run's message beside it."""

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction, 1)
        bar.set_postfix_str(message[:70], refresh=False)
        bar.refresh()

    return progress


def _report_outcome(ctx: Context, run_id: int, status: str) -> str | None:
    """The run's decision, reasons, error and holdout accuracy (on stderr); returns the model version it made."""
    from flywheel.models.training import ModelVersion, TrainingRun

    with ctx.session() as session:
        done = session.get(TrainingRun, run_id)
        assert done is not None
        version = session.scalar(select(ModelVersion.version).where(ModelVersion.id == done.model_id))
        click.echo(f"status: {status}  decision: {done.decision or '-'}  rung: {done.rung or '-'}", err=True)
        for reason in done.reasons or []:
            click.echo(f"  - {reason}", err=True)
        if done.error:
            click.echo(f"  error: {done.error}", err=True)
        cand = ((done.metrics or {}).get("candidate") or {}).get("overall") or {}
        champ = ((done.metrics or {}).get("champion") or {}).get("overall") or {}
        if cand:
            click.echo(
                f"  holdout accuracy: candidate {cand.get('accuracy', float('nan')):.4f}"
                f" vs champion {champ.get('accuracy', float('nan')):.4f} (n={int(cand.get('n', 0))})",
                err=True,
            )
    return version
