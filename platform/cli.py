"""The ``flywheel`` command line. Commands that print a new key print it alone on the last line of stdout."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, select

from flywheel.core.cli_context import Context, pass_ctx, validated
from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.feedback.cli import labels
from flywheel.monitoring.cli import monitor
from flywheel.retrain.cli import retrain
from flywheel.web.context import EXTENSION


@click.group()
@click.option("--database-url", envvar="FLYWHEEL_DATABASE_URL", help="SQLAlchemy URL (default: SQLite under var/).")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None) -> None:
    """Flywheel: log predictions and feedback, clean labels, watch SLAs, retrain nightly."""
    overrides: dict[str, Any] = {"database_url": database_url} if database_url else {}
    ctx.obj = Context(Settings.from_env(**overrides))


# --- db -------------------------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Apply every pending migration."""
    from flywheel.core.migrate import upgrade

    upgrade(ctx.db.engine)
    click.echo(f"database at the latest revision: {ctx.db.engine.url.render_as_string(hide_password=True)}", err=True)


# --- tenants and keys -----------------------------------------------------------------------------------------


@cli.group()
def tenants() -> None:
    """Tenants (customers)."""


@tenants.command("create")
@click.argument("slug")
@click.option("--name", required=True, help="The customer's display name.")
@click.option("--webhook-url", help="Where alerts are POSTed (signed with HMAC-SHA256).")
@pass_ctx
def tenants_create(ctx: Context, slug: str, name: str, webhook_url: str | None) -> None:
    """Create a tenant. The arguments pass the same schema as ``POST /v1/tenants``."""
    from flywheel.domain.schemas import TenantIn
    from flywheel.domain.tenants import create_tenant

    options = {"slug": "SLUG", "name": "--name", "webhook_url": "--webhook-url"}
    spec = validated(TenantIn, options, slug=slug, name=name, webhook_url=webhook_url)
    with ctx.session() as session:
        create_tenant(session, slug=spec.slug, name=spec.name, webhook_url=spec.webhook_url)
    click.echo(slug)


@tenants.command("list")
@pass_ctx
def tenants_list(ctx: Context) -> None:
    """List tenants."""
    from flywheel.models.records import Tenant

    with ctx.session() as session:
        for t in session.scalars(select(Tenant).order_by(Tenant.slug)):
            click.echo(f"{t.slug}\t{t.name}\t{t.created_at:%Y-%m-%d}")


@tenants.command("delete")
@click.argument("slug")
@click.option("--confirm", required=True, help="The slug again: a tenant is never deleted by a typo.")
@click.option("--now", "now", is_flag=True, help="Delete every batch now instead of leaving it to the scheduler.")
@pass_ctx
def tenants_delete(ctx: Context, slug: str, confirm: str, now: bool) -> None:
    """Delete a tenant and all of its data (as DELETE /v1/tenants/{slug}): its keys are revoked at once."""
    from flywheel.domain.erasure import begin_tenant_deletion, run_tenant_deletions
    from flywheel.models.records import Tenant

    if confirm != slug:
        raise click.UsageError("--confirm must repeat the slug")
    with ctx.session() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
        if tenant is None:
            raise click.ClickException(f"tenant '{slug}' does not exist")
        begin_tenant_deletion(session, tenant)
    if now:
        run_tenant_deletions(ctx.db, batch_size=ctx.settings.erasure_batch_size)
        click.echo(f"{slug} deleted")
    else:
        click.echo(f"{slug} is being deleted (the scheduler removes it in batches)")


@tenants.command("expire")
@pass_ctx
def tenants_expire(ctx: Context) -> None:
    """Run the nightly data-rights job now: retention (every tenant's retention_days), then the tainted-model alert."""
    import json

    from flywheel.monitoring.taint import nightly_data_rights

    click.echo(json.dumps(nightly_data_rights(ctx.db, ctx.settings)))


