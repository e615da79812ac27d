"""``cluster.submit: true`` against a real local Ray head through the real Jobs API.

1. ``dvc repro synth`` in a throwaway project whose ``storage_root`` is S3 (moto on 127.0.0.1), as
   on a real cluster: the stage runs as a Ray job, its DVC output comes back through the S3 job dir
   byte-identical to a local run, DVC records it, and the shipped package holds code, not data.
2. A stage that raises inside the job: the submitter exits non-zero with the job's own error.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

VENV_BIN = Path(sys.executable).parent


def _env(head, **extra) -> dict:
    env = {**os.environ, **head.env, "RAY_ADDRESS": head.address, "DVC_NO_ANALYTICS": "1", **extra}
    env.pop("RAY_API_SERVER_ADDRESS", None)
    return env


def _jobs(head) -> list[dict]:
    """The head's jobs, from the Jobs REST API (``GET /api/jobs/``)."""
    return head.jobs()


def _tree_equal(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    _, mismatch, errors = filecmp.cmpfiles(a, b, files_a, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


@pytest.mark.timeout(240)
def test_dvc_repro_runs_synth_as_a_ray_job(ray_head, s3_store, make_project, tmp_path):
    from xmdpt.synth import write_synthetic_dataset

    s3_env, s3 = s3_store
    synth = {"identities": 4, "seed": 3, "test_fraction": 0.25}
    proj = make_project(tmp_path / "proj", {"synth": synth, "paths": {"storage_root": "s3://xmdpt-store/run"},
                                            "cluster": {"submit": True, "timeout_s": 180.0}})
    (proj / "data").mkdir()
    (proj / "data" / "not_shipped.bin").write_bytes(os.urandom(1024))
    env = _env(ray_head, **s3_env)
    for cmd in (["git", "init", "-q"], [str(VENV_BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=proj, env=env, check=True, capture_output=True, timeout=60)

    r = subprocess.run([str(VENV_BIN / "dvc"), "repro", "synth"], cwd=proj, env=env, capture_output=True, text=True,
                       timeout=200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    log = r.stdout + r.stderr
    assert "submitting stage 'synth'" in log and "finished on the cluster" in log
    # the job's own log lines were streamed to the submitter
    assert "INFO pipelines: stage 'synth': running here with s3://xmdpt-store/run/_jobs/xmdpt-synth-" in log

    # the job ran on the head, with the switch off inside it
    [job] = [j for j in _jobs(ray_head) if j["metadata"].get("xmdpt_stage") == "synth"]
    assert job["status"] == "SUCCEEDED"
    assert job["entrypoint"].startswith("python -m pipelines.synth --params ") and "--no-submit" in job["entrypoint"]
    assert job["runtime_env"]["env_vars"]["XMDPT_NO_SUBMIT"] == "1"

    # the shipped package holds the code and not the data
    [pkg] = [p for p in ray_head.temp_dir.glob("session_[0-9]*/runtime_resources/working_dir_files/*")
             if (p / "pipelines" / "synth.py").is_file() and (p / "dvc.yaml").is_file()
             and (p / "params.yaml").read_text() == (proj / "params.yaml").read_text()]
    assert (pkg / "xmdpt" / "orchestration" / "cluster.py").is_file()
    assert not (pkg / "data" / "not_shipped.bin").exists() and not (pkg / ".git").exists()

    # the output came back, identical to a local run of the same library call
    local = tmp_path / "local_synth"
    write_synthetic_dataset(str(local), identities=4, seed=3, test_fraction=0.25)
    _tree_equal(proj / "data" / "synth", local)

    # the S3 job dir records what the job ran with and what it sent back
    assert job["entrypoint"].split("--params ")[1].startswith(f"s3://xmdpt-store/run/_jobs/{job['id']}/params.yaml")

    def s3_text(name: str) -> str:
        return s3.get_object(Bucket="xmdpt-store", Key=f"run/_jobs/{job['id']}/{name}")["Body"].read().decode()

    outputs = json.loads(s3_text("outputs.json"))["outputs"]
    assert [(o["path"], o["kind"]) for o in outputs] == [("data/synth", "dir")]
    assert "submit: false" in s3_text("params.yaml")
    assert not (proj / "data" / "store").exists()  # nothing local: the store is S3

    # DVC recorded the stage as run: nothing left to reproduce
    s = subprocess.run([str(VENV_BIN / "dvc"), "status", "synth"], cwd=proj, env=env, capture_output=True,
                       text=True, timeout=60)
    assert s.returncode == 0 and "up to date" in s.stdout, s.stdout + s.stderr


FAILING_STAGE = textwrap.dedent('''
    """A stage whose library call rejects its input, as a real stage does with a bad file."""
    from pipelines.common import stage_main

    def run(cfg):
        raise ValueError("data/broken.csv row 7: keypoints_x has 17 values, expected 18")

    if __name__ == "__main__":
        stage_main("broken", run)
''')


@pytest.mark.timeout(180)
def test_failing_job_fails_the_stage_with_the_jobs_error(ray_head, make_project, tmp_path):
    proj = make_project(tmp_path / "proj", {"cluster": {"submit": True, "timeout_s": 150.0}})
    (proj / "pipelines" / "broken.py").write_text(FAILING_STAGE)
    r = subprocess.run([sys.executable, "-m", "pipelines.broken"], cwd=proj, env=_env(ray_head),
                       capture_output=True, text=True, timeout=170)
    assert r.returncode == 1, r.stderr[-3000:]
    last_lines = r.stderr.strip().splitlines()
    error_at = max(i for i, line in enumerate(last_lines) if "ERROR pipelines:" in line)
    message = "\n".join(last_lines[error_at:])
    assert "stage 'broken': Ray job xmdpt-broken-" in message and "FAILED" in message
    assert "ValueError: data/broken.csv row 7: keypoints_x has 17 values, expected 18" in message
    assert not (proj / "artifacts" / "broken").exists()
    [job] = [j for j in _jobs(ray_head) if j["metadata"].get("xmdpt_stage") == "broken"]
    assert job["status"] == "FAILED"
