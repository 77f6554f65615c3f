"""The label-quality pass over one (tenant, task), as a job: names in, its own sessions, safe to run twice.

Stages (each reported through ``progress(fraction, message)`` and on the run's status row):

1. load the labeled predictions outside the evaluation holdout (``bucket >= holdout_percent``: the holdout is never
   scored, filtered or relabeled here), their feedback, and the newest unlabeled predictions;
2. embeddings through the cache (``flywheel.domain.embeddings``);
3. out-of-sample probabilities (K-fold CV on the embeddings, averaged with logged probabilities of our own served
   models where those never trained on the example) and the effective-label consensus: CROWDLAB once enough
   predictions carry labels from two or more sources, the documented precedence rule before that;
4. cleanlab's label issues on the consensus labels (all go to review; training leaves out the share the evidence
   supports, ``flywheel.feedback.checks.exclusion_mask``), source reliability, ActiveLab scores for unlabeled
   predictions;
5. one transaction replaces the (tenant, task)'s results, records source stats, re-derives effective labels and
   closes the run row.

Sessions are kept short and never nested, so progress updates never wait on a long transaction (SQLite).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select, update

from flywheel.core.config import Settings
from flywheel.core.db import Database, utcnow
from flywheel.core.errors import NotFound
from flywheel.domain.effective import SOURCE_PRIORITY, Vote, resolve
from flywheel.domain.holdout import outside_holdout
from flywheel.models.label_quality import LabelQualityResult, LabelQualityRun, LabelSourceStat
from flywheel.models.records import Feedback, Prediction, Task, Tenant

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

#: Rungs whose logged probabilities may serve as a second out-of-sample source (zero-shot ones are too weak).
PRODUCTION_RUNGS = ("few_shot", "fine_tuned")
EMBED_STEP = 1024


@dataclass
class _Item:
    pid: int
    text: str
    label: str
    votes: list[Vote]
    probabilities: dict[str, float] | None
    model_version: str | None
    created_at: Any


@dataclass
class _Data:
    tenant_id: int
    task_id: int
    labels: list[str]
    items: list[_Item]
    unlabeled: list[tuple[int, dict[str, float] | None, str, float]] = field(default_factory=list)
    production_ok: set[str] = field(default_factory=set)
    model_created: dict[str, Any] = field(default_factory=dict)


def _annotator(v: Vote) -> str:
    return f"{v.source}:{v.source_id or '-'}"


def _set_progress(db: Database, run_id: int, fraction: float, message: str, progress: Progress | None) -> None:
    with db.session() as session:
        session.execute(
            update(LabelQualityRun)
            .where(LabelQualityRun.id == run_id)
            .values(progress=round(min(max(fraction, 0.0), 1.0), 4), message=message[:500])
        )
    if progress is not None:
        progress(fraction, message)


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


def _load(db: Database, settings: Settings, tenant_id: int, task_id: int) -> _Data:
    from flywheel.models.training import ModelVersion

    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        data = _Data(tenant_id=tenant_id, task_id=task_id, labels=list(task.labels), items=[])
        valid = set(task.labels)
        rows = session.execute(
            select(
                Prediction.id,
                Prediction.text,
                Prediction.effective_label,
                Prediction.probabilities,
                Prediction.model_version,
                Prediction.created_at,
            )
            .where(
                Prediction.tenant_id == tenant_id,
                Prediction.task_id == task_id,
                Prediction.effective_label.is_not(None),
                Prediction.label_discarded.is_(False),
                outside_holdout(settings.holdout_percent),
            )
            .order_by(Prediction.id)
        ).all()
        items = {
            pid: _Item(pid, text, label, [], probs, mv, created)
            for pid, text, label, probs, mv, created in rows
            if label in valid
        }
        ids = list(items)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            fb = session.execute(
                select(Feedback.prediction_id, Feedback.label, Feedback.source, Feedback.source_id, Feedback.decision)
                .where(Feedback.prediction_id.in_(chunk))
                .order_by(Feedback.prediction_id, Feedback.created_at, Feedback.id)
            )
            for n, (pid, label, source, source_id, decision) in enumerate(fb):
                items[pid].votes.append(Vote(label, source, source_id, decision, n))
        data.items = list(items.values())
        data.unlabeled = [
            (pid, probs, label, conf)
            for pid, probs, label, conf in session.execute(
                select(Prediction.id, Prediction.probabilities, Prediction.label, Prediction.confidence)
                .where(
                    Prediction.tenant_id == tenant_id,
                    Prediction.task_id == task_id,
                    Prediction.feedback_count == 0,
                    Prediction.effective_label.is_(None),
                    Prediction.label_discarded.is_(False),
                )
                .order_by(Prediction.created_at.desc(), Prediction.id.desc())
                .limit(settings.review_unlabeled_cap)
            )
        ]
        versions = {it.model_version for it in data.items if it.model_version and it.probabilities}
        if versions:
            for version, rung, created in session.execute(
                select(ModelVersion.version, ModelVersion.rung, ModelVersion.created_at).where(
                    ModelVersion.version.in_(sorted(versions))
                )
            ):
                if rung in PRODUCTION_RUNGS:
                    data.production_ok.add(version)
                    data.model_created[version] = created
    return data


def _pooled_rows(
    db: Database, settings: Settings, tenant_id: int, task_id: int, index: dict[str, int], encoder: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(M, D)`` and label ids ``(M,)`` of the task's other tenants' labeled predictions, holdouts
    excluded (they are never used to judge labels)."""
    from flywheel.domain.embeddings import get_embeddings

    with db.session() as session:
        rows = session.execute(
            select(Prediction.text, Prediction.effective_label).where(
                Prediction.task_id == task_id,
                Prediction.tenant_id != tenant_id,
                Prediction.effective_label.is_not(None),
                Prediction.label_discarded.is_(False),
                outside_holdout(settings.holdout_percent),
            )
        ).all()
        pool = [(text, label) for text, label in rows if label is not None and label in index]
        if not pool:
            return np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
        chunks = [
            get_embeddings(session, [t for t, _ in pool[s : s + EMBED_STEP]], encoder=encoder)
            for s in range(0, len(pool), EMBED_STEP)
        ]
    return np.concatenate(chunks), np.array([index[label] for _, label in pool], dtype=np.int64)


