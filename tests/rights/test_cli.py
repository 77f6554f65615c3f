"""The command line's data-rights commands: deleting a tenant (now, or left to the scheduler) and running retention."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select, update

from flywheel.cli import cli
from flywheel.core.db import Database, utcnow
from flywheel.domain.ingest import ingest_predictions
from flywheel.domain.schemas import PredictionIn
from flywheel.models.records import ApiKey, Prediction, Task, Tenant


def run(url: str, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--database-url", url, *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_tenants_delete_and_expire(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    run(url, "db", "upgrade")
    for slug in ("acme", "globex"):
        run(url, "tenants", "create", slug, "--name", slug.title())
        run(url, "keys", "create", "--tenant", slug)
    db = Database(url)
    with db.session() as session:
        session.add(Task(name="intent", labels=["a", "b"], label_descriptions={}, description=""))
        session.flush()
        old = utcnow() - timedelta(days=10)
        for slug in ("acme", "globex"):
            tenant_id = session.scalar(select(Tenant.id).where(Tenant.slug == slug))
            assert tenant_id is not None
            items = [
                PredictionIn(id=f"p-{i}", task="intent", text="t", label="a", confidence=0.5, created_at=old)
                for i in range(3)
            ]
            ingest_predictions(session, tenant_id, items)
        session.execute(update(Tenant).where(Tenant.slug == "globex").values(retention_days=7))

    assert "--confirm must repeat" in run(url, "tenants", "delete", "acme", "--confirm", "acm", code=2)
    assert "does not exist" in run(url, "tenants", "delete", "nope", "--confirm", "nope", code=1)
    assert "being deleted" in run(url, "tenants", "delete", "acme", "--confirm", "acme")
    with db.session() as session:
        assert session.scalar(select(Tenant.status).where(Tenant.slug == "acme")) == "deleting"
        assert session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) == 1
    assert "acme deleted" in run(url, "tenants", "delete", "acme", "--confirm", "acme", "--now")
    assert '"predictions": 3' in run(url, "tenants", "expire")  # globex's, older than its 7 days
    with db.session() as session:
        assert session.scalars(select(Tenant.slug)).all() == ["globex"]
        assert session.scalar(select(func.count()).select_from(Prediction)) == 0
