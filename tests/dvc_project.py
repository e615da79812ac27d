"""A throwaway git + DVC copy of the project whose DAG is recorded as run, without running it.

The `config` stage runs for real (a fraction of a second); every other stage's outputs are small
placeholders recorded with ``dvc commit -f``, which hashes deps, params and outs as a run would. So
``dvc status`` says what a change would rerun, and ``dvc metrics show`` / ``dvc plots show`` /
``dvc exp show`` have something to show, in seconds instead of the DAG's 13 minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
STAGES = ["synth", "pairs", "poses", "validate", "autoencoder", "features", "train", "evaluate", "register"]
PLACEHOLDER = {".json": '{"placeholder": 1.0}\n', ".csv": "step,loss\n10,0.9\n20,0.5\n", ".md": "placeholder\n"}


def project_env(**extra: str) -> dict:
    """The environment the commands run with: the project's interpreter and tools first, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.pop("PYTHONPATH", None)  # the copy's own pipelines/, not the checkout's
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
               MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0", GIT_AUTHOR_NAME="t",
               GIT_COMMITTER_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_EMAIL="t@localhost")
    env.update(extra)
    return env


def sh(repo: Path, *cmd: str, env: dict | None = None, timeout: float = 120) -> str:
    res = subprocess.run(list(cmd), cwd=repo, env=env or project_env(), capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def dvc(repo: Path, *args: str) -> str:
    return sh(repo, str(VENV_BIN / "dvc"), *args)


def copy_project(dest: Path, models: bool = False) -> Path:
    """The code, data specs, dvc.yaml and params.yaml (as they are) under ``dest``; with ``models``
    the real ``paths.models_dir`` (the pose estimator), else a placeholder file in it."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("xmdpt", "pipelines", "data_specs", "params"):
        shutil.copytree(REPO / d, dest / d, ignore=ignore)
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, dest / f)
    models_dir = yaml.safe_load((dest / "params.yaml").read_text())["paths"]["models_dir"]
    if models:
        shutil.copytree(REPO / models_dir, dest / models_dir)
    else:
        (dest / models_dir).mkdir(parents=True)
        (dest / models_dir / "placeholder").write_text("model files\n")
    return dest


def record_dag(repo: Path) -> None:
    """git + DVC init, run `config`, write placeholder outputs for the other stages, ``dvc commit``
    them and commit everything to git: ``dvc status`` is clean afterwards."""
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "repro", "-q", "config")
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = yaml.safe_load((repo / "params.yaml").read_text())["paths"]

    def resolve(p: str) -> Path:
        for k, v in paths.items():
            p = p.replace(f"${{paths.{k}}}", v)
        return repo / p

    for name in STAGES:
        for kind in ("outs", "metrics", "plots"):
            for entry in stages[name].get(kind, []):
                out = resolve(next(iter(entry)) if isinstance(entry, dict) else entry)
                if out.suffix:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(b"\x89PNG placeholder\n" if out.suffix == ".png"
                                    else PLACEHOLDER.get(out.suffix, "{}\n").encode())
                else:  # a folder output (the synthetic dataset)
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "placeholder").write_text("dataset\n")
    dvc(repo, "commit", "-f", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "recorded DAG")
