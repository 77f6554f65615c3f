"""The command line: tenants, keys (printed alone on the last line), tasks from a file, db upgrade."""

from __future__ import annotations

import time
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from flywheel.app import create_app
from flywheel.cli import bootstrap_admin_key, cli
from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.models.records import Task


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
