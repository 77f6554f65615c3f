"""The short simulation (support/simulation.py), run once for every test that reads it; it writes only under a
temporary directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.simulation import Simulation, run_short_simulation


@pytest.fixture(scope="session")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulation]:
    run = run_short_simulation(tmp_path_factory.mktemp("sim"))
    yield run
    run.dispose()
