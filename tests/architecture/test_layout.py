"""The package layout of ARCHITECTURE.md: no platform/__init__.py, and every sub-package listed in pyproject."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_platform_has_no_init_so_the_stdlib_platform_module_is_not_shadowed() -> None:
    assert not (ROOT / "platform" / "__init__.py").exists()
    import platform

    assert hasattr(platform, "system"), "the standard library's platform module must stay importable"


def test_every_package_folder_is_listed_in_pyproject() -> None:
    cfg = _config()
    mapping: dict[str, str] = cfg["package-dir"]
    listed = set(cfg["packages"])
    found = set()
    for package, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if any(part.startswith((".", "__")) for part in rel.parts):
                continue
            found.add(".".join([package, *rel.parts]))
        found.add(package)
    missing = sorted(found - listed)
    assert not missing, f"add these to [tool.setuptools].packages: {missing}"


def test_listed_packages_import() -> None:
    import importlib

    for name in _config()["packages"]:
        importlib.import_module(name)


def test_web_app_import_does_not_pull_heavy_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom flywheel.app import create_app\n"
        "heavy = [m for m in ('torch', 'transformers', 'cleanlab', 'evidently', 'sklearn') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"importing the web app imported {out.stdout.strip()}"
