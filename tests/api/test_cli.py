"""The command line: tenants, keys (printed alone on the last line), tasks from a file, db upgrade."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from flywheel.app import create_app
from flywheel.cli import bootstrap_admin_key, cli
from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.models.records import Task, Tenant


def run(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--database-url", url, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_cli_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    run(url, "db", "upgrade")
    run(url, "tenants", "create", "acme", "--name", "Acme Corp")
    assert "acme\tAcme Corp" in run(url, "tenants", "list")
    key = run(url, "keys", "create", "--tenant", "acme", "--scopes", "ingest,read").splitlines()[-1]
    admin = run(url, "keys", "create", "--admin").splitlines()[-1]
    labels = tmp_path / "labels.txt"
    labels.write_text("card_arrival\tthe customer waits for a card\ncard_linking\nexchange_rate\n")
    run(url, "tasks", "create", "intent", "--labels-file", str(labels))
    db = Database(url)
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == "intent"))
        assert task is not None and task.labels == ["card_arrival", "card_linking", "exchange_rate"]
        assert task.label_descriptions == {"card_arrival": "the customer waits for a card"}
    client = create_app(Settings(database_url=url, key_cache_seconds=0.2), db=db).test_client()
    assert client.get("/v1/tasks", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v1/tenants", headers={"Authorization": f"Bearer {key}"}).status_code == 403
    assert client.get("/v1/tenants", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    listing = run(url, "keys", "list")
    assert key not in listing and admin not in listing
    run(url, "keys", "revoke", "1")
    time.sleep(0.25)  # another process revoked it: the app lets it go within key_cache_seconds
    assert client.get("/v1/tasks", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    run(url, "db", "upgrade")
    result = CliRunner().invoke(cli, ["--database-url", url, "keys", "create", "--tenant", "nope"])
    assert result.exit_code != 0 and "does not exist" in result.output
    result = CliRunner().invoke(cli, ["--database-url", url, "tasks", "create", "t", "--labels", "a,a"])
    assert result.exit_code != 0 and "unique" in result.output


def test_bootstrap_admin_key_only_on_an_empty_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'up.db'}"
    run(url, "db", "upgrade")
    db = Database(url)
    first = bootstrap_admin_key(db)
    assert first is not None and bootstrap_admin_key(db) is None
    client = create_app(Settings(database_url=url, key_cache_seconds=0.2), db=db).test_client()
    assert client.get("/v1/tenants", headers={"Authorization": f"Bearer {first}"}).status_code == 200


BAD_URLS = ["ftp://example.com/hook", "example.com", "http://", "http://exa mple.com", "http://a:99999"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_webhook_urls_pass_the_api_s_rules_on_the_command_line(tmp_path: Path, url: str) -> None:
    """The URLs ``POST /v1/tenants`` and ``PUT /v1/tenants/{tenant}/webhook`` answer 422 are refused here too, by
    the same schemas, naming the option; nothing is stored."""
    db_url = f"sqlite:///{tmp_path / 'cli.db'}"
    run(db_url, "db", "upgrade")
    result = CliRunner().invoke(cli, ["--database-url", db_url, "tenants", "create", "hooked", "--name", "H",
                                      "--webhook-url", url])  # fmt: skip
    assert result.exit_code == 1 and "--webhook-url" in result.output and "http(s) URL" in result.output
    assert "Traceback" not in result.output
    run(db_url, "tenants", "create", "acme", "--name", "Acme")
    result = CliRunner().invoke(cli, ["--database-url", db_url, "monitor", "webhook", "--tenant", "acme", "--url", url])
    assert result.exit_code == 1 and "--url" in result.output and "http(s) URL" in result.output
    db = Database(db_url)
    with db.session() as session:
        assert session.scalars(select(Tenant.slug)).all() == ["acme"]
        assert session.scalar(select(Tenant.webhook_url)) is None
    db.dispose()


def test_a_valid_webhook_url_is_stored_from_the_command_line(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'cli.db'}"
    run(db_url, "db", "upgrade")
    run(db_url, "tenants", "create", "hooked", "--name", "H", "--webhook-url", "https://hooks.example:8443/in?x=1")
    result = CliRunner().invoke(cli, ["--database-url", db_url, "tenants", "create", "Bad Slug", "--name", "B"])
    assert result.exit_code == 1 and "SLUG: String should match pattern" in result.output
    db = Database(db_url)
    with db.session() as session:
        assert session.scalar(select(Tenant.webhook_url)) == "https://hooks.example:8443/in?x=1"
    db.dispose()
