"""The label-quality pass over one (tenant, task), as a job: names in, its own sessions, safe to run twice.

``_run`` reads as its stages, each reported through ``progress(fraction, message)`` and on the run's status row:

1. load the labeled predictions outside the evaluation holdout, their feedback, and the newest unlabeled
   predictions (``labeled_set``);
2. embeddings through the cache (``flywheel.domain.embeddings``), at the embedding window chosen from the labeled
   texts' lengths (``flywheel.domain.windows``; longer texts chunked and pooled), recorded in the summary, and of
   the long texts' segments (``flywheel.domain.segments``: lines, sentences of overlong lines);
3. out-of-sample probabilities (K-fold CV on the embeddings and on the segments, the task's other tenants' labels
   as extra training rows, mixed with the probabilities every logging model, ours or the customer's, logged where
   it never trained on the example, each source at its fitted weight; ``scoring``) and the consensus label of each
   prediction: CROWDLAB once enough predictions carry labels from two or more sources, the documented precedence
   rule before that (``annotators``);
4. cleanlab's label issues on the consensus labels (all go to review; training leaves out the share the evidence
   supports, ``flywheel.feedback.checks.exclusion_mask``), source reliability, ActiveLab scores for unlabeled
   predictions;
5. the holdout stage: the holdout's labels, loaded as a set of their own, scored by cross-validation within the
   holdout alone and the usable logged probabilities (``holdout``: never by a model that trained on them,
   never together with the labels above); flagged ones go first to review and weigh the gate's and SLAs' figures,
   none is ever filtered or relabeled. A holdout too small to score is skipped, with the reason in the summary;
6. one transaction replaces the (tenant, task)'s results (``pass_output``), records source stats, re-derives
   effective labels (never a holdout label's) and closes the run row.

Sessions are kept short and never nested, so progress updates never wait on a long transaction (SQLite).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.core.errors import NotFound
from flywheel.domain.effective import apply_rule
from flywheel.feedback.annotators import SourceStat, build_consensus, rate_sources
from flywheel.feedback.holdout import holdout_rows, holdout_summary, score_holdout, too_few_holdout
from flywheel.feedback.labeled_set import LabeledSet, embed_segments, embed_texts, load_labeled_set, load_pool
from flywheel.feedback.pass_output import ResultRow, labeled_rows, pass_summary, unlabeled_rows
from flywheel.feedback.scoring import LabelVerdict, active_learning_scores, label_verdict, out_of_sample_scores
from flywheel.models.label_quality import LabelQualityResult, LabelQualityRun, LabelSourceStat
from flywheel.models.records import Prediction, Task, Tenant

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

#: Predictions per ``apply_rule`` call when effective labels are re-derived.
RULE_CHUNK = 500


@dataclass(frozen=True)
class PassResult:
    run_id: int
    status: str
    n_labeled: int
    n_issues: int
    n_unlabeled: int
    summary: dict[str, Any]


@dataclass(frozen=True)
class PassOutput:
    """What a pass that scored labels stores: its result rows and one record per feedback source."""

    rows: list[ResultRow]
    sources: dict[str, SourceStat]

    @property
    def labeled_ids(self) -> list[int]:
        """The labels outside the holdout the pass scored (the holdout's are never relabeled)."""
        return [r.prediction_id for r in self.rows if r.kind == "labeled" and not r.holdout]


@dataclass(frozen=True)
class _RunProgress:
    """Reports progress on the run's status row, in a short session of its own, and to the caller's callback."""

    db: Database
    run_id: int
    callback: Progress | None

    def __call__(self, fraction: float, message: str) -> None:
        with self.db.session() as session:
            session.execute(
                update(LabelQualityRun)
                .where(LabelQualityRun.id == self.run_id)
                .values(progress=round(min(max(fraction, 0.0), 1.0), 4), message=message[:500])
            )
        if self.callback is not None:
            self.callback(fraction, message)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - start


def run_label_quality(
    db: Database,
    settings: Settings,
    *,
    tenant: str | int,
    task: str | int,
    encoder: Any | None = None,
    progress: Progress | None = None,
    trigger: str = "job",
) -> PassResult:
    """Run the whole label-quality pass for one (tenant, task); returns the run's outcome.

    ``tenant`` / ``task``: slug / name (or ids). Running it twice gives the same results (the latest pass
    replaces the previous one's rows in one transaction). A failure marks the run ``failed`` and re-raises.
    """
    tenant_id, task_id = _resolve_scope(db, tenant, task)
    run_id = _start_run(db, tenant_id, task_id, trigger)
    try:
        return _run(db, settings, tenant_id, task_id, encoder, _RunProgress(db, run_id, progress))
    except Exception as exc:
        log.exception("label-quality run %s failed", run_id)
        _fail_run(db, run_id, exc)
        raise


def _run(
    db: Database, settings: Settings, tenant_id: int, task_id: int, encoder: Any | None, report: _RunProgress
) -> PassResult:
    """From the labeled predictions to the stored verdicts, stage by stage (see the module docstring)."""
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        report(0.02, "loading labeled predictions")
        labeled = load_labeled_set(db, settings, tenant_id, task_id)
    too_few = _too_few(labeled, settings.label_quality_min_labeled)
    if too_few is not None:
        return _finish(db, report, labeled, None, {"message": too_few, "timings": timings})

    n = len(labeled.items)
    with _timed(timings, "embedding"):
        texts = [it.text for it in labeled.items]
        encoder, windows = _windowed(encoder if encoder is not None else _base_encoder(settings), texts)
        x = embed_texts(db, texts, encoder, lambda done: report(0.05 + 0.45 * done / n, f"embedded {done}/{n} texts"))
        segments = embed_segments(
            db, texts, encoder, lambda done, m: report(0.5 + 0.15 * done / m, f"embedded {done}/{m} segments")
        )
    with _timed(timings, "cross_validation"):
        pool = load_pool(db, settings, labeled, encoder)
        scores = out_of_sample_scores(labeled, x, pool, folds=settings.cv_folds, segments=segments)
    report(0.75, "cross-validated probabilities ready; building consensus")
    with _timed(timings, "consensus"):
        consensus = build_consensus(labeled.items, scores.probs, labeled.index, settings)
    with _timed(timings, "cleanlab"):
        verdict = label_verdict(labeled.items, consensus.label_ids(labeled.index, labeled.label_ids()), scores)
    sources = rate_sources(labeled.items, verdict.trusted_labels(labeled.labels), consensus.annotator_quality, settings)
    with _timed(timings, "active_learning"):
        active = active_learning_scores(labeled, scores.probs)

    with _timed(timings, "holdout"):
        report(0.85, "scoring the holdout's labels")
        held, held_summary = _holdout_stage(db, settings, labeled, encoder, verdict)
    report(0.9, "writing results")

    rows = labeled_rows(labeled, scores, consensus, verdict, sources, active)
    rows += unlabeled_rows(labeled.unlabeled, active)
    rows += held
    summary = pass_summary(
        labeled,
        scores,
        consensus,
        verdict,
        sources,
        rows,
        cv_folds=settings.cv_folds,
        embedding_dim=int(x.shape[1]),
        encoder_id=getattr(encoder, "id", None),
        text_windows=windows,
    )
    summary["holdout"] = held_summary
    return _finish(db, report, labeled, PassOutput(rows, sources), {**summary, "timings": timings})


def _holdout_stage(
    db: Database, settings: Settings, labeled: LabeledSet, encoder: Any, main: LabelVerdict
) -> tuple[list[ResultRow], dict[str, Any]]:
    """The holdout's labels of the same (tenant, task), scored on their own (``flywheel.feedback.holdout``) with
    the noise rate and trust the main pass (``main``) measured on the many more labels outside it: its result rows
    and its part of the summary (nothing scored, with the reason, when it is too small)."""
    holdout = load_labeled_set(db, settings, labeled.tenant_id, labeled.task_id, holdout=True)
    skipped = too_few_holdout(holdout, settings.label_quality_min_labeled)
    if skipped is not None:
        return [], holdout_summary(holdout, None, skipped)
    texts = [it.text for it in holdout.items]
    x = embed_texts(db, texts, encoder, lambda done: None)
    segments = embed_segments(db, texts, encoder, lambda done, total: None)
    noise_rate = float(main.issues.is_issue.mean())
    verdict = score_holdout(
        holdout, x, folds=settings.cv_folds, noise_rate=noise_rate, trust=main.trusted_share, segments=segments
    )
    return holdout_rows(holdout, verdict), holdout_summary(holdout, verdict, None)


def _too_few(labeled: LabeledSet, min_labeled: int) -> str | None:
    """Why the set is too small to check (fewer than ``min_labeled`` labels, or one class), or None."""
    n, classes = len(labeled.items), len(np.unique(labeled.label_ids()))
    if n < min_labeled or classes < 2:
        return f"{n} labeled predictions outside the holdout ({classes} classes): too few to check"
    return None


def _windowed(encoder: Any, texts: list[str]) -> tuple[Any, dict[str, Any] | None]:
    """The encoder at the embedding window chosen from ``texts`` (the same rule as training's), and what was
    chosen; an encoder that cannot be windowed (a test's fake) is used as it is, with None."""
    if not (hasattr(encoder, "windowed") and hasattr(encoder, "token_lengths")):
        return encoder, None
    from flywheel.domain.windows import text_windows

    windows = text_windows(texts, encoder.token_lengths, limit=encoder.limit)
    summary = {k: v for k, v in windows.to_dict().items() if k not in ("fine_tuning", "over_fine_tuning", "truncation")}
    return encoder.windowed(windows.embedding), summary


def _base_encoder(settings: Settings) -> Any:
    from flywheel.domain.encoder import load_encoder

    return load_encoder(settings.base_model or None)


def _resolve_scope(db: Database, tenant: str | int, task: str | int) -> tuple[int, int]:
    with db.session() as session:
        t = session.get(Tenant, tenant) if isinstance(tenant, int) else None
        if t is None:
            t = session.scalar(select(Tenant).where(Tenant.slug == str(tenant)))
        k = session.get(Task, task) if isinstance(task, int) else None
        if k is None:
            k = session.scalar(select(Task).where(Task.name == str(task)))
        if t is None:
            raise NotFound(f"tenant '{tenant}' does not exist")
        if k is None:
            raise NotFound(f"task '{task}' does not exist")
        return t.id, k.id


def _start_run(db: Database, tenant_id: int, task_id: int, trigger: str) -> int:
    with db.session() as session:
        run = LabelQualityRun(tenant_id=tenant_id, task_id=task_id, status="running", trigger=trigger, summary={})
        session.add(run)
        session.flush()
        return run.id


def _fail_run(db: Database, run_id: int, exc: Exception) -> None:
    with db.session() as session:
        session.execute(
            update(LabelQualityRun)
            .where(LabelQualityRun.id == run_id)
            .values(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=utcnow())
        )


def _finish(
    db: Database, report: _RunProgress, labeled: LabeledSet, output: PassOutput | None, summary: dict[str, Any]
) -> PassResult:
    """One transaction: store ``output`` (None: a pass that scored nothing, which leaves earlier results in place)
    and close the run row."""
    rows = [r for r in output.rows if not r.holdout] if output is not None else []  # the holdout's: summary only
    n_labeled = len(output.labeled_ids) if output is not None else 0
    n_issues = sum(1 for r in rows if r.is_issue)
    n_unlabeled = len(rows) - n_labeled
    with db.session() as session:
        if output is not None:
            _store(session, report.run_id, labeled, output)
        session.execute(
            update(LabelQualityRun)
            .where(LabelQualityRun.id == report.run_id)
            .values(
                status="succeeded",
                progress=1.0,
                message=summary.get("message", "done"),
                n_labeled=n_labeled,
                n_issues=n_issues,
                n_unlabeled=n_unlabeled,
                summary=summary,
                finished_at=utcnow(),
            )
        )
    if report.callback is not None:
        report.callback(1.0, "done")
    return PassResult(report.run_id, "succeeded", n_labeled, n_issues, n_unlabeled, summary)


def _store(session: Session, run_id: int, labeled: LabeledSet, output: PassOutput) -> None:
    """Replace the (tenant, task)'s results, record the source stats, re-derive the scored effective labels."""
    scope = {"run_id": run_id, "tenant_id": labeled.tenant_id, "task_id": labeled.task_id}
    session.execute(
        delete(LabelQualityResult).where(
            LabelQualityResult.tenant_id == labeled.tenant_id, LabelQualityResult.task_id == labeled.task_id
        )
    )
    if output.rows:
        session.execute(insert(LabelQualityResult), [{**scope, **asdict(r)} for r in output.rows])
    if output.sources:
        session.execute(insert(LabelSourceStat), [{**scope, **asdict(s)} for s in output.sources.values()])
    created = {it.prediction_id: it.created_at for it in labeled.items}
    scored = [(pid, created[pid]) for pid in output.labeled_ids]
    for start in range(0, len(scored), RULE_CHUNK):
        apply_rule(session, scored[start : start + RULE_CHUNK])


def label_quality_pass(
    db: Database,
    settings: Settings,
    *,
    tenant: str | None = None,
    task: str | None = None,
    progress: Progress | None = None,
    encoder: Any | None = None,
) -> list[int]:
    """The scheduled job: run the pass for every (tenant, task) with labeled predictions (or just the named ones).

    One scope failing is logged and does not stop the others. Returns the run ids.
    """
    with db.session() as session:
        stmt = (
            select(Tenant.slug, Task.name)
            .join(Prediction, Prediction.tenant_id == Tenant.id)
            .join(Task, Task.id == Prediction.task_id)
            .where(Prediction.effective_label.is_not(None))
            .distinct()
        )
        if tenant is not None:
            stmt = stmt.where(Tenant.slug == tenant)
        if task is not None:
            stmt = stmt.where(Task.name == task)
        scopes = sorted(session.execute(stmt).tuples())
    run_ids = []
    for slug, name in scopes:
        try:
            result = run_label_quality(
                db, settings, tenant=slug, task=name, progress=progress, encoder=encoder, trigger="schedule"
            )
            run_ids.append(result.run_id)
        except Exception:
            log.exception("label-quality pass failed for %s/%s", slug, name)
    return run_ids


def rules_backfill(db: Database) -> int:
    """The nightly back-fill of labeling rules: every task's current rules vote on all of its logged predictions
    (the votes of changed or removed rules go), one transaction per task, before the label-quality pass reads the
    votes. Returns the number of votes added."""
    from flywheel.domain.labeling_rules import backfill_rules, tasks_with_rules

    with db.session() as session:
        task_ids = tasks_with_rules(session)
    added = 0
    for task_id in task_ids:
        try:
            with db.session() as session:
                added += backfill_rules(session, task_id)
        except Exception:
            log.exception("labeling-rule back-fill failed for task %s", task_id)
    return added
