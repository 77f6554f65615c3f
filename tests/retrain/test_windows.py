"""Length follows the data: the windows chosen from the texts' lengths, chunking and pooling beyond them, the cache
keyed by window, and the window recorded with a model and used again where it serves (on the tiny BertConfig base,
whose limit is its 64 positions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from flywheel.core.config import Settings
from flywheel.core.db import Database
from flywheel.domain import champions
from flywheel.domain.embeddings import get_embeddings
from flywheel.domain.encoder import Encoder, load_encoder, window_limit
from flywheel.domain.ingest import ingest_feedback, ingest_predictions
from flywheel.domain.schemas import FeedbackIn, PredictionIn
from flywheel.domain.windows import choose_window, chunk_spans, head_tail, sample_texts, text_windows
from flywheel.feedback.jobs import run_label_quality
from flywheel.models.label_quality import EmbeddingCache
from flywheel.models.records import Task, Tenant
from flywheel.models.training import TrainingRun
from flywheel.retrain import jobs, registry
from flywheel.retrain.classifiers import load_classifier, read_metadata, token_ids
from flywheel.retrain.finetune import FineTuneConfig, fine_tune
from flywheel.retrain.serving import ModelServer, ServeInput

from support.retrain import FILLER, KEYWORDS, LABELS, TASK, make_task, synthetic

# --- choosing a window ---------------------------------------------------------------------------------------------


def test_short_texts_keep_a_small_window() -> None:
    short = list(range(5, 45))  # p95 about 43 tokens
    assert choose_window(short, limit=256, default=128) == 128  # the embedding window stays what it was
    assert choose_window(short, limit=256, default=64) == 64  # and so does fine-tuning's
    assert choose_window(short, limit=256, default=32) == 64  # p95 rounded up to 32


def test_long_texts_get_a_larger_window_capped_at_the_limit() -> None:
    medium = [150 + i % 30 for i in range(200)]  # p95 178 tokens
    assert choose_window(medium, limit=256, default=128) == 192
    assert choose_window(medium, limit=256, default=64) == 192
    long = [300 + 3 * i for i in range(100)]  # 300 to 600 tokens
    assert choose_window(long, limit=256, default=128) == 256
    assert choose_window(long, limit=512, default=128) == 512  # p95 582 tokens
    assert choose_window(long, limit=1024, default=128) == 608


def test_a_tiny_sample_keeps_the_default_under_the_limit() -> None:
    assert choose_window([500] * 19, limit=256, default=128) == 128
    assert choose_window([500] * 19, limit=64, default=128) == 64
    assert choose_window([], limit=256, default=64) == 64
    with pytest.raises(ValueError):
        choose_window([10] * 50, limit=0, default=64)


def test_text_windows_measure_a_seeded_sample() -> None:
    texts = [f"text {i}" for i in range(25_000)]
    assert sample_texts(texts) == sample_texts(texts) and len(sample_texts(texts)) == 10_000
    windows = text_windows(["a " * n for n in range(10, 410)], lambda ts: [len(t) // 2 + 2 for t in ts], limit=256)
    assert (windows.embedding, windows.fine_tuning, windows.limit) == (256, 256, 256)
    assert windows.sampled == 400 and windows.p95_tokens == 392 and windows.max_tokens == 411
    assert 0 < windows.over_embedding < 1 and windows.to_dict()["truncation"] == "head_tail"


def test_chunk_spans_cover_every_token_with_overlap() -> None:
    assert chunk_spans(10, 62, 8) == [(0, 10)]
    spans = chunk_spans(150, 62, 8)
    assert spans == [(0, 62), (54, 116), (108, 150)]
    with pytest.raises(ValueError):
        chunk_spans(10, 8, 8)


def test_head_tail_keeps_a_quarter_of_the_head_and_the_rest_from_the_tail() -> None:
    body = list(range(100))
    assert head_tail(body, 200) == body
    cut = head_tail(body, 40)
    assert cut == list(range(10)) + list(range(70, 100))


def test_the_limit_is_the_smallest_of_positions_tokenizer_and_sentence_transformers(tmp_path: Path) -> None:
    class Config:
        max_position_embeddings = 512

    class Tokenizer:
        model_max_length = int(1e30)  # transformers' "no limit"

    assert window_limit(tmp_path, Tokenizer(), Config()) == 512
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    assert window_limit(tmp_path, Tokenizer(), Config()) == 256  # all-MiniLM-L6-v2's own setting


# --- chunking and pooling on the tiny base ----------------------------------------------------------------------


def long_text(label: str, n_filler: int, seed: int = 0) -> str:
    """Filler words, then two keywords of ``label`` at the very end: beyond 64 tokens for n_filler > 62."""
    rng = np.random.default_rng(seed)
    words = list(rng.choice(FILLER, size=n_filler)) + list(rng.choice(KEYWORDS[label], size=2))
    return " ".join(words)


def pooled_by_hand(encoder: Encoder, text: str, window: int) -> np.ndarray:
    """The chunks embedded one by one with the raw model, averaged by token count: what chunk-and-pool must give."""
    import torch

    tok = encoder.tokenizer
    body = tok(text, add_special_tokens=False)["input_ids"]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    vectors, weights = [], []
    for a, b in chunk_spans(len(body), window - 2, window // 8):
        ids = torch.tensor([[cls, *body[a:b], sep]])
        with torch.inference_mode():
            hidden = encoder.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        mean = hidden.mean(0).numpy()
        vectors.append(mean / np.linalg.norm(mean))
        weights.append(ids.shape[1])
    pooled = np.average(np.stack(vectors), axis=0, weights=weights)
    return pooled / np.linalg.norm(pooled)


def test_a_text_longer_than_the_window_is_chunked_and_pooled(tiny_base: Path) -> None:
    encoder = load_encoder(tiny_base, device="cpu")
    assert encoder.limit == 64  # the tiny base's positions
    text = long_text("refund", 150)
    assert encoder.token_lengths([text]) == [154]
    windowed = encoder.windowed(1000)
    assert windowed.window == 64  # capped at the limit
    got = windowed.embed([text])[0]
    np.testing.assert_allclose(got, pooled_by_hand(encoder, text, 64), atol=1e-5)
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
    cut = encoder.embed([text], max_length=64)[0]
    assert float(got @ cut) < 0.999  # not the embedding of its first 64 tokens
    assert [len(c) for c in windowed.chunk_ids([text])[0]] == [64, 64, 46]


def test_a_text_within_the_window_is_embedded_as_before(tiny_base: Path) -> None:
    encoder = load_encoder(tiny_base, device="cpu")
    texts, _ = synthetic(20, seed=3)
    np.testing.assert_allclose(encoder.windowed(64).embed(texts), encoder.embed(texts), atol=1e-5)
    assert encoder.windowed(64).cache_keys(texts) == [encoder.id] * 20  # the cached embeddings are reused


def test_cache_entries_at_different_windows_never_collide(db: Database, tiny_base: Path) -> None:
    encoder = load_encoder(tiny_base, device="cpu")
    short, long = "my card please", long_text("card", 100)
    w32, w64 = encoder.windowed(32), encoder.windowed(64)
    with db.session() as session:
        bare = get_embeddings(session, [short, long], encoder=encoder)  # the bare encoder: cut at 128 positions...
    with db.session() as session:
        at32 = get_embeddings(session, [short, long], encoder=w32)
        at64 = get_embeddings(session, [short, long], encoder=w64)
    np.testing.assert_allclose(at32[0], bare[0], atol=1e-5)  # the short text: one embedding, one key
    np.testing.assert_allclose(at64[0], bare[0], atol=1e-5)
    assert float(at32[1] @ at64[1]) < 0.9999 and float(at64[1] @ bare[1]) < 0.9999
    np.testing.assert_allclose(at32[1], w32.embed([long])[0], atol=1e-5)
    np.testing.assert_allclose(at64[1], w64.embed([long])[0], atol=1e-5)
    with db.session() as session:
        keys = sorted(session.scalars(select(EmbeddingCache.encoder_id)))
        again = get_embeddings(session, [long], encoder=w32)  # from the cache, its own window's row
    assert keys == sorted([encoder.id, encoder.id, w32.id, w64.id])
    assert w32.id != w64.id and encoder.id in w32.id
    np.testing.assert_allclose(again[0], at32[1], atol=1e-6)


# --- recorded with the model, used again where it serves ---------------------------------------------------------


def add_long_labeled(db: Database, tenant: str, n: int, *, seed: int) -> None:
    """``n`` labeled predictions whose keywords come after 70-110 filler words (past the 64-token limit)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        rows.append(
            (f"{tenant}-long-{seed}-{i}", long_text(label, int(rng.integers(70, 110)), seed=seed * 1000 + i), label)
        )
    with db.session() as session:
        t = session.scalar(select(Tenant).where(Tenant.slug == tenant))
        assert t is not None
        ingest_predictions(
            session, t.id, [PredictionIn(id=c, task=TASK, text=x, label=LABELS[0], confidence=0.5) for c, x, _ in rows]
        )
        ingest_feedback(
            session,
            t.id,
            [FeedbackIn(id=f"fb-{c}", prediction_id=c, label=y, source="agent", source_id="a-1") for c, _, y in rows],
        )


