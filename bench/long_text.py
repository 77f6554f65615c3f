"""A long-text classification set composed from real texts: customer "threads" that end in a banking77 request.

``../shared/data`` has no long-text dataset, so this one is **composed from real texts**; nobody wrote any of its
sentences for it. Each document is a thread of real messages:

- first, several unrelated messages: clinc150's out-of-scope utterances (its ``oos`` rows), clinc150 utterances
  from domains that have nothing to do with banking (small talk, home, kitchen and dining, auto and commute,
  utility, meta) and ``ham`` (non-spam) messages from sms_spam: the chit-chat before the customer gets to the point;
- then the banking77 request, whose intent is the document's label: last in most documents, and in the middle
  (more messages after it) in a third of them. With ``requests=k`` (a support ticket rather than a thread), the
  customer states the issue ``k`` times, in ``k`` different banking77 utterances of the same intent, one after
  the other.

Lengths are drawn uniformly between 150 and 600 tokens (all-MiniLM-L6-v2's tokenizer, special tokens included), so a
window of 128 tokens sees only the chit-chat of almost every document: the label-bearing request lies beyond it.
Train documents use the train splits of all three sources (clinc150's val rows too), test documents their test
splits, so no sentence appears in both. Deterministic for a given ``(split, seed)``.

``long_text_set(split, seed)`` returns ``(texts, label ids, class names)`` like ``bench/label_noise.py``'s ``load``;
class names are banking77's 77 intents, sorted.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: clinc150 domains unrelated to banking (its banking, credit_cards, travel and work domains talk about money,
#: cards, exchange rates or pay, which would blur the labels).
FILLER_DOMAINS = ("oos", "small_talk", "home", "kitchen_and_dining", "auto_and_commute", "utility", "meta")
MIN_TOKENS, MAX_TOKENS = 150, 600
MIDDLE_SHARE = 1 / 3  # documents whose request sits in the middle of the thread
#: Documents per split by default: a modest run on a 2-core machine.
SIZES = {"train": 2000, "test": 1000}


def _read(name: str, split: str) -> pd.DataFrame:
    return pd.read_csv(DATA / name / f"{split}.csv")


@cache
def _sources(split: str) -> tuple[list[str], list[str], list[str]]:
    """(banking77 requests, their labels, filler messages) of one side of the split."""
    if split not in SIZES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    requests = _read("banking77", split)
    clinc_splits = ("train", "val") if split == "train" else ("test",)
    clinc = pd.concat([_read("clinc150", s) for s in clinc_splits], ignore_index=True)
    clinc = clinc[clinc["domain"].isin(FILLER_DOMAINS)]
    sms = _read("sms_spam", split)
    ham = sms[sms["label"] == "ham"]["text"]
    filler = [t.strip() for t in [*clinc["text"], *ham] if isinstance(t, str) and t.strip()]
    return requests["text"].tolist(), requests["label"].tolist(), filler


@cache
def _token_counts(texts: tuple[str, ...]) -> np.ndarray:
    """Tokens per message, no special tokens (the base model's tokenizer)."""
    from transformers import AutoTokenizer

    from flywheel.domain.encoder import base_model_path

    tok = AutoTokenizer.from_pretrained(base_model_path(), local_files_only=True)
    ids = tok(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return np.array([len(x) for x in ids], dtype=np.int64)


def long_text_set(
    split: str = "train", seed: int = 0, n: int | None = None, requests_per_text: int = 1
) -> tuple[list[str], np.ndarray, list[str]]:
    """``n`` documents (default 2,000 train / 1,000 test) of 150–600 tokens, each stating its intent in
    ``requests_per_text`` utterances: texts, label ids, class names."""
    requests, labels, filler = _sources(split)
    same_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        same_label.setdefault(label, []).append(i)
    classes = sorted(set(_read("banking77", "train")["label"]))
    index = {c: i for i, c in enumerate(classes)}
    filler_tokens = _token_counts(tuple(filler))
    request_tokens = _token_counts(tuple(requests))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    count = SIZES[split] if n is None else n
    picks = rng.choice(len(requests), size=count, replace=count > len(requests))
    texts, y = [], []
    for r in picks:
        target = int(rng.integers(MIN_TOKENS, MAX_TOKENS + 1)) - 2  # less [CLS] and [SEP]
        stated = [int(r)]
        if requests_per_text > 1:  # (the default draws nothing more: the one-request set stays as it was)
            pool = [i for i in same_label[labels[r]] if i != r]
            stated += [int(i) for i in rng.choice(pool, size=min(requests_per_text - 1, len(pool)), replace=False)]
        before: list[str] = []
        total = int(request_tokens[stated].sum())
        while total < target:
            f = int(rng.integers(len(filler)))
            before.append(filler[f])
            total += int(filler_tokens[f])
        after: list[str] = []
        if rng.random() < MIDDLE_SHARE and len(before) > 2:
            cut = int(rng.integers(len(before) // 3, 2 * len(before) // 3 + 1))
            before, after = before[:cut], before[cut:]
        texts.append("\n".join([*before, *(requests[i] for i in stated), *after]))
        y.append(index[labels[r]])
    return texts, np.array(y, dtype=np.int64), classes


if __name__ == "__main__":
    docs, ys, names = long_text_set("train", n=5)
    for doc, label in zip(docs, ys, strict=True):
        print(f"--- {names[label]} ({len(doc)} characters)\n{doc}\n")
