"""Out-of-sample predicted probabilities for labeled examples, and the record of where each one came from.

cleanlab is only as good as these: a model that trained on an example cannot say its label looks wrong. So every
probability here is out-of-sample, from one of three kinds of source:

- ``cv``: K-fold cross-validation of fast classifiers on frozen base-encoder embeddings (each example is scored by
  models that never saw it): logistic regression, optionally averaged with a cosine k-nearest-neighbour vote;
- ``segments``: the same cross-validation over the segments of long texts (``flywheel.domain.segments``), each
  text scored by its most telling segment, mixed with ``cv`` at a fitted weight: a whole long text's embedding is
  mostly whatever else it talks about;
- ``logged``: the probabilities a production model logged for the example (one of ours or the customer's own),
  usable only when that model never trained on it (the caller decides, and says so with a mask).

Each logging model is a source of its own, mixed with the cross-validated probabilities at a weight fitted to how
well its probabilities explain reference labels (reviewed ones where there are enough, else the given ones;
``fit_mix_weight``): a strong customer model earns most of the say, a weak one little.

scikit-learn is imported inside the functions (nothing heavy at import).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

SOURCE_CV = "cv"
SOURCE_CV_PRODUCTION = "cv+production"
SOURCE_SEGMENTS = "segments"
#: The logging-model name used where the caller gives none.
DEFAULT_LOGGED = "production"
#: Similarities computed at once by the kNN vote (test rows x training rows): about 64 MB of float32.
KNN_BLOCK = 16_000_000
#: The mixing weights tried when fitting a logged source's weight.
WEIGHT_GRID = np.linspace(0.0, 1.0, 21)


@dataclass(frozen=True)
class OOSConfig:
    """How out-of-sample probabilities are computed (defaults measured in bench/label_noise.py).

    ``folds``: K of the K-fold cross-validation; ``C``: inverse regularization of the logistic regression (the
    embeddings are unit-norm, so cleanlab wants a fairly weak penalty); ``knn_k``: neighbours of the kNN vote,
    0 to switch it off; ``knn_weight``: its weight in the average with the logistic regression;
    ``production_weight``: the weight of a usable logged probability against the CV one, or None to fit it per
    logging model (``fit_mix_weight``); ``min_reference``: reviewed labels a logging model needs before its
    weight is fitted on them rather than on the given labels; ``prior_items``: the fitted weight is shrunk towards
    ``prior_weight`` as if that many items had voted for it (a model seen on few items keeps near the prior).
    """

    folds: int = 5
    C: float = 3.0
    knn_k: int = 10
    knn_weight: float = 0.5
    production_weight: float | None = None
    prior_weight: float = 0.5
    min_reference: int = 30
    prior_items: int = 20
    seed: int = 0
    max_iter: int = 300
    #: BLAS threads while fitting. One is fastest here: a (D=384, K<=150) fit is too small to split, and on a
    #: shared 2-core machine more threads oversubscribe (10x slower measured under load).
    threads: int = 1


@dataclass(frozen=True)
class SourceWeight:
    """How much one source's probabilities (a logging model's, or the segments') count against the cross-validated
    ones they are mixed with, and why.

    ``model``: the logging model, or ``segments``; ``n``: items it scored; ``reference``: ``"reviewed"`` or
    ``"given"`` labels the weight was fitted on (``"prior"``: too few items to fit; ``"fixed"``: set, not fitted);
    ``n_reference``: how many; ``accuracy`` / ``cv_accuracy``: how often its top class / the cross-validation's
    matches those labels on the same items; ``weight``: its share of the mix.
    """

    model: str
    n: int
    reference: str
    n_reference: int
    accuracy: float | None
    cv_accuracy: float | None
    weight: float

    def as_dict(self) -> dict[str, object]:
        return {
            "n": self.n,
            "reference": self.reference,
            "n_reference": self.n_reference,
            "accuracy": None if self.accuracy is None else round(self.accuracy, 4),
            "cv_accuracy": None if self.cv_accuracy is None else round(self.cv_accuracy, 4),
            "weight": round(self.weight, 4),
        }


@dataclass(frozen=True)
class OOSProbabilities:
    """``probs``: ``(N, K)`` rows summing to 1; ``sources``: ``(N,)`` str, which source(s) scored each row
    (``cv``, ``cv+segments``, each followed by ``+logged:<model>`` where a logging model's probabilities joined);
    ``logged``: the weight of each logging model used; ``segments``: the segment source's weight, where the texts
    had segments."""

    probs: np.ndarray
    sources: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    logged: dict[str, SourceWeight] = field(default_factory=dict)
    segments: SourceWeight | None = None


@dataclass(frozen=True)
class Segments:
    """The segments of ``N`` examples (``flywheel.domain.segments``): ``embeddings`` ``(S, D)``, and ``owner``
    ``(S,)`` int, the example each segment belongs to; every example owns at least one."""

    embeddings: np.ndarray
    owner: np.ndarray

    def check(self, n: int) -> None:
        """Raise ``ValueError`` unless these are segments of exactly ``n`` examples."""
        owner = np.asarray(self.owner)
        if owner.ndim != 1 or len(owner) != len(self.embeddings):
            raise ValueError(f"segment owner must be (S,) with S={len(self.embeddings)}, got {owner.shape}")
        if len(owner) and (owner.min() < 0 or owner.max() >= n):
            raise ValueError(f"segment owner must index the {n} examples")
        if not (np.bincount(owner, minlength=n) > 0).all():
            raise ValueError("every example needs at least one segment")


def _normalize(probs: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    probs = np.clip(probs, 0.0, None) + eps
    return probs / probs.sum(axis=1, keepdims=True)


def _fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold index per example: stratified where every class allows it, plain shuffled K-fold otherwise."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(labels)
    folds = max(2, min(folds, n))
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    splitter: KFold | StratifiedKFold
    if counts.max() >= folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    out = np.zeros(n, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has only 1 member": expected with live feedback
        for k, (_, test) in enumerate(splitter.split(np.zeros(n), labels)):
            out[test] = k
    return out


def _logreg_probs(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, config: OOSConfig
) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    out = np.zeros((len(x_test), n_classes))
    classes = np.unique(y_train)
    if len(classes) == 1:
        out[:, classes[0]] = 1.0
        return out
    clf = LogisticRegression(C=config.C, max_iter=config.max_iter, random_state=config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a few more lbfgs steps change nothing we use
        clf.fit(x_train, y_train)
    out[:, clf.classes_] = clf.predict_proba(x_test)
    return out


def _knn_probs(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """Similarity-weighted vote of the ``k`` nearest training examples (cosine on unit-norm embeddings)."""
    k = min(k, len(x_train))
    out = np.zeros((len(x_test), n_classes))
    step = max(1, min(2048, KNN_BLOCK // max(len(x_train), 1)))
    for start in range(0, len(x_test), step):
        sims = x_test[start : start + step] @ x_train.T
        nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        w = np.take_along_axis(sims, nn, axis=1).clip(min=0.0) + 1e-3
        rows = np.repeat(np.arange(len(nn)), k)
        np.add.at(out[start : start + step], (rows, y_train[nn].ravel()), w.ravel())
    return out / out.sum(axis=1, keepdims=True)


def cross_val_probabilities(
    embeddings: np.ndarray, labels: np.ndarray, n_classes: int, *, config: OOSConfig | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """``(N, K)`` out-of-sample probabilities by K-fold cross-validation on ``embeddings`` ``(N, D)``.

    Each fold's models train on the other folds only. Returns the probabilities and the seconds spent per model.
    """
    from threadpoolctl import threadpool_limits

    config = config or OOSConfig()
    with threadpool_limits(limits=config.threads):
        return _cross_val_probabilities(embeddings, labels, n_classes, config)


def _cross_val_probabilities(
    embeddings: np.ndarray, labels: np.ndarray, n_classes: int, config: OOSConfig
) -> tuple[np.ndarray, dict[str, float]]:
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"embeddings must be (N, D) with N={len(y)}, got {x.shape}")
    if len(y) < 2:
        raise ValueError("cross-validation needs at least two labeled examples")
    return _fold_probabilities(x, y, _fold_ids(y, config.folds, config.seed), n_classes, config)


def _fold_probabilities(
    x: np.ndarray, y: np.ndarray, fold: np.ndarray, n_classes: int, config: OOSConfig
) -> tuple[np.ndarray, dict[str, float]]:
    """Each row scored by the logistic regression (and kNN vote) fit on the rows of the other folds."""
    import time

    lr = np.zeros((len(y), n_classes))
    knn = np.zeros((len(y), n_classes))
    timings = {"logreg": 0.0, "knn": 0.0}
    use_knn = config.knn_k > 0 and config.knn_weight > 0
    for k in np.unique(fold):
        test = fold == k
        t0 = time.perf_counter()
        lr[test] = _logreg_probs(x[~test], y[~test], x[test], n_classes, config)
        t1 = time.perf_counter()
        if use_knn:
            knn[test] = _knn_probs(x[~test], y[~test], x[test], n_classes, config.knn_k)
        timings["logreg"] += t1 - t0
        timings["knn"] += time.perf_counter() - t1
    probs = (1 - config.knn_weight) * lr + config.knn_weight * knn if use_knn else lr
    return _normalize(probs), timings


def segment_probabilities(
    segments: Segments, labels: np.ndarray, n_classes: int, *, config: OOSConfig | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """``(N, K)`` out-of-sample probabilities of ``N`` examples from their segments' embeddings.

    Each segment carries its example's label; the folds are the examples' (all of an example's segments are scored
    by models that never saw any of them), the classifiers those of ``cross_val_probabilities``. An example's
    probability of a class is the highest any of its segments gives it, renormalized: the segment that states the
    request decides, and the small talk around it (which no class explains) does not dilute it.
    """
    from threadpoolctl import threadpool_limits

    config = config or OOSConfig()
    y = np.asarray(labels, dtype=np.int64)
    segments.check(len(y))
    owner = np.asarray(segments.owner, dtype=np.int64)
    fold = _fold_ids(y, config.folds, config.seed)
    x = np.asarray(segments.embeddings, dtype=np.float32)
    with threadpool_limits(limits=config.threads):
        per_segment, timings = _fold_probabilities(x, y[owner], fold[owner], n_classes, config)
    out = np.zeros((len(y), n_classes))
    np.maximum.at(out, owner, per_segment)
    return _normalize(out), {f"segments_{k}": v for k, v in timings.items()}


def fit_mix_weight(
    cv: np.ndarray, other: np.ndarray, labels: np.ndarray, *, noise_floor: float = 0.2
) -> tuple[float, float]:
    """The weight ``w`` in ``w * other + (1 - w) * cv`` that best explains ``labels`` ``(n,)``, and its score
    (``other``: a logging model's probabilities, or the segments').

    Maximum likelihood over ``WEIGHT_GRID``, each label's likelihood floored by a uniform ``noise_floor`` share:
    reference labels may themselves be wrong (given labels are, at the noise rate), and one wrong label must not
    decide the weight by the model that hedged on it.
    """
    k = cv.shape[1]
    rows = np.arange(len(labels))
    p_cv, p_log = cv[rows, labels], other[rows, labels]
    mix = WEIGHT_GRID[:, None] * p_log[None, :] + (1 - WEIGHT_GRID[:, None]) * p_cv[None, :]
    ll = np.log((1 - noise_floor) * mix + noise_floor / k).mean(axis=1)
    best = int(np.argmax(ll))
    return float(WEIGHT_GRID[best]), float(ll[best])


def _logged_weight(
    model: str, cv: np.ndarray, logged: np.ndarray, labels: np.ndarray, reference: np.ndarray, config: OOSConfig
) -> SourceWeight:
    """One logging model's weight over the items it scored: ``config.production_weight`` where set, else fitted
    (``_fitted_weight``)."""
    if config.production_weight is not None:
        return SourceWeight(model, len(labels), "fixed", 0, None, None, config.production_weight)
    return _fitted_weight(model, cv, logged, labels, reference, config)


def _fitted_weight(
    source: str, cv: np.ndarray, other: np.ndarray, labels: np.ndarray, reference: np.ndarray, config: OOSConfig
) -> SourceWeight:
    """The weight of ``other`` against ``cv`` over the items both scored: fitted on their reviewed labels where
    ``config.min_reference`` of them are, else on their given labels, and shrunk towards the prior."""
    n = len(labels)
    reviewed = reference >= 0
    if reviewed.sum() >= config.min_reference:
        kind, ref, cv, other = "reviewed", reference[reviewed], cv[reviewed], other[reviewed]
    else:
        kind, ref = "given", labels
    if len(ref) == 0:
        return SourceWeight(source, n, "prior", 0, None, None, config.prior_weight)
    fitted, _ = fit_mix_weight(cv, other, ref)
    m = len(ref)
    weight = (m * fitted + config.prior_items * config.prior_weight) / (m + config.prior_items)
    accuracy = float((other.argmax(axis=1) == ref).mean())
    return SourceWeight(source, n, kind, m, accuracy, float((cv.argmax(axis=1) == ref).mean()), weight)


def out_of_sample_probabilities(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    segments: Segments | None = None,
    production_probs: np.ndarray | None = None,
    production_usable: np.ndarray | None = None,
    production_models: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    config: OOSConfig | None = None,
) -> OOSProbabilities:
    """Cross-validated probabilities (with the segments' where the texts have segments), mixed with logged ones
    where those are out-of-sample.

    ``segments``: the examples' segments (``Segments``), scored by ``segment_probabilities`` and mixed with the
    whole-text cross-validation at a fitted weight (``_fitted_weight``): long texts whose request is a line among
    many get their say from that line, texts whose every line speaks keep the whole text's;
    ``production_probs``: ``(N, K)`` logged probabilities (rows of zeros where none was logged);
    ``production_usable``: ``(N,)`` bool, True only where the logging model never trained on that example;
    ``production_models``: ``(N,)`` str, which model logged each row (one weight per model; default: one model);
    ``reference``: ``(N,)`` int, a reviewer's label per row or -1, what fitted weights are fitted on first.
    ``sources`` says which rows used which source; ``logged`` holds each logging model's weight.
    """
    config = config or OOSConfig()
    y = np.asarray(labels, dtype=np.int64)
    ref = np.full(len(y), -1) if reference is None else np.asarray(reference, dtype=np.int64)
    probs, timings = cross_val_probabilities(embeddings, y, n_classes, config=config)
    sources = np.full(len(probs), SOURCE_CV, dtype=object)
    segment_weight = None
    if segments is not None:
        by_segment, more = segment_probabilities(segments, y, n_classes, config=config)
        timings.update(more)
        segment_weight = _fitted_weight(SOURCE_SEGMENTS, probs, by_segment, y, ref, config)
        probs = _normalize((1 - segment_weight.weight) * probs + segment_weight.weight * by_segment)
        if segment_weight.weight > 0:
            sources[:] = f"{SOURCE_CV}+{SOURCE_SEGMENTS}"
    if production_probs is None or production_usable is None:
        return OOSProbabilities(probs=probs, sources=sources, timings=timings, segments=segment_weight)
    prod = np.asarray(production_probs, dtype=np.float64)
    if prod.shape != probs.shape:
        raise ValueError(f"production_probs must have shape {probs.shape}, got {prod.shape}")
    use = np.asarray(production_usable, dtype=bool) & (prod.sum(axis=1) > 0)
    models = (
        np.full(len(probs), DEFAULT_LOGGED, dtype=object)
        if production_models is None
        else np.asarray(production_models, dtype=object)
    )
    weights: dict[str, SourceWeight] = {}
    mixed = probs.copy()
    for model in sorted({str(m) for m in models[use]}):
        rows = np.flatnonzero(use & (models == model))
        logged = _normalize(prod[rows])
        lw = _logged_weight(model, probs[rows], logged, y[rows], ref[rows], config)
        weights[model] = lw
        mixed[rows] = _normalize((1 - lw.weight) * probs[rows] + lw.weight * logged)
        suffix = "production" if production_models is None else f"logged:{model}"
        sources[rows] = [f"{source}+{suffix}" for source in sources[rows]]
    return OOSProbabilities(probs=mixed, sources=sources, timings=timings, logged=weights, segments=segment_weight)
