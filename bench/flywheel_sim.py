"""The full-size flywheel simulation on banking77 (the README's table and charts come from this run).

    .venv/bin/python bench/flywheel_sim.py [--out sim-out/banking77] [--days 7] [--daily 500] [--noise 0.2]
        [--review-budget 100]

It is `flywheel simulate` (the clone's sim/ package, with the `sim` extra installed) with the dataset paths filled
in; add `--database-url postgresql+psycopg://…` to run the arms on PostgreSQL. Unless --no-shift (or your own
--shift CSV) is given, clinc150's travel domain (intents banking77 does not have) reaches the first tenant from the
shift day on. With --review-budget N, a reviewer decides N labels a day (the true label, through
POST /v1/review/{id}) in the cleaned arm (the review queue's first items) and in the uncleaned arm (a random
spot-check of labeled items).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def write_shift(out: Path, domain: str) -> Path:
    """The shifted traffic: one clinc150 domain (intents banking77 does not have), as text,label CSV."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"shift_clinc150_{domain}.csv"
    with (DATA / "clinc150" / "train.csv").open(newline="", encoding="utf-8") as src, path.open("w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["text", "label"])
        for row in csv.DictReader(src):
            if row["domain"] == domain:
                writer.writerow([row["text"], row["label"]])
    return path


def main() -> None:
    sys.path.insert(0, str(ROOT))  # sim/ is a tool in the clone, not an installed package
    from sim.command import simulate_command

    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing: the simulation needs ../shared/data")
    args = sys.argv[1:]
    defaults = {
        "--train": str(DATA / "banking77" / "train.csv"),
        "--test": str(DATA / "banking77" / "test.csv"),
        "--out": "sim-out/banking77",
    }
    for flag, value in defaults.items():
        if flag not in args:
            args += [flag, value]
    if "--no-shift" in args:
        args.remove("--no-shift")
    elif "--shift" not in args:
        args += ["--shift", str(write_shift(Path(args[args.index("--out") + 1]), "travel"))]
    simulate_command.main(args=args, prog_name="flywheel_sim", standalone_mode=True)


if __name__ == "__main__":
    main()
