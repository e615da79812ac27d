"""benchmarks/bench_conv_chunks.py keeps working: a short run prints both variants."""

from __future__ import annotations

import pytest

import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow  # a benchmark script in a subprocess

ROOT = Path(__file__).resolve().parents[2]


def test_bench_conv_chunks_runs():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_conv_chunks.py"), "--threads", "1",
                          "--batches", "2", "9", "--reps", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| 1 | 9 |" in res.stdout and "chunks of 8" in res.stdout
