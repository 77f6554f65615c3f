"""Artifacts on ``s3://``: a local S3-compatible server (moto's, in a thread on a free port) stands for the bucket
that a worker writes to and a web node reads from, with s3fs as fsspec's S3 filesystem.

The endpoint and credentials reach s3fs the two documented ways (docs/scale-out.md): the usual AWS environment
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` …) in this process, and fsspec's storage options
(``FSSPEC_S3``) in another process that loads the model. Outside CI a missing moto or s3fs skips these tests; under
CI it fails them.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flywheel.app import create_app
from flywheel.core.config import Settings
from flywheel.domain import artifacts
from flywheel.models.training import ModelVersion
from flywheel.retrain import registry

from support import World
from support.retrain import LABELS, TASK, train_to

KEY, SECRET, REGION = "flywheel-test", "flywheel-test-secret", "us-east-1"


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{module} is not installed (a dev dependency: make install): {exc}")
        pytest.skip(f"{module} is not installed (a dev dependency: make install)")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 and a free port, for this module."""
    server_module = _require("moto.server")
    _require("s3fs")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass
class Store:
    endpoint: str
    bucket: str

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def fs(self) -> Any:
        import fsspec

        return fsspec.filesystem("s3")


def _fresh_fsspec() -> None:
    """Forget fsspec's cached S3 filesystems (and their listings), as a new process starts without them."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def store(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Store]:
    """A new bucket; this process reaches it through the AWS environment variables alone."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "FSSPEC_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    _fresh_fsspec()
    s = Store(endpoint, f"flywheel-{uuid.uuid4().hex[:12]}")
    s.fs().mkdir(s.bucket)
    try:
        yield s
    finally:
        _fresh_fsspec()


