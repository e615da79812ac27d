"""A run handed to a teammate through git + DVC: A runs the embedded DAG (tiny), pushes; A's folder is
moved away; B clones and pulls in another folder.

Team setup (docs/team.md): an s3:// ``paths.storage_root`` and an S3 DVC remote (moto on 127.0.0.1),
a shared ``mlflow server``. On B: ``dvc status`` is clean, ``dvc repro`` runs nothing, ``dvc metrics
show`` gives A's numbers, ``xmdpt generate`` from A's pipeline folder and from ``models:/xmdpt@champion``
gives A's pixels, and ``dvc exp run -S train.max_steps=3`` runs config, train, evaluate and register
only, reusing A's upstream outputs.

Zero-setup defaults (local store, local MLflow, a local-folder DVC remote): the same checks, the
bulk outputs travelling as the DVC outputs ``data/store/<stage>``; the registry is local to A, and
``models:/`` on B names the local registry in use and how to point at a shared one.

An experiment is what its params say (the same zero-setup run, on A before its folder moves): the
README's ``dvc exp run -S train.max_steps=3`` after the finished 6-step run trains a new model for
exactly 3 steps. Its train manifest says 3 steps, its loss curve ends at step 3, its MLflow run is a
new run (the 6-step run is not written into again) whose ``max_steps`` param is 3, ``dvc exp show``
lists ``train.max_steps`` 3 beside 3 steps, and the autoencoder and features stages are not rerun.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from local_servers import S3_BUCKET, TINY_LOCAL_DAG, LocalServer, free_port, make_project_copy, mlflow_server_cmd, moto_s3
from xmdpt.sampling.inputs import EXAMPLE_POSE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
VENV_BIN = Path(sys.executable).parent
def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "AWS_", "MLFLOW_TRACKING_URI")) and k != "PYTHONPATH"}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
               MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0", GIT_AUTHOR_NAME="t",
               GIT_COMMITTER_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_EMAIL="t@localhost", **extra)
    return env


def _sh(cwd: Path, env: dict, *cmd: str, ok: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert r.returncode == 0, f"{' '.join(cmd)}:\n{(r.stdout + r.stderr)[-6000:]}"
    return r


def _dvc(cwd: Path, env: dict, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return _sh(cwd, env, str(VENV_BIN / "dvc"), *args, ok=ok)


def _ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def _generate(proj: Path, env: dict, model: str, out: Path) -> np.ndarray:
    source = sorted(p for p in (proj / "data" / "synth" / "img").rglob("*") if p.is_file())[0]
    (proj.parent / "pose.json").write_text(json.dumps(EXAMPLE_POSE))
    _sh(proj, env, str(VENV_BIN / "xmdpt"), "generate", "--model", model, "--source", str(source), "--pose",
        str(proj.parent / "pose.json"), "--out", str(out), "--steps", "2", "--device", "cpu")
    return np.asarray(Image.open(out))


def _run_a(root: Path, params: dict, env: dict, remote: list[list[str]], then=None) -> dict:
    """A: the DAG, git commit, dvc push, git push to ``root/origin.git``; what B must see. ``then(a, env,
    seen)`` runs on A after the push, before A's folder is moved away."""
    a = make_project_copy(root / "a", {**TINY_LOCAL_DAG, **params}, assets=True)
    _sh(root, env, "git", "init", "-q", "--bare", "-b", "main", "origin.git")
    _sh(a, env, "git", "init", "-q", "-b", "main")
    _dvc(a, env, "init", "-q")
    for args in remote:
        _dvc(a, env, *args)
    _dvc(a, env, "repro")
    _sh(a, env, "git", "add", "-A")
    _sh(a, env, "git", "commit", "-qm", "a run")
    push = _dvc(a, env, "push")
    _sh(a, env, "git", "remote", "add", "origin", str(root / "origin.git"))
    _sh(a, env, "git", "push", "-q", "origin", "main")
    evaluate = json.loads((a / "artifacts" / "evaluate" / "manifest.json").read_text())
    for f in sorted((a / "artifacts").rglob("*")):  # no folder of A's machine in any stage output
        if f.is_file() and f.suffix in (".json", ".yaml", ".md", ".csv"):
            assert str(a) not in f.read_text(), (f, f.read_text()[:3000])
    seen = {"metrics": json.loads(_dvc(a, env, "metrics", "show", "--json").stdout),
            "pipeline": evaluate["pipeline_uri"], "pushed": push.stdout + push.stderr,
            "manifests": {s: (a / "artifacts" / s / "manifest.json").read_text()
                          for s in ("pairs", "features", "train", "evaluate")}}
    seen["pixels"] = _generate(a, env, evaluate["pipeline_uri"], root / "a.png")
    if then is not None:
        then(a, env, seen)
    shutil.move(str(a), str(root / "a-moved-away"))  # nothing of A's folder is readable any more
    return seen


def _clone_b(root: Path, env: dict, seen: dict) -> Path:
    _sh(root, env, "git", "clone", "-q", str(root / "origin.git"), "b")
    b = root / "b"
    _dvc(b, env, "pull")
    assert "Data and pipelines are up to date" in _dvc(b, env, "status").stdout
    assert _ran(_dvc(b, env, "repro").stdout) == set()  # nothing to run
    metrics = json.loads(_dvc(b, env, "metrics", "show", "--json").stdout)
    assert _values(metrics) == _values(seen["metrics"]) and _values(metrics)
    shown = json.loads(_dvc(b, env, "exp", "show", "--json").stdout)
    head = next(c for c in shown if c["rev"] != "workspace")  # the commit A pushed
    assert {p: e.get("data") for p, e in head["data"]["metrics"].items()} == _values(seen["metrics"])
    for stage, text in seen["manifests"].items():
        assert (b / "artifacts" / stage / "manifest.json").read_text() == text
    return b


