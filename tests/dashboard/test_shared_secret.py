"""Dashboard sign-ins survive any deployment: without ``FLYWHEEL_SECRET_KEY`` the session secret is generated once
and stored in the database, so every worker and host signs and checks cookies (and CSRF tokens) alike.

The end-to-end test starts ``gunicorn -w 2 wsgi:app`` without ``--preload`` (each worker builds its own app, as
separate hosts would) and signs in 20 times through the login form with a real HTTP client; a second gunicorn on
another port stands for a second host. tests/dashboard/test_browser_sign_ins.py does the same in Chromium.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, func, select, text

from flywheel.app import create_app
from flywheel.core.config import Settings
from flywheel.domain.secrets import SESSION_SECRET, stored_secret
from flywheel.models.app_secrets import AppSecret

from support import World
from support.dashboard import CSRF_RE, csrf_from
from support.servers import Server, prepare_deployment, start_gunicorn, stop_servers, worker_by_attempt


def _secrets(world: World) -> list[str]:
    with world.db.session() as session:
        return list(session.scalars(select(AppSecret.value)))


def test_apps_without_a_configured_secret_share_the_stored_one(world: World, settings: Settings, tmp_path) -> None:
    """Two apps (two workers, or two hosts) on one database: a form from one is accepted by the other."""
    unset = settings.with_(secret_key="")
    first = create_app(unset, db=world.db).test_client()
    second = create_app(unset, db=world.db).test_client()
    assert _secrets(world) == []  # nothing is created before a session is needed
    token = csrf_from(first.get("/dashboard/login").get_data(as_text=True))
    second.set_cookie("session", first.get_cookie("session").value)  # the browser carries it to the other process
    r = second.post("/dashboard/login", data={"api_key": world.acme_read, "csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"] == "/dashboard/"
    first.set_cookie("session", second.get_cookie("session").value)
    assert first.get("/dashboard/").status_code == 200  # signed in, on the first process too
    assert len(_secrets(world)) == 1 and len(_secrets(world)[0]) == 64


def test_a_configured_secret_wins_and_nothing_is_stored(world: World, settings: Settings) -> None:
    client = create_app(settings.with_(secret_key="configured"), db=world.db).test_client()
    token = csrf_from(client.get("/dashboard/login").get_data(as_text=True))
    r = client.post("/dashboard/login", data={"api_key": world.acme_read, "csrf_token": token})
    assert r.status_code == 302
    assert _secrets(world) == []
    # and a process with another secret does not accept that session: the secret is what signs it
    other = create_app(settings.with_(secret_key="another"), db=world.db).test_client()
    other.set_cookie("session", client.get_cookie("session").value)
    assert other.get("/dashboard/").status_code == 302


def test_processes_racing_to_create_the_secret_all_get_the_one_stored(world: World) -> None:
    engine = world.db.engine
    barrier = threading.Barrier(8)

    def first_use(_: int) -> str:
        barrier.wait()
        return stored_secret(engine)

    with ThreadPoolExecutor(8) as pool:
        values = set(pool.map(first_use, range(8)))
    assert len(values) == 1
    assert _secrets(world) == list(values)
    assert stored_secret(engine, "another") != stored_secret(engine)  # one per name


def test_the_api_answers_and_the_dashboard_says_503_while_the_secret_cannot_be_read(tmp_path: Path) -> None:
    """A database without the table (or unreachable): the app starts, the API is unaffected, the dashboard answers
    503 (not 500) until the secret can be read."""
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}", artifacts_dir=tmp_path / "a"))
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/dashboard/login").status_code == 503
    assert client.get("/v1/tasks").status_code == 401  # the API needs no session


def test_the_secret_survives_a_restart(world: World, settings: Settings) -> None:
    unset = settings.with_(secret_key="")
    client = create_app(unset, db=world.db).test_client()
    token = csrf_from(client.get("/dashboard/login").get_data(as_text=True))
    assert client.post("/dashboard/login", data={"api_key": world.admin, "csrf_token": token}).status_code == 302
    restarted = create_app(unset, db=world.db).test_client()
    restarted.set_cookie("session", client.get_cookie("session").value)
    assert restarted.get("/dashboard/").status_code == 200
    with world.db.session() as session:
        assert session.scalar(select(func.count()).select_from(AppSecret)) == 1
        assert session.get(AppSecret, SESSION_SECRET) is not None


# --- gunicorn, two workers, no preload ---------------------------------------------------------------------------


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[list[Server], str, str]]:
    """``flywheel db upgrade`` on a fresh SQLite file, a tenant and its read key, and two ``gunicorn -w 2``."""
    setup = prepare_deployment(tmp_path)
    servers: list[Server] = []
    try:
        servers.append(start_gunicorn(setup, tmp_path, "first"))
        servers.append(start_gunicorn(setup, tmp_path, "second"))
        yield servers, setup.read_key, setup.database_url
    finally:
        stop_servers(servers)


def _sign_in(get_from: str, post_to: str, key: str, attempt: int) -> bool:
    """The login form, as a browser fills it: GET the page (a session cookie and the form's CSRF token), POST the
    key with the token, then open the dashboard with the session cookie. New connections each time."""
    with requests.Session() as browser:
        browser.headers["Connection"] = "close"
        page = browser.get(f"{get_from}/dashboard/login?attempt={attempt}", timeout=30)
        match = CSRF_RE.search(page.text)
        assert page.status_code == 200 and match, page.text[:300]
        cookie = browser.cookies.get("session")
        assert cookie, "no session cookie"
        signed = browser.post(
            f"{post_to}/dashboard/login?attempt={attempt}",
            data={"api_key": key, "csrf_token": match.group(1)},
            cookies={"session": cookie},
            allow_redirects=False,
            timeout=30,
        )
        if signed.status_code != 302 or signed.headers.get("Location") != "/dashboard/":
            return False
        home = browser.get(f"{get_from}/dashboard/?attempt={attempt}", allow_redirects=False, timeout=30)
        return home.status_code == 200


@pytest.mark.slow
def test_twenty_sign_ins_through_two_gunicorn_workers_without_preload(deployment) -> None:
    (first, second), key, url = deployment
    with ThreadPoolExecutor(4) as pool:  # concurrent sign-ins keep both workers busy
        results = list(pool.map(lambda i: _sign_in(first.url, first.url, key, i), range(20)))
    assert sum(results) == 20, f"{sum(results)} of 20 sign-ins succeeded"
    # Both workers served the login form, and some sign-ins were checked by another worker than the one that issued
    # their token: the case a per-process secret fails.
    time.sleep(0.5)  # the access log is written after the response
    got, posted = worker_by_attempt(first.access_log, "GET"), worker_by_attempt(first.access_log, "POST")
    assert len(set(got.values()) | set(posted.values())) == 2, "one worker served every request"
    crossed = [a for a in got if a in posted and got[a] != posted[a]]
    assert crossed, "no sign-in crossed workers: the test proved nothing"
    # Another host: the form from one server, the sign-in on the other.
    assert all(_sign_in(first.url, second.url, key, 100 + i) for i in range(5))
    assert all(_sign_in(second.url, first.url, key, 200 + i) for i in range(5))
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM app_secrets")).scalar() == 1  # one secret, for everyone
    engine.dispose()