def test_the_window_is_recorded_with_the_model_and_used_again_when_it_serves(
    db: Database, rs: Settings, tiny_base: Path
) -> None:
    make_task(db, tiny_base)
    add_long_labeled(db, "acme", 90, seed=1)
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        assert task is not None
        run_id = jobs.queue_run(session, task, None, trigger="test").id
    # The tiny random base hardly beats zero-shot on long texts; whether the gate promotes it is not the point here.
    assert jobs.run_training(db, rs, run_id) in ("succeeded", "rejected")
    with db.session() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None and run.model_id is not None
        model = registry.promote(session, run.model_id)  # serve it
        assert champions.champion_for(session, run.task_id, None) is model
        windows = model.lineage["text_windows"]  # what GET /v1/models shows
        assert run.lineage["text_windows"] == windows
        cache_keys = set(session.scalars(select(EmbeddingCache.encoder_id)))
    encoder = load_encoder(tiny_base, device="cpu")
    assert windows["embedding"] == 64 and windows["limit"] == 64 and windows["p95_tokens"] > 64
    assert windows["over_embedding"] == 1.0
    assert encoder.windowed(64).id in cache_keys  # the long texts were cached at their window
    meta = read_metadata(model.artifact_path or "")
    assert meta["embed_window"] == 64 and meta["lineage"]["text_windows"] == windows
    served_clf = load_classifier(model.artifact_path or "")
    assert getattr(served_clf, "embed_window", None) == 64

    text = long_text("login", 90, seed=77)
    with db.session() as session:
        task = session.scalar(select(Task).where(Task.name == TASK))
        tenant = session.scalar(select(Tenant).where(Tenant.slug == "acme"))
        assert task is not None and tenant is not None
        [served] = ModelServer().predict(session, tenant, task, [ServeInput("q-long", text)])
    assert served.model_version == model.version
    expected = served_clf.predict_proba_embeddings(encoder.windowed(64).embed([text]))[0]
    got = np.array([served.probabilities[label] for label in served_clf.labels])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_label_quality_pass_embeds_at_the_tasks_window_and_records_it(
    db: Database, settings: Settings, tiny_base: Path
) -> None:
    make_task(db, tiny_base)
    add_long_labeled(db, "acme", 60, seed=2)
    encoder = load_encoder(tiny_base, device="cpu")
    result = run_label_quality(db, settings, tenant="acme", task=TASK, encoder=encoder)
    assert result.summary["embedding_window"] == 64
    assert result.summary["text_windows"]["p95_tokens"] > 64 and result.summary["text_windows"]["limit"] == 64
    assert result.summary["encoder"] == encoder.windowed(64).id
    with db.session() as session:
        assert encoder.windowed(64).id in set(session.scalars(select(EmbeddingCache.encoder_id)))