def _probs_matrix(rows: list[dict[str, float] | None], labels: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}
    out = np.zeros((len(rows), len(labels)))
    for r, probs in enumerate(rows):
        for name, p in (probs or {}).items():
            if name in index:
                out[r, index[name]] = float(p)
    return out


def _latest_by_annotator(votes: list[Vote]) -> dict[str, Vote]:
    out: dict[str, Vote] = {}
    for v in votes:  # in time order: the last one wins
        if v.source != "reviewer" and v.label is not None:
            out[_annotator(v)] = v
    return out


@dataclass(frozen=True)
class PassResult:
    run_id: int
    status: str
    n_labeled: int
    n_issues: int
    n_unlabeled: int
    summary: dict[str, Any]


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
    with db.session() as session:
        run = LabelQualityRun(tenant_id=tenant_id, task_id=task_id, status="running", trigger=trigger, summary={})
        session.add(run)
        session.flush()
        run_id = run.id
    try:
        return _run(db, settings, run_id, tenant_id, task_id, encoder, progress)
    except Exception as exc:
        log.exception("label-quality run %s failed", run_id)
        with db.session() as session:
            session.execute(
                update(LabelQualityRun)
                .where(LabelQualityRun.id == run_id)
                .values(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=utcnow())
            )
        raise


