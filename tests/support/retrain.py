"""Helpers for the retraining platform tests: a tiny local base model, a synthetic task, labeled data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.domain import champions
from flywheel.domain.ingest import ingest_feedback, ingest_predictions
from flywheel.domain.schemas import FeedbackIn, PredictionIn
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.training import ModelVersion, TrainingRun
from flywheel.retrain import jobs
from flywheel.retrain.registry import ensure_zero_shot

KEYWORDS = {
    "card": ["card", "arrive", "delivery", "post", "mail"],
    "refund": ["refund", "money", "back", "return", "reimburse"],
    "login": ["login", "password", "account", "locked", "reset"],
}
FILLER = ["i", "my", "the", "please", "help", "when", "why", "is", "not", "can", "you", "still", "a", "it"]
LABELS = list(KEYWORDS)
TASK = "support"
HOLDOUT = 25  # percent: a larger holdout than the default, so small test sets still have one


def build_tiny_base(path: Path) -> Path:
    """A local save_pretrained base: a 2-layer BertModel (hidden 32) and a tokenizer over the synthetic words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *(w for ws in KEYWORDS.values() for w in ws)]
    path.mkdir(parents=True, exist_ok=True)
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    return path


def synthetic(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` texts with two keywords of their label among filler words; labels balanced."""
    rng = np.random.default_rng(seed)
    texts, ys = [], []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        words = list(rng.choice(KEYWORDS[label], size=2)) + list(rng.choice(FILLER, size=4))
        rng.shuffle(words)
        texts.append(" ".join(words))
        ys.append(label)
    return texts, ys


def synthetic_per_label(n_per_label: dict[str, int], seed: int) -> tuple[list[str], list[str]]:
    """``n_per_label[label]`` texts per label (two of its keywords among filler words), shuffled."""
    rng = np.random.default_rng(seed)
    texts, ys = [], []
    for label, n in n_per_label.items():
        for _ in range(n):
            words = list(rng.choice(KEYWORDS[label], size=2)) + list(rng.choice(FILLER, size=4))
            rng.shuffle(words)
            texts.append(" ".join(words))
            ys.append(label)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], [ys[i] for i in order]


def make_task(db: Database, base: Path, *, tenants: tuple[str, ...] = ("acme", "globex")) -> None:
    """The ``support`` task on the tiny base, its zero-shot champion, and tenants (created where missing)."""
    with db.session() as session:
        for slug in tenants:
            if session.scalar(select(Tenant).where(Tenant.slug == slug)) is None:
                session.add(Tenant(slug=slug, name=slug.title()))
        task = Task(name=TASK, labels=LABELS, label_descriptions={}, description="", base_model=str(base))
        session.add(task)
        session.flush()
        ensure_zero_shot(session, task)


def add_labeled(db: Database, tenant: str, n: int, *, seed: int, prefix: str | None = None) -> list[str]:
    """Log ``n`` predictions for ``tenant`` and label each through feedback (the effective-label rule runs)."""
    texts, ys = synthetic(n, seed)
    prefix = prefix or f"{tenant}-{seed}"
    ids = [f"{prefix}-{i}" for i in range(n)]
    with db.session() as session:
        t = session.scalar(select(Tenant).where(Tenant.slug == tenant))
        assert t is not None
        ingest_predictions(
            session,
            t.id,
            [
                PredictionIn(id=cid, task=TASK, text=text, label=LABELS[0], confidence=0.5)
                for cid, text in zip(ids, texts, strict=True)
            ],
        )
        ingest_feedback(
            session,
            t.id,
            [
                FeedbackIn(id=f"fb-{cid}", prediction_id=cid, label=y, source="agent", source_id="agent-1")
                for cid, y in zip(ids, ys, strict=True)
            ],
        )
    return ids


def shuffle_training_labels(db: Database, holdout_percent: int, seed: int = 1) -> int:
    """Permute the effective labels of the training pool (the holdout keeps its true labels)."""
    rng = np.random.default_rng(seed)
    with db.session() as session:
        rows = list(
            session.scalars(
                select(Prediction).where(Prediction.effective_label.is_not(None), Prediction.bucket >= holdout_percent)
            )
        )
        labels = [r.effective_label for r in rows]
        # A derangement-ish shuffle: rotate the label set so every training label is wrong.
        rotate = {a: b for a, b in zip(LABELS, LABELS[1:] + LABELS[:1], strict=True)}
        for r, label in zip(rows, labels, strict=True):
            r.effective_label = rotate[label] if rng.random() < 0.9 else label
        return len(rows)


def train_to(db: Database, settings: Settings, tiny_base: Path, artifacts_dir: str) -> ModelVersion:
    """A few-shot training run (in this process, as a worker runs it) writing its model to ``artifacts_dir``."""
    rs = settings.with_(
        artifacts_dir=artifacts_dir, holdout_percent=20, few_shot_min_per_class=2, fine_tune_min_labels=100_000
    )
    make_task(db, tiny_base)
    add_labeled(db, "acme", 90, seed=1)
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        assert task is not None
        run_id = jobs.queue_run(session, task, None, trigger="test").id
    assert jobs.run_training(db, rs, run_id) == "succeeded"
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        model = champions.champion_for(session, run.task_id, None)
        assert model is not None and model.id == run.model_id
        session.expunge(model)
        return model


# --- fixtures (imported by the conftest or test modules that use them) ---


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
