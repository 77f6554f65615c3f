"""The client's tests against a real server are marked ``slow``."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: starts real server processes (gunicorn) and takes seconds")