def _run(
    db: Database,
    settings: Settings,
    run_id: int,
    tenant_id: int,
    task_id: int,
    encoder: Any | None,
    progress: Progress | None,
) -> PassResult:
    from flywheel.domain.embeddings import get_embeddings
    from flywheel.feedback import cleanlab_adapter
    from flywheel.feedback.checks import exclusion_mask, label_weights, trusted_share
    from flywheel.feedback.oos import OOSConfig, OOSProbabilities, fit_predict_unlabeled, out_of_sample_probabilities

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _set_progress(db, run_id, 0.02, "loading labeled predictions", progress)
    data = _load(db, settings, tenant_id, task_id)
    timings["load"] = time.perf_counter() - t0
    labels = data.labels
    k = len(labels)
    index = {name: i for i, name in enumerate(labels)}
    items = data.items
    y = np.array([index[it.label] for it in items], dtype=np.int64)
    n = len(items)
    if n < settings.label_quality_min_labeled or len(np.unique(y)) < 2:
        msg = f"{n} labeled predictions outside the holdout ({len(np.unique(y))} classes): too few to check"
        return _finish(db, run_id, data, None, {"message": msg, "timings": timings}, progress)

    # 2. embeddings, through the cache, in steps so that progress is visible
    t = time.perf_counter()
    if encoder is None:
        from flywheel.domain.encoder import load_encoder

        encoder = load_encoder(settings.base_model or None)
    texts = [it.text for it in items]
    chunks = []
    for start in range(0, n, EMBED_STEP):
        with db.session() as session:
            chunks.append(get_embeddings(session, texts[start : start + EMBED_STEP], encoder=encoder))
        done = min(start + EMBED_STEP, n)
        _set_progress(db, run_id, 0.05 + 0.55 * done / n, f"embedded {done}/{n} texts", progress)
    x = np.concatenate(chunks)
    timings["embedding"] = time.perf_counter() - t

    # 3. out-of-sample probabilities: CV, plus our served models' logged probabilities where out-of-sample
    t = time.perf_counter()
    prod = _probs_matrix([it.probabilities for it in items], labels)
    usable = np.array(
        [
            bool(it.model_version in data.production_ok and it.created_at >= data.model_created[it.model_version])
            for it in items
        ]
    )
    # The task's other tenants' labels (outside their holdouts) join the cross-validation as extra training rows:
    # the shared model learns from all of them anyway, and one tenant's few labels per class make a weak
    # out-of-sample model that flags far too many good labels (measured in the simulation: half of a tenant's
    # ~5 labels per class flagged, at 19% true noise). Only this tenant's rows are scored and stored.
    pool_x, pool_y = _pooled_rows(db, settings, tenant_id, task_id, index, encoder)
    n_pool = len(pool_y)
    oos_config = OOSConfig(folds=settings.cv_folds)
    oos = out_of_sample_probabilities(
        np.concatenate([x, pool_x]) if n_pool else x,
        np.concatenate([y, pool_y]) if n_pool else y,
        k,
        production_probs=np.concatenate([prod, np.zeros((n_pool, k))]) if n_pool else prod,
        production_usable=np.concatenate([usable, np.zeros(n_pool, dtype=bool)]) if n_pool else usable,
        config=oos_config,
    )
    pooled_probs = oos.probs
    oos = OOSProbabilities(probs=oos.probs[:n], sources=oos.sources[:n], folds=oos.folds, timings=oos.timings)
    timings["cross_validation"] = time.perf_counter() - t
    _set_progress(db, run_id, 0.75, "cross-validated probabilities ready; building consensus", progress)

    # 3b. consensus: CROWDLAB once enough overlap, the precedence rule otherwise
    t = time.perf_counter()
    consensus = _consensus(items, oos.probs, index, settings)
    given = np.array([index[c.label] if c.label in index else y[i] for i, c in enumerate(consensus.rows)])
    timings["consensus"] = time.perf_counter() - t

    # 4. label issues on the consensus labels
    t = time.perf_counter()
    pooled_given = np.concatenate([given, pool_y]) if n_pool else given
    pooled = cleanlab_adapter.find_label_issues(labels=pooled_given, pred_probs=pooled_probs)
    issues = cleanlab_adapter.LabelIssues(pooled.is_issue[:n], pooled.quality[:n], pooled.suggested[:n], pooled.method)
    # Every flagged label goes to review; training leaves out only the share the evidence supports (few labels per
    # class: a weak out-of-sample model, whose flags include many hard but correct labels; see exclusion_mask).
    share = trusted_share(pooled_given)
    drop = exclusion_mask(pooled, pooled_given)[:n]
    # The labels kept train at the probability that they are right (the noise rate: cleanlab's count of issues).
    weights = label_weights(pooled_probs, pooled_given, float(pooled.is_issue.mean()), trust=share)[:n]
    timings["cleanlab"] = time.perf_counter() - t
    reviewed = np.array([any(v.source == "reviewer" for v in it.votes) for it in items])
    is_issue = issues.is_issue & ~reviewed  # a reviewer's decision is final
    drop &= is_issue
    weights[reviewed] = 1.0

    sources = _source_reliability(items, given, issues.suggested, is_issue, labels, consensus, settings)
    excluded_sources = {key for key, s in sources.items() if s["excluded"]}

    # ActiveLab for the unlabeled queue: labeled stats from our OOS probabilities, unlabeled from logged ones
    t = time.perf_counter()
    active = _active_scores(data, items, oos.probs, index, x, y, k, oos_config, fit_predict_unlabeled)
    timings["active_learning"] = time.perf_counter() - t
    _set_progress(db, run_id, 0.9, "writing results", progress)

    results = []
    for i, it in enumerate(items):
        row = consensus.rows[i]
        non_reviewer = _latest_by_annotator(it.votes)
        only_excluded = bool(non_reviewer) and not reviewed[i] and all(a in excluded_sources for a in non_reviewer)
        kept = {a: v for a, v in non_reviewer.items() if a not in excluded_sources}
        consensus_label: str | None = row.label
        method = row.method
        if excluded_sources and kept and len(kept) < len(non_reviewer) and method == "rule":
            # down-weight: the unreliable source's votes are dropped where others labeled the example too
            consensus_label = resolve(list(kept.values())).label
            method = "rule-excluding"
        results.append(
            {
                "run_id": run_id,
                "tenant_id": tenant_id,
                "task_id": task_id,
                "prediction_id": it.pid,
                "kind": "labeled",
                "given_label": labels[int(given[i])],
                "quality": float(issues.quality[i]),
                "is_issue": bool(is_issue[i]),
                "suggested_label": labels[int(issues.suggested[i])],
                "oos_source": str(oos.sources[i]),
                "consensus_label": consensus_label if not reviewed[i] else None,
                "consensus_quality": row.quality,
                "consensus_method": method,
                "consensus_votes": len(it.votes),
                "active_score": None if active is None else float(active[0][i]),
                "exclude_reason": "label_issue" if drop[i] else ("excluded_source" if only_excluded else None),
                "train_weight": round(float(weights[i]), 6),
            }
        )
    if active is not None:
        for (pid, _probs, _label, _conf), score in zip(data.unlabeled, active[1], strict=True):
            results.append(
                {
                    "run_id": run_id,
                    "tenant_id": tenant_id,
                    "task_id": task_id,
                    "prediction_id": pid,
                    "kind": "unlabeled",
                    "given_label": None,
                    "quality": None,
                    "is_issue": False,
                    "suggested_label": None,
                    "oos_source": None,
                    "consensus_label": None,
                    "consensus_quality": None,
                    "consensus_method": None,
                    "consensus_votes": 0,
                    "active_score": float(score),
                    "exclude_reason": None,
                    "train_weight": None,
                }
            )
    source_counts: dict[str, int] = defaultdict(int)
    for s in oos.sources:
        source_counts[str(s)] += 1
    summary = {
        "n_labeled": n,
        "n_issues": int(is_issue.sum()),
        "issue_rate": float(is_issue.mean()),
        "n_excluded_issues": int(drop.sum()),
        "mean_train_weight": round(float(weights[~drop].mean()), 4) if (~drop).any() else None,
        "labels_per_class": round(len(pooled_given) / len(np.unique(pooled_given)), 2),
        "excluded_share_of_issues": round(share, 4),
        "n_scored_with_pool": len(pooled_given),
        "n_classes_seen": len(np.unique(y)),
        "n_unlabeled_scored": len(data.unlabeled),
        "cleanlab_method": issues.method,
        "oos_sources": dict(source_counts),
        "cv_folds": settings.cv_folds,
        "consensus": consensus.summary,
        "excluded_sources": sorted(excluded_sources),
        "n_excluded_by_source": sum(1 for r in results if r["exclude_reason"] == "excluded_source"),
        "embedding_dim": int(x.shape[1]),
        "encoder": getattr(encoder, "id", None),
    }
    return _finish(db, run_id, data, (results, sources), {**summary, "timings": timings}, progress)


