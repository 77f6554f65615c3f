"""Rules cold start: a few keyword rules written from the label names alone, against the zero-shot rung.

For banking77 and clinc150 (in-scope intents; ``oos`` has no name to write a rule from): at most 3 keyword rules
per label, generated here from the label's name and nothing else (no text of either split is read to write them):
the whole name as a phrase (``card_arrival`` -> "card arrival") and its two most distinctive words (the words
used by the fewest label names; a word in two names cannot tell them apart, and English stop words, scikit-learn's
list, say nothing about any label, so both are left out).

The rules vote on the train split's texts as they would on logged predictions (``flywheel.domain.labeling_rules``,
case-insensitive on word boundaries), the effective-label rule resolves several votes
(``flywheel.domain.effective.resolve``: each rule one voter, majority, ties to the later rule), and the few-shot head
is trained on the texts the rules labeled, exactly as ``flywheel.retrain`` trains it (logistic regression on frozen
all-MiniLM-L6-v2 embeddings). Printed side by side on the test split: the zero-shot rung (label names), the rules
alone (abstaining counts as wrong), and the rules-trained few-shot head; with the rules' train coverage and the
accuracy of their labels. Run from the repo root: ``.venv/bin/python bench/rules.py [--cache-dir var/bench-cache]``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from flywheel.domain.effective import Vote, resolve
from flywheel.domain.labeling_rules import compile_rule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_noise import DATA, embed

MAX_SHARED = 1  # a word shared by two label names cannot tell them apart


def rules_from_names(labels: list[str]) -> dict[str, list[str]]:
    """Label -> up to 3 keyword rules (one keyword or phrase each), from the label names alone."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS as STOP  # a standard list, not tuned here

    words = {label: [w for w in label.lower().replace("-", "_").split("_") if w] for label in labels}
    used_by = Counter(w for ws in words.values() for w in set(ws))
    out = {}
    for label, ws in words.items():
        rules = [" ".join(ws)] if len(ws) > 1 else []
        distinctive = sorted({w for w in ws if w not in STOP and used_by[w] <= MAX_SHARED}, key=lambda w: used_by[w])
        rules += distinctive[: 3 - len(rules)]
        out[label] = rules or [" ".join(ws)]
    return out


def rules_body(rules: dict[str, list[str]]) -> dict[str, list[dict[str, object]]]:
    """The rules as the body of ``PUT /v1/tasks/{task}/rules``: one keywords rule per keyword."""
    return {
        "rules": [
            {
                "name": f"{re.sub(r'[^A-Za-z0-9._:-]', '-', label)[:50]}-{i}",
                "label": label,
                "kind": "keywords",
                "keywords": [kw],
            }
            for label, kws in rules.items()
            for i, kw in enumerate(kws)
        ]
    }


def rule_labels(texts: list[str], rules: dict[str, list[str]]) -> list[str | None]:
    """Each text's label from the rules' votes (None where no rule votes), as the platform resolves them."""
    compiled = [
        (label, compile_rule("keywords", [kw], None)) for label, kws in rules.items() for kw in kws
    ]  # one rule per keyword: each is its own voter
    out: list[str | None] = []
    for text in texts:
        votes = [
            Vote(label, "rule", f"r{i}", None, i) for i, (label, regex) in enumerate(compiled) if regex.search(text)
        ]
        out.append(resolve(votes).label)
    return out


def load(name: str) -> tuple[list[str], list[str], list[str], list[str]]:
    train, test = pd.read_csv(DATA / name / "train.csv"), pd.read_csv(DATA / name / "test.csv")
    train, test = train[train["label"] != "oos"], test[test["label"] != "oos"]
    return train["text"].tolist(), train["label"].tolist(), test["text"].tolist(), test["label"].tolist()


def run(name: str, cache_dir: Path | None) -> dict[str, float | int | str]:
    from flywheel.domain.encoder import load_encoder
    from flywheel.retrain.classifiers import build_zero_shot, label_prompts, train_few_shot

    x_texts, y_train, t_texts, y_test = load(name)
    labels = sorted(set(y_train))
    rules = rules_from_names(labels)
    voted = rule_labels(x_texts, rules)
    keep = [i for i, v in enumerate(voted) if v is not None]
    x_train, _, _ = embed(f"{name}-train", x_texts, cache_dir)
    x_test, _, _ = embed(f"{name}-test", t_texts, cache_dir)
    truth = np.asarray(y_test, dtype=object)

    zero = build_zero_shot(labels, label_embeddings=load_encoder().embed(label_prompts(labels)))
    zero_acc = float(
        (np.asarray(labels, dtype=object)[zero.predict_proba_embeddings(x_test).argmax(1)] == truth).mean()
    )
    head = train_few_shot([], [voted[i] for i in keep], labels, embeddings=x_train[keep], seed=0)
    head_acc = float(
        (np.asarray(labels, dtype=object)[head.predict_proba_embeddings(x_test).argmax(1)] == truth).mean()
    )
    alone = rule_labels(t_texts, rules)
    return {
        "dataset": name,
        "labels": len(labels),
        "rules": sum(len(r) for r in rules.values()),
        "labels_with_votes": len({voted[i] for i in keep}),
        "coverage": len(keep) / len(x_texts),
        "rule_label_accuracy": float(np.mean([voted[i] == y_train[i] for i in keep])) if keep else 0.0,
        "n_train": len(keep),
        "zero_shot": zero_acc,
        "rules_alone": float(np.mean([a == t for a, t in zip(alone, y_test, strict=True)])),
        "rules_few_shot": head_acc,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="banking77,clinc150")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/bench-cache"), help="embedding cache")
    parser.add_argument("--show-rules", action="store_true", help="print the generated rules")
    parser.add_argument(
        "--write-rules", type=Path, help="only write the first dataset's rules as a PUT body (for simulate --rules)"
    )
    args = parser.parse_args()
    if args.write_rules is not None:
        _, y, _, _ = load(args.datasets.split(",")[0])
        args.write_rules.write_text(json.dumps(rules_body(rules_from_names(sorted(set(y)))), indent=1))
        return
    print(
        f"{'dataset':<10} {'labels':>6} {'rules':>5} {'voted':>5} {'coverage':>8} {'rule acc':>8} {'n train':>7}"
        f" {'zero-shot':>9} {'rules alone':>11} {'rules->few-shot':>15}"
    )
    for name in args.datasets.split(","):
        if args.show_rules:
            _, y, _, _ = load(name)
            for label, kws in rules_from_names(sorted(set(y))).items():
                print(f"  {label}: {kws}", file=sys.stderr)
        r = run(name, args.cache_dir)
        print(
            f"{r['dataset']:<10} {r['labels']:>6} {r['rules']:>5} {r['labels_with_votes']:>5} {r['coverage']:>8.3f}"
            f" {r['rule_label_accuracy']:>8.3f} {r['n_train']:>7} {r['zero_shot']:>9.3f} {r['rules_alone']:>11.3f}"
            f" {r['rules_few_shot']:>15.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
