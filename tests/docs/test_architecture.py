"""The layers of docs/architecture.md hold, and import-linter would catch a break.

``make test`` runs ``lint-imports`` itself; these tests check that the contracts are live: an upward
import added to a copy of the package breaks them, and every package is in the layers and the doc.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def _copy(tmp: Path) -> Path:
    for folder in ("xmdpt", "pipelines"):
        shutil.copytree(REPO / folder, tmp / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


def _layers() -> list[set[str]]:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c for c in contracts if c["type"] == "layers"]
    return [{p.strip() for p in line.split("|")} for line in layers["layers"]]


def test_the_repository_keeps_its_layers():
    res = _lint(REPO)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("module, added, broken", [
    # upward: the base reaching for a consumer
    ("core/storage.py", "\n\ndef _serve():\n    from xmdpt.serving import server  # noqa\n",
     "xmdpt.core is not allowed to import xmdpt.serving"),
    # sideways: two packages of one layer
    ("training/step.py", "\n\nfrom xmdpt.sampling import inputs  # noqa\n",
     "xmdpt.training is not allowed to import xmdpt.sampling"),
], ids=["upward", "within-a-layer"])
def test_a_new_import_across_the_layers_breaks_them(tmp_path, module, added, broken):
    root = _copy(tmp_path)
    path = root / "xmdpt" / module
    path.write_text(path.read_text() + added)
    res = _lint(root)
    assert res.returncode != 0
    assert broken in res.stdout


def test_every_package_is_in_a_layer_and_in_the_doc():
    packages = {p.name for p in (REPO / "xmdpt").iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in (REPO / "xmdpt").glob("*.py") if p.stem != "__init__"}
    in_layers = set().union(*_layers())
    assert in_layers == packages | modules, (in_layers ^ (packages | modules))
    doc = (REPO / "docs" / "architecture.md").read_text()
    missing = sorted(p for p in packages if f"**`{p}`**" not in doc)
    assert not missing, f"docs/architecture.md has no paragraph for {missing}"
