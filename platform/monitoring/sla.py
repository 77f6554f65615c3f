"""SLA agreements and their evaluation.

Evaluation reads a window with one SQL aggregation (no prediction rows leave the database):
``(label, effective_label, discarded, confidence bin of 0.01) -> count, sum(confidence)``. From it come

1. the confusion cells ``(label, effective_label) -> count`` of labeled predictions, from which scikit-learn
   computes the metric (``sample_weight`` = the cell counts) and the interval is derived (Wilson / bootstrap);
2. ``(labeled, correct, bin) -> count, mean confidence`` over all predictions: the coverage, the calibration error
   (ECE, 10 bins) and the label-free CBPE estimate (isotonic calibration on the labeled cells, applied to the
   unlabeled ones).

A prediction is labeled when it has an effective label and was not discarded. The holdout split does not apply to
SLAs: every labeled prediction in the window counts. Services here take the session and never commit.

Beside ``value`` (every label as given), ``value_clean`` weighs each label the latest label-quality pass flagged
(still current, no reviewer's decision yet) at its label weight, the probability that it is right; reviewed and
unflagged labels count in full. That holds for every labeled prediction in the window, holdout or not: the pass
scores each label out-of-sample (holdout labels by the holdout stage, never by a model that trained on them; the
others by cross-validation), so each weight means the same thing, and weighting the holdout's 15% alone would leave
most of the window's noise in the figure. The SLA's ``agreement`` (``raw`` by default, or ``clean``) says which of
the two the status, and so the alerts, read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Integer, and_, case, cast, func, select
from sqlalchemy.orm import Session

from flywheel.core.db import utcnow
from flywheel.domain.training_labels import flagged_weight, rule_only
from flywheel.models.label_quality import LabelQualityResult
from flywheel.models.records import Prediction, Task, Tenant
from flywheel.models.slas import Sla, SlaChange, SlaEvaluation
from flywheel.monitoring import stats

CBPE_MIN_LABELED = 50
TERMS = ("metric", "threshold", "window_days", "min_labeled", "warning_margin", "agreement")
#: Which value the verdict reads: every label as given, or flagged, unreviewed labels at their label weight.
AGREEMENTS = ("raw", "clean")


@dataclass(frozen=True)
class SlaTerms:
    metric: str
    threshold: float
    window_days: int = 7
    min_labeled: int = 200
    warning_margin: float = 0.02
    agreement: str = "raw"

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TERMS}


def validate_terms(terms: SlaTerms, labels: list[str]) -> list[dict[str, Any]]:
    """Problems with the terms as the contract's ``{"loc", "msg"}`` items (empty when valid)."""
    errors: list[dict[str, Any]] = []
    try:
        stats.validate_metric(terms.metric, labels)
    except ValueError as exc:
        errors.append({"loc": ["metric"], "msg": str(exc)})
    if not 0.0 <= terms.threshold <= 1.0:
        errors.append({"loc": ["threshold"], "msg": "must be within [0, 1]"})
    if not 1 <= terms.window_days <= 366:
        errors.append({"loc": ["window_days"], "msg": "must be within [1, 366]"})
    if terms.min_labeled < 1:
        errors.append({"loc": ["min_labeled"], "msg": "must be at least 1"})
    if not 0.0 <= terms.warning_margin <= 1.0:
        errors.append({"loc": ["warning_margin"], "msg": "must be within [0, 1]"})
    if terms.agreement not in AGREEMENTS:
        errors.append({"loc": ["agreement"], "msg": f"must be one of {', '.join(AGREEMENTS)}"})
    return errors


def put_sla(
    session: Session, tenant: Tenant, task: Task, terms: SlaTerms, *, changed_by: str | None = None
) -> tuple[Sla, bool]:
    """Create or change the SLA of ``tenant`` on ``task``; every change is recorded. Returns (sla, created)."""
    errors = validate_terms(terms, list(task.labels))
    if errors:
        from flywheel.core.errors import Unprocessable

        raise Unprocessable("the SLA terms are invalid", errors=errors)
    sla = session.scalar(select(Sla).where(Sla.tenant_id == tenant.id, Sla.task_id == task.id).with_for_update(of=Sla))
    now = utcnow()
    if sla is None:
        sla = Sla(tenant_id=tenant.id, task_id=task.id, version=1, created_at=now, updated_at=now, **terms.as_dict())
        session.add(sla)
        session.flush()
        session.add(SlaChange(sla_id=sla.id, version=1, before=None, after=terms.as_dict(), changed_by=changed_by))
        return sla, True
    before = {name: getattr(sla, name) for name in TERMS}
    if before == terms.as_dict():
        return sla, False
    for name, value in terms.as_dict().items():
        setattr(sla, name, value)
    sla.version += 1
    sla.updated_at = now
    session.add(
        SlaChange(sla_id=sla.id, version=sla.version, before=before, after=terms.as_dict(), changed_by=changed_by)
    )
    session.flush()
    return sla, False


