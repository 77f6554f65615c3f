"""Label-noise benchmark: how well does the label-quality pass find labels flipped at a fixed seed, and how fast?

For each dataset (banking77, sms_spam from ../shared/data) and noise setting (10% / 20%, uniform flips to a random
other class and class-conditional flips to the most confusable class), it prints precision, recall and F1 of the
flagged set against the flipped set for

- ``naive``: the reference pipeline (logistic regression C=1, 5-fold CV, cleanlab's default ``find_label_issues``);
- ``flywheel``: ``flywheel.feedback.checks.check_labels`` with its defaults;

and the time of each stage (embedding, cross-validation, cleanlab) next to a bare ``find_label_issues`` call on the
same arrays. Run from the repo root: ``.venv/bin/python bench/label_noise.py`` (``--rows 2000`` for a quick look).

``--logged`` runs the logged-external-model case instead: each dataset is split in two halves at a fixed seed; a
customer model of its own kind (TF-IDF word and character n-grams + logistic regression, trained on one half's
labels, with their own flips) logs its probabilities on the other half, whose labels are then flipped and checked,
at 2,000 labels and at the whole half, by

- ``naive cv``: frozen MiniLM + logistic regression, 5-fold, cleanlab's defaults (the reference pipeline alone);
- ``naive avg``: the same probabilities averaged 50/50 with the logged ones;
- ``flywheel cv``: the pass without the logged probabilities;
- ``flywheel``: the pass with them, each logging model at its fitted weight (shown).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flywheel.domain.segments import segment_texts
from flywheel.feedback import cleanlab_adapter
from flywheel.feedback.checks import CheckConfig, check_labels
from flywheel.feedback.noise import confusable_partner, flip_labels, precision_recall_f1
from flywheel.feedback.oos import OOSConfig, Segments, cross_val_probabilities

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


#: The long-text set of ``bench/long_text.py`` as support tickets: documents of 150–600 tokens stating their intent
#: in three utterances after unrelated chit-chat.
LONG_TEXT = "long_tickets"
LONG_TEXT_DOCS = 4000


def load(name: str, rows: int | None, seed: int) -> tuple[list[str], np.ndarray, list[str]]:
    if name == LONG_TEXT:
        from long_text import long_text_set

        return long_text_set("train", seed, n=rows or LONG_TEXT_DOCS, requests_per_text=3)
    df = pd.read_csv(DATA / name / "train.csv")
    if rows and rows < len(df):
        df = df.sample(n=rows, random_state=seed).reset_index(drop=True)
    classes = sorted(df["label"].unique())
    y = df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return df["text"].tolist(), y, classes


def embed(
    name: str, texts: list[str], cache_dir: Path | None, *, window: int | None = None
) -> tuple[np.ndarray, float, bool]:
    """Embeddings of ``texts`` and the seconds they took (read back from the cache when it has them), at
    ``window`` tokens chunked and pooled beyond it, or at the window the texts call for (``text_windows``)."""
    from flywheel.domain.encoder import DEFAULT_EMBEDDING_WINDOW, load_encoder, text_hash
    from flywheel.domain.windows import text_windows

    base = load_encoder()
    if window is None:
        window = text_windows(texts, base.token_lengths, limit=base.limit).embedding
    # at the default window the bare encoder (cut at 128 tokens): the short sets' figures and cache stay as they were
    encoder: Any = base if window == DEFAULT_EMBEDDING_WINDOW else base.windowed(window)
    key = text_hash(encoder.id + "\n" + "\n".join(texts))[:16]
    if cache_dir is not None:
        npy, meta = cache_dir / f"{name}-{key}.npy", cache_dir / f"{name}-{key}.json"
        if npy.exists() and meta.exists():
            return np.load(npy), float(json.loads(meta.read_text())["seconds"]), True
    t = time.perf_counter()
    x = encoder.embed(texts)
    seconds = time.perf_counter() - t
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(npy, x)
        meta.write_text(json.dumps({"seconds": seconds, "n": len(texts), "encoder": encoder.id}))
    return x, seconds, False


def embed_segments(name: str, texts: list[str], cache_dir: Path | None) -> Segments | None:
    """The segments of ``texts`` (``flywheel.domain.segments``) embedded as the pass embeds them, or None where no
    text splits (then the pass reads whole texts only)."""
    split = segment_texts(texts)
    if split is None:
        return None
    segments, owner = split
    x, _, _ = embed(f"{name}-segments", segments, cache_dir)
    return Segments(x, np.asarray(owner, dtype=np.int64))


def subset_segments(segments: Segments | None, pick: np.ndarray) -> Segments | None:
    """The segments of the examples ``pick`` (indices), their owners renumbered to positions in ``pick``."""
    if segments is None:
        return None
    position = np.full(int(segments.owner.max()) + 1, -1)
    position[pick] = np.arange(len(pick))
    keep = position[segments.owner] >= 0
    return Segments(segments.embeddings[keep], position[segments.owner[keep]])


def timed_bare(labels: np.ndarray, probs: np.ndarray, repeat: int) -> tuple[np.ndarray, float]:
    best = float("inf")
    mask = np.zeros(0, bool)
    for _ in range(repeat):
        t = time.perf_counter()
        mask = cleanlab_adapter.bare_find_label_issues(labels, probs)
        best = min(best, time.perf_counter() - t)
    return mask, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="banking77,sms_spam")
    parser.add_argument("--rates", default="0.1,0.2")
    parser.add_argument("--noise", default="uniform,confusable")
    parser.add_argument("--rows", type=int, default=0, help="sample this many rows per dataset (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="cleanlab timings: best of this many calls")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/bench-cache"), help="embedding cache")
    parser.add_argument(
        "--ablation", action="store_true", help="instead: every classifier x cleanlab-filter variant, P/R/F1 only"
    )
    parser.add_argument("--logged", action="store_true", help="instead: the logged-external-model case")
    parser.add_argument("--sizes", default="2000,0", help="--logged: labeled-set sizes (0 = the whole half)")
    parser.add_argument("--window", type=int, default=None, help="embedding window (default: chosen from the texts)")
    args = parser.parse_args()
    if args.ablation:
        ablation(args)
        return
    if args.logged:
        logged_case(args)
        return

    config = CheckConfig()
    naive_oos = OOSConfig(C=1.0, knn_k=0, folds=5, seed=args.seed)
    header = (
        f"{'dataset':<10} {'noise':<10} {'rate':>4} {'pipeline':<9} {'P':>6} {'R':>6} {'F1':>6} {'flagged':>7} "
        f"{'cv s':>6} {'cleanlab s':>10} {'bare s':>7} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    embed_rows = []
    for name in args.datasets.split(","):
        texts, y, classes = load(name, args.rows or None, args.seed)
        x, embed_s, cached = embed(name, texts, args.cache_dir)
        segments = embed_segments(name, texts, args.cache_dir)
        embed_rows.append((name, len(texts), embed_s, cached))
        k = len(classes)
        partner = confusable_partner(x, y, k)
        for noise in args.noise.split(","):
            if noise == "confusable" and k == 2:
                continue  # with two classes, the confusable class is the other one: the same as uniform
            for rate in (float(r) for r in args.rates.split(",")):
                noisy, flipped = flip_labels(
                    y, k, rate=rate, seed=args.seed, partner=partner if noise == "confusable" else None
                )
                # naive: logistic regression (C=1) 5-fold CV + cleanlab defaults
                t = time.perf_counter()
                probs, _ = cross_val_probabilities(x, noisy, k, config=naive_oos)
                cv_s = time.perf_counter() - t
                mask, bare_s = timed_bare(noisy, probs, args.repeat)
                p, r, f1 = precision_recall_f1(mask, flipped)
                print(
                    f"{name:<10} {noise:<10} {rate:>4.0%} {'naive':<9} {p:>6.3f} {r:>6.3f} {f1:>6.3f} "
                    f"{int(mask.sum()):>7} {cv_s:>6.1f} {bare_s:>10.3f} {bare_s:>7.3f} {1.0:>6.2f}",
                    flush=True,
                )
                # flywheel: the pipeline's defaults; the cleanlab stage timed against a bare call on its arrays
                check = check_labels(x, noisy, k, segments=segments, config=config)
                clean_s = check.timings["cleanlab"]
                for _ in range(args.repeat - 1):
                    t = time.perf_counter()
                    cleanlab_adapter.find_label_issues(
                        labels=noisy,
                        pred_probs=check.probs,
                        filter_by=config.filter_by,
                        quality_method=config.quality_method,
                    )
                    clean_s = min(clean_s, time.perf_counter() - t)
                _, bare_s = timed_bare(noisy, check.probs, args.repeat)
                p, r, f1 = precision_recall_f1(check.issues.is_issue, flipped)
                print(
                    f"{name:<10} {noise:<10} {rate:>4.0%} {'flywheel':<9} {p:>6.3f} {r:>6.3f} {f1:>6.3f} "
                    f"{int(check.issues.is_issue.sum()):>7} {check.timings['cross_validation']:>6.1f} "
                    f"{clean_s:>10.3f} {bare_s:>7.3f} {clean_s / bare_s:>6.2f}",
                    flush=True,
                )
    print()
    print(f"{'dataset':<10} {'texts':>6} {'embedding s':>12} {'texts/s':>8}")
    for name, n, seconds, cached in embed_rows:
        note = "  (from the cache: time of the original run)" if cached else ""
        print(f"{name:<10} {n:>6} {seconds:>12.1f} {n / seconds:>8.0f}{note}")
    print(
        "\nratio = cleanlab stage / bare cleanlab.filter.find_label_issues on the same arrays (best of "
        f"{args.repeat}); confusable = flips to the class with the nearest embedding centroid."
    )


ABLATION_OOS = {
    "lr C=1": OOSConfig(C=1.0, knn_k=0),
    "lr C=10": OOSConfig(C=10.0, knn_k=0),
    "lr C=1 + knn": OOSConfig(C=1.0, knn_k=10, knn_weight=0.5),
    "lr C=3 + knn": OOSConfig(C=3.0, knn_k=10, knn_weight=0.5),
    "lr C=10 + knn": OOSConfig(C=10.0, knn_k=10, knn_weight=0.5),
    "lr C=10 + knn, 10 folds": OOSConfig(C=10.0, knn_k=10, knn_weight=0.5, folds=10),
}
ABLATION_FILTERS = [
    ("prune_by_noise_rate", "self_confidence"),
    ("both", "self_confidence"),
    ("prune_by_class", "self_confidence"),
    ("ranked", "self_confidence"),
    ("ranked", "normalized_margin"),
]


def ablation(args: argparse.Namespace) -> None:
    """Which choices move the numbers: each out-of-sample classifier with each way of choosing the flagged set."""
    print(
        f"{'dataset':<10} {'noise':<10} {'rate':>4} {'classifier':<24} {'filter':<20} {'quality':<17} "
        f"{'P':>6} {'R':>6} {'F1':>6}"
    )
    for name in args.datasets.split(","):
        texts, y, classes = load(name, args.rows or None, args.seed)
        x, _, _ = embed(name, texts, args.cache_dir)
        k = len(classes)
        partner = confusable_partner(x, y, k)
        for noise in args.noise.split(","):
            if noise == "confusable" and k == 2:
                continue
            for rate in (float(r) for r in args.rates.split(",")):
                noisy, flipped = flip_labels(
                    y, k, rate=rate, seed=args.seed, partner=partner if noise == "confusable" else None
                )
                for tag, oos in ABLATION_OOS.items():
                    probs, _ = cross_val_probabilities(x, noisy, k, config=oos)
                    for filter_by, quality in ABLATION_FILTERS:
                        issues = cleanlab_adapter.find_label_issues(
                            labels=noisy, pred_probs=probs, filter_by=filter_by, quality_method=quality
                        )
                        p, r, f1 = precision_recall_f1(issues.is_issue, flipped)
                        print(
                            f"{name:<10} {noise:<10} {rate:>4.0%} {tag:<24} {filter_by:<20} {quality:<17} "
                            f"{p:>6.3f} {r:>6.3f} {f1:>6.3f}",
                            flush=True,
                        )


def customer_model(texts: list[str], labels: np.ndarray, k: int, scored: list[str]) -> np.ndarray:
    """``(len(scored), K)``: the probabilities a customer's own model (TF-IDF word 1-2-grams and character 2-5-grams,
    logistic regression) trained on ``texts`` / ``labels`` logs for ``scored``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    )
    model = make_pipeline(features, LogisticRegression(C=10.0, max_iter=1000))
    model.fit(texts, labels)
    out = np.zeros((len(scored), k))
    out[:, model.classes_] = model.predict_proba(scored)
    return out


