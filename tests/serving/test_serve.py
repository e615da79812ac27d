"""``xmdpt serve`` on a real Ray Serve (HTTP proxy on 127.0.0.1) with a real MLflow registry (SQLite):
dynamic batching equal to unbatched images, 4xx errors naming the field, an alias switch under load
with no failed request, and a replica killed and restarted."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from tiny_pipeline_folder import build_tiny_pipeline_folder

from xmdpt.sampling.inputs import EXAMPLE_POSE

pytestmark = pytest.mark.slow  # Ray Serve processes

POSE = EXAMPLE_POSE
NAME = "xmdpt-serve"


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


SOURCE = _png(np.random.default_rng(0).integers(0, 255, (256, 176, 3), dtype=np.uint8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory, pose_task_path):
    from ray import serve

    from xmdpt.registry.register import register_pipeline_folder
    from xmdpt.serving.server import ServeOptions, run_server

    root = tmp_path_factory.mktemp("serve")
    db = f"sqlite:///{root / 'mlflow.db'}"
    v1 = register_pipeline_folder(build_tiny_pipeline_folder(root / "a", seed=0), NAME, alias="champion",
                                  tracking_uri=db)
    v2 = register_pipeline_folder(build_tiny_pipeline_folder(root / "b", seed=1), NAME, tracking_uri=db)
    opts = ServeOptions(model=f"models:/{NAME}@champion", max_batch=8, batch_wait_ms=300, follow_alias=True, poll_s=1.0,
                        max_bytes=300_000, tracking_uri=db,  # pose photos: the folder's own estimator
                        num_cpus_per_replica=0.5)
    port = _free_port()
    url = run_server(opts, host="127.0.0.1", port=port, blocking=False, app_name="xmdpt-test")
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    yield {"url": url, "db": db, "v1": v1, "v2": v2}
    serve.shutdown()


def _generate(url: str, seed: int, *, files=None, data=None, timeout: float = 120) -> requests.Response:
    files = files if files is not None else {"source": ("src.png", SOURCE, "image/png")}
    data = data if data is not None else {"pose": json.dumps(POSE), "seed": str(seed), "steps": "3"}
    return requests.post(f"{url}/v1/generate", files=files, data=data, timeout=timeout)


def test_model_info_and_health(server):
    info = requests.get(f"{server['url']}/v1/model", timeout=10).json()
    assert info["name"] == NAME and info["version"] == "1" and info["alias"] == "champion"
    assert info["image_size"] == 16 and info["preset"] == "xmdpt-tiny/2" and info["replica_pid"] > 0
    assert info["run_id"] == server["v1"]["run_id"]
    assert (info["scheduler"], info["num_steps"]) == ("ddim", 3)  # the tiny model's sample defaults (no --scheduler)
    assert requests.get(f"{server['url']}/healthz", timeout=10).json()["status"] == "ok"


def test_concurrent_requests_are_batched_and_equal_the_lone_ones(server):
    url = server["url"]
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda s: _generate(url, s), range(6)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    sizes = [int(r.headers["X-Batch-Size"]) for r in responses]
    assert max(sizes) > 1, sizes
    for seed, r in enumerate(responses):
        alone = _generate(url, seed)
        assert alone.headers["X-Batch-Size"] == "1"
        a, b = np.asarray(Image.open(io.BytesIO(r.content))), np.asarray(Image.open(io.BytesIO(alone.content)))
        assert a.shape == (16, 11, 3) and np.array_equal(a, b), seed
    assert max(requests.get(f"{url}/v1/stats", timeout=10).json()["batch_sizes"]) > 1
    js = _generate(url, 0, data={"pose": json.dumps(POSE), "seed": "0", "steps": "3", "format": "json",
                                 "square": "true"}).json()
    assert js["width"] == js["height"] == 16 and js["model"]["version"] == "1"
    assert (js["scheduler"], js["steps"]) == ("ddim", 3)


def test_scheduler_per_request_batched_equals_alone(server):
    """Requests with different schedulers in one batch are sampled in separate groups; a solver's
    image is the same alone or batched, and differs from DDIM's."""
    url = server["url"]
    names = ["unipc", "dpmsolver++", "unipc", "ddim", "dpmsolver++", "unipc"]
    form = lambda seed, name: {"pose": json.dumps(POSE), "seed": str(seed), "steps": "3", "scheduler": name}  # noqa: E731
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda a: _generate(url, a[0], data=form(*a)), enumerate(names)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    for (seed, name), r in zip(enumerate(names), responses):
        assert f"scheduler={name};steps=3" in r.headers["X-Timing"], r.headers["X-Timing"]
        alone = _generate(url, seed, data=form(seed, name))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))),
                              np.asarray(Image.open(io.BytesIO(alone.content)))), (seed, name)
    ddim = _generate(url, 0, data=form(0, "ddim"))
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(ddim.content))),
                              np.asarray(Image.open(io.BytesIO(responses[0].content))))


