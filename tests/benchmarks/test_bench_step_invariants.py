"""benchmarks/bench_step_invariants.py keeps working: --smoke runs both variants and finds the same images."""

from __future__ import annotations

import pytest

import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow  # a benchmark script in a subprocess

ROOT = Path(__file__).resolve().parents[2]


def test_bench_step_invariants_smoke():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_step_invariants.py"), "--smoke"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| 2 |" in res.stdout and "same images bit for bit: True" in res.stdout
