"""``flywheel simulate``: the command line of the simulation (``flywheel.cli`` loads it from the clone on demand;
``bench/flywheel_sim.py`` runs it with the banking77 paths filled in)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sim.experiment import simulate
from sim.report import results_table, summarize
from sim.scenario import ARMS, SimConfig


@click.command("simulate")
@click.option(
    "--train",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="CSV with text,label: the production traffic.",
)
@click.option(
    "--test",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="CSV with text,label: the untouched evaluation split.",
)
@click.option("--days", type=int, default=7, show_default=True)
@click.option("--daily", type=int, default=500, show_default=True, help="Predictions per day, all tenants.")
@click.option("--feedback-rate", type=float, default=0.5, show_default=True)
@click.option("--noise", type=float, default=0.2, show_default=True, help="Share of wrong feedback labels.")
@click.option(
    "--holdout-noise",
    type=float,
    help="Share of wrong feedback labels on the platform's holdout items (default: --noise).",
)
@click.option(
    "--holdout-hygiene/--no-holdout-hygiene",
    default=True,
    show_default=True,
    help="The gate weighs flagged, unreviewed holdout labels by the probability that they are right "
    "(gate_holdout_hygiene); off, every holdout label counts in full.",
)
@click.option(
    "--careless-share",
    type=float,
    default=0.25,
    show_default=True,
    help="Of the wrong labels, the share from one careless source.",
)
@click.option("--tenants", type=int, default=3, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--shift",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of shifted traffic (a new domain) that reaches the first tenant.",
)
@click.option("--shift-day", type=int, default=4, show_default=True)
@click.option("--database-url", "sim_database_url", help="A PostgreSQL server URL; SQLite files by default.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-limit", type=int, help="Score on the first N test rows only.")
@click.option(
    "--fine-tune-min-labels",
    type=int,
    default=10**9,
    show_default=True,
    help="Labels before the ladder fine-tunes the encoder (default: never; the few-shot head only).",
)
@click.option(
    "--review-budget",
    type=int,
    default=0,
    show_default=True,
    help="Reviewer decisions per simulated day and task (true labels): the review queue's first items in the "
    "cleaned arm, a random spot-check of labeled items in the uncleaned arm.",
)
@click.option(
    "--rules",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON {"rules": [...]}: labeling rules put on the task on day 0 (bench/rules.py --write-rules makes one).',
)
@click.option("--arms", default=",".join(ARMS), show_default=True)
def simulate_command(**opts: Any) -> None:
    """Replay labeled text as production traffic through a running server, over simulated days."""
    from tqdm import tqdm

    cfg = config_from_options(opts)
    bar = tqdm(total=cfg.days * len(cfg.arms), desc="simulated days", unit="day")

    def progress(message: str) -> None:
        bar.set_postfix_str(message)
        bar.update(1)

    results = simulate(cfg, progress)
    bar.close()
    click.echo(results_table(results))
    click.echo(json.dumps(summarize(results), indent=2))
    click.echo(
        f"results: {cfg.out / 'results.json'}, charts: {cfg.out / 'accuracy.png'}, {cfg.out / 'sla_status.png'}",
        err=True,
    )


def config_from_options(opts: dict[str, Any]) -> SimConfig:
    arms = tuple(a.strip() for a in opts["arms"].split(",") if a.strip())
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise click.UsageError(f"unknown arms: {', '.join(sorted(unknown))}")
    return SimConfig(
        train=opts["train"],
        test=opts["test"],
        out=opts["out"],
        days=opts["days"],
        daily=opts["daily"],
        feedback_rate=opts["feedback_rate"],
        noise=opts["noise"],
        holdout_noise=opts.get("holdout_noise"),
        careless_share=opts["careless_share"],
        tenants=opts["tenants"],
        shift=opts["shift"],
        shift_day=opts["shift_day"],
        database_url=opts["sim_database_url"],
        seed=opts["seed"],
        test_limit=opts["test_limit"],
        arms=arms,
        review_budget=opts["review_budget"],
        rules=opts.get("rules"),
        settings={
            "fine_tune_min_labels": opts["fine_tune_min_labels"],
            "gate_holdout_hygiene": opts.get("holdout_hygiene", True),
        },
    )