@dataclass
class _ConsensusRow:
    label: str
    quality: float | None
    method: str


@dataclass
class _Consensus:
    rows: list[_ConsensusRow]
    annotator_quality: dict[str, float]
    summary: dict[str, Any]


def _consensus(items: list[_Item], probs: np.ndarray, index: dict[str, int], settings: Settings) -> _Consensus:
    """CROWDLAB over non-reviewer labels once ``crowdlab_min_overlap`` predictions have two or more annotators.

    Before that (and for predictions with a reviewer decision, or a single annotator), the precedence rule of
    ``flywheel.domain.effective`` stands, with consensus quality = the share of annotators agreeing with it.
    """
    from flywheel.feedback import cleanlab_adapter

    per_item = [_latest_by_annotator(it.votes) for it in items]
    rows = []
    for it, votes in zip(items, per_item, strict=True):
        agree = [v.label == it.label for v in votes.values()]
        rows.append(_ConsensusRow(it.label, float(np.mean(agree)) if agree else None, "rule"))
    overlap = sum(1 for v in per_item if len(v) >= 2)
    annotators = sorted({a for v in per_item for a in v})
    summary: dict[str, Any] = {
        "method": "rule",
        "overlap": overlap,
        "min_overlap": settings.crowdlab_min_overlap,
        "annotators": len(annotators),
    }
    quality: dict[str, float] = {}
    if overlap < settings.crowdlab_min_overlap or len(annotators) < 2:
        return _Consensus(rows, quality, summary)
    members = [i for i, v in enumerate(per_item) if v]
    col = {a: j for j, a in enumerate(annotators)}
    multi = np.full((len(members), len(annotators)), np.nan)
    for r, i in enumerate(members):
        for a, v in per_item[i].items():
            if v.label in index:
                multi[r, col[a]] = index[v.label]
    keep_cols = ~np.isnan(multi).all(axis=0)
    multi = multi[:, keep_cols]
    kept_annotators = [a for a, keep in zip(annotators, keep_cols, strict=True) if keep]
    try:
        out = cleanlab_adapter.multiannotator_consensus(labels_multiannotator=multi, pred_probs=probs[members])
    except ValueError as exc:  # e.g. no row with a label left: keep the rule
        summary["crowdlab_error"] = str(exc)[:300]
        return _Consensus(rows, quality, summary)
    names = {i: name for name, i in index.items()}
    for r, i in enumerate(members):
        has_reviewer = any(v.source == "reviewer" for v in items[i].votes)
        if len(per_item[i]) >= 2 and not has_reviewer:
            rows[i] = _ConsensusRow(names[int(out.labels[r])], float(out.quality[r]), "crowdlab")
        else:
            rows[i] = _ConsensusRow(rows[i].label, float(out.quality[r]), rows[i].method)
    quality = {a: float(q) for a, q in zip(kept_annotators, out.annotator_quality, strict=True)}
    summary["method"] = "crowdlab"
    return _Consensus(rows, quality, summary)


