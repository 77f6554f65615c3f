"""Fixtures: an in-memory fake server (``flywheel_client.testing.FakeServer``) and a client wired to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flywheel_client import Client
from flywheel_client.testing import FakeServer, RecordingSleep

LABELS = {"intent": ["card_arrival", "card_linking", "lost_or_stolen_card"]}
KEY = "fw_test_key"


@pytest.fixture
def server() -> FakeServer:
    return FakeServer(labels=LABELS, api_key=KEY)


@pytest.fixture
def client(server: FakeServer) -> Iterator[Client]:
    with Client("http://flywheel.test", KEY, transport=server.transport) as c:
        yield c


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()
