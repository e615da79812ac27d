"""End to end against a real `mlflow server` on 127.0.0.1: register, then `xmdpt generate --model
models:/xmdpt@champion` in a separate process; and the CLI's errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xmdpt.cli import app
from xmdpt.sampling.inputs import EXAMPLE_POSE

pytestmark = pytest.mark.slow  # an MLflow server and generation subprocesses

BIN = Path(sys.executable).parent
POSE = EXAMPLE_POSE


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "pose.json").write_text(json.dumps(POSE))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 180, 3), dtype=np.uint8)).save(d / "src.jpg")
    (d / "pose17.json").write_text(json.dumps(dict(POSE, keypoints=POSE["keypoints"][:17])))
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    Image.fromarray(np.full((256, 176, 3), 235, np.uint8)).save(d / "empty_room.png")
    return d


def test_cli_input_errors(mlflow_server, folder, inputs, tmp_path, pose_task_path):
    """Bad inputs fail fast with exit code 2 and a message naming the problem (the server boots meanwhile)."""
    runner = CliRunner()

    def run(source, pose, *extra):
        return runner.invoke(app, ["generate", "--model", str(folder), "--source", str(source), "--pose", str(pose),
                                   "--out", str(tmp_path / "o.png"), "--steps", "1", *extra])

    r = run(inputs / "broken.jpg", inputs / "pose.json")
    assert r.exit_code == 2 and "broken.jpg" in r.output and "error:" in r.output
    r = run(inputs / "src.jpg", inputs / "pose17.json")
    assert r.exit_code == 2 and "expected 18 keypoints" in r.output
    r = run(inputs / "src.jpg", inputs / "empty_room.png", "--pose-model", str(pose_task_path))
    assert r.exit_code == 2 and "no person found" in r.output
    r = run(inputs / "src.jpg", inputs / "pose.json")
    assert r.exit_code == 0 and (tmp_path / "o.png").is_file()
    r = runner.invoke(app, ["generate", "--model", str(tmp_path / "missing"), "--source", str(inputs / "src.jpg"),
                            "--pose", str(inputs / "pose.json"), "--out", str(tmp_path / "o.png")])
    assert r.exit_code == 2 and "no such folder" in r.output


def test_register_then_generate_from_champion_in_a_subprocess(mlflow_server, folder, inputs, tmp_path):
    from xmdpt.registry.register import log_and_register

    server = mlflow_server()  # waits for /health
    kw = dict(model_name="xmdpt", metric="synthetic_pose_iou", higher_is_better=True, tracking_uri=server)
    rec = log_and_register(folder, metrics={"synthetic_pose_iou": 0.3}, lineage={"git_commit": "test"}, **kw)
    assert rec["aliases"] == ["candidate", "champion"]

    out = tmp_path / "gen.png"
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "XMDPT_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run([str(BIN / "xmdpt"), "generate", "--model", "models:/xmdpt@champion", "--source",
                          str(inputs / "src.jpg"), "--pose", str(inputs / "pose.json"), "--out", str(out),
                          "--steps", "2", "--cfg-scale", "2.0", "--seed", "0", "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    img = Image.open(out)
    from xmdpt.sampling.inputs import restore_aspect

    h, w = restore_aspect(np.zeros((16, 16, 3), np.uint8), (300, 180)).shape[:2]  # the source's aspect
    assert img.format == "PNG" and img.size == (w, h) and h == 16 and w < 16
    # the downloaded folder is the registered one
    cached = list((tmp_path / "cache").glob("*/.complete"))
    assert len(cached) == 1

    # the pyfunc flavour serves the same model: image bytes + pose JSON in, PNG bytes out
    import io

    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(server)
    mlflow.set_registry_uri(server)
    pyfunc = mlflow.pyfunc.load_model("models:/xmdpt@champion")
    import base64

    df = pd.DataFrame({"source_image": [base64.b64encode((inputs / "src.jpg").read_bytes()).decode()],
                       "pose": [json.dumps(POSE)]})
    pred = pyfunc.predict(df, params={"num_steps": 2, "cfg_scale": 2.0, "seed": 0})
    served = Image.open(io.BytesIO(base64.b64decode(pred["image"][0])))
    assert served.format == "PNG" and np.array_equal(np.asarray(served), np.asarray(img))

    # unknown model URI: clear error from the CLI (in process, same server)
    os.environ["MLFLOW_TRACKING_URI"] = server
    try:
        r = CliRunner().invoke(app, ["generate", "--model", "models:/xmdpt@nope", "--source", str(inputs / "src.jpg"),
                                     "--pose", str(inputs / "pose.json"), "--out", str(tmp_path / "x.png")])
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    assert r.exit_code == 2 and "unknown model URI 'models:/xmdpt@nope'" in r.output


def test_mlflow_models_serve_answers_base64_json(mlflow_server, local_server, free_port, folder, inputs, tmp_path):
    """`mlflow models serve -m models:/NAME@ALIAS --env-manager local` on 127.0.0.1, fed the documented
    dataframe_split JSON with a base64 image, answers base64 PNGs equal to `xmdpt generate`'s."""
    import base64
    import urllib.request

    from xmdpt.registry.register import register_pipeline_folder

    server = mlflow_server()
    register_pipeline_folder(folder, "xmdpt-pyfunc", alias="prod", tracking_uri=server)
    port = free_port()
    # as in an activated venv: mlflow starts the scoring server with `uvicorn` from PATH
    env = {"MLFLOW_TRACKING_URI": server, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    url = local_server([str(BIN / "mlflow"), "models", "serve", "-m", "models:/xmdpt-pyfunc@prod", "--env-manager",
                        "local", "-h", "127.0.0.1", "-p", str(port), "-t", "300"], tmp_path / "serve.log", port,
                       "/ping", env).wait()
    body = {"dataframe_split": {"columns": ["source_image", "pose"],
                                "data": [[base64.b64encode((inputs / "src.jpg").read_bytes()).decode(),
                                          json.dumps(POSE)]] * 2},
            "params": {"num_steps": 2, "cfg_scale": 2.0, "seed": 0}}
    req = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        preds = json.loads(r.read())["predictions"]
    assert len(preds) == 2
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(p["image"])))) for p in preds]
    assert not np.array_equal(images[0], images[1])  # row i uses seed + i
    out = tmp_path / "cli.png"
    res = subprocess.run([str(BIN / "xmdpt"), "generate", "--model", str(folder), "--source", str(inputs / "src.jpg"),
                          "--pose", str(inputs / "pose.json"), "--out", str(out), "--steps", "2", "--seed", "0",
                          "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert np.array_equal(images[0], np.asarray(Image.open(out)))
