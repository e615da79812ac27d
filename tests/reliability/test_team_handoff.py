"""A run handed to a teammate through git + DVC with the zero-setup defaults (local store, local MLflow,
a local-folder DVC remote): A runs the embedded DAG (tiny), pushes; A's folder is moved away; B clones
and pulls in another folder (the steps and checks are ``tests/handoff.py``'s).

The bulk outputs travel as the DVC outputs ``data/store/<stage>``. On B: ``dvc status`` is clean,
``dvc repro`` runs nothing, ``dvc metrics show`` gives A's numbers, ``xmdpt generate`` from A's
pipeline folder gives A's pixels, ``dvc exp run -S train.max_steps=3`` runs config, train, evaluate
and register only, reusing A's upstream outputs; the registry is local to A, and ``models:/`` on B
names the local registry in use and how to point at a shared one. The team setup (s3:// store, S3
DVC remote, shared MLflow server) is handed over from the three-node cluster's run
(``tests/orchestration/test_multinode.py``).

An experiment is what its params say (on A, before its folder moves): the README's ``dvc exp run -S
train.max_steps=3`` after the finished 6-step run trains a new model for exactly 3 steps. Its train
manifest says 3 steps, its loss curve ends at step 3, its MLflow run is a new run (the 6-step run is
not written into again) whose ``max_steps`` param is 3, ``dvc exp show`` lists ``train.max_steps`` 3
beside 3 steps, and the autoencoder and features stages are not rerun.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import handoff
from handoff import VENV_BIN, dvc, sh
from local_servers import TINY_LOCAL_DAG, make_project_copy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _last_step(proj: Path) -> int:
    with open(proj / "artifacts" / "train" / "loss.csv") as f:
        return max(int(row["step"]) for row in csv.DictReader(f))


def _exp_run_with_fewer_steps_trains_a_new_model(proj: Path, env: dict) -> None:
    """``dvc exp run -S train.max_steps=3`` after the 6-step run of ``proj`` (its own SQLite MLflow)."""
    import mlflow

    first = json.loads((proj / "artifacts" / "train" / "manifest.json").read_text())
    assert first["steps"] == 6 and _last_step(proj) == 6
    out = dvc(proj, env, "exp", "run", "-n", "short", "-S", "train.max_steps=3").stdout
    assert "Running stage 'train'" in out and "Running stage 'autoencoder'" not in out  # upstream reused
    second = json.loads((proj / "artifacts" / "train" / "manifest.json").read_text())
    assert second["steps"] == 3 and _last_step(proj) == 3, second
    assert second["run_id"] != first["run_id"]  # a new run, not the 6-step one written into again

    client = mlflow.MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")
    run3, run6 = client.get_run(second["run_id"]), client.get_run(first["run_id"])
    assert run3.data.params["train.max_steps"] == "3" and run6.data.params["train.max_steps"] == "6"
    assert max(m.step for m in client.get_metric_history(run3.info.run_id, "loss")) == 3
    assert max(m.step for m in client.get_metric_history(run6.info.run_id, "loss")) == 6  # left as it was

    shown = json.loads(dvc(proj, env, "exp", "show", "--json").stdout)
    exps = [e for commit in shown for e in (commit.get("experiments") or [])]
    rev = next(r for e in exps for r in e["revs"] if r.get("name") == "short")
    data = rev["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["max_steps"] == 3
    assert data["metrics"]["artifacts/train/metrics.json"]["data"]["steps"] == 3
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    assert lock["stages"]["config"]["params"]["params.yaml"]["train"]["max_steps"] == 3


def test_zero_setup_defaults_hand_a_run_to_a_teammate(tmp_path):
    """Local store, local MLflow, a local-folder DVC remote: the store travels with dvc push / pull
    (data/store/<stage> are DVC outputs), manifests name no folder of A's machine; the registry stays
    local and ``models:/`` says so. On A, before it moves, an experiment with fewer steps."""
    root = tmp_path
    env = handoff.env()
    a = make_project_copy(root / "a", TINY_LOCAL_DAG, assets=True)
    sh(a, env, "git", "init", "-q", "-b", "main")
    dvc(a, env, "init", "-q")
    dvc(a, env, "remote", "add", "-d", "storage", str(root / "dvc-remote"))
    dvc(a, env, "repro")
    seen = handoff.publish(a, root, env)
    assert json.loads(seen["manifests"]["features"])["uri"].startswith("./data/store/features/")
    pixels = handoff.generate(a, env, seen["pipeline"], root / "a.png")
    _exp_run_with_fewer_steps_trains_a_new_model(a, env)

    with handoff.moved_away(a):  # nothing of A's folder is readable any more
        b = handoff.clone_and_pull(root, env, seen)
        assert np.array_equal(handoff.generate(b, env, seen["pipeline"], root / "b.png"), pixels)
        # A's registry stayed on A's machine: B's (new, local) one says so
        r = sh(b, env, str(VENV_BIN / "xmdpt"), "generate", "--model", "models:/xmdpt@champion", "--source", "x.png",
               "--pose", "pose.json", "--out", "o.png", ok=False)
        assert r.returncode == 2 and "registry on this machine only" in r.stderr and "MLFLOW_TRACKING_URI" in r.stderr, \
            r.stderr[-2000:]
        handoff.exp_run_reuses_upstream(b, env, seen)
