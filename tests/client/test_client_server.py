"""flywheel_client against the real server: gunicorn on a temporary SQLite database, set up through the CLI only.

Nothing here imports the server's modules: the server is a black box reached over HTTP, as a product backend
reaches it. The headline test logs 5,000 predictions through the background logger while the server is stopped
and started again, and checks that exactly 5,000 are stored.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from flywheel_client import Client, FlywheelConnectionError, FlywheelError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtual environment running the tests
LABELS = ["card_arrival", "card_linking", "lost_or_stolen_card"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    """``flywheel`` CLI set-up and a gunicorn process that can be stopped and started again on the same port and
    database."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
        self.env |= {
            "FLYWHEEL_DATABASE_URL": f"sqlite:///{workdir / 'fw.db'}",
            "FLYWHEEL_ARTIFACTS_DIR": str(workdir / "artifacts"),
            "FLYWHEEL_LOG_LEVEL": "WARNING",
        }
        self.log_path = workdir / "gunicorn.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        help_text = subprocess.run([str(BIN / "gunicorn"), "--help"], capture_output=True, text=True).stdout
        # gunicorn ≥ 25 opens a control socket at one fixed path per user: several servers at once would share it.
        self.extra_args = ["--no-control-socket"] if "--no-control-socket" in help_text else []

    def cli(self, *args: str) -> str:
        """Run ``flywheel ARGS``; its last line of standard output ("" when it printed nothing there)."""
        done = subprocess.run(
            [str(BIN / "flywheel"), *args], env=self.env, capture_output=True, text=True, timeout=180, cwd=self.workdir
        )
        assert done.returncode == 0, f"flywheel {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        lines = done.stdout.strip().splitlines()
        return lines[-1] if lines else ""

    def start(self) -> None:
        assert self.process is None
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{self.port}", *self.extra_args, "wsgi:app"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while True:
            assert self.process.poll() is None, f"gunicorn exited:\n{self.log_tail()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the server was not ready in 90 s:\n{self.log_tail()}"
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM: gunicorn finishes the requests in progress and exits."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class World:
    def __init__(self, server: LiveServer, admin_key: str, key: str) -> None:
        self.server = server
        self.admin_key = admin_key
        self.key = key

    def admin(self) -> Client:
        return Client(self.server.url, self.admin_key, timeout=30)

    def client(self, timeout: float = 30) -> Client:
        return Client(self.server.url, self.key, timeout=timeout)

    def task(self, name: str) -> str:
        with self.admin() as admin:
            admin.create_task(name, LABELS, description="client tests")
        return name


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    for tool in ("flywheel", "gunicorn"):
        assert (BIN / tool).exists(), f"{BIN / tool} is missing: run the tests with the project's virtual environment"
    server = LiveServer(tmp_path_factory.mktemp("flywheel-live"))
    server.cli("db", "upgrade")
    server.cli("tenants", "create", "acme", "--name", "Acme")
    admin_key = server.cli("keys", "create", "--admin")
    key = server.cli("keys", "create", "--tenant", "acme", "--scopes", "ingest,read")
    assert admin_key.startswith("fw_") and key.startswith("fw_")
    server.start()
    try:
        yield World(server, admin_key, key)
    finally:
        server.stop()


def prediction(pid: str, task: str, i: int = 0) -> dict[str, Any]:
    label = LABELS[i % 3]
    others = [x for x in LABELS if x != label]
    return {
        "id": pid,
        "task": task,
        "text": f"message number {i}: where is my card?",
        "label": label,
        "confidence": 0.8,
        "probabilities": {label: 0.8, others[0]: 0.15, others[1]: 0.05},
        "model_version": "client-test-1",
        "metadata": {"channel": "chat", "n": i},
    }


def test_the_logger_delivers_5000_predictions_across_a_server_restart(world: World) -> None:
    task = world.task("restart-intent")
    items = [prediction(f"rs-{i:05d}", task, i) for i in range(5000)]
    with world.client(timeout=10) as client:
        logger = client.logger(flush_interval=0.2, backoff_base=0.05, backoff_max=0.5, register_atexit=False)
        for item in items[:2000]:
            assert logger.log_prediction(item)
        world.server.stop()  # some of the first 2,000 may be in flight: gunicorn finishes them, then exits
        for item in items[2000:]:
            assert logger.log_prediction(item)
        deadline = time.monotonic() + 30
        while logger.retries < 3:  # it keeps trying against the stopped server
            assert time.monotonic() < deadline, logger.stats()
            time.sleep(0.05)
        assert logger.pending > 0
        with pytest.raises(FlywheelConnectionError):
            client.list_tasks()
        world.server.start()
        assert logger.flush(timeout=120), logger.stats()
        assert logger.close(timeout=10)
        assert (logger.sent, logger.dropped, logger.rejected, logger.pending) == (5000, 0, 0, 0), logger.stats()
        assert logger.retries >= 3 and logger.duplicates >= 0

        stored = [p["id"] for p in client.iter_predictions(task, page_size=1000)]
    assert len(stored) == 5000, f"{len(stored)} stored"
    assert len(set(stored)) == 5000 and set(stored) == {item["id"] for item in items}


