"""Drift and the label-free estimate on real text (../shared/data/clinc150): real Evidently, the base encoder."""

from __future__ import annotations

import gzip
import json
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from flywheel.monitoring import drift, stats

from support import shared_data

pytestmark = pytest.mark.slow

REFERENCE_DOMAINS = ["banking", "credit_cards", "travel"]
OTHER_DOMAIN = "kitchen_and_dining"


@pytest.fixture(scope="module")
def clinc() -> pd.DataFrame:
    return pd.read_csv(shared_data("clinc150", "train.csv"))


def _classifier(texts: pd.Series, labels: pd.Series) -> tuple[TfidfVectorizer, LogisticRegression]:
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(texts)
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(vec.transform(texts), labels)
    return vec, clf


def test_drift_detected_on_a_new_domain_and_not_on_held_out_rows(clinc: pd.DataFrame) -> None:
    from flywheel.domain.encoder import load_encoder

    pool = clinc[clinc.domain.isin(REFERENCE_DOMAINS)].sample(frac=1.0, random_state=0)
    reference, same, train = pool.iloc[:300], pool.iloc[300:450], pool.iloc[450:]
    other = clinc[clinc.domain == OTHER_DOMAIN].sample(150, random_state=0)
    vec, clf = _classifier(train.text, train.label)  # the "production model" knows only the reference domains
    encoder = load_encoder()

    def frame(rows: pd.DataFrame) -> pd.DataFrame:
        proba = clf.predict_proba(vec.transform(rows.text))
        return drift.build_frame(
            clf.classes_[proba.argmax(1)],
            proba.max(1),
            rows.text.str.len().to_numpy(),
            encoder.embed(rows.text.tolist()),
        )

    ref_frame = frame(reference)
    shifted = drift.run_drift(ref_frame, frame(other))
    assert shifted.status == "detected", shifted.columns
    assert shifted.columns["text"]["detected"], "the text embeddings of another domain must drift"
    assert shifted.columns["text"]["score"] > 0.9
    assert set(shifted.columns) == {"predicted_label", "confidence", "text_length", "text"}

    steady = drift.run_drift(ref_frame, frame(same))
    assert steady.status == "none", steady.columns
    assert not steady.columns["text"]["detected"]
    assert steady.share is not None and steady.share < 0.5

    # The snapshot is JSON that renders as Evidently's HTML report after storage (compressed or not).
    assert steady.snapshot is not None
    html = drift.render_html(drift.compress_snapshot(steady.snapshot))
    assert html.lower().startswith("<!doctype html") or "<html" in html[:500].lower()
    assert "predicted_label" in html and "text_length" in html


def test_too_few_rows_is_unknown_not_a_verdict() -> None:
    frame = drift.build_frame(["a"] * 10, [0.9] * 10, [20] * 10)
    result = drift.run_drift(frame, frame, min_rows=30)
    assert result.status == "unknown" and result.snapshot is None


def test_tabular_only_drift_without_embeddings() -> None:
    rng = np.random.default_rng(5)
    labels = ["a", "b", "c"]
    ref = drift.build_frame(rng.choice(labels, 600), rng.beta(8, 2, 600), rng.integers(20, 80, 600))
    same = drift.build_frame(rng.choice(labels, 600), rng.beta(8, 2, 600), rng.integers(20, 80, 600))
    moved = drift.build_frame(
        rng.choice(labels, 600, p=[0.8, 0.1, 0.1]), rng.beta(2, 2, 600), rng.integers(100, 300, 600)
    )
    assert drift.run_drift(ref, same).status == "none"
    result = drift.run_drift(ref, moved)
    assert result.status == "detected"
    assert set(result.columns) == {"predicted_label", "confidence", "text_length"}


@pytest.mark.parametrize("embeddings", [False, True], ids=["tabular", "embeddings"])
def test_stored_snapshot_is_evidentlys_json_and_old_and_new_reports_render(embeddings: bool) -> None:
    """``dump_snapshot`` writes the very text of Evidently's ``Snapshot.dumps()`` (only faster), so reports stored
    before it (gzip level 6 of ``Snapshot.dumps()``), after it (level 4) and plain JSON all render the same."""
    from evidently.core.report import Snapshot

    rng = np.random.default_rng(7)

    def frame(n: int, shift: float) -> pd.DataFrame:
        emb = rng.normal(shift, 1.0, (n, 8)) if embeddings else None
        return drift.build_frame(rng.choice(["a", "b", "c"], n), rng.beta(8, 2, n), rng.integers(20, 80, n), emb)

    ref, cur = frame(120, 0.0), frame(120, 0.5)
    report = drift.build_report(with_embeddings=embeddings)
    snapshot = report.run(*drift.datasets(ref, cur))
    fast = json.dumps(snapshot.to_snapshot_model(), cls=drift._snapshot_encoder())  # the path, not its fallback
    assert fast == snapshot.dumps()
    assert drift.dump_snapshot(snapshot) == fast
    # A model with its own dict() (here: None fields left out) is encoded through it, not through its fields.
    from evidently.legacy.tests.base_test import TestValueCondition

    assert json.dumps([TestValueCondition(gt=1)], cls=drift._snapshot_encoder()) == '[{"gt": 1}]'
    result = drift.run_drift(ref, cur)
    assert result.snapshot is not None
    assert Snapshot.loads(result.snapshot).dict()["tests"]  # loads back with its tests

    def page(html: str) -> str:  # each rendering names its wrapper widget and script variable afresh
        return re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}", "<id>", html)

    expected = page(snapshot.get_html_str(as_iframe=False))
    assert "predicted_label" in expected and "text_length" in expected
    old = gzip.compress(snapshot.dumps().encode("utf-8"), compresslevel=6)
    for stored in (old, drift.compress_snapshot(fast), fast):
        assert page(drift.render_html(stored)) == expected


def _split(rows: pd.DataFrame, vec: Any, clf: Any) -> tuple[np.ndarray, np.ndarray]:
    proba = clf.predict_proba(vec.transform(rows.text))
    return proba.max(1), (clf.classes_[proba.argmax(1)] == rows.label.to_numpy()).astype(float)


def test_label_free_estimate_is_within_tolerance_on_real_text(clinc: pd.DataFrame) -> None:
    """A weak model (8 examples per intent) is overconfident or underconfident; CBPE calibrated on 1,500 labeled
    predictions must estimate the accuracy of 4,500 unlabeled ones within 0.03 of the truth."""
    val = pd.read_csv(shared_data("clinc150", "val.csv"))
    test = pd.read_csv(shared_data("clinc150", "test.csv"))
    data = clinc[clinc.label != "oos"]
    train = data.groupby("label").sample(8, random_state=0)
    vec, clf = _classifier(train.text, train.label)
    labeled_conf, labeled_ok = _split(val[val.label != "oos"].sample(1500, random_state=0), vec, clf)
    unlabeled_conf, unlabeled_ok = _split(test[test.label != "oos"], vec, clf)

    estimate = stats.cbpe_accuracy(labeled_conf, labeled_ok, unlabeled_conf)
    measured = float(unlabeled_ok.mean())
    assert estimate is not None
    assert abs(estimate - measured) < 0.03, (estimate, measured)
    # The raw confidences of this model are badly calibrated: without CBPE the guess would be far off.
    assert abs(float(unlabeled_conf.mean()) - measured) > 0.1
    assert stats.expected_calibration_error(unlabeled_conf, unlabeled_ok) > 0.1
