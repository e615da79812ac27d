"""A consumer with only the package and a model URI: the project's wheel in a new virtualenv, run from a
folder outside the checkout against a real `mlflow server`.

The wheel holds ``xmdpt/`` only; the model's pipeline folder (registered, then deleted here) must carry
everything generation needs, the pose estimator included: ``xmdpt generate`` with a pose *photo*,
``XMDPTPipeline.from_pretrained("models:/…")``, ``xmdpt serve`` (a request with a pose photo, then
SIGTERM: exit 0) and ``mlflow models serve`` (a pose photo as base64).

The new virtualenv gets the wheel without dependencies (and the console scripts of ``mlflow`` and
``uvicorn``); the dependencies (torch, MLflow, ...) come from
the test's own environment through a plain path entry (a ``.pth`` line), which puts that
site-packages on ``sys.path`` without running its ``.pth`` files, so the checkout's editable install
of ``xmdpt`` is not visible: ``import xmdpt`` can only find the wheel's copy (checked).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from local_servers import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def consumer_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("consumer")
    wheels, src = root / "wheels", root / "src"  # built from a copy: the build leaves build/ behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "xmdpt", src / "xmdpt", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("xmdpt-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300, cwd=root)
    # the console scripts that installing the dependencies would have put in the venv's bin/
    for name, (module, func) in {"mlflow": ("mlflow.cli", "cli"), "uvicorn": ("uvicorn.main", "main")}.items():
        script = venv / "bin" / name
        script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {func}\n"
                          f"sys.exit({func}())\n")
        script.chmod(0o755)
    return venv


def _env(server: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", "VIRTUAL_ENV")}
    return {**env, "MLFLOW_TRACKING_URI": server, "XMDPT_CACHE_DIR": str(home / "cache"),
            "PATH": f"{home.parent / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"}


def test_wheel_consumer_generates_serves_and_stops(consumer_venv, mlflow_server, free_port, tmp_path_factory):
    from skimage import data as skdata

    from tiny_pipeline_folder import build_tiny_pipeline_folder
    from xmdpt.registry.register import register_pipeline_folder

    server = mlflow_server()
    made = tmp_path_factory.mktemp("producer")
    folder = build_tiny_pipeline_folder(made)
    register_pipeline_folder(folder, "xmdpt-consumer", alias="champion", tracking_uri=server)
    shutil.rmtree(made)  # nothing of the producer's disk is left to read
    uri = "models:/xmdpt-consumer@champion"

    home = consumer_venv.parent / "home"
    home.mkdir()
    py, xmdpt_bin = consumer_venv / "bin" / "python", consumer_venv / "bin" / "xmdpt"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 176, 3), dtype=np.uint8)).save(home / "person.png")
    Image.fromarray(skdata.astronaut()).save(home / "pose_photo.png")
    env = _env(server, home)

    # the package is the wheel's, not the checkout's
    where = subprocess.run([str(py), "-c", "import xmdpt; print(xmdpt.__file__)"], cwd=home, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(consumer_venv)) and not where.startswith(str(REPO_ROOT)), where

    # xmdpt generate with a pose photo
    res = subprocess.run([str(xmdpt_bin), "generate", "--model", uri, "--source", "person.png", "--pose", "pose_photo.png",
                          "--out", "out.png", "--steps", "2", "--device", "cpu"], cwd=home, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert Image.open(home / "out.png").size == (11, 16)

    # the Python API: the folder downloaded from the registry carries its pose estimator
    code = ("from xmdpt.sampling import XMDPTPipeline; p = XMDPTPipeline.from_pretrained('%s', device='cpu'); "
            "import os; assert p.pose_model_path and os.path.isfile(p.pose_model_path), p.pose_model_path; "
            "print(p.load_pose('pose_photo.png').hw)" % uri)
    res = subprocess.run([str(py), "-c", code], cwd=home, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "(512, 512)" in res.stdout, res.stderr[-3000:]

    # xmdpt serve: a request with a pose photo, then SIGTERM stops it cleanly
    port = free_port()
    log = open(home / "serve.log", "w")
    proc = subprocess.Popen([str(xmdpt_bin), "serve", "--model", uri, "--port", str(port), "--cpus-per-replica", "0.5"],
                            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = _wait(f"http://127.0.0.1:{port}", "/healthz", proc, home / "serve.log")
        body, ctype = _multipart({"source": ("person.png", (home / "person.png").read_bytes()),
                                  "pose": ("pose_photo.png", (home / "pose_photo.png").read_bytes())},
                                 {"steps": "2", "scheduler": "unipc"})
        req = urllib.request.Request(f"{url}/v1/generate", data=body, headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=300) as r:
            assert r.status == 200 and "scheduler=unipc" in r.headers["X-Timing"]
            assert Image.open(io.BytesIO(r.read())).size == (11, 16)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        text = (home / "serve.log").read_text()
        assert rc == 0, f"exit {rc}: {text[-3000:]}"
        assert "stopped" in text and "SIGTERM received" not in text, text[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

    # mlflow models serve (the pyfunc), a pose photo as base64
    port = free_port()
    log = open(home / "pyfunc.log", "w")
    proc = subprocess.Popen([str(consumer_venv / "bin" / "mlflow"), "models", "serve", "-m", uri, "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port), "-t", "300"],
                            cwd=home, env=env,  # uvicorn from the venv's bin (first on PATH)
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = _wait(f"http://127.0.0.1:{port}", "/ping", proc, home / "pyfunc.log")
        b64 = lambda p: base64.b64encode(p.read_bytes()).decode()  # noqa: E731
        payload = {"dataframe_split": {"columns": ["source_image", "pose"],
                                       "data": [[b64(home / "person.png"), b64(home / "pose_photo.png")]]},
                   "params": {"num_steps": 2, "scheduler": "dpmsolver++"}}
        req = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            (pred,) = json.loads(r.read())["predictions"]
        assert Image.open(io.BytesIO(base64.b64decode(pred["image"]))).size == (11, 16)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()


def _wait(url: str, health: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}{health}", timeout=2) as r:
                if r.status == 200:
                    return url
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url}{health} not up after {timeout} s: {log.read_text()[-3000:]}")


def _multipart(files: dict, fields: dict) -> tuple[bytes, str]:
    boundary = "xmdpt-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
