"""Dashboard sign-ins survive any deployment, in a real browser: Chromium (Debian's, driven by Playwright) signs in
20 times through the login form of ``gunicorn -w 2 wsgi:app`` started without ``--preload`` and without
``FLYWHEEL_SECRET_KEY``, each time in a fresh browser context (no cookies), four at a time so that both workers
are busy; every one lands on the signed-in overview. A second gunicorn (another "host", which issued nothing) then
opens the dashboard with each context's session cookie and finds it signed in too.

With a secret per process, the form's CSRF token issued by one worker is refused by the other ("form expired"):
0 of 20 succeeded before the secret was stored in the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from support.dashboard import BROWSER_TEST, CHROMIUM, CHROMIUM_ARGS
from support.servers import Deployment, Server, prepare_deployment, start_gunicorn, stop_servers, worker_by_attempt

SIGN_INS = 20
AT_ONCE = 4

pytestmark = BROWSER_TEST


@dataclass
class Outcome:
    attempt: int
    landed_on: str  # the URL after submitting the form
    status: int | None  # of that page
    signed_in: bool  # the overview with its sign-out button, on the server that issued the form
    signed_in_elsewhere: bool  # the same session cookie, on the other server


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Server, Server, Deployment]]:
    """Two ``gunicorn -w 2 wsgi:app`` (no preload, no configured secret) on one fresh database."""
    setup = prepare_deployment(tmp_path)
    started: list[Server] = []
    try:
        started.append(start_gunicorn(setup, tmp_path, "first"))
        started.append(start_gunicorn(setup, tmp_path, "second"))
        yield started[0], started[1], setup
    finally:
        stop_servers(started)


async def _sign_in(browser: Any, first: Server, second: Server, key: str, attempt: int) -> Outcome:
    """A new browser context (a person on a new machine): open the dashboard, be sent to the sign-in page, type
    the key, submit. Every request carries ``X-Attempt`` so the access log tells which worker served it."""
    context = await browser.new_context(extra_http_headers={"X-Attempt": str(attempt)})
    try:
        page = await context.new_page()
        await page.goto(f"{first.url}/dashboard/")
        assert "/dashboard/login" in page.url, page.url  # signed out: sent to the sign-in page
        await page.fill("input[name=api_key]", key)
        async with page.expect_navigation() as navigation:
            await page.click("button[type=submit]")
        response = await navigation.value
        signed_in = page.url == f"{first.url}/dashboard/" and await page.locator("#sign-out").count() == 1
        elsewhere = await context.new_page()
        await elsewhere.goto(f"{second.url}/dashboard/")  # cookies go by host, not port: the same session
        signed_in_elsewhere = elsewhere.url == f"{second.url}/dashboard/" and (
            await elsewhere.locator("#sign-out").count() == 1
        )
        return Outcome(attempt, page.url, response.status if response else None, signed_in, signed_in_elsewhere)
    finally:
        await context.close()


async def _sign_in_many(first: Server, second: Server, key: str) -> list[Outcome]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            gate = asyncio.Semaphore(AT_ONCE)

            async def one(attempt: int) -> Outcome:
                async with gate:
                    return await _sign_in(browser, first, second, key, attempt)

            return list(await asyncio.gather(*(one(i) for i in range(SIGN_INS))))
        finally:
            await browser.close()


def test_twenty_browser_sign_ins_through_two_gunicorn_workers_without_preload(servers) -> None:
    pytest.importorskip("playwright.async_api")
    first, second, setup = servers
    outcomes = asyncio.run(_sign_in_many(first, second, setup.read_key))
    failed = [(o.attempt, o.status, o.landed_on) for o in outcomes if not o.signed_in]
    assert not failed, f"{SIGN_INS - len(failed)} of {SIGN_INS} sign-ins succeeded; failed: {failed}"
    assert all(o.status == 200 for o in outcomes)
    assert all(o.signed_in_elsewhere for o in outcomes), [o for o in outcomes if not o.signed_in_elsewhere]
    # Both workers served sign-in forms, and some forms were submitted to another worker than the one that issued
    # them: the case a per-process secret fails.
    stop_servers([first])  # the access log is complete once the server has stopped
    got = worker_by_attempt(first.access_log, "GET")
    posted = worker_by_attempt(first.access_log, "POST")
    assert set(got) == set(posted) == {str(i) for i in range(SIGN_INS)}
    assert len(set(got.values()) | set(posted.values())) == 2, "one worker served every request"
    assert any(got[a] != posted[a] for a in got), "no sign-in crossed workers: the test proved nothing"
    engine = create_engine(setup.database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM app_secrets")).scalar() == 1  # one secret, for everyone
    engine.dispose()
