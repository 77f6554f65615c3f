"""The gate's wrong decisions with and without holdout hygiene, on the banking77 simulation.

    .venv/bin/python bench/holdout_gate.py [--seeds 0,1,2] [--days 7] [--daily 500] [--noise 0.2] [--regate]
        [--holdout-noise 0.2] [--hygiene both|on|off] [--test-limit N] [--out sim-out/holdout-gate]

Each seed replays the same plan (``flywheel simulate``'s cleaned arm: noisy feedback, the label-quality pass on,
no clinc150 shift) twice: with holdout hygiene (the baseline's change: flagged, unreviewed holdout labels weigh the
gate's figures at their label weight) and without it (``gate_holdout_hygiene`` off: every holdout label counts in
full, as before). Every night's gate decision on the shared model is judged by the untouched test split: *promoted
worse* (the new champion is less accurate there than the one it replaced) or *refused better* (the refused candidate
was more accurate there than the champion it was judged against). Prints the counts side by side and writes
``OUT/summary-both|on|off.json``; each run's full results stay in ``OUT/seed-S-hygiene-on|off``.

``--regate`` then judges every night of the runs with hygiene again, on the very holdout items, models and SLAs the
gate saw (the artifact's ``lineage.json``), three ways side by side: the labels as given (the baseline, which
reproduces the recorded decision), hygiene's weights, and the plan's true labels (what a perfectly cleaned holdout
would decide). It writes ``OUT/regate.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def sim_config(args: argparse.Namespace, seed: int, out: Path, **extra: Any) -> Any:
    """The simulation of one seed on banking77 as the command line asks, written to ``out``."""
    from sim.scenario import SimConfig

    return SimConfig(
        train=DATA / "banking77" / "train.csv",
        test=DATA / "banking77" / "test.csv",
        out=out,
        days=args.days,
        daily=args.daily,
        noise=args.noise,
        holdout_noise=args.holdout_noise,
        seed=seed,
        **extra,
    )


def run_one(args: argparse.Namespace, seed: int, hygiene: bool) -> dict[str, Any]:
    """One seed, one gate: the cleaned arm's nights, and its gate decisions judged by the test split."""
    from sim.experiment import simulate
    from sim.report import gate_decisions

    out = Path(args.out) / f"seed-{seed}-hygiene-{'on' if hygiene else 'off'}"
    cfg = sim_config(
        args,
        seed,
        out,
        test_limit=args.test_limit,
        arms=("cleaned",),
        settings={"fine_tune_min_labels": 10**9, "gate_holdout_hygiene": hygiene},
    )
    start = time.perf_counter()
    results = simulate(cfg)
    rows = results.arms["cleaned"]
    return {
        "seed": seed,
        "hygiene": hygiene,
        "seconds": round(time.perf_counter() - start, 1),
        **gate_decisions(rows),
        "nights": [
            {
                "day": r.day,
                "promoted": r.promoted,
                "champion_before": r.champion_before,
                "candidate": r.stored.trained_accuracy,
                "verdict": r.gate_verdict,
            }
            for r in rows
        ],
        "final_accuracy": rows[-1].stored.accuracy,
    }


