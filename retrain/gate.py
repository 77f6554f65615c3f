"""The evaluation gate: pure functions over evaluations, so every rule is testable without a model.

An :class:`Evaluation` holds one model's metrics on a holdout, overall and per tenant, where metrics are what
:func:`compute_metrics` returns: ``n``, ``accuracy``, ``macro_f1``, ``recall:<label>`` and ``precision:<label>``,
and, when it was measured here, the per-item answers (:class:`HoldoutItems`) it was computed from.

The candidate and the champion are evaluated on the same holdout items just before the decision, so the gate
compares them *paired*: the difference of the two models' metric, with a bootstrap 95% interval that resamples
items (both models together, so the noise they share cancels). A 1-point difference on 200 items is noise; the
interval says so, and the rules are stated in its terms:

- overall: promote when the interval's lower bound is above ``-tolerance`` (the candidate is, with 95%
  confidence, no worse than the champion beyond the tolerance);
- a tenant with a measurable holdout refuses only when its interval says the candidate regresses beyond the
  tenant tolerance (upper bound below ``-tenant_tolerance``);
- an SLA refuses only when the candidate's own interval on that tenant lies wholly below the threshold and the
  champion meets it (a new breach the data proves, not one a noisy holdout suggests).

Items may carry weights (holdout hygiene: a label the label-quality pass doubts counts at the probability that it is
right): every metric is then the weighted one, and each bootstrap resample weighs an item by how often it was drawn
times its weight. Without weights (or with every weight 1) the figures are exactly the unweighted ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Metrics = dict[str, float]

#: Resamples per bootstrap interval: enough for stable 2.5/97.5 percentiles at the gate's resolution.
N_BOOT = 2000
#: Resamples held in memory at once (a (chunk, n) count matrix per chunk).
_CHUNK = 250


@dataclass(frozen=True)
class GatePolicy:
    """How strict the gate is; ``metric``: ``accuracy``, ``macro_f1``, ``recall:<label>`` or ``precision:<label>``."""

    metric: str = "accuracy"
    tolerance: float = 0.02  # promote when the paired interval's lower bound is above -tolerance
    tenant_tolerance: float = 0.02  # refuse when a tenant's interval lies wholly below -tenant_tolerance
    min_holdout: int = 1  # below this the candidate cannot be proven and is refused
    min_tenant_holdout: int = 20  # smaller tenant holdouts are too noisy for the per-tenant rule
    min_gain: float = 0.0  # with ``require_gain``, the lower bound must be above this (tenant variants)
    seed: int = 0  # the bootstrap's seed: the same holdout and models give the same interval
    n_boot: int = N_BOOT


@dataclass(frozen=True)
class HoldoutItems:
    """One model's answers on a holdout: the true label, its prediction and the tenant of each item, and each
    item's weight (None: every item counts 1)."""

    y_true: tuple[str, ...]
    y_pred: tuple[str, ...]
    tenants: tuple[str, ...]
    labels: tuple[str, ...]
    weights: tuple[float, ...] | None = None

    def same_items(self, other: HoldoutItems) -> bool:
        return self.y_true == other.y_true and self.tenants == other.tenants and self.weights == other.weights


@dataclass(frozen=True)
class Evaluation:
    """One model's metrics on a holdout: ``overall``, and ``tenants`` (slug -> metrics on that tenant's rows);
    ``items`` the per-item answers behind them (None for metrics read back from storage)."""

    overall: Metrics
    tenants: dict[str, Metrics] = field(default_factory=dict)
    items: HoldoutItems | None = field(default=None, compare=False, repr=False)

    @property
    def n(self) -> int:
        """How many labeled holdout items it was measured on."""
        return int(self.overall.get("n", 0))

    def value(self, metric: str) -> float | None:
        return metric_value(self.overall, metric)

    def to_dict(self) -> dict[str, Any]:
        """``{"overall": metrics, "tenants": {slug: metrics}}``: the shape stored on runs, models and artifacts."""
        return {"overall": dict(self.overall), "tenants": {slug: dict(m) for slug, m in self.tenants.items()}}


@dataclass(frozen=True)
class Paired:
    """Candidate minus champion on the same ``n`` items, with its bootstrap 95% interval ``[ci_low, ci_high]``."""

    metric: str
    difference: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "difference": round(self.difference, 6),
            "ci_low": round(self.ci_low, 6),
            "ci_high": round(self.ci_high, 6),
            "n": self.n,
        }


