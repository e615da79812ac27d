"""The FLOP counting of benchmarks/bench_deepfashion.py: meta device agrees with CPU, linear in batch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_deepfashion.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_deepfashion", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_flops_positive_and_linear_in_batch(bench):
    eight = bench.xmdpt_train_flops("xmdpt-tiny/2", batch=8)
    assert eight > 0
    assert bench.xmdpt_train_flops("xmdpt-tiny/2", batch=24) == 3 * eight  # both counted
    assert bench.xmdpt_train_flops("xmdpt-tiny/2", batch=1) * 8 == eight  # small batches: the model's work only


def test_meta_count_matches_cpu_count(bench):
    cpu = bench.xmdpt_cfg_step_flops("xmdpt-tiny/2", device="cpu")
    assert cpu > 0
    assert bench.xmdpt_cfg_step_flops("xmdpt-tiny/2", device="meta") == cpu