def _values(shown: dict) -> dict:
    """The metric files' values of the workspace (``dvc metrics show --json``), by file."""
    return {path: entry.get("data") for rev in shown.values() for path, entry in rev.get("data", {}).items()}


def test_team_setup_hands_a_run_to_a_teammate(tmp_path):
    root = tmp_path
    with moto_s3() as (s3_env, _client):
        port = free_port()
        server = LocalServer(mlflow_server_cmd(VENV_BIN, root / "mlflow", port), root / "mlflow.log", port, "/health")
        (root / "mlflow").mkdir()
        try:
            tracking = server.wait()
            env = _env(**s3_env, MLFLOW_TRACKING_URI=tracking)
            store = f"s3://{S3_BUCKET}/team/store"
            remote = [["remote", "add", "-d", "storage", f"s3://{S3_BUCKET}/team/dvc"],
                      ["remote", "modify", "storage", "endpointurl", s3_env["AWS_ENDPOINT_URL"]]]
            seen = _run_a(root, {"paths": {"storage_root": store, "mlflow_tracking_uri": tracking}}, env, remote)
            assert json.loads(seen["manifests"]["features"])["uri"].startswith(store)
            b = _clone_b(root, env, seen)

            assert np.array_equal(_generate(b, env, seen["pipeline"], root / "b.png"), seen["pixels"])
            assert np.array_equal(_generate(b, env, "models:/xmdpt@champion", root / "b-reg.png"), seen["pixels"])
            out = _dvc(b, env, "exp", "run", "-n", "short", "-S", "train.max_steps=3").stdout
            assert _ran(out) == {"config", "train", "evaluate", "register"}, out[-3000:]
            train = json.loads((b / "artifacts" / "train" / "manifest.json").read_text())
            assert train["steps"] == 3
            assert (json.loads((b / "artifacts" / "features" / "manifest.json").read_text())
                    == json.loads(seen["manifests"]["features"]))  # A's features, reused
        finally:
            server.stop()


def _last_step(proj: Path) -> int:
    with open(proj / "artifacts" / "train" / "loss.csv") as f:
        return max(int(row["step"]) for row in csv.DictReader(f))


def _exp_run_with_fewer_steps_trains_a_new_model(proj: Path, env: dict, seen: dict) -> None:
    """``dvc exp run -S train.max_steps=3`` after the 6-step run of ``proj`` (its own SQLite MLflow)."""
    import mlflow

    first = json.loads((proj / "artifacts" / "train" / "manifest.json").read_text())
    assert first["steps"] == 6 and _last_step(proj) == 6
    out = _dvc(proj, env, "exp", "run", "-n", "short", "-S", "train.max_steps=3").stdout
    assert "Running stage 'train'" in out and "Running stage 'autoencoder'" not in out  # upstream reused
    second = json.loads((proj / "artifacts" / "train" / "manifest.json").read_text())
    assert second["steps"] == 3 and _last_step(proj) == 3, second
    assert second["run_id"] != first["run_id"]  # a new run, not the 6-step one written into again

    client = mlflow.MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")
    run3, run6 = client.get_run(second["run_id"]), client.get_run(first["run_id"])
    assert run3.data.params["train.max_steps"] == "3" and run6.data.params["train.max_steps"] == "6"
    assert max(m.step for m in client.get_metric_history(run3.info.run_id, "loss")) == 3
    assert max(m.step for m in client.get_metric_history(run6.info.run_id, "loss")) == 6  # left as it was

    shown = json.loads(_dvc(proj, env, "exp", "show", "--json").stdout)
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
    env = _env()
    seen = _run_a(root, {}, env, [["remote", "add", "-d", "storage", str(root / "dvc-remote")]],
                  then=_exp_run_with_fewer_steps_trains_a_new_model)
    assert json.loads(seen["manifests"]["features"])["uri"].startswith("./data/store/features/")
    b = _clone_b(root, env, seen)

    assert np.array_equal(_generate(b, env, seen["pipeline"], root / "b.png"), seen["pixels"])
    # A's registry stayed on A's machine: B's (new, local) one says so
    r = _sh(b, env, str(VENV_BIN / "xmdpt"), "generate", "--model", "models:/xmdpt@champion", "--source", "x.png",
            "--pose", "pose.json", "--out", "o.png", ok=False)
    assert r.returncode == 2 and "registry on this machine only" in r.stderr and "MLFLOW_TRACKING_URI" in r.stderr, \
        r.stderr[-2000:]
    out = _dvc(b, env, "exp", "run", "-n", "short", "-S", "train.max_steps=3").stdout
    assert _ran(out) == {"config", "train", "evaluate", "register"}, out[-3000:]
    assert json.loads((b / "artifacts" / "train" / "manifest.json").read_text())["steps"] == 3
    assert (json.loads((b / "artifacts" / "features" / "manifest.json").read_text())
            == json.loads(seen["manifests"]["features"]))  # A's features, reused