def _source_reliability(
    items: list[_Item],
    given: np.ndarray,
    suggested: np.ndarray,
    is_issue: np.ndarray,
    labels: list[str],
    consensus: _Consensus,
    settings: Settings,
) -> dict[str, dict[str, Any]]:
    """Per annotator (``source:source_id``): how often its label disagrees with the label the pass trusts
    (the suggested label where the consensus label is an issue, the consensus label otherwise)."""
    stats: dict[str, dict[str, Any]] = {}
    for i, it in enumerate(items):
        trusted = labels[int(suggested[i])] if is_issue[i] else labels[int(given[i])]
        for a, v in _latest_by_annotator(it.votes).items():
            s = stats.setdefault(a, {"source": v.source, "source_id": v.source_id or "", "n_labels": 0, "n_issues": 0})
            s["n_labels"] += 1
            s["n_issues"] += int(v.label != trusted)
    for a, s in stats.items():
        s["issue_rate"] = s["n_issues"] / s["n_labels"]
        s["annotator_quality"] = consensus.annotator_quality.get(a)
        s["excluded"] = bool(
            s["n_labels"] >= settings.source_min_labels
            and s["issue_rate"] > settings.source_exclude_issue_rate
            and SOURCE_PRIORITY.get(s["source"], 0) < SOURCE_PRIORITY["reviewer"]
        )
    return stats


