"""``flywheel monitor``: evaluate SLAs now (with a progress bar); ``flywheel monitor sla|webhook`` to configure."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from sqlalchemy import select


@click.group("monitor", invoke_without_command=True)
@click.option("--tenant", help="Only this tenant's SLAs.")
@click.option("--task", help="Only SLAs on this task.")
@click.option("--no-drift", is_flag=True, help="Skip the drift check (SLA evaluation only).")
@click.pass_context
def monitor(ctx: click.Context, tenant: str | None, task: str | None, no_drift: bool) -> None:
    """Evaluate SLAs and drift now, raise alerts on status changes and deliver their webhooks."""
    if ctx.invoked_subcommand is not None:
        return
    from tqdm import tqdm

    from flywheel.monitoring.jobs import run_monitoring, select_slas

    app_ctx = ctx.obj
    try:
        total = len(select_slas(app_ctx.db, tenant=tenant, task=task))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    bar: Any = tqdm(total=total, desc="monitoring", unit="sla", file=sys.stderr)
    with bar:

        def progress(done: int, _total: int, what: str) -> None:
            bar.set_postfix_str(what)
            bar.update(done - bar.n)

        result = run_monitoring(
            app_ctx.db, app_ctx.settings, tenant=tenant, task=task, progress=progress, drift=not no_drift
        )
    click.echo(json.dumps(result, sort_keys=True))
    if result["errors"]:
        raise SystemExit(1)


@monitor.command("sla")
@click.option("--tenant", required=True)
@click.option("--task", required=True)
@click.option("--metric", required=True, help="accuracy, macro_f1, recall:<label> or precision:<label>")
@click.option("--threshold", type=float, required=True)
@click.option("--window-days", type=int, default=7, show_default=True)
@click.option("--min-labeled", type=int, default=200, show_default=True)
@click.option("--warning-margin", type=float, default=0.02, show_default=True)
@click.option(
    "--agreement",
    type=click.Choice(["raw", "clean"]),
    default="raw",
    show_default=True,
    help="The value the status reads: raw, or clean (flagged, unreviewed labels at their label weight).",
)
@click.pass_obj
def set_sla(app_ctx: Any, tenant: str, task: str, **terms: Any) -> None:
    """Create or change an SLA (the same as PUT /v1/slas/{tenant}/{task})."""
    from flywheel.models.records import Task, Tenant
    from flywheel.monitoring.sla import SlaTerms, put_sla

    with app_ctx.session() as session:
        tenant_row = session.scalar(select(Tenant).where(Tenant.slug == tenant))
        task_row = session.scalar(select(Task).where(Task.name == task))
        if tenant_row is None or task_row is None:
            raise click.ClickException(f"unknown tenant '{tenant}' or task '{task}'")
        sla, created = put_sla(session, tenant_row, task_row, SlaTerms(**terms), changed_by="cli")
        click.echo(f"{'created' if created else 'updated'} SLA {tenant}/{task} (version {sla.version})")


@monitor.command("webhook")
@click.option("--tenant", required=True)
@click.option("--url", help="Where alerts are POSTed; omit with --off to turn webhooks off.")
@click.option("--secret", help="The HMAC-SHA256 signing secret (generated when omitted).")
@click.option("--off", is_flag=True, help="Turn the tenant's webhook off.")
@click.pass_obj
def set_webhook(app_ctx: Any, tenant: str, url: str | None, secret: str | None, off: bool) -> None:
    """Set a tenant's alert webhook; prints the signing secret alone on the last line."""
    from flywheel.core.cli_context import validated
    from flywheel.models.records import Tenant
    from flywheel.monitoring.alerts import new_secret
    from flywheel.monitoring.api import WebhookIn

    if not off and not url:
        raise click.ClickException("give --url, or --off")
    if not off:  # the same rules as PUT /v1/tenants/{tenant}/webhook
        validated(WebhookIn, {"url": "--url", "secret": "--secret"}, url=url, secret=secret)
    with app_ctx.session() as session:
        row = session.scalar(select(Tenant).where(Tenant.slug == tenant))
        if row is None:
            raise click.ClickException(f"tenant '{tenant}' does not exist")
        row.webhook_url = None if off else url
        if not off:
            row.webhook_secret = secret or row.webhook_secret or new_secret()
        shown = row.webhook_secret
    click.echo(f"webhook of {tenant}: {url if not off else 'off'}", err=True)
    if not off:
        click.echo(shown)
