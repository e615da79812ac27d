"""A run handed to a teammate through git + DVC: the steps and checks both hand-off tests share.

A (a project whose DAG has run) commits, ``dvc push``es and ``git push``es to a bare repository;
A's folder is then moved away; B clones into another folder and ``dvc pull``s. What B must see:
``dvc status`` clean, ``dvc repro`` running nothing, A's metrics (``dvc metrics show`` and ``dvc exp
show`` of A's commit), A's manifests byte for byte, and A's pixels from A's pipeline folder.
Used by ``tests/reliability/test_team_handoff.py`` (zero-setup defaults) and
``tests/orchestration/test_multinode.py`` (the team setup: s3:// store, S3 DVC remote, a shared
MLflow server, the cluster's run).
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml
from PIL import Image

from dvc_project import project_env
from xmdpt.sampling.inputs import EXAMPLE_POSE

VENV_BIN = Path(sys.executable).parent
STAGES_WITH_MANIFEST = ("pairs", "features", "train", "evaluate")


def env(**extra: str) -> dict:
    """The environment a teammate's shell has: the project's (``dvc_project.project_env``: its tools
    first, offline, no Ray address), without the S3 credentials and tracking URI of this session."""
    out = {k: v for k, v in project_env().items() if not k.startswith(("AWS_", "MLFLOW_TRACKING_URI"))}
    out.update(extra)
    return out


def sh(cwd: Path, env: dict, *cmd: str, ok: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert r.returncode == 0, f"{' '.join(cmd)}:\n{(r.stdout + r.stderr)[-6000:]}"
    return r


def dvc(cwd: Path, env: dict, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return sh(cwd, env, str(VENV_BIN / "dvc"), *args, ok=ok)


def ran(out: str) -> set[str]:
    """The stages a ``dvc repro`` / ``dvc exp run`` log says it ran."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def values(shown: dict) -> dict:
    """The metric files' values of the workspace (``dvc metrics show --json``), by file."""
    return {path: entry.get("data") for rev in shown.values() for path, entry in rev.get("data", {}).items()}


def generate(cwd: Path, env: dict, model: str, out: Path) -> np.ndarray:
    """``xmdpt generate`` of one fixed source image and pose with ``model``; the pixels."""
    source, pose = out.parent / "handoff-source.png", out.parent / "handoff-pose.json"
    if not source.exists():
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (96, 64, 3), dtype=np.uint8)).save(source)
        pose.write_text(json.dumps(EXAMPLE_POSE))
    sh(cwd, env, str(VENV_BIN / "xmdpt"), "generate", "--model", model, "--source", str(source), "--pose", str(pose),
       "--out", str(out), "--steps", "2", "--device", "cpu")
    return np.asarray(Image.open(out))


def publish(a: Path, root: Path, env: dict) -> dict:
    """A: git commit, dvc push, git push to ``root/origin.git``; returns what B must see."""
    sh(a, env, "git", "add", "-A")
    sh(a, env, "git", "commit", "-qm", "a run")
    push = dvc(a, env, "push")
    sh(root, env, "git", "init", "-q", "--bare", "-b", "main", "origin.git")
    sh(a, env, "git", "branch", "-M", "main")
    sh(a, env, "git", "remote", "add", "origin", str(root / "origin.git"))
    sh(a, env, "git", "push", "-q", "origin", "main")
    evaluate = json.loads((a / "artifacts" / "evaluate" / "manifest.json").read_text())
    for f in sorted((a / "artifacts").rglob("*")):  # no folder of A's machine in any stage output
        if f.is_file() and f.suffix in (".json", ".yaml", ".md", ".csv"):
            assert str(a) not in f.read_text(), (f, f.read_text()[:3000])
    return {"metrics": json.loads(dvc(a, env, "metrics", "show", "--json").stdout),
            "pipeline": evaluate["pipeline_uri"], "pushed": push.stdout + push.stderr,
            "manifests": {s: (a / "artifacts" / s / "manifest.json").read_text() for s in STAGES_WITH_MANIFEST}}