@cli.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--tenant", help="The tenant the key belongs to.")
@click.option("--scopes", default="ingest,read", show_default=True, help="Comma-separated: ingest, read, admin.")
@click.option("--admin", "admin", is_flag=True, help="An admin key (all tenants).")
@click.option("--name", help="A note to recognize the key by.")
@pass_ctx
def keys_create(ctx: Context, tenant: str | None, scopes: str, admin: bool, name: str | None) -> None:
    """Create a key; the key is printed alone on the last line (capture it with `| tail -n 1`)."""
    from flywheel.domain.auth import create_key, parse_scopes
    from flywheel.models.records import Tenant

    if not admin and tenant is None:
        raise click.UsageError("give --tenant, or --admin for an admin key")
    scope_list = ["admin"] if admin and tenant is None else parse_scopes(scopes + (",admin" if admin else ""))
    with ctx.session() as session:
        row = None
        if tenant is not None:
            row = session.scalar(select(Tenant).where(Tenant.slug == tenant))
            if row is None:
                raise click.ClickException(f"tenant '{tenant}' does not exist")
        key_row, secret = create_key(session, tenant=row, scopes=scope_list, name=name)
        click.echo(f"created key {key_row.id} ({key_row.prefix}) scopes={','.join(scope_list)}", err=True)
    click.echo(secret)


@keys.command("list")
@pass_ctx
def keys_list(ctx: Context) -> None:
    """List keys (never their secrets)."""
    from flywheel.models.records import ApiKey

    with ctx.session() as session:
        for k in session.scalars(select(ApiKey).order_by(ApiKey.id)):
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
            click.echo(f"{k.id}\t{k.prefix}\t{k.tenant.slug if k.tenant else '*'}\t{k.scopes}\t{state}")


@keys.command("revoke")
@click.argument("key_id", type=int)
@pass_ctx
def keys_revoke(ctx: Context, key_id: int) -> None:
    """Revoke a key by its id."""
    from flywheel.domain.tenants import revoke_key

    with ctx.session() as session:
        revoke_key(session, key_id)
    click.echo(f"revoked key {key_id}")


# --- tasks ----------------------------------------------------------------------------------------------------


@cli.group()
def tasks() -> None:
    """Tasks (label sets)."""


@tasks.command("create")
@click.argument("name")
@click.option("--labels", help="Comma-separated labels.")
@click.option(
    "--labels-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="One label per line; 'label<TAB>description' adds a description for zero-shot.",
)
@click.option("--description", default="")
@pass_ctx
def tasks_create(ctx: Context, name: str, labels: str | None, labels_file: Path | None, description: str) -> None:
    """Create a task from labels given inline or in a file."""
    from pydantic import ValidationError

    from flywheel.domain.catalog import create_task
    from flywheel.domain.schemas import TaskIn
    from flywheel.retrain.registry import ensure_zero_shot

    label_list: list[str] = []
    descriptions: dict[str, str] = {}
    if labels:
        label_list += [x.strip() for x in labels.split(",") if x.strip()]
    if labels_file:
        for line in labels_file.read_text(encoding="utf-8").splitlines():
            label, _, desc = line.partition("\t")
            if label.strip():
                label_list.append(label.strip())
                if desc.strip():
                    descriptions[label.strip()] = desc.strip()
    try:
        spec = TaskIn(name=name, labels=label_list, description=description, label_descriptions=descriptions)
    except ValidationError as exc:
        raise click.ClickException("; ".join(e["msg"] for e in exc.errors())) from None
    with ctx.session() as session:
        task = create_task(session, spec)
        ensure_zero_shot(session, task)  # day one: the zero-shot model serves until feedback trains a better one
    click.echo(f"task '{name}' with {len(label_list)} labels", err=True)
    click.echo(name)


# --- processes ------------------------------------------------------------------------------------------------


def _dispose_inherited_engine(worker: Any) -> None:
    """A forked worker must not reuse the parent's pooled connections (SQLAlchemy, "Using Connection Pools with
    Multiprocessing"): drop them without closing the parent's."""
    worker.wsgi.extensions[EXTENSION]["db"].engine.dispose(close=False)


def _run_gunicorn(settings: Settings, workers: int) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", settings.threads)
            self.cfg.set("accesslog", None)
            # The app is built once, before the workers fork: they start ready and share its memory.
            self.cfg.set("preload_app", True)
            self.cfg.set("post_worker_init", _dispose_inherited_engine)

        def load(self) -> Any:
            from flywheel.app import create_server_app

            return create_server_app(settings)

    Server().run()


@cli.command()
@click.option("--workers", type=int, help="gunicorn workers (default: settings.workers).")
@pass_ctx
def serve(ctx: Context, workers: int | None) -> None:
    """Serve the web app (API + dashboard) with gunicorn. No scheduler runs here."""
    _run_gunicorn(ctx.settings, workers or ctx.settings.workers)


def bootstrap_admin_key(db: Database) -> str | None:
    """On an empty database, create the first admin key and return it; otherwise None."""
    from flywheel.domain.auth import create_key
    from flywheel.models.records import ApiKey

    with db.session() as session:
        if session.scalar(select(func.count(ApiKey.id))):
            return None
        _row, secret = create_key(session, tenant=None, scopes=["admin"], name="bootstrap (flywheel up)")
        return secret


