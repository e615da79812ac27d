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

An experiment is what its params say (on B, ``handoff.exp_run_reuses_upstream``): the README's ``dvc
exp run -S train.max_steps=3`` after A's finished 6-step run trains a new model for exactly 3 steps.
Its train manifest says 3 steps, its loss curve ends at step 3, its MLflow run is a new run whose
``max_steps`` param is 3, ``dvc exp show`` lists ``train.max_steps`` 3 beside 3 steps, and the
upstream stages are not rerun. That A's 6-step run is not written into again is checked where both
runs share one store: the three-node cluster's hand-off, over the shared MLflow server.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import handoff
from handoff import VENV_BIN, dvc, sh
from local_servers import TINY_LOCAL_DAG, make_project_copy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_zero_setup_defaults_hand_a_run_to_a_teammate(tmp_path):
    """Local store, local MLflow, a local-folder DVC remote: the store travels with dvc push / pull
    (data/store/<stage> are DVC outputs), manifests name no folder of A's machine; the registry stays
    local and ``models:/`` says so. On B, an experiment with fewer steps."""
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

    with handoff.moved_away(a):  # nothing of A's folder is readable any more
        b = handoff.clone_and_pull(root, env, seen)
        assert np.array_equal(handoff.generate(b, env, seen["pipeline"], root / "b.png"), pixels)
        # A's registry stayed on A's machine: B's (new, local) one says so
        r = sh(b, env, str(VENV_BIN / "xmdpt"), "generate", "--model", "models:/xmdpt@champion", "--source", "x.png",
               "--pose", "pose.json", "--out", "o.png", ok=False)
        assert r.returncode == 2 and "registry on this machine only" in r.stderr and "MLFLOW_TRACKING_URI" in r.stderr, \
            r.stderr[-2000:]
        handoff.exp_run_reuses_upstream(b, env, seen, f"sqlite:///{b / 'mlflow.db'}")