def _active_scores(
    data: _Data,
    items: list[_Item],
    probs: np.ndarray,
    index: dict[str, int],
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    oos_config: Any,
    fit_predict_unlabeled: Callable[..., np.ndarray],
) -> tuple[np.ndarray, np.ndarray] | None:
    """ActiveLab scores (lower = more worth labeling) for the labeled and the unlabeled predictions.

    Unlabeled predictions use their logged probabilities (the production model's second opinion); where none was
    logged, the one-hot of the logged label softened by its confidence.
    """
    from flywheel.feedback import cleanlab_adapter

    names = list(index)
    per_item = [_latest_by_annotator(it.votes) for it in items]
    annotators = sorted({a for v in per_item for a in v}) or ["given"]
    col = {a: j for j, a in enumerate(annotators)}
    multi = np.full((len(items), len(annotators)), np.nan)
    for r, (it, votes) in enumerate(zip(items, per_item, strict=True)):
        if not votes:
            multi[r, 0] = index[it.label]
        for a, v in votes.items():
            if v.label in index:
                multi[r, col[a]] = index[v.label]
        if np.isnan(multi[r]).all():
            multi[r, 0] = index[it.label]
    multi = multi[:, ~np.isnan(multi).all(axis=0)]
    unl = np.zeros((len(data.unlabeled), k))
    for r, (_pid, logged, label, conf) in enumerate(data.unlabeled):
        row = _probs_matrix([logged], names)[0]
        if row.sum() <= 0:
            row[:] = (1 - conf) / max(k - 1, 1)
            row[index.get(label, 0)] = conf
        unl[r] = row / row.sum()
    unl = np.clip(unl, 1e-6, None)
    unl /= unl.sum(axis=1, keepdims=True)
    try:
        return cleanlab_adapter.active_learning_scores(
            labels_multiannotator=multi, pred_probs=probs, pred_probs_unlabeled=unl
        )
    except ValueError as exc:
        log.warning("ActiveLab failed (%s); the uncertain queue falls back to margins", exc)
        return None


def _finish(
    db: Database,
    run_id: int,
    data: _Data,
    output: tuple[list[dict[str, Any]], dict[str, dict[str, Any]]] | None,
    summary: dict[str, Any],
    progress: Progress | None,
) -> PassResult:
    from flywheel.domain.effective import apply_rule

    n_labeled = n_issues = n_unlabeled = 0
    with db.session() as session:
        if output is not None:
            results, sources = output
            session.execute(
                delete(LabelQualityResult).where(
                    LabelQualityResult.tenant_id == data.tenant_id, LabelQualityResult.task_id == data.task_id
                )
            )
            if results:
                session.execute(insert(LabelQualityResult), results)
            stats = [
                {"run_id": run_id, "tenant_id": data.tenant_id, "task_id": data.task_id, **s} for s in sources.values()
            ]
            if stats:
                session.execute(insert(LabelSourceStat), stats)
            labeled = [r["prediction_id"] for r in results if r["kind"] == "labeled"]
            for start in range(0, len(labeled), 500):
                apply_rule(session, labeled[start : start + 500])
            n_labeled = len(labeled)
            n_issues = sum(1 for r in results if r["is_issue"])
            n_unlabeled = len(results) - n_labeled
        session.execute(
            update(LabelQualityRun)
            .where(LabelQualityRun.id == run_id)
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
    if progress is not None:
        progress(1.0, "done")
    return PassResult(run_id, "succeeded", n_labeled, n_issues, n_unlabeled, summary)


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