def logged_case(args: argparse.Namespace) -> None:
    """The logged-external-model case: P/R/F1 of each pipeline at each size, 20% (``--rates``) uniform flips."""
    print(
        f"{'dataset':<10} {'size':>6} {'rate':>4} {'customer acc':>12} {'pipeline':<12} {'P':>6} {'R':>6} {'F1':>6} "
        f"{'flagged':>7} {'weight':>6} {'segments':>8}"
    )
    for name in args.datasets.split(","):
        texts, y, classes = load(name, None, args.seed)
        k = len(classes)
        half = np.random.default_rng(args.seed).permutation(len(y))
        train, rest = half[: len(y) // 2], half[len(y) // 2 :]
        scored = [texts[i] for i in rest]
        x, _, _ = embed(name, scored, args.cache_dir, window=args.window)
        segments = embed_segments(name, scored, args.cache_dir)
        own_noisy, _ = flip_labels(y[train], k, rate=float(args.rates.split(",")[-1]), seed=args.seed + 1)
        logged = customer_model([texts[i] for i in train], own_noisy, k, scored)
        for size in (int(v) for v in args.sizes.split(",")):
            pick = (
                np.arange(len(rest))
                if size <= 0 or size >= len(rest)
                else np.sort(np.random.default_rng(args.seed).choice(len(rest), size, replace=False))
            )
            xs, ys, ls = x[pick], y[rest[pick]], logged[pick]
            accuracy = float((ls.argmax(axis=1) == ys).mean())
            for rate in (float(r) for r in args.rates.split(",")):
                noisy, flipped = flip_labels(ys, k, rate=rate, seed=args.seed)
                for tag, flagged, weight, seg in _logged_pipelines(
                    xs, noisy, k, ls, subset_segments(segments, pick), args.seed
                ):
                    p, r, f1 = precision_recall_f1(flagged, flipped)
                    print(
                        f"{name:<10} {len(ys):>6} {rate:>4.0%} {accuracy:>12.3f} {tag:<12} {p:>6.3f} {r:>6.3f} "
                        f"{f1:>6.3f} {int(flagged.sum()):>7} {weight:>6} {seg:>8}",
                        flush=True,
                    )


def _logged_pipelines(
    x: np.ndarray, noisy: np.ndarray, k: int, logged: np.ndarray, segments: Segments | None, seed: int
) -> list[tuple[str, np.ndarray, str, str]]:
    """(name, flagged mask, logged weight, segment weight) of each pipeline on one noisy labeled set."""
    naive, _ = cross_val_probabilities(x, noisy, k, config=OOSConfig(C=1.0, knn_k=0, folds=5, seed=seed))
    avg = (naive + logged / logged.sum(axis=1, keepdims=True)) / 2
    usable = np.ones(len(noisy), dtype=bool)
    alone = check_labels(x, noisy, k, segments=segments)
    both = check_labels(x, noisy, k, segments=segments, production_probs=logged, production_usable=usable)
    weight = next(iter(both.logged.values())).weight if both.logged else 0.0

    def seg(check: Any) -> str:
        return "-" if check.segments is None else f"{check.segments.weight:.2f}"

    return [
        ("naive cv", cleanlab_adapter.bare_find_label_issues(noisy, naive), "-", "-"),
        ("naive avg", cleanlab_adapter.bare_find_label_issues(noisy, avg), "0.50", "-"),
        ("flywheel cv", alone.issues.is_issue, "-", seg(alone)),
        ("flywheel", both.issues.is_issue, f"{weight:.2f}", seg(both)),
    ]


if __name__ == "__main__":
    main()
