"""Fixtures of the retraining tests: a tiny local BERT base (built once per session) and one torch thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.core.config import Settings

from support.retrain import HOLDOUT, build_tiny_base


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models train far faster on one thread, above all on a shared, busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) and a tokenizer over the synthetic task's words, saved like a pretrained base."""
    return build_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture
def rs(settings: Settings) -> Settings:
    """Few-shot only (fine-tuning needs more labels than the tests log) unless a test lowers the threshold."""
    return settings.with_(
        holdout_percent=HOLDOUT, few_shot_min_per_class=2, fine_tune_min_labels=100_000, fine_tune_epochs=6
    )
