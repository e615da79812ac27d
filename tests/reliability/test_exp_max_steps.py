"""An experiment is what its params say: the README's ``dvc exp run -S train.max_steps=…`` after a
longer finished run trains a new model for exactly that many steps.

Real DVC, the real embedded DAG at a tiny size (local Ray, local store, the project's SQLite MLflow)
in a throwaway git + DVC copy of the project: ``dvc repro`` with ``train.max_steps: 6``, then
``dvc exp run -S train.max_steps=3``. The experiment's train manifest says 3 steps, its loss curve
ends at step 3, its MLflow run is a new run (not the 6-step run written into again) whose
``max_steps`` param is 3, and ``dvc exp show`` lists ``train.max_steps`` 3 beside 3 steps.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from local_servers import TINY_LOCAL_DAG, make_project_copy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
VENV_BIN = Path(sys.executable).parent

def _run(proj: Path, *cmd: str, timeout: float = 900) -> str:
    import os

    # the project's own MLflow store (sqlite:///<project>/mlflow.db), whatever another test left in the environment
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_ADDRESS") and k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
               MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0", GIT_AUTHOR_NAME="t",
               GIT_COMMITTER_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_EMAIL="t@localhost")
    r = subprocess.run(list(cmd), cwd=proj, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}:\n{(r.stdout + r.stderr)[-6000:]}"
    return r.stdout + r.stderr


def _last_step(proj: Path) -> int:
    with open(proj / "artifacts" / "train" / "loss.csv") as f:
        return max(int(row["step"]) for row in csv.DictReader(f))


def test_exp_run_with_fewer_steps_trains_a_new_model_for_exactly_that_many(tmp_path):
    import mlflow

    proj = make_project_copy(tmp_path / "proj", TINY_LOCAL_DAG, assets=True)
    _run(proj, "git", "init", "-q")
    _run(proj, str(VENV_BIN / "dvc"), "init", "-q")
    _run(proj, "git", "add", "-A")
    _run(proj, "git", "commit", "-qm", "project")
    _run(proj, str(VENV_BIN / "dvc"), "repro")
    first = json.loads((proj / "artifacts" / "train" / "manifest.json").read_text())
    assert first["steps"] == 6 and _last_step(proj) == 6
    _run(proj, "git", "add", "-A")
    _run(proj, "git", "commit", "-qm", "6 steps")

    out = _run(proj, str(VENV_BIN / "dvc"), "exp", "run", "-n", "short", "-S", "train.max_steps=3")
    assert "Running stage 'train'" in out and "Running stage 'autoencoder'" not in out  # upstream reused
    second = json.loads((proj / "artifacts" / "train" / "manifest.json").read_text())
    assert second["steps"] == 3 and _last_step(proj) == 3, second
    assert second["run_id"] != first["run_id"]  # a new run, not the 6-step one written into again

    client = mlflow.MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")
    run3, run6 = client.get_run(second["run_id"]), client.get_run(first["run_id"])
    assert run3.data.params["train.max_steps"] == "3" and run6.data.params["train.max_steps"] == "6"
    assert max(m.step for m in client.get_metric_history(run3.info.run_id, "loss")) == 3
    assert max(m.step for m in client.get_metric_history(run6.info.run_id, "loss")) == 6  # left as it was

    shown = json.loads(_run(proj, str(VENV_BIN / "dvc"), "exp", "show", "--json"))
    exps = [e for commit in shown for e in (commit.get("experiments") or [])]
    rev = next(r for e in exps for r in e["revs"] if r.get("name") == "short")
    data = rev["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["max_steps"] == 3
    assert data["metrics"]["artifacts/train/metrics.json"]["data"]["steps"] == 3
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    assert lock["stages"]["config"]["params"]["params.yaml"]["train"]["max_steps"] == 3
