"""``flywheel retrain`` (one run in the foreground, with a progress bar) and ``flywheel scheduler``."""

from __future__ import annotations

import logging

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

    from flywheel.models.records import Task, Tenant
    from flywheel.models.training import ModelVersion, TrainingRun
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
        run = jobs.queue_run(session, task, tenant, trigger="cli")
        run_id = run.id
    with ctx.session() as session:
        if not jobs.claim_run(session, run_id):
            raise click.ClickException(f"training run {run_id} was claimed by another process (the scheduler?)")
    click.echo(
        f"training run {run_id}: task {task_name}" + (f", tenant {tenant_slug}" if tenant_slug else ""), err=True
    )

    bar = tqdm(total=100, unit="%", disable=no_progress, bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}] {postfix}")

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction, 1)
        bar.set_postfix_str(message[:70], refresh=False)
        bar.refresh()

    if no_progress:
        logging.getLogger("flywheel").setLevel(logging.INFO)
    try:
        status = jobs.run_training(ctx.db, ctx.settings, run_id, progress=progress)
    finally:
        bar.close()
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
    click.echo(version or status)
    if status == "failed":
        raise SystemExit(1)