def regate(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """Each night of a run with hygiene, judged again by the gate on the very holdout items, models and SLAs it saw
    (the artifact's ``lineage.json``): with the labels as given, with hygiene's weights, and with the true labels.
    Returns one row per night: which decisions each would take and the test split's verdict on each."""
    import json as json_

    from sqlalchemy import select

    from flywheel.core.db import Database
    from flywheel.models.records import Prediction, Task, Tenant
    from flywheel.models.training import ModelVersion, TrainingRun
    from flywheel.retrain import gate, registry
    from flywheel.retrain.pipeline import sla_thresholds
    from sim.measures import gate_verdict
    from sim.traffic import make_plan

    out = Path(args.out) / f"seed-{seed}-hygiene-on"
    results = json_.loads((out / "results.json").read_text())["arms"]["cleaned"]
    cfg = sim_config(args, seed, out)
    truth = {i.id: i.label for i in make_plan(cfg).items}
    db = Database(f"sqlite:///{out / 'cleaned.db'}")
    rows = []
    with db.session() as session:
        task = session.scalar(select(Task))
        assert task is not None
        slas = sla_thresholds(session, task.id)
        champion = session.scalar(select(ModelVersion).where(ModelVersion.rung == "zero_shot"))
        runs = session.scalars(select(TrainingRun).where(TrainingRun.model_id.is_not(None)).order_by(TrainingRun.id))
        for night, run in zip(results, runs, strict=True):
            model = session.get(ModelVersion, run.model_id)
            assert model is not None and champion is not None
            lineage = json_.loads((Path(str(model.artifact_path)) / "lineage.json").read_text())
            ids, weights = lineage["holdout_ids"], lineage["holdout_item_weights"]
            found = {
                pid: (cid, text, label, slug)
                for pid, cid, text, label, slug in session.execute(
                    select(
                        Prediction.id, Prediction.client_id, Prediction.text, Prediction.effective_label, Tenant.slug
                    )
                    .join(Tenant, Tenant.id == Prediction.tenant_id)
                    .where(Prediction.id.in_(ids))
                )
            }
            items = [found[pid] for pid in ids]
            texts, tenants = [i[1] for i in items], [i[3] for i in items]
            answers = {}
            for name, mv in (("candidate", model), ("champion", champion)):
                clf = registry.load_model(mv)
                proba = clf.predict_proba(texts, batch_size=64)
                answers[name] = [clf.labels[int(k)] for k in proba.argmax(axis=1)]
            given = [i[2] for i in items]
            true = [truth[i[0]] for i in items]
            row: dict[str, Any] = {"day": night["day"], "recorded": run.decision}
            for arm, labels, w in (("given", given, None), ("hygiene", given, weights), ("true", true, None)):
                decision = gate.decide(
                    gate.evaluate_predictions(labels, answers["candidate"], tenants, task.labels, w),
                    gate.evaluate_predictions(labels, answers["champion"], tenants, task.labels, w),
                    slas=slas,
                )
                row[arm] = gate_verdict(decision.promote, night["champion_before_accuracy"], night["trained_accuracy"])
            row["n_weighted"] = sum(1 for x in weights if x != 1.0)
            rows.append(row)
            if run.decision == "promoted":
                champion = model
    db.dispose()
    return rows


def table(runs: list[dict[str, Any]]) -> str:
    """Wrong decisions per seed, with hygiene and without (the baseline), side by side."""
    by = {(r["seed"], r["hygiene"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        "| seed | decisions | wrong without hygiene (promoted worse / refused better) | wrong with hygiene "
        "| final accuracy without / with |",
        "| --- | --- | --- | --- | --- |",
    ]

    def cell(r: dict[str, Any] | None) -> str:
        return "–" if r is None else f"{r['wrong']} ({r['promoted_worse']} / {r['refused_better']})"

    def acc(r: dict[str, Any] | None) -> str:
        return "–" if r is None else f"{100 * r['final_accuracy']:.1f}"

    for seed in seeds:
        off, on = by.get((seed, False)), by.get((seed, True))
        n = (off or on or {}).get("decisions", 0)
        lines.append(f"| {seed} | {n} | {cell(off)} | {cell(on)} | {acc(off)} / {acc(on)} |")
    for hygiene in (False, True):
        chosen = [r for r in runs if r["hygiene"] is hygiene]
        if chosen:
            total = {k: sum(r[k] for r in chosen) for k in ("decisions", "wrong", "promoted_worse", "refused_better")}
            lines.append(
                f"| all ({'with' if hygiene else 'without'} hygiene) | {total['decisions']} | "
                f"{total['wrong']} ({total['promoted_worse']} / {total['refused_better']}) | | |"
            )
    return "\n".join(lines)


def regate_table(nights: dict[int, list[dict[str, Any]]]) -> str:
    """Wrong decisions of the same gate on the same nights: labels as given (the baseline), hygiene, true labels."""
    lines = [
        "| seed | nights | wrong, labels as given | wrong, with hygiene | wrong, true holdout labels |",
        "| --- | --- | --- | --- | --- |",
    ]
    totals = dict.fromkeys(("given", "hygiene", "true"), 0)
    for seed, rows in sorted(nights.items()):
        cells = []
        for arm in totals:
            wrong = [r["day"] for r in rows if r[arm] not in ("right", None)]
            totals[arm] += len(wrong)
            cells.append(f"{len(wrong)} (nights {', '.join(map(str, wrong)) or '–'})")
        lines.append(f"| {seed} | {len(rows)} | " + " | ".join(cells) + " |")
    n = sum(len(rows) for rows in nights.values())
    lines.append(f"| all | {n} | " + " | ".join(str(v) for v in totals.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    sys.path.insert(0, str(ROOT))  # sim/ is a tool in the clone, not an installed package
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--daily", type=int, default=500)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--holdout-noise", type=float, default=None, help="default: --noise")
    parser.add_argument("--hygiene", choices=("both", "on", "off"), default="both")
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--out", default="sim-out/holdout-gate")
    parser.add_argument(
        "--regate",
        action="store_true",
        help="judge again each night of the runs with hygiene already in --out, on their own holdout items and models:"
        " labels as given, hygiene's weights, true labels",
    )
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing: the benchmark needs ../shared/data (banking77)")
    if args.regate:
        nights = {seed: regate(args, seed) for seed in (int(s) for s in args.seeds.split(","))}
        (Path(args.out) / "regate.json").write_text(json.dumps(nights, indent=2))
        print(regate_table(nights))
        return
    arms = {"both": (False, True), "on": (True,), "off": (False,)}[args.hygiene]
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for hygiene in arms:
            runs.append(run_one(args, seed, hygiene))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "nights"}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"summary-{args.hygiene}.json").write_text(json.dumps({"config": vars(args), "runs": runs}, indent=2))
    print(table(runs))


if __name__ == "__main__":
    main()
