"""``flywheel labels check``: the label-quality pass for one tenant and task, with a progress bar and a summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from flywheel.core.cli_context import Context, pass_ctx

if TYPE_CHECKING:
    from flywheel.feedback.jobs import PassResult


@click.group("labels")
def labels() -> None:
    """Label quality: cleanlab label issues, consensus, source reliability."""


@labels.command("check")
@click.option("--tenant", "tenant_slug", required=True, help="The tenant whose labels to check.")
@click.option("--task", "task_name", required=True, help="The task.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--top", default=5, show_default=True, help="How many likely label errors to print.")
@pass_ctx
def check(ctx: Context, tenant_slug: str, task_name: str, no_progress: bool, top: int) -> None:
    """Score every label of TENANT/TASK outside the holdout, flag likely errors, rate the feedback sources."""
    result = _run_with_progress_bar(ctx, tenant_slug, task_name, no_progress)
    click.echo(f"label-quality run {result.run_id}: {tenant_slug}/{task_name}")
    if "message" in result.summary and not result.n_labeled:
        click.echo(f"  {result.summary['message']}")
        return
    _echo_summary(result)
    _echo_sources_and_errors(ctx, tenant_slug, task_name, top)


def _run_with_progress_bar(ctx: Context, tenant_slug: str, task_name: str, no_progress: bool) -> PassResult:
    from tqdm import tqdm

    from flywheel.core.errors import ApiError
    from flywheel.feedback.jobs import run_label_quality

    bar = tqdm(total=100, unit="%", disable=no_progress, bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}] {postfix}")

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction, 1)
        bar.set_postfix_str(message[:70], refresh=False)
        bar.refresh()

    try:
        return run_label_quality(
            ctx.db, ctx.settings, tenant=tenant_slug, task=task_name, progress=progress, trigger="cli"
        )
    except ApiError as exc:
        raise click.ClickException(exc.detail) from None
    finally:
        bar.close()


def _echo_summary(result: PassResult) -> None:
    s = result.summary
    click.echo(
        f"  labeled (outside the holdout): {result.n_labeled}   label issues: {result.n_issues} "
        f"({s['issue_rate']:.1%})   unlabeled scored: {result.n_unlabeled}"
    )
    if "n_excluded_issues" in s:
        click.echo(
            f"  left out of training: {s['n_excluded_issues']} of the {result.n_issues} issues "
            f"({s['labels_per_class']:.0f} labels per class; the rest stay in training until reviewed)"
        )
    click.echo(f"  out-of-sample sources: {s['oos_sources']}   cleanlab: {s['cleanlab_method']}")
    windows = s.get("text_windows")
    if windows:
        click.echo(
            f"  embedding window: {windows['embedding']} tokens (p95 of the texts {windows['p95_tokens']}, "
            f"limit {windows['limit']}; {windows['over_embedding']:.1%} longer, chunked and pooled)"
        )
    seg = s.get("segments")
    if seg:
        click.echo(
            f"  long texts read by segment: weight {seg['weight']:.2f} against the whole texts "
            f"(accuracy {_pct(seg['accuracy'])} against {_pct(seg['cv_accuracy'])} on {seg['n_reference']} "
            f"{seg['reference']} labels)"
        )
    for model, w in s.get("logged_models", {}).items():
        click.echo(
            f"  logged by {model}: {w['n']} labels, weight {w['weight']:.2f} "
            f"(accuracy {_pct(w['accuracy'])} on {w['n_reference']} {w['reference']} labels)"
        )
    cons = s["consensus"]
    click.echo(
        f"  consensus: {cons['method']} (overlap {cons['overlap']} predictions with 2+ sources; "
        f"CROWDLAB from {cons['min_overlap']})"
    )
    click.echo("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in s["timings"].items()))


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _echo_sources_and_errors(ctx: Context, tenant_slug: str, task_name: str, top: int) -> None:
    """The latest finished pass's sources, worst first, and its ``top`` likely label errors (the review queue)."""
    from sqlalchemy import select

    from flywheel.feedback.results import source_reliability
    from flywheel.feedback.review import review_queue
    from flywheel.models.records import Task, Tenant

    with ctx.session() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == tenant_slug))
        task = session.scalar(select(Task).where(Task.name == task_name))
        assert tenant is not None and task is not None
        sources = source_reliability(session, tenant.id, task.id)
        if sources:
            click.echo("  sources (worst first):")
            for src in sources[:10]:
                flag = "  EXCLUDED" if src["excluded"] else ""
                click.echo(
                    f"    {src['source']}:{src['source_id'] or '-'}  labels {src['n_labels']}  "
                    f"issue rate {src['issue_rate']:.1%}{flag}"
                )
        entries = review_queue(session, tenant_id=tenant.id, task_id=task.id, kind="label_issue", limit=top)
        if entries:
            click.echo("  likely label errors (review with GET /v1/review?task=...):")
            for e in entries:
                text = e.text if len(e.text) <= 60 else e.text[:57] + "..."
                click.echo(f"    {e.client_id}: '{e.effective_label}' -> '{e.suggested_label}'  {text!r}")
