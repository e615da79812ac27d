"""Outputs that do not depend on the batch a sample is in.

CPU kernels pick their algorithm by the batch size, and the algorithms sum in different orders: MKL
computes a 1-row product (matrix-vector) and a 2-3-row product differently from a product of 4 rows
or more, and oneDNN convolves a batch of 1 differently from a batch of 2 or more -- and, on one
thread, a batch of 16 or more differently from one of 2-12 (measured on this project's CPU builds;
a row's output differs in the last bits). Token-level layers never see fewer than 64 rows, but
per-sample vectors and a lone image do. :func:`pad_rows` runs such a call on at least ``min_rows``
rows, and :func:`conv_batches` runs a convolution on CPU in chunks of 2 to ``CONV_MAX_BATCH``
samples, so a request alone and the same request in a batch of any size give the same image.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["padded", "pad_rows", "conv_batches", "VECTOR_MIN_ROWS", "CONV_MIN_BATCH", "CONV_MAX_BATCH"]

VECTOR_MIN_ROWS = 8  # Linear on (N, D) vectors: MKL's own paths for 1 and 2-3 rows (4+ agree); 8 for margin
CONV_MIN_BATCH = 2  # oneDNN convolutions: a batch of 1 has its own path (2+ agree)
CONV_MAX_BATCH = 8  # ... and on one thread 16+ another one (2-12 agree; 2+ threads: all sizes agree)


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


def conv_batches(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for a convolutional ``fn``: on CPU computed on chunks of ``CONV_MAX_BATCH`` samples
    (the last one padded to ``CONV_MIN_BATCH``), elsewhere on ``x`` padded to ``CONV_MIN_BATCH``.
    A sample's output is then the same in a batch of any size, on any number of threads."""
    if x.device.type != "cpu" or x.shape[0] <= CONV_MAX_BATCH:
        return pad_rows(fn, x, CONV_MIN_BATCH)
    return torch.cat([pad_rows(fn, chunk, CONV_MIN_BATCH) for chunk in x.split(CONV_MAX_BATCH)])
