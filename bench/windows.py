"""Text windows: does letting the window follow the data pay on long texts, and leave short texts as they were?

Side by side, on the same documents, the arms taking turns block by block (so load from elsewhere hits all alike):

- ``128 cut``: the frozen encoder as before, every text cut at 128 tokens;
- ``chosen``: the window ``flywheel.domain.windows`` chooses from the training texts (p95 length rounded up to 32,
  at least 128, at most the base model's limit of 256), longer texts chunked and mean-pooled
  (``Encoder.windowed``);
- with ``--ablation`` also ``128 chunked`` (the same chunking at 128 tokens) and ``512 whole`` (the model's 512
  positions, one chunk up to 512 tokens, beyond the 256 its authors publish).

For each: the test accuracy of a few-shot logistic-regression head (``train_few_shot``, C=10) on the frozen
embeddings of the training documents, and the embedding time per text. On the long-text set
(``bench/long_text.py``, composed from real texts) and on banking77 (short: the chosen window is 128 and nothing may
change). Then the cost of a fine-tuning step (forward, backward, AdamW) at 64, 128 and 256 tokens, which is what
the fine-tuning window's cap weighs.

Run from the repo root: ``.venv/bin/python bench/windows.py`` (``--train 500 --test 250`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from long_text import DATA, long_text_set

from flywheel.domain.encoder import Encoder, WindowedEncoder, load_encoder
from flywheel.domain.windows import text_windows
from flywheel.retrain.classifiers import train_few_shot

BLOCK = 200  # texts per turn


def banking77(split: str, n: int, seed: int) -> tuple[list[str], np.ndarray, list[str]]:
    df = pd.read_csv(DATA / "banking77" / f"{split}.csv")
    classes = sorted(pd.read_csv(DATA / "banking77" / "train.csv")["label"].unique())
    if n < len(df):
        df = df.sample(n=n, random_state=seed).reset_index(drop=True)
    return df["text"].tolist(), df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(), classes


class Arm:
    """One way of embedding: a name and an ``embed(texts)``; collects its embeddings and seconds."""

    def __init__(self, name: str, embed: Any) -> None:
        self.name, self.embed = name, embed
        self.seconds = 0.0
        self.parts: list[np.ndarray] = []

    def run(self, texts: list[str]) -> None:
        start = time.perf_counter()
        self.parts.append(np.asarray(self.embed(texts), dtype=np.float32))
        self.seconds += time.perf_counter() - start

    def take(self) -> np.ndarray:
        out = np.concatenate(self.parts)
        self.parts = []
        return out


def arms_for(encoder: Encoder, window: int, ablation: bool) -> list[Arm]:
    arms = [
        Arm("128 cut", lambda t: encoder.embed(t, max_length=128)),
        Arm(f"chosen ({window}, chunked)", encoder.windowed(window).embed),
    ]
    if ablation:
        arms.append(Arm("128 chunked", encoder.windowed(128).embed))
        arms.append(Arm("512 whole", WindowedEncoder(encoder, 512).embed))
    return arms


def compare(
    name: str, train: tuple[list[str], np.ndarray, list[str]], test: tuple[list[str], np.ndarray, list[str]], args: Any
) -> dict[str, Any]:
    encoder = load_encoder()
    windows = text_windows(train[0], encoder.token_lengths, limit=encoder.limit)
    arms = arms_for(encoder, windows.embedding, args.ablation)
    results: dict[str, Any] = {"windows": windows.to_dict(), "arms": {}}
    embedded: dict[str, dict[str, np.ndarray]] = {arm.name: {} for arm in arms}
    for split, texts in (("train", train[0]), ("test", test[0])):
        for start in range(0, len(texts), BLOCK):
            block = texts[start : start + BLOCK]
            for arm in arms if (start // BLOCK) % 2 == 0 else arms[::-1]:
                arm.run(block)
            print(f"  {name} {split}: {min(start + BLOCK, len(texts))}/{len(texts)}", file=sys.stderr, end="\r")
        for arm in arms:
            embedded[arm.name][split] = arm.take()
    print(file=sys.stderr)
    n_texts = len(train[0]) + len(test[0])
    test_lengths = np.array(encoder.token_lengths(test[0]))
    buckets = {f"<={encoder.limit}": test_lengths <= encoder.limit, f">{encoder.limit}": test_lengths > encoder.limit}
    for arm in arms:
        x_train, x_test = embedded[arm.name]["train"], embedded[arm.name]["test"]
        head = train_few_shot(train[0], train[1], train[2], embeddings=x_train)
        right = head.predict_proba_embeddings(x_test).argmax(1) == test[1]
        results["arms"][arm.name] = {
            "accuracy": round(float(right.mean()), 4),
            "accuracy_by_tokens": {k: round(float(right[m].mean()), 4) for k, m in buckets.items() if m.any()},
            "test_docs_by_tokens": {k: int(m.sum()) for k, m in buckets.items()},
            "ms_per_text": round(1000 * arm.seconds / n_texts, 2),
        }
    base = embedded[arms[0].name]
    chosen = embedded[arms[1].name]
    results["max_abs_difference_chosen_vs_128"] = float(
        max(np.abs(base[s] - chosen[s]).max() for s in ("train", "test"))
    )
    return results


def fine_tune_step_cost(texts: list[str], steps: int, batch: int) -> dict[int, float]:
    """Seconds per optimizer step of the MiniLM fine-tuning model at each window (head + tail cut)."""
    import torch

    from flywheel.domain.encoder import base_model_path
    from flywheel.retrain.architectures import load_model_for_training
    from flywheel.retrain.classifiers import pad_ids, token_ids

    tokenizer, model = load_model_for_training(base_model_path(), [f"l{i}" for i in range(77)], pooling="mean")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    target = torch.zeros(batch, dtype=torch.long)
    out: dict[int, float] = {}
    for window in (64, 128, 256):
        enc = pad_ids(token_ids(tokenizer, texts[:batch], window, "head_tail"), int(tokenizer.pad_token_id or 0))
        tensors = {k: torch.from_numpy(v) for k, v in enc.items()}
        times = []
        for _ in range(steps + 1):  # the first step warms up
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(**tensors).logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        out[window] = round(float(np.median(times[1:])), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=2000, help="training documents of each set")
    parser.add_argument("--test", type=int, default=1000, help="test documents of each set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablation", action="store_true", help="also 128 chunked and 512 whole")
    parser.add_argument("--ft-steps", type=int, default=3, help="fine-tuning steps timed per window (0: none)")
    parser.add_argument("--ft-batch", type=int, default=32)
    parser.add_argument("--sets", default="long_text,banking77", help="which sets to compare")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument(
        "--requests-per-text", type=int, default=1, help="long texts: utterances stating the intent (a ticket: 3)"
    )
    args = parser.parse_args()

    import torch

    figures: dict[str, Any] = {"date": date.today().isoformat(), "torch_threads": torch.get_num_threads()}
    sets = args.sets.split(",")
    long_train = long_text_set("train", args.seed, n=args.train, requests_per_text=args.requests_per_text)
    if "long_text" in sets:
        long_test = long_text_set("test", args.seed, n=args.test, requests_per_text=args.requests_per_text)
        figures["long_text"] = compare("long-text", long_train, long_test, args)
    if "banking77" in sets:
        figures["banking77"] = compare(
            "banking77", banking77("train", args.train, args.seed), banking77("test", args.test, args.seed), args
        )
    encoder = load_encoder()
    figures["chosen_windows"] = {
        name: text_windows(
            pd.read_csv(DATA / name / "train.csv")["text"].tolist(), encoder.token_lengths, limit=encoder.limit
        ).to_dict()
        for name in ("banking77", "clinc150", "sms_spam")
    }
    if args.ft_steps:
        figures["fine_tune_seconds_per_step"] = fine_tune_step_cost(long_train[0], args.ft_steps, args.ft_batch)

    print("\n| set | arm | window | few-shot accuracy | embedding ms/text |\n| --- | --- | --- | --- | --- |")
    for name in sets:
        res = figures[name]
        for arm, r in res["arms"].items():
            by = ", ".join(f"{k}: {v:.4f}" for k, v in r["accuracy_by_tokens"].items())
            print(
                f"| {name} | {arm} | {res['windows']['embedding']} | {r['accuracy']:.4f} ({by}) | {r['ms_per_text']} |"
            )
        print(f"| {name} | max abs difference, chosen vs 128 cut | | {res['max_abs_difference_chosen_vs_128']:.2e} | |")
    print("\nchosen windows (embedding / fine-tuning, p95 tokens):")
    chosen = {**figures["chosen_windows"], **{k: figures[k]["windows"] for k in sets if k == "long_text"}}
    for name, w in chosen.items():
        print(f"  {name}: {w['embedding']} / {w['fine_tuning']} (p95 {w['p95_tokens']}, max {w['max_tokens']})")
    if "fine_tune_seconds_per_step" in figures:
        print(f"fine-tuning seconds per step (batch {args.ft_batch}): {figures['fine_tune_seconds_per_step']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
