"""Appearance reaches the output: a model trained briefly on toy people copies the source's clothes.

A guard for the whole appearance path (stand-in image-token encoder -> CANet -> adaLN -> denoiser
-> DDIM sampler): toy "people" are a torso block over a legs block, dressed in one random colour, on
a light background. The target is the same person in another pose (the blocks shifted); the pose reaches the
model through pose tokens, the person only through the source image (its tokens and its latent).
After a short training with the real loss and optimizer step, the same noise and target pose with
two different source people must give two outputs whose colours differ the way the two sources' do. A change that cuts the source out of the conditioning (CANet, the tokens, the
sampler's summary) leaves the two outputs equal and fails here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from xmdpt_test_helpers import tiny_config

from xmdpt.core.config import DiffusionConfig, EncodersConfig, SampleConfig
from xmdpt.diffusion import GaussianDiffusion
from xmdpt.diffusion.sampling import sample
from xmdpt.encoders.dino import TokenEncoder, prepare_image
from xmdpt.model import XMDPT
from xmdpt.training.ema import EMA
from xmdpt.training.step import train_step

pytestmark = pytest.mark.slow  # a short training run

SIDE = 8  # latent side: the toy "latent" is the image average-pooled 8x
BG = 0.8  # background grey in [0, 1]
POSES = (-2, 0, 2)  # horizontal shifts of the body, in latent pixels


def _person_image(torso: torch.Tensor, legs: torch.Tensor, shift: int) -> torch.Tensor:
    """(3, 64, 64) in [-1, 1]: a torso block over a legs block, shifted by ``shift`` latent pixels."""
    img = torch.full((3, SIDE * 8, SIDE * 8), BG)
    x0 = (3 + shift) * 8
    img[:, 8:32, x0:x0 + 16] = torso.view(3, 1, 1)
    img[:, 32:56, x0:x0 + 16] = legs.view(3, 1, 1)
    return img * 2 - 1


def _regions(shift: int) -> dict[str, tuple[slice, slice]]:
    x0 = 3 + shift
    return {"torso": (slice(1, 4), slice(x0, x0 + 2)), "legs": (slice(4, 7), slice(x0, x0 + 2))}


def _latent(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, 64, 64) -> (N, 3, 8, 8): the toy codec."""
    return F.avg_pool2d(images, 8)


@pytest.fixture(scope="module", params=["paper", "embedded"])
def trained(request):
    """Trained with the paper's objective (eps, its MSE) or the embedded default's (v, the x_0 MSE)."""
    torch.manual_seed(0)
    enc_cfg = EncodersConfig(pretrained=False, token_input_size=56, standin_depth=1)
    encoder = TokenEncoder.from_config(enc_cfg, "image")
    cfg = tiny_config(in_channels=3, input_size=SIDE, patch_size=2, hidden_size=64, depth=3, num_heads=2,
                      ref_num_tokens=encoder.num_tokens, ref_token_dim=encoder.dim, pose_num_tokens=4,
                      pose_token_dim=len(POSES), mask_ratio=0.0)
    pose_tokens = torch.eye(len(POSES)).unsqueeze(1).expand(-1, 4, -1)  # (P, 4, P): one-hot per pose
    g = torch.Generator().manual_seed(0)
    people = torch.rand(96, 1, 3, generator=g).expand(96, 2, 3)  # (torso, legs) colours of 96 training people

    def batch(n: int) -> dict[str, torch.Tensor]:
        who = torch.randint(0, len(people), (n,), generator=g)
        src_pose, tgt_pose = torch.randint(0, len(POSES), (n,), generator=g), torch.randint(0, len(POSES), (n,), generator=g)
        src = torch.stack([_person_image(*people[w], POSES[p]) for w, p in zip(who, src_pose)])
        tgt = torch.stack([_person_image(*people[w], POSES[p]) for w, p in zip(who, tgt_pose)])
        zero = torch.zeros(n, 3, SIDE, SIDE)
        return {"x0_mean": _latent(tgt), "x0_std": zero, "ref_mean": _latent(src), "ref_std": zero,
                "pose_tokens": pose_tokens[tgt_pose], "ref_tokens": encoder(prepare_image(src, 56))}

    model = XMDPT(cfg)
    ema = EMA(model, decay=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    embedded = request.param == "embedded"
    diffusion = GaussianDiffusion.from_config(DiffusionConfig(prediction="v" if embedded else "eps"))
    data = [batch(32) for _ in range(8)]
    model.train()
    for step in range(800):
        train_step(model, ema, opt, data[step % len(data)], diffusion=diffusion, latent_scale=1.0,
                   cond_drop_prob=0.1, mask_ratio=0.0, generator=g, timestep_logit_normal=(0.5, 1.0),
                   mse_space="x0" if embedded else "prediction")
    model.eval()
    return model, encoder, pose_tokens, diffusion


def _generate(trained, torso: torch.Tensor, legs: torch.Tensor, *, src_shift: int, tgt_pose: int,
              drop: bool = False) -> torch.Tensor:
    model, encoder, pose_tokens, diffusion = trained
    src = _person_image(torso, legs, src_shift).unsqueeze(0)
    cond = {"pose_tokens": pose_tokens[tgt_pose:tgt_pose + 1], "ref_tokens": encoder(prepare_image(src, 56)),
            "ref_latent": _latent(src)}
    noise = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(7))
    sample_cfg = SampleConfig(num_steps=20, cfg_scale=0.0 if drop else 1.0, source_latent="mean")
    return sample(model, diffusion, cond, sample_cfg, x_T=noise)[0]  # (3, SIDE, SIDE)


def _colours(latent: torch.Tensor, shift: int) -> dict[str, torch.Tensor]:
    rgb = (latent + 1) / 2
    return {part: rgb[:, ys, xs].mean(dim=(1, 2)) for part, (ys, xs) in _regions(shift).items()}


def test_swapping_the_source_person_moves_the_clothes_colour_toward_the_new_source(trained):
    # two people never seen in training, dressed in different colours
    a = (torch.tensor([0.9, 0.2, 0.1]),) * 2
    b = (torch.tensor([0.1, 0.7, 0.3]),) * 2
    tgt = 2  # target pose index: shift +2, a source in pose 0 (shift -2)
    out_a = _colours(_generate(trained, *a, src_shift=POSES[0], tgt_pose=tgt), POSES[tgt])
    out_b = _colours(_generate(trained, *b, src_shift=POSES[0], tgt_pose=tgt), POSES[tgt])
    for i, part in enumerate(("torso", "legs")):
        want = b[i] - a[i]  # how the clothes differ between the two sources
        got = out_b[part] - out_a[part]
        cos = float(F.cosine_similarity(got, want, dim=0))
        assert cos > 0.9, f"{part}: swapping the source moved the colour in direction cos={cos:.2f} (want > 0.9)"
        assert got.norm() > 0.6 * want.norm(), f"{part}: moved {float(got.norm()):.3f} of {float(want.norm()):.3f}"
        # the output is near the source's own colour, not only moved
        assert float((out_b[part] - b[i]).norm()) < 0.5 * float(want.norm()), f"{part}: far from the source colour"


def test_null_condition_ignores_the_source_person(trained):
    a = (torch.tensor([0.9, 0.2, 0.1]),) * 2
    b = (torch.tensor([0.1, 0.7, 0.3]),) * 2
    out_a = _generate(trained, *a, src_shift=0, tgt_pose=1, drop=True)
    out_b = _generate(trained, *b, src_shift=0, tgt_pose=1, drop=True)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
