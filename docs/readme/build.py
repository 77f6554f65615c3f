"""Assemble README.md from the sections in this folder: ``python docs/readme/build.py`` (``--check`` to verify).

Each area keeps its own section file, so parallel work on two areas never edits the same lines of one big file.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parents[1] / "README.md"
ORDER = [
    *("intro", "contents", "core", "feedback", "monitoring", "retrain", "retrain-ml", "dashboard", "simulation"),
    *("measured", "layout", "development"),
]


def build() -> str:
    parts = [HERE.joinpath(f"{name}.md").read_text(encoding="utf-8").rstrip("\n") + "\n" for name in ORDER]
    return "\n".join(parts)


if __name__ == "__main__":
    text = build()
    if "--check" in sys.argv:
        if README.read_text(encoding="utf-8") != text:
            raise SystemExit("README.md is out of date: run python docs/readme/build.py")
    else:
        README.write_text(text, encoding="utf-8")
