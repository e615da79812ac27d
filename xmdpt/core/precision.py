"""Numerical precision of inference: ``sample.precision`` -> an autocast context.

The authors run the denoiser and the DINOv2 passes under bf16 autocast on CUDA (PAPER.md §1.2,
§1.7). ``auto`` does the same on CUDA and stays fp32 on CPU; ``bf16`` is accepted only where the
device computes it (a CUDA GPU with bf16 support, or a CPU with AVX512-BF16/AMX) and refused with a
clear error elsewhere; ``fp32`` never autocasts.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

__all__ = ["cpu_has_native_bf16", "PrecisionError", "inference_dtype", "autocast_context", "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "bf16")


class PrecisionError(ValueError):
    """The requested precision is not available on the device."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates it."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def _cuda_bf16(device: torch.device) -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def inference_dtype(precision: str, device: str | torch.device) -> Optional[torch.dtype]:
    """``sample.precision`` on ``device`` -> the autocast dtype (None: fp32).

    Raises:
        PrecisionError: ``bf16`` on a device without bf16 arithmetic, or an unknown value.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise PrecisionError(f"sample.precision: unknown value {precision!r}; expected one of {list(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if _cuda_bf16(device):
            return torch.bfloat16
        if precision == "bf16":
            raise PrecisionError(f"sample.precision=bf16: the GPU on {device} has no bf16 support; use fp32")
        return None
    if precision == "auto":
        return None  # CPU: fp32 unless bf16 is asked for
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    raise PrecisionError(f"sample.precision=bf16: {device.type} device without native bf16 arithmetic "
                         "(needs a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX); use fp32 or auto")


def autocast_context(device: str | torch.device, precision: str = "auto"):
    """A ``torch.autocast`` context for ``precision`` on ``device`` (a null context for fp32)."""
    device = torch.device(device)
    if device.type == "meta":
        return contextlib.nullcontext()
    dtype = inference_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
