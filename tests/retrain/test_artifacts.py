"""Artifacts on a store every machine reaches: a ``file://`` URL stands in for s3:// or gs:// (same fsspec path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.domain import artifacts
from flywheel.retrain import registry

from support.retrain import train_to


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A web node's own download cache (XDG_CACHE_HOME), apart from the store."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "flywheel" / "artifacts"


def test_publish_is_whole_or_absent_and_a_reader_gets_a_local_copy(tmp_path: Path, cache: Path) -> None:
    local = tmp_path / "model"
    (local / "sub").mkdir(parents=True)
    (local / "weights.bin").write_bytes(b"\x00\x01")
    (local / "sub" / "lineage.json").write_text('{"train_ids": [1, 2]}')
    url = f"file://{tmp_path / 'store'}/task/run-1"
    assert not artifacts.exists(url)
    assert artifacts.publish(local, url) == url
    assert artifacts.exists(url) and (tmp_path / "store" / "task" / "run-1" / artifacts.COMPLETE_MARKER).exists()
    copy = artifacts.local_copy(url)
    assert copy.parent == cache and (copy / "weights.bin").read_bytes() == b"\x00\x01"
    assert artifacts.read_text(url, "sub/lineage.json") == '{"train_ids": [1, 2]}'
    assert artifacts.read_text(url, "missing.json") is None
    (tmp_path / "store" / "task" / "run-1" / artifacts.COMPLETE_MARKER).unlink()  # an upload cut short
    assert not artifacts.exists(url)
    artifacts.delete(url)
    assert not (tmp_path / "store" / "task" / "run-1").exists()


def test_a_model_trained_to_a_url_is_served_from_a_download(
    db: Database, settings: Settings, tiny_base: Path, tmp_path: Path, cache: Path
) -> None:
    store = tmp_path / "shared-store"
    model = train_to(db, settings, tiny_base, f"file://{store}")
    location = model.artifact_path or ""
    assert location.startswith("file://") and str(store) in location
    lineage = json.loads(artifacts.read_text(location, "lineage.json") or "{}")
    assert lineage["train_ids"]
    clf = registry.load_model(model)
    assert clf.predict_proba(["refund my money"]).shape == (1, 3)
    assert any(cache.iterdir())  # the web node read it from its own download, not the trainer's disk
    assert not any(p.name.startswith(".tmp-run") for p in store.rglob("*"))