@dataclass(frozen=True)
class Comparison:
    """The paired comparison overall and per tenant (tenants whose difference is undefined are left out)."""

    overall: Paired
    tenants: dict[str, Paired] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"metric", "difference", "ci_low", "ci_high", "n", "tenants": {slug: {...}}}``: stored on the run."""
        return {**self.overall.to_dict(), "tenants": {s: p.to_dict() for s, p in sorted(self.tenants.items())}}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    paired: Comparison | None = None  # None when there was no champion to compare with

    @property
    def name(self) -> str:
        return "promoted" if self.promote else "rejected"


def compute_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], weights: Sequence[float] | None = None
) -> Metrics:
    """Accuracy, macro F1 (over the labels present in ``y_true`` or ``y_pred``), per-label recall and precision;
    weighted by ``weights`` (one per item) when given. ``n`` counts the items whatever their weights."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if weights is not None and len(weights) != len(y_true):
        raise ValueError(f"y_true has {len(y_true)} items but weights has {len(weights)}")
    n = len(y_true)
    out: Metrics = {"n": float(n)}
    if n == 0:
        return out
    t = np.asarray(y_true, dtype=object)
    p = np.asarray(y_pred, dtype=object)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    out["accuracy"] = float(np.mean(t == p)) if weights is None else float(w @ (t == p) / w.sum())
    f1s = []
    for label in labels:
        tp = float(w @ ((t == label) & (p == label)))
        support = float(w @ (t == label))
        predicted = float(w @ (p == label))
        if support:
            out[f"recall:{label}"] = tp / support
        if predicted:
            out[f"precision:{label}"] = tp / predicted
        if support or predicted:
            f1s.append(2 * tp / (support + predicted))
    out["macro_f1"] = float(np.mean(f1s)) if f1s else 0.0
    return out


def evaluate_predictions(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    tenants: Sequence[str],
    labels: Sequence[str],
    weights: Sequence[float] | None = None,
) -> Evaluation:
    """The evaluation of one model on a holdout whose rows belong to ``tenants`` (a slug per row), each row
    weighted by ``weights`` when given (None, or every weight 1: the unweighted evaluation)."""
    w = None if weights is None or all(x == 1.0 for x in weights) else tuple(float(x) for x in weights)
    overall = compute_metrics(y_true, y_pred, labels, w)
    t_arr = np.asarray(tenants, dtype=object)
    yt = np.asarray(y_true, dtype=object)
    yp = np.asarray(y_pred, dtype=object)
    wa = None if w is None else np.asarray(w)
    per_tenant = {
        slug: compute_metrics(
            list(yt[t_arr == slug]), list(yp[t_arr == slug]), labels, None if wa is None else list(wa[t_arr == slug])
        )
        for slug in sorted(set(tenants))
    }
    items = HoldoutItems(tuple(y_true), tuple(y_pred), tuple(tenants), tuple(labels), w)
    return Evaluation(overall=overall, tenants=per_tenant, items=items)


def metric_value(metrics: Mapping[str, float], name: str) -> float | None:
    """A metric by name; a per-label recall/precision missing because the label never occurred is None."""
    value = metrics.get(name)
    return None if value is None else float(value)


# --- the bootstrap ------------------------------------------------------------------------------------------------


def _resample_weights(n: int, n_boot: int, seed: int, item: np.ndarray | None = None) -> list[np.ndarray]:
    """``n_boot`` resamples of ``n`` items with replacement, as (chunk, n) matrices of how often each item is drawn,
    times each item's weight ``item`` ``(n,)`` when given."""
    rng = np.random.default_rng(seed)
    uniform = np.full(n, 1.0 / n)
    sizes = [min(_CHUNK, n_boot - start) for start in range(0, n_boot, _CHUNK)]
    draws = [rng.multinomial(n, uniform, size=size).astype(np.float64) for size in sizes]
    return draws if item is None else [d * item[None, :] for d in draws]


def _metric_under(
    weights: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], metric: str
) -> np.ndarray:
    """The metric of one model under each row of ``weights`` (B, n): shape (B,), NaN where it is undefined."""
    correct = (y_true == y_pred).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "accuracy":
            return weights @ correct / weights.sum(axis=1)
        if metric.startswith(("recall:", "precision:")):
            kind, label = metric.split(":", 1)
            member = ((y_true if kind == "recall" else y_pred) == label).astype(np.float64)
            hits, total = weights @ (correct * member), weights @ member
            return np.where(total > 0, hits / np.where(total > 0, total, 1.0), np.nan)
        if metric == "macro_f1":
            truth = np.stack([(y_true == k) for k in labels], axis=1).astype(np.float64)  # (n, K)
            pred = np.stack([(y_pred == k) for k in labels], axis=1).astype(np.float64)
            tp, denom = weights @ (truth * correct[:, None]), weights @ truth + weights @ pred
            f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), np.nan)
            present = ~np.isnan(f1)
            return np.where(present.any(axis=1), np.nansum(f1, axis=1) / np.maximum(present.sum(axis=1), 1), np.nan)
    raise ValueError(f"unknown metric {metric!r}: accuracy, macro_f1, recall:<label> or precision:<label>")