@cli.command()
@pass_ctx
def up(ctx: Context) -> None:
    """All in one machine: migrate, create the first admin key if none exists, serve the web app + scheduler."""
    from flywheel.core.migrate import upgrade

    upgrade(ctx.db.engine)
    secret = bootstrap_admin_key(ctx.db)
    url = f"http://{ctx.settings.host}:{ctx.settings.port}"
    click.echo(f"Flywheel is starting at {url}  (API docs: {url}/docs)", err=True)
    if secret:
        click.echo("An admin key was created for this new database; it is shown only this once:", err=True)
        click.echo(f"  try: curl -H 'Authorization: Bearer {secret}' {url}/v1/tasks", err=True)
        click.echo(secret)
    sys.stdout.flush()
    ctx.db.dispose()
    from flywheel.scheduler import start_scheduler_process

    scheduler = start_scheduler_process(ctx.settings)  # its own process: never inside a gunicorn worker
    try:
        _run_gunicorn(ctx.settings, ctx.settings.workers)
    finally:
        scheduler.terminate()
        scheduler.wait(timeout=30)


@cli.command()
@pass_ctx
def scheduler(ctx: Context) -> None:
    """The scheduler process: nightly retraining, hourly monitoring, queued training runs. One is active; a
    second waits on the database lease and takes over if the first dies."""
    from flywheel.scheduler import SchedulerService, freeze_loaded_libraries

    logging.getLogger("flywheel").setLevel(logging.INFO)
    click.echo(
        f"scheduler starting (retrain cron '{ctx.settings.retrain_cron}', monitoring '{ctx.settings.monitor_cron}')",
        err=True,
    )
    try:
        service = SchedulerService(ctx.db, ctx.settings)
    except ValueError as exc:
        raise click.ClickException(f"invalid schedule: {exc}") from None
    if not ctx.settings.broker_url:  # with a broker the heavy jobs (and their libraries) live in the workers
        freeze_loaded_libraries()
    service.run_forever()


@cli.command()
@click.option("--queues", help="Comma-separated queues to consume (default: cpu, plus gpu where CUDA is available).")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Jobs this worker runs at once.")
@pass_ctx
def worker(ctx: Context, queues: str | None, concurrency: int) -> None:
    """A Celery worker for the heavy jobs (training runs, label-quality and monitoring passes), on any machine
    that reaches the database, the broker (FLYWHEEL_BROKER_URL) and the artifacts."""
    from flywheel.worker import run_worker

    if not ctx.settings.broker_url:
        raise click.ClickException("set FLYWHEEL_BROKER_URL (for example redis://127.0.0.1:6379/0) to run workers")
    if concurrency < 1:
        raise click.ClickException("--concurrency must be at least 1")
    logging.getLogger("flywheel").setLevel(logging.INFO)
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    run_worker(ctx.settings, queues=chosen, concurrency=concurrency)


# --- the simulation (a development tool) -------------------------------------------------------------------------

SIM_INSTALL_HINT = (
    "the simulation is a development tool: run it from a clone with `pip install -e '.[sim]'` "
    "(its code lives in the clone's sim/ folder, matplotlib comes with the sim extra)"
)


def load_simulation_command() -> click.Command:
    """The simulation's command, from the ``sim`` package of the clone this Flywheel is installed from.

    The console script does not put the clone on ``sys.path``; an editable install links this file from the clone's
    platform/, so the clone is two folders up. A package installed from a wheel has no sim/ beside it."""
    clone = Path(__file__).resolve().parents[1]
    if (clone / "sim" / "__init__.py").is_file() and str(clone) not in sys.path:
        sys.path.append(str(clone))
    try:
        from sim.command import simulate_command
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in {"sim", "matplotlib"}:
            raise
        raise click.ClickException(f"{SIM_INSTALL_HINT}; missing: {exc.name}") from None
    return simulate_command


@cli.command(
    "simulate",
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def simulate(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Replay labeled text as production traffic through a running server, over simulated days."""
    command = load_simulation_command()  # its options, --help included, are the simulation's own
    with command.make_context(ctx.info_name, list(args), parent=ctx.parent) as sub:
        command.invoke(sub)


cli.add_command(retrain)
cli.add_command(monitor)
cli.add_command(labels)


def main() -> None:
    cli(prog_name="flywheel")


if __name__ == "__main__":
    main()
