"""What a run prints: the day-by-day table (``results.md``) and the summary of the figures the README reports."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.experiment import DayResult, SimResults
    from sim.replay import DayRow


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _count(x: int | None) -> str:
    return "–" if x is None else str(x)


def results_table(results: SimResults) -> str:
    """One markdown row a day: accuracies by arm, the label-quality figures, drift, SLA status, promotions, and
    with a review budget the reviews and the wrong labels they found."""
    lines = [
        "| day | accuracy cleaned | uncleaned | true labels | flagged | issue precision | issue recall "
        "| left out of training | its precision | its recall | drift flagged | SLA status by tenant "
        "| promoted (cleaned) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    review = results.config.review_budget > 0
    if review:
        lines[0] += " reviews (cleaned / uncleaned) | wrong labels found (cleaned / uncleaned) |"
        lines[1] += " --- | --- |"
    for d in results.days:
        lines.append(_table_row(d) + (_review_cells(d) if review else ""))
    return "\n".join(lines) + "\n"


def _table_row(d: DayResult) -> str:
    issues, monitoring = d.main_row.stored.issues, d.main_row.monitoring
    status = ", ".join(f"{t}: {s}" for t, s in sorted(monitoring.sla_status.items()))
    promoted = "yes" if "cleaned" in d.rows and d.rows["cleaned"].promoted else ""
    return (
        f"| {d.day} | {_pct(d.accuracy.get('cleaned'))} | {_pct(d.accuracy.get('uncleaned'))} "
        f"| {_pct(d.accuracy.get('true_labels'))} | {_count(issues.n_flagged)} | {_pct(issues.label_issue_precision)} "
        f"| {_pct(issues.label_issue_recall)} | {_count(issues.n_excluded)} | {_pct(issues.excluded_precision)} "
        f"| {_pct(issues.excluded_recall)} | {'yes' if monitoring.drift_flagged else 'no'} | {status} "
        f"| {promoted} |"
    )


def _review_cells(d: DayResult) -> str:
    def cell(arm: str, hits: bool) -> str:
        r = d.reviews.get(arm)
        return _count(None if r is None else r.review_hits if hits else r.reviews)

    reviews = f"{cell('cleaned', False)} / {cell('uncleaned', False)}"
    hits = f"{cell('cleaned', True)} / {cell('uncleaned', True)}"
    return f" {reviews} | {hits} |"


def summarize(results: SimResults) -> dict[str, Any]:
    """The figures the README reports: last-day accuracies and gaps, drift day, alerts against measured values,
    and with a review budget each noisy arm's reviews and hit rate."""
    last = results.days[-1]
    flagged_days = [d.day for d in results.days if d.main_row.monitoring.drift_flagged]
    cleaned, uncleaned, true = (last.accuracy.get(arm) for arm in ("cleaned", "uncleaned", "true_labels"))
    out: dict[str, Any] = {
        "accuracy_cleaned": cleaned,
        "accuracy_uncleaned": uncleaned,
        "accuracy_true_labels": true,
        "first_drift_day": flagged_days[0] if flagged_days else None,
        "breach_alerts_while_above_threshold": breach_alerts_above_threshold(results),
    }
    if cleaned is not None and true is not None:
        out["gap_to_true_points"] = 100 * (true - cleaned)
    if cleaned is not None and uncleaned is not None:
        out["gain_over_uncleaned_points"] = 100 * (cleaned - uncleaned)
    out["gate_decisions"] = {arm: gate_decisions(rows) for arm, rows in results.arms.items()}
    if results.config.review_budget > 0:
        for arm in ("cleaned", "uncleaned"):
            rows = results.arms.get(arm)
            if rows:
                review = rows[-1].stored.review
                n, hits = review.reviews_total, review.review_hits_total
                out[f"reviews_{arm}"] = n
                out[f"review_hits_{arm}"] = hits
                out[f"review_hit_rate_{arm}"] = hits / n if n else None
    return out


def breach_alerts_above_threshold(results: SimResults) -> dict[str | None, int]:
    """By tenant: SLA alerts into ``breached`` raised on a day the tenant's measured value met the threshold."""
    false_alerts: Counter[str | None] = Counter()
    for d in results.days:
        sla_value = d.main_row.monitoring.sla_value
        for alert in d.main_row.monitoring.alerts:
            value = sla_value.get(alert.tenant) if alert.tenant is not None else None
            above = value is not None and value >= results.config.sla_threshold
            if alert.kind != "drift" and above and alert.to == "breached":
                false_alerts[alert.tenant] += 1
    return dict(false_alerts)


def gate_decisions(rows: list[DayRow]) -> dict[str, int]:
    """One arm's nightly gate decisions on the shared model, judged by the test split: how many were made, and how
    many promoted a worse model or refused a better one (``sim.measures.gate_verdict``)."""
    verdicts = Counter(r.gate_verdict for r in rows if r.gate_verdict is not None)
    return {
        "decisions": sum(verdicts.values()),
        "promoted_worse": verdicts["promoted_worse"],
        "refused_better": verdicts["refused_better"],
        "wrong": verdicts["promoted_worse"] + verdicts["refused_better"],
    }