def _interval(samples: np.ndarray) -> tuple[float, float] | None:
    """The percentile 95% interval of the defined resamples; None when too few are defined."""
    kept = samples[~np.isnan(samples)]
    if len(kept) < 0.5 * len(samples) or len(kept) == 0:
        return None
    low, high = np.percentile(kept, [2.5, 97.5])
    return float(low), float(high)


def _item_weights(n: int, weights: Sequence[float] | None) -> np.ndarray | None:
    """``(n,)`` item weights, or None when there are none (or all are 1): the unweighted path, unchanged."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have one value per item ({n}), got {w.shape}")
    return None if np.all(w == 1.0) else w


def paired_difference(
    y_true: Sequence[str],
    candidate_pred: Sequence[str],
    champion_pred: Sequence[str],
    labels: Sequence[str],
    *,
    metric: str = "accuracy",
    seed: int = 0,
    n_boot: int = N_BOOT,
    weights: Sequence[float] | None = None,
) -> Paired | None:
    """Candidate minus champion on the same items, with a paired bootstrap 95% interval (items resampled with
    replacement, both models' answers together); None when the metric is undefined on these items. ``weights``:
    one per item, applied to the point estimate and to every resample."""
    n = len(y_true)
    if n == 0 or len(candidate_pred) != n or len(champion_pred) != n:
        return None
    item = _item_weights(n, weights)
    t, a, b = (np.asarray(x, dtype=object) for x in (y_true, candidate_pred, champion_pred))
    ones = np.ones((1, n)) if item is None else item[None, :]
    point = _metric_under(ones, t, a, labels, metric) - _metric_under(ones, t, b, labels, metric)
    if np.isnan(point[0]):
        return None
    draws = [
        _metric_under(w, t, a, labels, metric) - _metric_under(w, t, b, labels, metric)
        for w in _resample_weights(n, n_boot, seed, item)
    ]
    ci = _interval(np.concatenate(draws))
    if ci is None:
        return None
    return Paired(metric=metric, difference=float(point[0]), ci_low=ci[0], ci_high=ci[1], n=n)


def metric_interval(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    *,
    metric: str,
    seed: int = 0,
    n_boot: int = N_BOOT,
    weights: Sequence[float] | None = None,
) -> tuple[float, float] | None:
    """One model's metric on these items (weighted by ``weights``, one per item) as a bootstrap 95% interval; None
    when it is undefined."""
    n = len(y_true)
    if n == 0:
        return None
    t, p = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    draws = [
        _metric_under(w, t, p, labels, metric) for w in _resample_weights(n, n_boot, seed, _item_weights(n, weights))
    ]
    return _interval(np.concatenate(draws))


def compare(candidate: Evaluation, champion: Evaluation, policy: GatePolicy) -> Comparison | None:
    """The paired comparison of two evaluations of the same holdout items, overall and per tenant; None when
    either lacks its per-item answers or they were not measured on the same items."""
    a, b = candidate.items, champion.items
    if a is None or b is None or not a.same_items(b):
        return None
    metric, seed, n_boot, w = policy.metric, policy.seed, policy.n_boot, a.weights
    overall = paired_difference(
        a.y_true, a.y_pred, b.y_pred, a.labels, metric=metric, seed=seed, n_boot=n_boot, weights=w
    )
    if overall is None:
        return None
    groups = np.asarray(a.tenants, dtype=object)
    t, pa, pb = (np.asarray(x, dtype=object) for x in (a.y_true, a.y_pred, b.y_pred))
    wa = None if w is None else np.asarray(w)
    tenants = {}
    for slug in sorted(set(a.tenants)):
        mask = groups == slug
        p = paired_difference(
            list(t[mask]),
            list(pa[mask]),
            list(pb[mask]),
            a.labels,
            metric=metric,
            seed=seed,
            n_boot=n_boot,
            weights=None if wa is None else list(wa[mask]),
        )
        if p is not None:
            tenants[slug] = p
    return Comparison(overall=overall, tenants=tenants)


# --- the decision -------------------------------------------------------------------------------------------------


def decide(
    candidate: Evaluation,
    champion: Evaluation | None,
    *,
    policy: GatePolicy | None = None,
    slas: Mapping[str, Sequence[tuple[str, float]]] | None = None,
    clean: bool = True,
    require_gain: bool = False,
    ignore_tenants: Sequence[str] = (),
) -> Decision:
    """Promote ``candidate`` over ``champion``? Every failed rule adds a reason; any reason refuses.

    The rules read the paired comparison (see the module docstring). ``slas`` maps a tenant slug to its
    ``(metric, threshold)`` pairs. ``require_gain``: the candidate must be better than the champion by more than
    ``policy.min_gain`` with 95% confidence (a tenant variant against the shared model). ``ignore_tenants``:
    tenants the champion does not serve.
    """
    policy = policy or GatePolicy()
    reasons = [] if clean else ["the training run did not finish cleanly"]
    unproven = _unproven(candidate, policy)
    if unproven is not None:
        return Decision(False, [*reasons, unproven])
    if champion is None:
        note = (
            f"no champion to compare with; candidate {policy.metric} {candidate.value(policy.metric):.4f}"
            f" on {candidate.n} items"
        )
        return Decision(not reasons, reasons or [note])
    paired = compare(candidate, champion, policy)
    if paired is None:
        why = f"the candidate and the champion were not scored on the same holdout items for {policy.metric}"
        return Decision(False, [*reasons, why])
    reasons += _overall_rule(paired.overall, policy, require_gain=require_gain)
    notes = [] if reasons else [f"{policy.metric} {_describe(paired.overall)}"]
    for slug in sorted(candidate.tenants):
        if slug not in ignore_tenants:
            reasons += _tenant_regression(slug, paired.tenants.get(slug), policy)
            reasons += _new_sla_breaches(slug, candidate, champion, (slas or {}).get(slug, ()), policy)
    return Decision(not reasons, reasons or notes, paired)


def _describe(p: Paired) -> str:
    return (
        f"difference {p.difference:+.4f} vs the champion, 95% interval [{p.ci_low:+.4f}, {p.ci_high:+.4f}]"
        f" on {p.n} paired holdout items"
    )


def _unproven(candidate: Evaluation, policy: GatePolicy) -> str | None:
    """Why the holdout cannot prove the candidate at all (too few items, or no value of the gate's metric)."""
    if candidate.n < policy.min_holdout:
        return f"the holdout has {candidate.n} labeled items; at least {policy.min_holdout} are needed"
    if candidate.value(policy.metric) is None:
        return f"the candidate has no {policy.metric} on the holdout"
    return None


def _overall_rule(p: Paired, policy: GatePolicy, *, require_gain: bool) -> list[str]:
    """Promote when the lower bound is above -tolerance (or, with ``require_gain``, above ``min_gain``)."""
    if require_gain and p.ci_low <= policy.min_gain:
        return [
            f"{p.metric} does not beat the current model by more than {policy.min_gain:.4f} with 95% confidence:"
            f" {_describe(p)}"
        ]
    if not require_gain and p.ci_low <= -policy.tolerance:
        return [
            f"{p.metric} may be worse than the champion beyond the tolerance {policy.tolerance:.4f}: {_describe(p)}"
        ]
    return []


def _tenant_regression(slug: str, p: Paired | None, policy: GatePolicy) -> list[str]:
    """A tenant's holdout, when large enough to measure, refuses when its interval lies wholly below
    -tenant_tolerance: a regression the data proves, not a dip a small holdout shows by chance."""
    if p is None or p.n < policy.min_tenant_holdout or p.ci_high >= -policy.tenant_tolerance:
        return []
    return [f"tenant {slug}: {p.metric} regresses beyond the tolerance {policy.tenant_tolerance:.4f}: {_describe(p)}"]


def _new_sla_breaches(
    slug: str,
    candidate: Evaluation,
    champion: Evaluation,
    slas: Sequence[tuple[str, float]],
    policy: GatePolicy,
) -> list[str]:
    """The candidate's interval on the tenant's items lies wholly below an SLA threshold the champion meets: a
    new breach the data proves, refused whatever the tolerance. Where the champion already breaches, a deeper
    breach is the regression rule's to judge: refusing any dip there lets one tenant's noisy holdout block every
    improvement (seen in the banking77 simulation)."""
    items = candidate.items
    if items is None or not slas:
        return []
    mask = np.asarray(items.tenants, dtype=object) == slug
    y_true = list(np.asarray(items.y_true, dtype=object)[mask])
    y_pred = list(np.asarray(items.y_pred, dtype=object)[mask])
    weights = None if items.weights is None else list(np.asarray(items.weights)[mask])
    reasons = []
    for sla_metric, threshold in slas:
        sh = metric_value(champion.tenants.get(slug, {}), sla_metric)
        ci = metric_interval(
            y_true, y_pred, items.labels, metric=sla_metric, seed=policy.seed, n_boot=policy.n_boot, weights=weights
        )
        if ci is not None and ci[1] < threshold and (sh is None or sh >= threshold):
            value = metric_value(candidate.tenants.get(slug, {}), sla_metric) or 0.0
            reasons.append(
                f"tenant {slug}: {sla_metric} {value:.4f} (95% interval [{ci[0]:.4f}, {ci[1]:.4f}]) is below its SLA"
                f" threshold {threshold:.4f}" + (f" (champion {sh:.4f})" if sh is not None else "")
            )
    return reasons