def test_bad_requests_get_4xx_naming_the_field(server):
    url = server["url"]
    big = _png(np.random.default_rng(1).integers(0, 255, (400, 400, 3), dtype=np.uint8))  # > 300 kB
    bomb = _png(np.zeros((5000, 4100, 3), np.uint8))  # tiny file, 20 M pixels
    blank = _png(np.full((256, 176, 3), 235, np.uint8))
    cases = [
        ({"source": ("a.txt", b"hello", "text/plain")}, {"pose": json.dumps(POSE)}, 415, "source"),
        ({"source": ("big.png", big, "image/png")}, {"pose": json.dumps(POSE)}, 413, "source"),
        ({"source": ("bomb.png", bomb, "image/png")}, {"pose": json.dumps(POSE)}, 413, "source"),
        (None, {"pose": json.dumps(dict(POSE, keypoints=POSE["keypoints"][:17]))}, 422, "pose"),
        (None, {"pose": json.dumps(dict(POSE, keypoints=[[500, 500]] + POSE["keypoints"][1:]))}, 422, "pose"),
        ({"source": ("src.png", SOURCE, "image/png"), "pose": ("blank.png", blank, "image/png")}, {}, 422, "pose"),
        (None, {"pose": json.dumps(POSE), "steps": "0"}, 422, "steps"),
        (None, {"pose": json.dumps(POSE), "guidance": "99"}, 422, "guidance"),
        (None, {"pose": json.dumps(POSE), "scheduler": "euler"}, 422, "scheduler"),
        (None, {}, 422, "pose"),
    ]
    for files, data, status, field in cases:
        r = _generate(url, 0, files=files, data=data)
        assert r.status_code == status, (field, r.status_code, r.text)
        err = r.json()["error"]
        assert err["field"] == field and err["reason"], err
        ok = _generate(url, 0)  # and the service keeps serving
        assert ok.status_code == 200
    r = _generate(url, 0, files={"source": ("src.png", SOURCE, "image/png"), "pose": ("blank.png", blank, "image/png")},
                  data={})
    assert "no person found" in r.json()["error"]["reason"]


def test_alias_switch_under_load_loses_nothing(server):
    from mlflow import MlflowClient

    url, db = server["url"], server["db"]
    stop, results = threading.Event(), []

    def client():
        while not stop.is_set():
            try:
                r = _generate(url, 7)
                results.append((r.status_code, r.headers.get("X-Model-Version")))
            except requests.RequestException as e:
                results.append((str(e), None))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)
    MlflowClient(tracking_uri=db, registry_uri=db).set_registered_model_alias(NAME, "champion", 2)
    deadline = time.time() + 90
    while time.time() < deadline and requests.get(f"{url}/v1/model", timeout=10).json()["version"] != "2":
        time.sleep(0.5)
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert requests.get(f"{url}/v1/model", timeout=10).json()["version"] == "2"
    assert results and all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:5]
    assert {v for _, v in results} == {"1", "2"}


def test_a_killed_replica_is_restarted(server):
    url = server["url"]
    pid = requests.get(f"{url}/v1/model", timeout=10).json()["replica_pid"]
    os.kill(pid, signal.SIGKILL)
    deadline, ok = time.time() + 120, False
    while time.time() < deadline:
        try:
            r = _generate(url, 0, timeout=30)
            if r.status_code == 200:
                ok = True
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    assert ok, "no successful request within 120 s of the replica kill"
    assert requests.get(f"{url}/v1/model", timeout=10).json()["replica_pid"] != pid
    assert _generate(url, 1).status_code == 200



@pytest.mark.parametrize("how", ["SIGTERM to the process", "Ctrl-C (SIGINT to the process group)"])
def test_xmdpt_serve_stops_cleanly(how, tmp_path):
    """`xmdpt serve` in its own process: SIGTERM (what a supervisor sends) or Ctrl-C (what a terminal sends
    to the whole group) stops it with exit 0, Serve and Ray shut down, no abort."""
    import subprocess
    import sys
    from pathlib import Path

    folder = build_tiny_pipeline_folder(tmp_path / "tiny")
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "xmdpt"), "serve", "--model", str(folder), "--port",
                                 str(port), "--cpus-per-replica", "0.5"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=tmp_path, start_new_session=True)
        try:
            deadline = time.time() + 180
            while time.time() < deadline and proc.poll() is None:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.5)
            assert proc.poll() is None, log.read_text()[-3000:]
            if how.startswith("SIGTERM"):
                proc.send_signal(signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 0, f"exit {rc}: {text[-3000:]}"
    assert "\nstopped\n" in text and "SIGTERM received" not in text and "Traceback" not in text, text[-3000:]
