"""Long texts read by segment: the split (``flywheel.domain.segments``), the segment source of out-of-sample
probabilities (``flywheel.feedback.oos.segment_probabilities``) on real text, and the pass that uses it.

A long ticket states its request in a line among many lines of small talk; its whole-text embedding is mostly small
talk, so cross-validation on it cannot tell a wrong label from a right one. Read by segment, the request's line
decides. These tests fail if the segment source is not used, is diluted by the small talk, or lets an example's own
segments train the model that scores it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from flywheel.core.config import Settings
from flywheel.domain.ingest import ingest_feedback, ingest_predictions
from flywheel.domain.schemas import FeedbackIn, PredictionIn
from flywheel.domain.segments import MAX_SEGMENT_CHARS, segment_texts, split_segments
from flywheel.feedback.checks import check_labels
from flywheel.feedback.jobs import run_label_quality
from flywheel.feedback.noise import flip_labels, precision_recall_f1
from flywheel.feedback.oos import Segments, out_of_sample_probabilities, segment_probabilities
from flywheel.models.label_quality import LabelQualityResult, LabelQualityRun
from flywheel.models.records import Prediction, Tenant

from support import LABELS, World, shared_data
from support.encoders import LineEncoder

SMALL_TALK = [
    "Hope you are all doing well over there this week, the weather here has been lovely.",
    "My daughter just started school so mornings have been a bit chaotic lately, sorry!",
    "By the way, I really enjoyed the newsletter you sent out last month about saving.",
    "We are thinking of moving house next spring, so lots of paperwork is coming up.",
    "Apologies for the long message, I tend to ramble when I write these things.",
    "The coffee shop next to your branch closed down, which is a shame, it was great.",
    "I tried calling yesterday but the line was busy for quite a while, no worries.",
    "My neighbour recommended your bank years ago and I have been happy since then.",
]


def test_a_one_line_text_is_one_segment_and_a_set_of_them_does_not_split() -> None:
    assert split_segments("where is my card? It was sent last week.") == ["where is my card? It was sent last week."]
    assert split_segments("  hello\n\n") == ["  hello\n\n"]
    assert segment_texts(["short one", "another short one"]) is None
    assert segment_texts(["short one", "Hi!\nwhere is my card?"]) == (
        ["short one", "Hi!", "where is my card?"],
        [0, 1, 1],
    )
    # one multi-line text among many short ones is not worth a second cross-validation
    assert segment_texts(["Hi!\nwhere is my card?"] + ["short one"] * 30) is None


def test_long_texts_split_at_lines_then_at_sentence_ends_of_overlong_lines() -> None:
    long_line = " ".join(f"Sentence number {i} is here." for i in range(40))
    assert len(long_line) > MAX_SEGMENT_CHARS
    text = "\n".join([*SMALL_TALK[:6], "", "My card has not arrived yet.", long_line])
    parts = split_segments(text)
    assert parts[:7] == [*SMALL_TALK[:6], "My card has not arrived yet."]
    assert parts[7:] == [f"Sentence number {i} is here." for i in range(40)]
    one_line = "word " * 200  # nothing to split on: the windowed encoder chunks it
    assert split_segments(one_line) == [one_line]
    segments, owner = segment_texts(["short", text]) or ([], [])
    assert segments[0] == "short" and owner == [0] + [1] * len(parts)


def test_segments_must_cover_every_example() -> None:
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="at least one segment"):
        segment_probabilities(Segments(x, np.array([0, 0, 2])), np.array([0, 1, 0]), 2)
    with pytest.raises(ValueError, match="index"):
        segment_probabilities(Segments(x, np.array([0, 1, 3])), np.array([0, 1, 0]), 2)


def _tickets(classes: int = 8, per_class: int = 25, filler: int = 10, seed: int = 0):
    """Real banking77 requests, each the one line that matters in a ticket of ``filler`` lines of clinc150's
    out-of-scope utterances."""
    requests = pd.read_csv(shared_data("banking77", "train.csv"))
    keep = sorted(requests["label"].unique())[:classes]
    requests = requests[requests["label"].isin(keep)].groupby("label", group_keys=False).head(per_class)
    clinc = pd.read_csv(shared_data("clinc150", "train.csv"))
    small_talk = clinc[clinc["label"] == "oos"]["text"].tolist()
    rng = np.random.default_rng(seed)
    texts = []
    for request in requests["text"]:
        lines = [small_talk[i] for i in rng.choice(len(small_talk), filler, replace=False)]
        lines.insert(int(rng.integers(filler + 1)), request)
        texts.append("\n".join(lines))
    y = requests["label"].map({c: i for i, c in enumerate(keep)}).to_numpy()
    return texts, y, classes


@pytest.mark.slow
def test_on_real_tickets_the_request_line_decides_and_finds_the_flipped_labels() -> None:
    from flywheel.domain.encoder import load_encoder

    texts, y, k = _tickets()
    encoder = load_encoder()
    x = encoder.windowed(256).embed(texts)
    segments, owner = segment_texts(texts) or ([], [])
    seg = Segments(encoder.embed(segments), np.asarray(owner))
    noisy, flipped = flip_labels(y, k, rate=0.2, seed=0)
    whole = check_labels(x, noisy, k)
    by_segment = check_labels(x, noisy, k, segments=seg)
    f0 = precision_recall_f1(whole.issues.is_issue, flipped)[2]
    p, r, f = precision_recall_f1(by_segment.issues.is_issue, flipped)
    assert by_segment.segments is not None and by_segment.segments.weight >= 0.5, by_segment.segments
    assert set(by_segment.sources) == {"cv+segments"}
    assert p >= 0.8 and r >= 0.8, (p, r)
    assert f >= f0 + 0.15, (f0, f)
    # the segment source alone: an example's own lines never train the models that score it, or its (flipped)
    # label would look right
    alone, _ = segment_probabilities(seg, noisy, k)
    assert alone[flipped, noisy[flipped]].mean() < 0.3


def test_the_segment_weight_is_fitted_and_falls_to_the_whole_text_where_segments_say_nothing() -> None:
    rng = np.random.default_rng(0)
    n, k, d = 120, 3, 16
    y = rng.integers(0, k, size=n)
    x = rng.normal(scale=0.3, size=(n, d))
    x[np.arange(n), y] += 1.0  # the whole text knows the class
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    noise = rng.normal(size=(3 * n, d))  # every segment is small talk
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    seg = Segments(noise, np.repeat(np.arange(n), 3))
    mixed = out_of_sample_probabilities(x, y, k, segments=seg)
    assert mixed.segments is not None and mixed.segments.weight < 0.3, mixed.segments
    assert (mixed.probs.argmax(axis=1) == y).mean() > 0.9


def _settings(settings: Settings) -> Settings:
    return settings.with_(holdout_percent=15, label_quality_min_labeled=10)


def test_the_pass_reads_long_texts_by_segment_and_says_so(world: World, settings: Settings) -> None:
    rng = np.random.default_rng(1)
    truth, texts, encoder_truth = {}, {}, {}
    for i in range(160):
        label = LABELS[i % 4]
        request = f"request {i}: about {label}"
        encoder_truth[request] = i % 4
        # small talk of its own in each ticket, fifteen lines of it around the one line that matters
        lines = [f"{SMALL_TALK[j]} ({i}.{n})" for n, j in enumerate(rng.choice(len(SMALL_TALK), 15))]
        lines.insert(int(rng.integers(16)), request)
        truth[f"t{i}"], texts[f"t{i}"] = label, "\n".join(lines)
    wrong = {cid for n, cid in enumerate(truth) if n % 5 == 0}
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    with world.db.session() as session:
        acme = session.scalar(select(Tenant).where(Tenant.slug == "acme"))
        assert acme is not None
        ingest_predictions(
            session,
            acme.id,
            [
                PredictionIn(id=cid, task="intent", text=texts[cid], label=lab, confidence=0.5, created_at=t0)
                for cid, lab in truth.items()
            ],
        )
        feedback = []
        for n, (cid, lab) in enumerate(truth.items()):
            given = LABELS[(LABELS.index(lab) + 1) % 4] if cid in wrong else lab
            at = t0 + timedelta(minutes=n)
            feedback.append(FeedbackIn(id=f"f-{cid}", prediction_id=cid, label=given, source="agent", created_at=at))
        ingest_feedback(session, acme.id, feedback)
    result = run_label_quality(
        world.db, _settings(settings), tenant="acme", task="intent", encoder=LineEncoder(encoder_truth)
    )
    assert result.status == "succeeded"
    with world.db.session() as session:
        run = session.get(LabelQualityRun, result.run_id)
        assert run is not None
        seg = run.summary["segments"]
        # the lines explain the labels far better than the blurred whole texts, and get most of the say
        assert seg["weight"] >= 0.5 and seg["accuracy"] >= seg["cv_accuracy"] + 0.2, seg
        rows = session.execute(select(LabelQualityResult, Prediction.client_id).join(Prediction)).tuples().all()
    main = {cid: r for r, cid in rows if not r.holdout}
    held = {cid: r for r, cid in rows if r.holdout}
    assert {r.oos_source for r in main.values()} == {"cv+segments"}
    assert held and {r.oos_source for r in held.values()} <= {"cv", "cv+segments"}
    flagged = {cid for cid, r in main.items() if r.is_issue}
    wrong_outside = wrong & set(main)
    p, r, _ = precision_recall_f1(
        np.array([cid in flagged for cid in main]), np.array([cid in wrong_outside for cid in main])
    )
    # whole texts alone explain a third of the labels: most flags would be wrong, and half the errors missed
    assert p >= 0.6 and r >= 0.75, (p, r)