def test_fine_tuning_chooses_its_window_records_it_and_keeps_head_and_tail(tiny_base: Path, tmp_path: Path) -> None:
    texts = [long_text(LABELS[i % 3], 80 + i % 20, seed=i) for i in range(24)]
    labels = [LABELS[i % 3] for i in range(24)]
    config = FineTuneConfig(
        base_model=str(tiny_base), epochs=1, max_steps=2, batch_size=8, device="cpu", val_fraction=0.0
    )
    assert config.max_length is None and config.truncation == "head_tail"
    clf, stats = fine_tune(texts, labels, LABELS, config=config)
    assert (clf.max_length, clf.truncation) == (64, "head_tail")  # p95 > the tiny base's 64 positions
    assert stats.config["max_length"] == 64
    ids = token_ids(clf.tokenizer, texts[:1], clf.max_length, clf.truncation)[0]
    body = clf.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert len(ids) == 64 and ids[1:16] == body[:15] and ids[16:-1] == body[-47:]  # the keywords at the end kept
    clf.save(tmp_path / "ft", metadata={})
    loaded = load_classifier(tmp_path / "ft", device="cpu")
    assert (loaded.max_length, loaded.truncation) == (64, "head_tail")  # type: ignore[union-attr]
    np.testing.assert_allclose(loaded.predict_proba(texts[:4]), clf.predict_proba(texts[:4]), atol=1e-5)
    legacy = read_metadata(tmp_path / "ft")
    legacy.pop("truncation")
    (tmp_path / "ft" / "metadata.json").write_text(json.dumps(legacy))
    assert load_classifier(tmp_path / "ft", device="cpu").truncation == "head"  # type: ignore[union-attr]