def test_feedback_logged_right_after_its_prediction_is_stored(world: World) -> None:
    task = world.task("feedback-intent")
    with world.client() as client:
        logger = client.logger(flush_interval=0.2, max_batch_items=7, register_atexit=False)
        for i in range(60):
            logger.log_prediction(prediction(f"fb-p-{i}", task, i))
            logger.log_feedback(
                {
                    "id": f"fb-f-{i}",
                    "prediction_id": f"fb-p-{i}",
                    "label": LABELS[(i + 1) % 3],
                    "source": "end_user",
                    "source_id": f"user-{i}",
                }
            )
        # Feedback whose prediction never reached the server (as if dropped): counted, never raised.
        logger.log_feedback({"id": "fb-orphan", "prediction_id": "never-logged", "label": LABELS[0], "source": "agent"})
        assert logger.flush(timeout=60), logger.stats()
        assert (logger.sent, logger.rejected, logger.dropped) == (120, 1, 0), logger.stats()
        logger.close()

        for i in (0, 29, 59):
            stored = client.get_prediction(f"fb-p-{i}")
            assert [(f["id"], f["label"], f["source"]) for f in stored["feedback"]] == [
                (f"fb-f-{i}", LABELS[(i + 1) % 3], "end_user")
            ]
        assert len(list(client.iter_predictions(task, has_feedback=True, page_size=1000))) == 60


def test_client_reads_and_errors_against_the_real_server(world: World) -> None:
    task = world.task("reads-intent")
    with world.client() as client:
        good = prediction("rd-1", task, 0)
        bad = prediction("rd-2", task, 1) | {"label": "cardarrival"}
        with pytest.raises(FlywheelError) as caught:
            client.log_predictions([good, bad])
        error = caught.value
        assert error.status == 422 and error.title and "nothing was stored" in (error.detail or "")
        assert ["predictions", 1, "label"] in [e["loc"] for e in error.errors]
        with pytest.raises(FlywheelError) as missing:
            client.get_prediction("rd-1")  # the batch was atomic
        assert missing.value.status == 404 and missing.value.type

        assert client.log_predictions([good]).accepted == 1
        assert client.log_predictions([good]).duplicates == 1
        with pytest.raises(FlywheelError) as conflict:
            client.log_predictions([good | {"text": "changed"}])
        assert conflict.value.status == 409

        stored = client.get_prediction("rd-1")
        assert (stored["id"], stored["task"], stored["label"], stored["feedback"]) == ("rd-1", task, good["label"], [])
        assert [p["id"] for p in client.iter_predictions(task)] == ["rd-1"]
        assert list(client.iter_predictions(task, has_feedback=True)) == []
        assert isinstance(client.list_models(task), list)
        assert isinstance(client.list_alerts(), list)
        assert isinstance(list(client.review_queue(task)), list)

        with pytest.raises(FlywheelError) as no_sla:
            client.get_sla("acme", task)
        assert no_sla.value.status == 404
        with world.admin() as admin:
            terms = {"metric": "accuracy", "threshold": 0.9, "window_days": 7, "min_labeled": 200}
            admin.request("PUT", f"/v1/slas/acme/{task}", json_body=terms)
        sla = client.get_sla("acme", task)
        assert (sla["tenant"], sla["task"], sla["metric"], sla["threshold"]) == ("acme", task, "accuracy", 0.9)

        with pytest.raises(FlywheelError) as forbidden:
            client.create_task("not-allowed", LABELS)  # an ingest/read key is not an admin
        assert forbidden.value.status == 403

    with Client(world.server.url, "fw_not_a_key") as stranger, pytest.raises(FlywheelError) as unauthorized:
        stranger.list_tasks()
    assert unauthorized.value.status == 401 and unauthorized.value.title
