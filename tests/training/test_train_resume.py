"""The `train` stage end to end on Ray Train: outputs, MLflow, relaunch, worker kill and resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from xmdpt.core import tracking
from xmdpt.core.manifests import TrainManifest
from xmdpt.model.folder import load_model_folder
from xmdpt.training.trainer import run_train_stage

pytestmark = pytest.mark.ray


def test_train_stage_outputs_and_relaunch(ray_local, fixture_cache_with_vae, make_config):
    root = fixture_cache_with_vae["root"]
    cfg = make_config(root, max_steps=6, checkpoint_every=3, sample_every=3, log_every=2)
    out = run_train_stage(cfg)
    assert out["steps"] == 6 and not out["reused"] and out["start_step"] == 0

    art = root / "artifacts" / "train"
    manifest = json.loads((art / "manifest.json").read_text())
    assert TrainManifest.read(art / "manifest.json").to_dict() == manifest  # the typed contract round-trips
    assert manifest["model_uri"] == out["model_uri"] and manifest["run_id"] == out["run_id"]
    assert manifest["tracking_uri"] == f"sqlite:///{root / 'mlflow.db'}" and manifest["data_hash"]
    rows = list(csv.DictReader((art / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6] and set(rows[0]) == {"step", "loss", "loss_masked", "vb"}
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["loss"] == pytest.approx(float(rows[-1]["loss"]))

    model, config = load_model_folder(out["model_uri"])  # final EMA weights + full config
    assert config["latent_scale"] == 0.5 and config["model"]["hidden_size"] == 32
    assert config["lineage"]["features"]["manifest"].endswith("features/manifest.json") and config["train"]["max_steps"] == 6

    info = tracking.run_info(manifest["tracking_uri"], out["run_id"])
    assert info["status"] == "FINISHED" and info["params"]["train.max_steps"] == "6"
    assert {"samples/step_00000003.png", "samples/step_00000006.png"} <= set(info["artifacts"])
    assert config["lineage"]["autoencoder"]["uri"] == fixture_cache_with_vae["autoencoder"]["uri"]
    assert info["tags"]["git_commit"] and info["tags"]["manifest.features.uri"]
    assert [s for s, _ in tracking.metric_history(manifest["tracking_uri"], out["run_id"], "loss")] == [2, 4, 6]
    assert {"loss_masked", "vb", "lr", "samples_per_s", "step_time_s"} <= set(info["metrics"])

    t0 = time.monotonic()
    again = run_train_stage(cfg)
    assert again["reused"] and again["run_id"] == out["run_id"] and again["model_uri"] == out["model_uri"]
    assert time.monotonic() - t0 < 15

    # fewer steps after a finished longer run: a run of its own, trained for exactly those steps; the
    # manifest, the model's config and its MLflow run say so, and the 6-step run is left as it was
    short = run_train_stage(make_config(root, max_steps=4, checkpoint_every=2, sample_every=0, log_every=2))
    assert short["steps"] == 4 and not short["reused"] and short["start_step"] == 0
    assert short["run_id"] != out["run_id"] and short["model_uri"] != out["model_uri"]
    assert json.loads((art / "manifest.json").read_text())["steps"] == 4
    assert load_model_folder(short["model_uri"])[1]["train"]["max_steps"] == 4
    short_info = tracking.run_info(manifest["tracking_uri"], short["run_id"])
    assert short_info["params"]["train.max_steps"] == "4"
    assert [s for s, _ in tracking.metric_history(manifest["tracking_uri"], short["run_id"], "loss")] == [2, 4]
    assert [s for s, _ in tracking.metric_history(manifest["tracking_uri"], out["run_id"], "loss")] == [2, 4, 6]


def _kill_rank_when_checkpointed(run_dir: Path, rank: int, killed: dict, timeout: float = 240.0):
    """Driver thread: once Ray Train has *registered* a checkpoint (its checkpoint-manager snapshot
    names one; a checkpoint folder alone may still lack other ranks' reports), SIGKILL ``rank``."""
    deadline = time.monotonic() + timeout
    pid_file = run_dir / "workers" / f"rank_{rank}.pid.json"
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while time.monotonic() < deadline:
        try:
            registered = snapshot.is_file() and "checkpoint_step" in snapshot.read_text()
        except OSError:  # being rewritten
            registered = False
        if registered and pid_file.is_file():
            pid = json.loads(pid_file.read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.update(pid=pid)
            return
        time.sleep(0.05)


def test_killed_worker_resumes_from_last_checkpoint(ray_local, fixture_cache, make_config):
    root = fixture_cache["root"]
    cfg = make_config(root, num_workers=2, batch_size_per_worker=2, max_steps=40, checkpoint_every=5,
                      log_every=5, sample_every=0, max_failures=2)
    runs = root / "store" / "train" / "runs"
    killed: dict = {}

    def watch():
        while not runs.is_dir() or not any(runs.iterdir()):
            time.sleep(0.05)
        _kill_rank_when_checkpointed(next(runs.iterdir()), rank=1, killed=killed)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out = run_train_stage(cfg)
    th.join(timeout=5)
    assert killed, "the worker was never killed"
    assert out["steps"] == 40
    # the restarted worker group started from a checkpoint, not from step 0
    assert out["start_step"] >= 5
    run_dir = Path(out["uri"])
    pid_after = json.loads((run_dir / "workers" / "rank_1.pid.json").read_text())["pid"]
    assert pid_after != killed["pid"]
    rows = list(csv.DictReader((root / "artifacts" / "train" / "loss.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(5, 41, 5))  # one history, no restart from 0
    # MLflow gets each step once: metrics are sent after the checkpoint that holds them
    logged = [s for s, _ in tracking.metric_history(out["tracking_uri"], out["run_id"], "loss")]
    assert logged == list(range(5, 41, 5))
    # same MLflow run across the restart
    assert tracking.run_info(out["tracking_uri"], out["run_id"])["status"] == "FINISHED"
