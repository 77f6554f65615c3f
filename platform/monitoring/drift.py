"""The Evidently 0.7 adapter: the only module that imports evidently (imported inside the functions).

A drift run compares a current window of predictions with a reference (the champion's training data when known,
else the previous window) on four signals:

- ``predicted_label`` (categorical), ``confidence`` and ``text_length`` (numerical): one ``ValueDrift`` each
  inside Evidently's ``DataDriftPreset``, with Evidently's default per-column test and threshold;
- ``text``: ``EmbeddingsDrift`` on base-model embeddings (a domain classifier's ROC AUC, ``lte(0.6)`` test).

Drift is ``detected`` when the share of failed column tests reaches ``drift_share`` (0.5: two of four signals; one
of the two input signals when the reference is the champion's training data, see ``run_drift``),
``unknown`` when either side has fewer than ``min_rows`` rows. The snapshot (Evidently's full JSON, the text of
``Snapshot.dumps()``) is kept so the HTML report can be rendered later from storage.
"""

from __future__ import annotations

import functools
import gzip
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

TABULAR_COLUMNS = ("predicted_label", "confidence", "text_length")
EMBEDDING_NAME = "text"
# ROC AUC of the domain classifier above which the text is said to drift. Evidently's default is 0.55; on windows of a
# few hundred rows from one distribution the AUC wanders to 0.56 (seen in the banking77 simulation), while a new
# domain scores 0.7 and more, so 0.6 keeps the margin on both sides.
EMBEDDING_THRESHOLD = 0.6
MODEL_OUTPUT_COLUMNS = ("predicted_label", "confidence")


@dataclass
class DriftResult:
    """The outcome of one drift run; ``snapshot`` is Evidently's snapshot as JSON (None when not run)."""

    status: str  # none | detected | unknown
    share: float | None
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_reference: int = 0
    n_current: int = 0
    snapshot: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "share": self.share,
            "columns": self.columns,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
        }


