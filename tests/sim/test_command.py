"""``flywheel simulate``: the product's CLI loads the simulation only when the command runs, and says what to
install when the tool is not there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_cli_loads_neither_the_simulation_nor_matplotlib() -> None:
    code = "import sys, flywheel.cli\nprint(sorted(m for m in ('sim', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_simulate_help_is_the_simulations_own_under_the_flywheel_command() -> None:
    result = CliRunner().invoke(cli, ["simulate", "--help"], prog_name="flywheel")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: flywheel simulate [OPTIONS]")
    for option in ("--train", "--test", "--out", "--review-budget", "--arms", "--fine-tune-min-labels", "--rules"):
        assert option in result.output


def test_simulate_options_are_checked_by_the_simulation(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("text,label\nhello,greeting\n")
    args = ["simulate", "--train", str(data), "--test", str(data), "--out", str(tmp_path / "out"), "--arms", "other"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "unknown arms: other" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing", ["matplotlib", "sim"])
def test_simulate_without_the_tool_says_what_to_install(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    for name in [m for m in sys.modules if m == "sim" or m.startswith(("sim.", "matplotlib"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # what an import finds when the package is not installed
    result = CliRunner().invoke(cli, ["simulate", "--help"])
    assert result.exit_code == 1
    assert "pip install -e '.[sim]'" in result.output and f"missing: {missing}" in result.output


def test_rules_from_a_file_are_put_on_the_task_on_day_0(tmp_path: Path) -> None:
    import json

    from sim.harness import running_system
    from sim.replay import set_up_customers
    from sim.scenario import TASK, SimConfig
    from sim.traffic import Plan

    rules = tmp_path / "rules.json"
    body = {"rules": [{"name": "rate-words", "label": "exchange_rate", "kind": "keywords", "keywords": ["rate"]}]}
    rules.write_text(json.dumps(body))
    data = tmp_path / "data.csv"
    data.write_text("text,label\nwhat rate,exchange_rate\n")
    cfg = SimConfig(train=data, test=data, out=tmp_path / "out", rules=rules, arms=("cleaned",))
    plan = Plan(labels=["exchange_rate", "card_arrival"], items=[], feedback=[], test_texts=[], test_labels=[])
    with running_system(cfg, "cleaned") as system:
        set_up_customers(system.api, cfg, plan)
        got = system.api.call("GET", f"/v1/tasks/{TASK}/rules", system.api.admin)["rules"]
    assert [(r["name"], r["label"], r["keywords"]) for r in got] == [("rate-words", "exchange_rate", ["rate"])]


def test_holdout_noise_sets_the_share_of_wrong_labels_on_the_holdout(tmp_path: Path) -> None:
    """``--holdout-noise`` sets the share of wrong labels on the platform's holdout items alone (default:
    ``--noise``, the plan the seed always gave)."""
    from sim.command import config_from_options
    from sim.traffic import in_holdout, make_plan

    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"text {i},label-{i % 5}\n" for i in range(400)))
    base = {
        "train": data, "test": data, "out": tmp_path, "days": 4, "daily": 1000, "feedback_rate": 1.0, "noise": 0.3,
        "careless_share": 0.25, "tenants": 2, "shift": None, "shift_day": 4, "sim_database_url": None, "seed": 3,
        "test_limit": None, "arms": "cleaned", "review_budget": 0, "fine_tune_min_labels": 10**9,
    }  # fmt: skip
    default = make_plan(config_from_options(base))
    assert make_plan(config_from_options({**base, "holdout_noise": 0.3})) == default
    assert config_from_options({**base, "holdout_hygiene": False}).settings["gate_holdout_hygiene"] is False

    def wrong_share(noise: float | None, holdout: bool) -> float:
        plan = make_plan(config_from_options({**base, "holdout_noise": noise}))
        chosen = [f for f in plan.feedback if in_holdout(f.item, 15) is holdout]
        assert len(chosen) > 100 and (not holdout or len(chosen) < 0.2 * len(plan.feedback))  # the platform's 15%
        return sum(f.noisy_label != f.true_label for f in chosen) / len(chosen)

    assert wrong_share(0.0, True) == 0.0 and abs(wrong_share(0.0, False) - 0.3) < 0.03
    assert abs(wrong_share(0.6, True) - 0.6) < 0.08 and abs(wrong_share(None, True) - 0.3) < 0.08


def test_a_gate_decision_is_judged_by_the_test_split() -> None:
    from sim.measures import gate_verdict

    assert gate_verdict(True, 0.80, 0.78) == "promoted_worse"
    assert gate_verdict(False, 0.80, 0.82) == "refused_better"
    assert gate_verdict(True, 0.80, 0.82) == gate_verdict(False, 0.80, 0.79) == "right"
    assert gate_verdict(False, 0.80, None) is None