def _web_node_cache(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Path:
    """A process's own download cache (XDG_CACHE_HOME), empty, and no S3 filesystem cached yet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    _fresh_fsspec()
    return folder / "flywheel" / "artifacts"


def _written_order(bucket: str, prefix: str) -> list[str]:
    """The bucket's keys under ``prefix`` in the order the server stored them (moto runs in this process)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    keys = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[bucket].keys
    return [k for k in keys if k.startswith(prefix)]


def test_publish_to_s3_is_whole_or_absent_and_a_reader_downloads_it(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "model"
    (local / "sub").mkdir(parents=True)
    (local / "weights.bin").write_bytes(b"\x00\x01")
    (local / "sub" / "lineage.json").write_text('{"train_ids": [1, 2]}')
    url = store.url("flywheel", "task", "run-1")
    assert not artifacts.exists(url)
    assert artifacts.publish(local, url) == url
    assert artifacts.exists(url)
    order = _written_order(store.bucket, "flywheel/task/run-1/")
    assert order[-1].endswith(artifacts.COMPLETE_MARKER) and len(order) == 3  # the marker last, after every file

    cache = _web_node_cache(monkeypatch, tmp_path / "web-cache")
    copy = artifacts.local_copy(url)
    assert copy.parent == cache and (copy / "weights.bin").read_bytes() == b"\x00\x01"
    assert (copy / artifacts.COMPLETE_MARKER).exists()
    assert artifacts.read_text(url, "sub/lineage.json") == '{"train_ids": [1, 2]}'
    assert artifacts.read_text(url, "missing.json") is None

    # An upload cut short: every file is there but the marker. Nobody sees it, and nothing is downloaded.
    cut = store.url("flywheel", "task", "run-2")
    store.fs().put(str(local), cut.removeprefix("s3://"), recursive=True)
    assert store.fs().exists(f"{store.bucket}/flywheel/task/run-2/weights.bin")
    assert not artifacts.exists(cut)
    with pytest.raises(FileNotFoundError, match="no complete artifact"):
        artifacts.local_copy(cut)
    assert sorted(p.name for p in cache.iterdir()) == [copy.name]  # no partial download left behind

    # Publishing again over a location replaces it whole: a file the new folder lacks is gone.
    (local / "weights.bin").unlink()
    artifacts.publish(local, url)
    assert not store.fs().exists(f"{store.bucket}/flywheel/task/run-1/weights.bin")
    assert artifacts.exists(url)
    artifacts.delete(url)
    assert not artifacts.exists(url) and not store.fs().exists(f"{store.bucket}/flywheel/task/run-1")


def test_a_model_trained_to_s3_serves_from_a_web_node_s_own_download(
    world: World, settings: Settings, tiny_base: Path, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = store.url("flywheel")
    _web_node_cache(monkeypatch, tmp_path / "trainer-cache")
    model = train_to(world.db, settings, tiny_base, root)
    location = model.artifact_path or ""
    assert location.startswith(f"{root}/{TASK}/")
    prefix = location.removeprefix(f"s3://{store.bucket}/") + "/"
    order = _written_order(store.bucket, prefix)
    assert order[-1] == prefix + artifacts.COMPLETE_MARKER and len(order) > 2
    assert json.loads(artifacts.read_text(location, "lineage.json") or "{}")["train_ids"]
    assert not any((tmp_path / "trainer-cache").rglob("*")), "the trainer kept no copy: the web node must download"

    # A web node: its own app, cache and S3 filesystem; it serves the champion from S3.
    cache = _web_node_cache(monkeypatch, tmp_path / "web-cache")
    client = create_app(settings.with_(artifacts_dir=root), db=world.db).test_client()
    r = client.post(
        "/v1/predict",
        json={"task": TASK, "inputs": [{"id": "s3-1", "text": "refund my money"}]},
        headers=world.auth(world.acme_rw),
    )
    assert r.status_code == 200, r.get_json()
    answer = r.get_json()["predictions"][0]
    assert answer["model_version"] == model.version and answer["label"] in LABELS
    assert [p.name for p in cache.iterdir()] and all((p / artifacts.COMPLETE_MARKER).exists() for p in cache.iterdir())

    # Without its marker the artifact is not there for anyone new: a fresh node cannot load it, and an admin
    # cannot promote it.
    store.fs().rm(f"{store.bucket}/{prefix}{artifacts.COMPLETE_MARKER}")
    _web_node_cache(monkeypatch, tmp_path / "another-cache")
    assert not artifacts.exists(location)
    with pytest.raises(FileNotFoundError, match="missing"):
        registry.load_model(model)
    fresh = create_app(settings.with_(artifacts_dir=root), db=world.db).test_client()
    r = fresh.post(
        "/v1/predict",
        json={"task": TASK, "inputs": [{"id": "s3-2", "text": "refund my money"}]},
        headers=world.auth(world.acme_rw),
    )  # the champion cannot be loaded: a 503 that says so, not a 500
    assert r.status_code == 503 and r.headers["Retry-After"] and "cannot be loaded" in r.get_json()["detail"]
    with world.db.session() as session:
        session.get(ModelVersion, model.id).status = "candidate"  # type: ignore[union-attr]
    r = client.post(f"/v1/models/{model.id}/promote", headers=world.auth(world.admin))
    assert r.status_code == 409 and "missing" in r.get_json()["detail"]


@pytest.mark.slow
def test_another_process_loads_the_model_with_fsspec_storage_options(
    world: World, settings: Settings, tiny_base: Path, store: Store, tmp_path: Path
) -> None:
    """A separate Python process with no AWS variables: the endpoint and credentials come from fsspec's own
    configuration (``FSSPEC_S3``, the same as ``~/.config/fsspec/s3.json``)."""
    model = train_to(world.db, settings, tiny_base, store.url("flywheel"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "FLYWHEEL_"))}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        XDG_CACHE_HOME=str(tmp_path / "other-process-cache"),
        FSSPEC_S3=json.dumps(
            {"endpoint_url": store.endpoint, "key": KEY, "secret": SECRET, "client_kwargs": {"region_name": REGION}}
        ),
    )
    script = (
        "import sys, json\n"
        "from flywheel.domain import artifacts\n"
        "from flywheel.retrain.classifiers import load_classifier\n"
        "clf = load_classifier(artifacts.local_copy(sys.argv[1]))\n"
        "print(json.dumps({'labels': list(clf.labels), 'shape': list(clf.predict_proba(['refund my money']).shape)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, model.artifact_path or ""],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"labels": LABELS, "shape": [1, len(LABELS)]}
    assert any((tmp_path / "other-process-cache" / "flywheel" / "artifacts").iterdir())
