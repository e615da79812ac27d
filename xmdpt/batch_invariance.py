"""Outputs that do not depend on the batch a sample is in.

CPU kernels pick their algorithm by the batch size, and the algorithms sum in different orders: MKL
computes a 1-row product (matrix-vector) and a 2-3-row product differently from a product of 4 rows
or more, and oneDNN convolves a batch of 1 differently from a batch of 2 or more (measured on this
project's CPU builds; a row's output differs in the last bits). Token-level layers never see fewer
than 64 rows, but per-sample vectors and a lone image do. :func:`pad_rows` runs such a call on at
least ``min_rows`` rows, so a request alone and the same request in a batch give the same image.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["padded", "pad_rows", "VECTOR_MIN_ROWS", "CONV_MIN_BATCH"]

VECTOR_MIN_ROWS = 8  # Linear on (N, D) vectors: MKL's own paths for 1 and 2-3 rows (4+ agree); 8 for margin
CONV_MIN_BATCH = 2  # oneDNN convolutions: a batch of 1 has its own path (2+ agree)


def padded(x: torch.Tensor, min_rows: int) -> torch.Tensor:
    """``x`` padded along dim 0 with copies of its first row to ``min_rows`` rows (as is when it has
    that many, or none); the caller keeps the first ``len(x)`` rows of what it computes on it."""
    n = x.shape[0]
    if n >= min_rows or n == 0:
        return x
    return torch.cat([x, x[:1].expand(min_rows - n, *x.shape[1:])])


def pad_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, min_rows: int) -> torch.Tensor:
    """``fn(x)`` computed on :func:`padded` ``x``, the padding dropped from the output (``fn(x)`` itself
    when ``x`` needs no padding)."""
    xp = padded(x, min_rows)
    return fn(x) if xp is x else fn(xp)[:x.shape[0]]
