"""A sample's output does not depend on the batch it is in (xmdpt/core/batch_invariance.py): the denoiser,
CANet and the autoencoder give bit-identical results for a sample alone and in batches of 2, 3, 8
and 16, on one torch thread and on two.

The shapes are the embedded model's (hidden 128, 4x4 patches on 32x32x4 latents, and the [16, 32]
autoencoder at 64 px it used before the wider [24, 48] one): there, without the padding, MKL's 1-row
and 2-3-row products and oneDNN's batch-of-1 convolutions differ from the batched ones in the last
bits (with ``VECTOR_MIN_ROWS`` and ``CONV_MIN_BATCH`` set to 1 both first tests fail on the project's
CPU), and on one thread oneDNN convolves 16 samples differently from 2-12 (with ``CONV_MAX_BATCH`` at
64 they fail on one thread).
"""

from __future__ import annotations

import pytest
import torch

from xmdpt.core.batch_invariance import conv_batches, pad_rows
from xmdpt.core.config import AutoencoderConfig, ModelConfig
from xmdpt.encoders.vae import LatentCodec, build_fitted_vae
from xmdpt.model import XMDPT

SIZES = (2, 3, 8)  # and the full batch of 16


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = XMDPT(ModelConfig.from_preset("xmdpt-tiny/4")).eval()
    with torch.no_grad():  # adaLN-Zero starts at zero: give every layer weights so that each one counts
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _inputs(m, n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    c = m.cfg
    return (torch.randn(n, c.in_channels, c.input_size, c.input_size, generator=g),
            torch.randint(0, 1000, (n,), generator=g),
            torch.randn(n, c.pose_num_tokens, c.pose_token_dim, generator=g),
            torch.randn(n, c.ref_num_tokens, c.ref_token_dim, generator=g),
            torch.randn(n, c.in_channels, c.input_size, c.input_size, generator=g))


def _alone_equals_batched(fn, batch) -> None:
    full = fn(*batch)
    for n in SIZES:
        part = fn(*(b[:n] for b in batch))
        assert torch.equal(part, full[:n]), f"batch of {n} differs from batch of 16 by {(part - full[:n]).abs().max()}"
    for i in (0, 1, 15):
        alone = fn(*(b[i:i + 1] for b in batch))
        assert torch.equal(alone[0], full[i]), f"sample {i} alone differs by {(alone[0] - full[i]).abs().max()}"


@torch.no_grad()
def test_denoiser_and_canet_do_not_depend_on_the_batch(model, threads):
    x, t, pose, ref, lat = _inputs(model, 16)
    _alone_equals_batched(lambda p, r, la: model.summarize_conditions(p, r, la), (pose, ref, lat))
    _alone_equals_batched(lambda *a: model(*a), (x, t, pose, ref, lat))
    _alone_equals_batched(lambda *a: model.forward_with_cfg(*a, 2.0, 0.01), (x, t, pose, ref, lat))


@torch.no_grad()
def test_autoencoder_does_not_depend_on_the_batch(threads):
    torch.manual_seed(0)
    codec = LatentCodec(build_fitted_vae(AutoencoderConfig(block_channels=[16, 32]), 64), 1.0, source="fitted")
    images = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    _alone_equals_batched(lambda im: torch.cat(codec.encode(im), dim=1), (images,))
    latents = torch.randn(16, codec.latent_channels, 32, 32, generator=torch.Generator().manual_seed(3))
    _alone_equals_batched(codec.decode, (latents,))


def test_pad_rows_keeps_rows_and_drops_the_padding():
    seen = []
    x = torch.arange(6.0).view(3, 2)
    out = pad_rows(lambda z: seen.append(z.shape[0]) or z * 2, x, 8)
    assert seen == [8] and torch.equal(out, x * 2)
    assert pad_rows(lambda z: seen.append(z.shape[0]) or z, x, 2) is x and seen[-1] == 3  # enough rows: as is


def test_conv_batches_runs_chunks_of_2_to_8_and_keeps_every_row():
    seen = []
    x = torch.arange(17.0).view(17, 1)
    out = conv_batches(lambda z: seen.append(z.shape[0]) or z * 2, x)
    assert seen == [8, 8, 2] and torch.equal(out, x * 2)  # the lone last row padded to 2, then dropped
    seen.clear()
    assert torch.equal(conv_batches(lambda z: seen.append(z.shape[0]) or z, x[:1]), x[:1]) and seen == [2]
