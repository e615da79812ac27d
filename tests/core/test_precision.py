"""sample.precision: auto is bf16 on CUDA and fp32 on CPU; bf16 only where the device computes it."""

from __future__ import annotations

import pytest
import torch

from xmdpt.core.precision import PrecisionError, autocast_context, inference_dtype


@pytest.mark.parametrize("native", [False, True])
def test_cpu_precisions(monkeypatch, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert inference_dtype("auto", "cpu") is None
    assert inference_dtype("fp32", "cpu") is None
    if native:
        assert inference_dtype("bf16", "cpu") is torch.bfloat16
        with autocast_context("cpu", "bf16"):
            assert torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4)).dtype is torch.bfloat16
    else:
        with pytest.raises(PrecisionError, match="sample.precision=bf16: cpu device without native bf16"):
            inference_dtype("bf16", "cpu")
    with autocast_context("cpu", "auto"):
        assert torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4)).dtype is torch.float32
    with pytest.raises(PrecisionError, match="unknown value 'fp16'"):
        inference_dtype("fp16", "cpu")