def build_frame(
    labels: Sequence[str] | np.ndarray,
    confidences: Sequence[float] | np.ndarray,
    text_lengths: Sequence[int] | np.ndarray,
    embeddings: np.ndarray | None = None,
) -> pd.DataFrame:
    """The frame Evidently sees: one row per prediction; embeddings as ``emb_0 … emb_{D-1}`` when given."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "predicted_label": pd.Series(np.asarray(labels, dtype=object)),
            "confidence": np.asarray(confidences, dtype=np.float64),
            "text_length": np.asarray(text_lengths, dtype=np.float64),
        }
    )
    if embeddings is not None:
        emb = pd.DataFrame(np.asarray(embeddings, dtype=np.float32), columns=_emb_columns(embeddings.shape[1]))
        frame = pd.concat([frame, emb], axis=1)
    return frame


def _emb_columns(dim: int) -> list[str]:
    return [f"emb_{i}" for i in range(dim)]


def _has_embeddings(frame: pd.DataFrame) -> bool:
    return "emb_0" in frame.columns


def build_report(*, with_embeddings: bool, drift_share: float = 0.5) -> Any:
    """The Evidently ``Report`` used by both ``run_drift`` and the benchmark's bare call.

    Per column, Evidently picks the test by sample size (chi-square / K-S p-values up to 1,000 rows, Jensen-Shannon
    / Wasserstein distances above). Evidently's chi-square treats the reference proportions as exact, so on small
    windows it flags the predicted label more often than 5% of the time; requiring half of the signals to drift
    keeps one noisy column from raising an alert. (Its permutation ``TVD`` test is exact but took 25 s here.)
    """
    from evidently import Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import ModelDriftMethod
    from evidently.presets import DataDriftPreset
    from evidently.tests import lte

    metrics: list[Any] = [DataDriftPreset(columns=list(TABULAR_COLUMNS), drift_share=drift_share)]
    if with_embeddings:
        method = ModelDriftMethod(threshold=EMBEDDING_THRESHOLD, bootstrap=False)
        metrics.append(
            EmbeddingsDrift(embeddings_name=EMBEDDING_NAME, drift_method=method, tests=[lte(EMBEDDING_THRESHOLD)])
        )
    return Report(metrics, include_tests=True)


def datasets(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[Any, Any]:
    """Evidently ``Dataset`` objects with an explicit ``DataDefinition`` (no type guessing)."""
    from evidently import DataDefinition, Dataset

    embeddings = None
    if _has_embeddings(reference) and _has_embeddings(current):
        dim = sum(1 for c in reference.columns if c.startswith("emb_"))
        embeddings = {EMBEDDING_NAME: _emb_columns(dim)}
    definition = DataDefinition(
        numerical_columns=["confidence", "text_length"],
        categorical_columns=["predicted_label"],
        embeddings=embeddings,
    )
    return (
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )


def run_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    drift_share: float = 0.5,
    min_rows: int = 30,
    seed: int = 0,
    model_outputs: bool = True,
) -> DriftResult:
    """Run the Evidently report on ``current`` against ``reference`` and decide the drift status.

    ``model_outputs=False`` leaves the predicted label and the confidence out of the verdict (they stay in the
    report): when the reference is the champion's training data, its rows were answered by an older model, and a
    new model answering differently is not drift in the traffic.
    """
    if len(reference) < min_rows or len(current) < min_rows:
        return DriftResult("unknown", None, n_reference=len(reference), n_current=len(current))
    with_embeddings = _has_embeddings(reference) and _has_embeddings(current)
    if not with_embeddings:  # (no copy when the frames hold just those columns, as load_drift_inputs builds them)
        reference = reference if tuple(reference.columns) == TABULAR_COLUMNS else reference[list(TABULAR_COLUMNS)]
        current = current if tuple(current.columns) == TABULAR_COLUMNS else current[list(TABULAR_COLUMNS)]
    report = build_report(with_embeddings=with_embeddings, drift_share=drift_share)
    cur, ref = datasets(reference, current)
    np.random.seed(seed)  # t-SNE and the domain classifier inside EmbeddingsDrift draw from the global state
    # One BLAS/OpenMP thread for the embedding part: on a small shared machine, t-SNE's spinning OpenMP threads
    # next to torch's made a 4 s report take 50 s; single-threaded it is steady.
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(limits=1) if with_embeddings else nullcontext()
    with warnings.catch_warnings(), limits:
        warnings.simplefilter("ignore")
        snapshot = report.run(cur, ref)
    columns = _column_results(snapshot.dict())
    counted = {k: c for k, c in columns.items() if model_outputs or k not in MODEL_OUTPUT_COLUMNS}
    failed = sum(1 for c in counted.values() if c["detected"])
    share = failed / len(counted) if counted else None
    status = "detected" if share is not None and share >= drift_share else "none"
    return DriftResult(
        status,
        share,
        columns,
        n_reference=len(reference),
        n_current=len(current),
        snapshot=dump_snapshot(snapshot),
    )


def dump_snapshot(snapshot: Any) -> str:
    """``Snapshot.dumps()``, the same JSON text, without pydantic's deep copy.

    ``Snapshot.dumps()`` is ``json.dumps(model.dict())``; pydantic v1's ``dict()`` walks every value of the widgets'
    plotly figures in Python (about 50,000 values here), which cost more than the JSON encoding itself. Models whose
    ``dict()`` is pydantic's plain one are handed to the (C) JSON encoder as their field dict, which it walks itself;
    any other model (Evidently overrides ``dict()`` on a few, or sets ``use_enum_values``) goes through its own
    ``dict()``. Anything unexpected falls back to ``Snapshot.dumps()``; a test checks that both texts are equal.
    """
    try:
        return json.dumps(snapshot.to_snapshot_model(), cls=_snapshot_encoder())
    except Exception:  # an Evidently change this shortcut does not know: the slow path is always right
        return str(snapshot.dumps())


@functools.cache
def _snapshot_encoder() -> type[json.JSONEncoder]:
    """Evidently's ``NumpyEncoder`` that also takes pydantic models (built on first use: Evidently loads lazily)."""
    from evidently._pydantic_compat import BaseModel
    from evidently.legacy.utils import NumpyEncoder

    plain: dict[type, bool] = {}

    def is_plain(cls: type) -> bool:
        known = plain.get(cls)
        if known is None:
            known = plain[cls] = (
                getattr(cls, "dict", None) is BaseModel.dict
                and getattr(cls, "_iter", None) is BaseModel._iter
                and getattr(getattr(cls, "_get_value", None), "__func__", None) is BaseModel._get_value.__func__
                and getattr(cls, "__exclude_fields__", None) is None
                and getattr(cls, "__include_fields__", None) is None
                and not getattr(getattr(cls, "__config__", None), "use_enum_values", False)
                and "__root__" not in getattr(cls, "__fields__", {"__root__": None})
            )
        return known

    class SnapshotEncoder(NumpyEncoder):
        def default(self, o: Any) -> Any:
            if isinstance(o, BaseModel):
                if is_plain(type(o)):
                    return o.__dict__  # what pydantic's dict() returns, before its deep copy
                data = o.dict()
                return data["__root__"] if "__root__" in o.__fields__ else data
            return super().default(o)

    return SnapshotEncoder


def _column_results(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-signal score, method, threshold and verdict from ``Snapshot.dict()`` (metrics and their tests)."""
    by_metric = {m["id"]: m for m in data["metrics"]}
    out: dict[str, dict[str, Any]] = {}
    for test in data["tests"]:
        metric = by_metric.get(test.get("metric_config", {}).get("metric_id"))
        if metric is None:
            continue
        config = metric.get("config", {})
        kind = config.get("type", "")
        if kind.endswith(":ValueDrift"):
            name = config["column"]
            out[name] = {
                "score": _float(metric.get("value")),
                "method": config.get("method"),
                "threshold": config.get("threshold"),
                "detected": str(test["status"]).endswith("FAIL"),
            }
        elif kind.endswith(":EmbeddingsDrift"):
            out[EMBEDDING_NAME] = {
                "score": _float(metric.get("value")),
                "method": "domain classifier ROC AUC",
                "threshold": EMBEDDING_THRESHOLD,
                "detected": str(test["status"]).endswith("FAIL"),
            }
    return out


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def compress_snapshot(snapshot: str) -> bytes:
    """gzip at level 4: half the time of level 6 for 6% more bytes (~29 kB a report). Any level reads back the same."""
    return gzip.compress(snapshot.encode("utf-8"), compresslevel=4)


def render_html(snapshot: bytes | str) -> str:
    """Evidently's standalone HTML report from a stored snapshot (gzip-compressed JSON or plain JSON)."""
    from evidently.core.report import Snapshot

    text = gzip.decompress(snapshot).decode("utf-8") if isinstance(snapshot, bytes) else snapshot
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(Snapshot.load_dict(json.loads(text)).get_html_str(as_iframe=False))
