"""benchmarks/bench_official.py keeps working: its --smoke mode runs every preset's path in seconds."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow  # a benchmark script in a subprocess

ROOT = Path(__file__).resolve().parents[2]


def test_bench_official_smoke(tmp_path):
    out = tmp_path / "rows.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_official.py"), "--smoke", "--batches", "1",
                          "2", "--timed-steps", "1", "--json", str(out)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["preset"], r["batch"]) for r in rows] == [(p, b) for p in ("xmdpt-s/2", "xmdpt-b/2", "xmdpt-l/2")
                                                         for b in (1, 2)]
    assert all(r["s_per_image"] > 0 and r["ddim50_cfg_s"] > 0 for r in rows)
    assert [r["authors_a100_s_per_image"] for r in rows[::2]] == [1.1, 1.3, 3.1]
    assert "| xmdpt-l/2 | 2 |" in res.stdout
