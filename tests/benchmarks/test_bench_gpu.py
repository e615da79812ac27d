"""benchmarks/bench_gpu.py keeps working: --smoke runs every part (training, SDPA probe, sampling,
DINOv2 throughput) at tiny sizes on the CPU in seconds, so the GPU run of a later session does not rot."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow  # a benchmark script in a subprocess

ROOT = Path(__file__).resolve().parents[2]


def test_bench_gpu_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--device", "cpu",
                          "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["smoke"] is True and d["sdpa_backend"] in ("flash", "efficient", "cudnn", "math")
    assert [r["preset"] for r in d["training"]] == ["xmdpt-s/2", "xmdpt-b/2", "xmdpt-l/2"]
    assert all(r["steps_per_s"] > 0 and r["tflops_per_step"] > 0 for r in d["training"])
    assert {(r["preset"], r["batch"]) for r in d["sampling"]} == {(p, b) for p in ("xmdpt-s/2", "xmdpt-b/2", "xmdpt-l/2")
                                                                  for b in (1, 2)}
    assert d["dino"]["images_per_s"] > 0