@dataclass
class WindowStats:
    """What evaluation measured on one window (no status yet)."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n_labeled: int
    n_predictions: int
    coverage: float | None
    estimated_value: float | None
    estimated_accuracy: float | None
    calibration_error: float | None
    value_clean: float | None = None
    ci_low_clean: float | None = None
    ci_high_clean: float | None = None


def _bin_expression(session: Session) -> Any:
    scaled = Prediction.confidence * 100
    if session.get_bind().dialect.name == "sqlite":
        return cast(scaled, Integer)  # truncation == floor for confidences >= 0
    return cast(func.floor(scaled), Integer)


def measure_window(
    session: Session,
    *,
    tenant_id: int,
    task_id: int,
    metric: str,
    start: datetime,
    end: datetime,
    n_boot: int = 1000,
    seed: int = 0,
) -> WindowStats:
    """Measure ``metric`` on the window ``[start, end)`` of one tenant's task (one aggregate query): raw, clean
    (flagged labels at their label weight), coverage, calibration and the CBPE estimate."""
    tally = _tally(_window_groups(session, tenant_id=tenant_id, task_id=task_id, start=start, end=end))
    y_pred = [c[0] for c in tally.cells]
    y_true = [c[1] for c in tally.cells]
    measured = stats.compute_metric(
        metric, y_true, y_pred, sample_weight=list(tally.cells.values()), n_boot=n_boot, seed=seed
    )
    cleaned = stats.compute_metric(
        metric, y_true, y_pred, sample_weight=[tally.clean[c] for c in tally.cells], n_boot=n_boot, seed=seed
    )
    n_predictions, n_labeled, ece, estimated = _calibration(tally.calib)
    return WindowStats(
        value=measured.value,
        ci_low=measured.ci_low,
        ci_high=measured.ci_high,
        n_labeled=n_labeled,
        n_predictions=n_predictions,
        coverage=(n_labeled / n_predictions) if n_predictions else None,
        estimated_value=estimated if metric == "accuracy" else None,
        estimated_accuracy=estimated,
        calibration_error=ece,
        value_clean=cleaned.value,
        ci_low_clean=cleaned.ci_low,
        ci_high_clean=cleaned.ci_high,
    )


def _window_groups(session: Session, *, tenant_id: int, task_id: int, start: datetime, end: datetime) -> Sequence[Any]:
    """The window's predictions grouped by (logged label, measured label, discarded, confidence bin): count,
    confidence sum and clean-weight sum of each group."""
    in_window = and_(
        Prediction.tenant_id == tenant_id,
        Prediction.task_id == task_id,
        Prediction.created_at >= start,
        Prediction.created_at < end,
    )
    bin_ = _bin_expression(session)
    # A label only labeling rules gave is not a measurement: such a prediction counts as unlabeled.
    by_person = case((rule_only(), None), else_=Prediction.effective_label).label("measured_label")
    # The weight of each label in the clean value: its label weight where the pass flagged it, else 1.
    weight = case((flagged_weight(), LabelQualityResult.train_weight), else_=1.0)
    scored = and_(
        LabelQualityResult.prediction_id == Prediction.id,
        LabelQualityResult.tenant_id == tenant_id,
        LabelQualityResult.task_id == task_id,
    )
    return session.execute(
        select(
            Prediction.label,
            by_person,
            Prediction.label_discarded,
            bin_.label("bin"),
            func.count(),
            func.sum(Prediction.confidence),
            func.sum(weight),
        )
        .outerjoin(LabelQualityResult, scored)
        .where(in_window)
        .group_by(Prediction.label, by_person, Prediction.label_discarded, bin_)
    ).all()


@dataclass
class _Tally:
    """Confusion cells ``(logged, measured label)`` of labeled predictions, counted (``cells``) and weighed
    (``clean``), and ``(labeled, correct, bin)`` cells of all predictions: ``[count, confidence sum]``."""

    cells: dict[tuple[str, str], int]
    clean: dict[tuple[str, str], float]
    calib: dict[tuple[bool, bool, int], list[float]]


def _tally(groups: Sequence[Any]) -> _Tally:
    tally = _Tally({}, {}, {})
    for label, effective, discarded, bin_no, count, conf_sum, weight_sum in groups:
        is_labeled = effective is not None and not discarded
        if is_labeled:
            tally.cells[(label, effective)] = tally.cells.get((label, effective), 0) + int(count)
            tally.clean[(label, effective)] = tally.clean.get((label, effective), 0.0) + float(weight_sum or 0.0)
        acc = tally.calib.setdefault((is_labeled, is_labeled and label == effective, int(bin_no)), [0.0, 0.0])
        acc[0] += float(count)
        acc[1] += float(conf_sum or 0.0)
    return tally


def _calibration(calib: dict[tuple[bool, bool, int], list[float]]) -> tuple[int, int, float | None, float | None]:
    """From the ``(labeled, correct, bin)`` cells: predictions, labeled ones, the calibration error of the labeled
    ones, and the CBPE accuracy estimate (calibrated on the labeled cells, estimating the unlabeled ones, or the
    whole window when nothing is unlabeled)."""
    arr = np.array([(k[0], k[1], v[0], v[1]) for k, v in calib.items()], dtype=np.float64).reshape(-1, 4)
    lab, corr, count, conf_total = arr[:, 0] == 1, arr[:, 1], arr[:, 2], arr[:, 3]
    mean_conf = np.divide(conf_total, count, out=np.zeros_like(conf_total), where=count > 0)
    n_labeled = int(count[lab].sum())
    ece = stats.expected_calibration_error(mean_conf[lab], corr[lab], sample_weight=count[lab])
    target = ~lab if count[~lab].sum() > 0 else np.ones_like(lab)
    estimated = stats.cbpe_accuracy(
        mean_conf[lab],
        corr[lab],
        mean_conf[target],
        labeled_weight=count[lab],
        unlabeled_weight=count[target],
        min_labeled=CBPE_MIN_LABELED,
    )
    return int(count.sum()), n_labeled, ece, estimated


def window_bounds(sla: Sla, now: datetime) -> tuple[datetime, datetime]:
    return now - timedelta(days=sla.window_days), now


def evaluate(
    session: Session,
    sla: Sla,
    *,
    now: datetime | None = None,
    drift_status: str = "unknown",
    drift_report_id: int | None = None,
    n_boot: int = 1000,
) -> SlaEvaluation:
    """Evaluate ``sla`` over its window ending ``now`` and store the evaluation (the caller commits)."""
    now = now or utcnow()
    start, end = window_bounds(sla, now)
    measured = measure_window(
        session,
        tenant_id=sla.tenant_id,
        task_id=sla.task_id,
        metric=sla.metric,
        start=start,
        end=end,
        n_boot=n_boot,
    )
    clean = sla.agreement == "clean"
    status = stats.sla_status(
        value=measured.value_clean if clean else measured.value,
        ci_low=measured.ci_low_clean if clean else measured.ci_low,
        ci_high=measured.ci_high_clean if clean else measured.ci_high,
        n_labeled=measured.n_labeled,
        threshold=sla.threshold,
        warning_margin=sla.warning_margin,
        min_labeled=sla.min_labeled,
    )
    row = SlaEvaluation(
        sla_id=sla.id,
        tenant_id=sla.tenant_id,
        task_id=sla.task_id,
        sla_version=sla.version,
        metric=sla.metric,
        threshold=sla.threshold,
        window_days=sla.window_days,
        window_start=start,
        window_end=end,
        value=measured.value,
        ci_low=measured.ci_low,
        ci_high=measured.ci_high,
        n_labeled=measured.n_labeled,
        n_predictions=measured.n_predictions,
        coverage=measured.coverage,
        estimated_value=measured.estimated_value,
        estimated_accuracy=measured.estimated_accuracy,
        calibration_error=measured.calibration_error,
        value_clean=measured.value_clean,
        ci_low_clean=measured.ci_low_clean,
        ci_high_clean=measured.ci_high_clean,
        agreement=sla.agreement,
        status=status,
        drift_status=drift_status,
        drift_report_id=drift_report_id,
        evaluated_at=now,
    )
    session.add(row)
    session.flush()
    return row


def latest_evaluations(session: Session, sla_ids: list[int]) -> dict[int, SlaEvaluation]:
    """The newest evaluation of each SLA (one query)."""
    if not sla_ids:
        return {}
    newest = (
        select(SlaEvaluation.sla_id, func.max(SlaEvaluation.id).label("id"))
        .where(SlaEvaluation.sla_id.in_(sla_ids))
        .group_by(SlaEvaluation.sla_id)
        .subquery()
    )
    rows = session.scalars(select(SlaEvaluation).join(newest, SlaEvaluation.id == newest.c.id))
    return {row.sla_id: row for row in rows}
