"""Does cleaning pay? The accuracy of a model trained on the labels the label-quality pass keeps, against the same
model trained on every noisy label and on the true labels, at several training-set sizes.

For each size ``n`` and seed: ``n`` rows of banking77 train, 20% of their labels wrong (uniform to another class; a
quarter of the wrong ones from one careless source that is always wrong, the rest spread over 200 honest users:
the simulation's feedback model); out-of-sample probabilities and cleanlab's verdict exactly as the pass computes
them (``flywheel.feedback.checks.check_labels``); then the few-shot head (logistic regression C=10 on the frozen
embeddings, as ``flywheel.retrain`` trains it) fitted on

- ``uncleaned``: every noisy label; ``true``: the true labels; ``oracle``: the noisy labels minus exactly the
  wrong ones (the best any cleaning can do by removal);
- ``all flags``: minus every label cleanlab flags (the pass before the evidence guard);
- ``guarded``: minus the labels the pass now leaves out (``exclusion_mask``: the lowest-quality share of the flags,
  ``min(1, labels per class / FULL_TRUST_PER_CLASS)``);
- ``+ source``: ``guarded`` minus, in addition, every label of a source the pass would exclude (its flagged share
  above ``source_exclude_issue_rate`` over at least ``source_min_labels`` labels);
- ``weighted``: ``+ source``, each kept label trained at its weight (``LabelCheck.weights``: the probability that
  it is right; what the pass stores and training uses);
- ``relabel``: the excluded labels replaced by the suggested class instead of removed.

Accuracy is on the full banking77 test split. Run from the repo root:
``.venv/bin/python bench/cleaning_gain.py [--sizes 600,1200,2400,3600] [--seeds 0,1,2]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from flywheel.core.config import Settings
from flywheel.feedback.checks import CheckConfig, check_labels
from flywheel.feedback.noise import precision_recall_f1

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_noise import DATA, embed

ARMS = ("uncleaned", "all flags", "guarded", "+ source", "weighted", "relabel", "oracle", "true")


def sim_noise(y: np.ndarray, k: int, *, rate: float, careless_share: float, seed: int):
    """The simulation's feedback model: ``(noisy, wrong, source)`` with source -1 for the careless one."""
    rng = np.random.default_rng(seed)
    n = len(y)
    careless_rate = rate * careless_share
    honest_wrong = (rate - careless_rate) / (1 - careless_rate)
    careless = rng.random(n) < careless_rate
    wrong = careless | (rng.random(n) < honest_wrong)
    noisy = np.where(wrong, (y + rng.integers(1, k, n)) % k, y)
    source = np.where(careless, -1, rng.integers(0, 200, n))
    return noisy, wrong, source


def head_accuracy(
    x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, k: int, weights: np.ndarray | None = None
) -> float:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = LogisticRegression(C=10.0, max_iter=2000, random_state=0).fit(x, y, sample_weight=weights)
    probs = np.zeros((len(x_test), k))
    probs[:, head.classes_] = head.predict_proba(x_test)
    return float((probs.argmax(axis=1) == y_test).mean())


def excluded_sources(flagged: np.ndarray, source: np.ndarray, settings: Settings) -> np.ndarray:
    """``(N,)`` bool: labels of sources the pass would exclude (flagged share above the bar, enough labels)."""
    out = np.zeros(len(source), dtype=bool)
    for s in np.unique(source):
        mine = source == s
        if mine.sum() >= settings.source_min_labels and flagged[mine].mean() > settings.source_exclude_issue_rate:
            out |= mine
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="600,1200,2400,3600")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--careless-share", type=float, default=0.25)
    parser.add_argument("--cache-dir", type=Path, default=Path("var/bench-cache"), help="embedding cache")
    args = parser.parse_args()
    settings = Settings()
    train = pd.read_csv(DATA / "banking77" / "train.csv")
    test = pd.read_csv(DATA / "banking77" / "test.csv")
    classes = sorted(train["label"].unique())
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    x_all, _, _ = embed("banking77", train["text"].tolist(), args.cache_dir)
    x_test, _, _ = embed("banking77-test", test["text"].tolist(), args.cache_dir)
    y_all = train["label"].map(index).to_numpy()
    y_test = test["label"].map(index).to_numpy()
    config = CheckConfig()

    header = (
        f"{'n':>5} {'per class':>9} {'seed':>4} {'arm':<10} {'left out':>8} {'P':>6} {'R':>6} {'accuracy':>8} "
        f"{'vs uncleaned':>12}"
    )
    print(header)
    print("-" * len(header))
    gains: dict[tuple[int, str], list[float]] = defaultdict(list)
    for n in (int(s) for s in args.sizes.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            rows = np.random.default_rng(seed).choice(len(y_all), size=n, replace=False)
            x, y = x_all[rows], y_all[rows]
            noisy, wrong, source = sim_noise(y, k, rate=args.noise, careless_share=args.careless_share, seed=seed)
            t = time.perf_counter()
            check = check_labels(x, noisy, k, config=config)
            pass_s = time.perf_counter() - t
            flagged, guarded = check.issues.is_issue, check.exclude
            with_source = guarded | excluded_sources(flagged, source, settings)
            masks = {
                "uncleaned": np.zeros(n, bool),
                "all flags": flagged,
                "guarded": guarded,
                "+ source": with_source,
                "oracle": wrong,
            }
            accuracy = {name: head_accuracy(x[~m], noisy[~m], x_test, y_test, k) for name, m in masks.items()}
            kept = ~with_source
            accuracy["weighted"] = head_accuracy(x[kept], noisy[kept], x_test, y_test, k, check.weights[kept])
            relabeled = np.where(with_source, check.issues.suggested, noisy)
            accuracy["relabel"] = head_accuracy(x, relabeled, x_test, y_test, k)
            accuracy["true"] = head_accuracy(x, y, x_test, y_test, k)
            per_class = n / len(np.unique(noisy))
            for arm in ARMS:
                mask = masks.get(arm, with_source if arm in ("relabel", "weighted") else np.zeros(n, bool))
                p, r, _ = precision_recall_f1(mask, wrong) if mask.any() else (float("nan"), 0.0, 0.0)
                gain = 100 * (accuracy[arm] - accuracy["uncleaned"])
                gains[(n, arm)].append(gain)
                print(
                    f"{n:>5} {per_class:>9.1f} {seed:>4} {arm:<10} {int(mask.sum()):>8} {p:>6.3f} {r:>6.3f} "
                    f"{100 * accuracy[arm]:>8.1f} {gain:>+12.1f}",
                    flush=True,
                )
            print(f"      (pass: {pass_s:.1f} s, {int(wrong.sum())} wrong labels)", flush=True)
    print("\nmean accuracy gain over uncleaned (points), by size:")
    print(f"{'n':>5} " + " ".join(f"{arm:>10}" for arm in ARMS))
    for n in sorted({n for n, _ in gains}):
        print(f"{n:>5} " + " ".join(f"{np.mean(gains[(n, arm)]):>+10.1f}" for arm in ARMS))


if __name__ == "__main__":
    main()
