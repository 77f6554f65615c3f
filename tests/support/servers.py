"""A real deployment for tests: ``flywheel db upgrade`` on a temporary SQLite file, a tenant and its read key, and
``gunicorn -w 2 wsgi:app`` processes (no ``--preload``: each worker builds its own app, as separate hosts would)
on free ports of 127.0.0.1, with an access log that names the worker (pid) behind each request."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from flywheel.core.db import Database
from flywheel.domain.auth import create_key
from flywheel.models.records import Tenant

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtual environment running the tests
# The worker's pid (as <pid>), the request, and the X-Attempt header a test may send to tell its requests apart.
ACCESS_LOG_FORMAT = "%(p)s %(m)s %(U)s?%(q)s %({x-attempt}i)s %(s)s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    access_log: Path


@dataclass
class Deployment:
    env: dict[str, str]  # the environment of every process: the database, artifacts, no FLYWHEEL_SECRET_KEY
    database_url: str
    read_key: str  # acme's


def prepare_deployment(tmp: Path) -> Deployment:
    """A migrated SQLite file (through the CLI, as an operator does it) with tenant ``acme`` and a read key."""
    url = f"sqlite:///{tmp / 'flywheel.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env.update(FLYWHEEL_DATABASE_URL=url, FLYWHEEL_ARTIFACTS_DIR=str(tmp / "artifacts"), FLYWHEEL_LOG_LEVEL="ERROR")
    subprocess.run([str(BIN / "flywheel"), "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
    db = Database(url)
    with db.session() as session:
        acme = Tenant(slug="acme", name="Acme Corp")
        session.add(acme)
        session.flush()
        key = create_key(session, tenant=acme, scopes=["read"])[1]
    db.dispose()
    return Deployment(env, url, key)


def start_gunicorn(deployment: Deployment, tmp: Path, name: str) -> Server:
    """``gunicorn -w 2 wsgi:app`` from the clone's root, answering ``/healthz``."""
    port = free_port()
    log = tmp / f"{name}-access.log"
    command = [str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", "--access-logfile", str(log),
               "--access-logformat", ACCESS_LOG_FORMAT, "wsgi:app"]  # fmt: skip
    help_text = subprocess.run([str(BIN / "gunicorn"), "--help"], capture_output=True, text=True).stdout
    if "--no-control-socket" in help_text:  # gunicorn ≥ 25: one control socket path per user, shared otherwise
        command.insert(-1, "--no-control-socket")
    process = subprocess.Popen(
        command, cwd=ROOT, env=deployment.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(f"{url}/healthz", timeout=10).status_code == 200:
                    return Server(url, process, log)
            except requests.RequestException:  # not listening yet, or the workers are still importing the app
                time.sleep(0.2)
        raise AssertionError(f"gunicorn did not start on {url}")
    except BaseException:
        stop_servers([Server(url, process, log)])
        raise


def stop_servers(servers: list[Server]) -> None:
    for server in servers:
        server.process.terminate()
    for server in servers:
        server.process.wait(timeout=30)


def worker_by_attempt(log: Path, method: str, path: str = "/dashboard/login") -> dict[str, str]:
    """Which worker (pid) served each attempt's ``method`` request to ``path``; an attempt is named by an
    ``attempt=N`` query parameter or an ``X-Attempt: N`` header."""
    out = {}
    pattern = re.compile(rf"<(\d+)> {method} {re.escape(path)}\?(?:attempt=(\d+))?\S* (\d+|-) ")
    for line in log.read_text().splitlines():
        match = pattern.match(line)
        if match:
            attempt = match.group(2) or match.group(3)
            if attempt != "-":
                out[attempt] = match.group(1)
    return out