@contextlib.contextmanager
def moved_away(a: Path) -> Iterator[Path]:
    """A's folder is not readable while the block runs (renamed), and is back afterwards."""
    away = a.with_name(a.name + "-moved-away")
    shutil.move(str(a), str(away))
    try:
        yield away
    finally:
        shutil.move(str(away), str(a))


def clone_and_pull(root: Path, env: dict, seen: dict) -> Path:
    """B: clone, ``dvc pull``; checks that B has A's run and nothing to recompute; returns B's folder."""
    sh(root, env, "git", "clone", "-q", str(root / "origin.git"), "b")
    b = root / "b"
    dvc(b, env, "pull")
    assert "Data and pipelines are up to date" in dvc(b, env, "status").stdout
    assert ran(dvc(b, env, "repro").stdout) == set()  # nothing to run
    metrics = json.loads(dvc(b, env, "metrics", "show", "--json").stdout)
    assert values(metrics) == values(seen["metrics"]) and values(metrics)
    shown = json.loads(dvc(b, env, "exp", "show", "--json").stdout)
    head = next(c for c in shown if c["rev"] != "workspace")  # the commit A pushed
    assert {p: e.get("data") for p, e in head["data"]["metrics"].items()} == values(seen["metrics"])
    for stage, text in seen["manifests"].items():
        assert (b / "artifacts" / stage / "manifest.json").read_text() == text
    return b


def _last_step(proj: Path) -> int:
    with open(proj / "artifacts" / "train" / "loss.csv") as f:
        return max(int(row["step"]) for row in csv.DictReader(f))


def exp_run_reuses_upstream(b: Path, env: dict, seen: dict, tracking_uri: str, *,
                            a_run_in_store: bool = False) -> dict:
    """B: ``dvc exp run -S train.max_steps=3`` after A's 6-step run is what its params say: it runs config,
    train, evaluate and register only, reusing A's features, and trains a new model for exactly 3 steps
    (manifest, loss curve, ``dvc exp show``, ``dvc.lock``) in a new MLflow run of ``tracking_uri`` whose
    ``max_steps`` is 3. With ``a_run_in_store`` (a shared server), A's 6-step run is left as it was.
    Returns B's train manifest."""
    import mlflow

    first = json.loads(seen["manifests"]["train"])
    assert first["steps"] == 6 and _last_step(b) == 6  # A's run, pulled
    out = dvc(b, env, "exp", "run", "-n", "short", "-S", "train.max_steps=3").stdout
    assert ran(out) == {"config", "train", "evaluate", "register"}, out[-3000:]
    train = json.loads((b / "artifacts" / "train" / "manifest.json").read_text())
    assert train["steps"] == 3 and _last_step(b) == 3, train
    assert train["run_id"] != first["run_id"]  # a new run, not the 6-step one written into again
    assert (json.loads((b / "artifacts" / "features" / "manifest.json").read_text())
            == json.loads(seen["manifests"]["features"]))  # A's features, reused

    client = mlflow.MlflowClient(tracking_uri)
    run3 = client.get_run(train["run_id"])
    assert run3.data.params["train.max_steps"] == "3"
    assert max(m.step for m in client.get_metric_history(run3.info.run_id, "loss")) == 3
    if a_run_in_store:
        run6 = client.get_run(first["run_id"])
        assert run6.data.params["train.max_steps"] == "6"
        assert max(m.step for m in client.get_metric_history(run6.info.run_id, "loss")) == 6

    shown = json.loads(dvc(b, env, "exp", "show", "--json").stdout)
    exps = [e for commit in shown for e in (commit.get("experiments") or [])]
    rev = next(r for e in exps for r in e["revs"] if r.get("name") == "short")
    data = rev["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["max_steps"] == 3
    assert data["metrics"]["artifacts/train/metrics.json"]["data"]["steps"] == 3
    lock = yaml.safe_load((b / "dvc.lock").read_text())
    assert lock["stages"]["config"]["params"]["params.yaml"]["train"]["max_steps"] == 3
    return train
